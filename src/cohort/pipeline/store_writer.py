"""The scale-out store writer: prepared batches from the processed topic into the store.

Per prepared batch of raw partition p: keep only records after the store's position in p (a worker
replayed after a crash may publish records again, with other boundaries) → dedup against the shared
state (retried requests by msgid, then events by mid) → write with a token naming the raw range →
tell the dedup state → let the intake ledger's entries go → commit the processed offset.

Why a crash anywhere doubles nothing: the store's position in p moves with the batch's last insert;
until it does, the processed message is read again, cut at the same position, deduplicated against
a state that learned nothing of it yet (keys are added only after the write), so the same rows come
out under the same token and the store keeps them once. After it moved, the cut leaves nothing.

One writer per processed partition at a time (a consumer group). With the embedded ClickHouse engine
(one process per path) the writer runs inside `cohort serve`, which also answers queries on the same
store; with a ClickHouse server it may run anywhere: a deployment choice, not another code path.
"""

from __future__ import annotations

import logging
import threading
import time

from cohort.core.errors import TerminalFault
from cohort.core.prepared_codec import CorruptPreparedBatch, decode_prepared
from cohort.core.process_batch import after_offset, finish_batch
from cohort.core.work_item import describe_failure
from cohort.ingest.kafka_log import KafkaLogConsumer
from cohort.pipeline.role_loop import run_role
from cohort.state.dedup_state import DedupState
from cohort.state.redis_intake import RedisIntake
from cohort.store.base import Store

log = logging.getLogger("cohort.store_writer")


class StoreWriter:
    def __init__(self, processed: KafkaLogConsumer, store: Store, *, mid_state: DedupState,
                 request_state: DedupState, intake: RedisIntake, poll_timeout_s: float = 0.2,
                 owns_store: bool = False):
        if not store.capabilities.idempotent_insert and not store.capabilities.atomic_offset:
            raise ValueError("the store writer needs a store with idempotent inserts or an atomic offset")
        self._processed = processed
        self._store = store
        self.mid_state = mid_state
        self.request_state = request_state
        self._intake = intake
        self._poll_timeout_s = poll_timeout_s
        self._owns_store = owns_store  # a `cohort store-writer` process closes its store; `serve` closes its own
        self.batches = 0
        self.events = 0
        self.last_error: str | None = None
        self.terminal_error: str | None = None

    def step(self) -> int:
        """Write what one poll of the processed topic brought; return the events written (0: nothing came)."""
        messages = self._processed.poll(1, self._poll_timeout_s)  # prepared batches are big: a few at a time
        self._processed.take_revoked()
        if not messages:
            return 0
        partition = messages[0].partition
        try:
            events = sum(self._write(message.payload) for message in messages)
            self._processed.commit({partition: messages[-1].offset})
        except BaseException:
            self._processed.seek(partition, self._processed.committed().get(partition, -1))
            raise
        return events

    def _write(self, payload: bytes) -> int:
        try:
            prepared = decode_prepared(payload)
        except CorruptPreparedBatch as exc:  # not ours, or another version's: never guess, stop and say so
            raise TerminalFault(f"the processed topic holds a message this store writer cannot read: {exc}") from exc
        position = self._store.counts().positions.get(prepared.partition, -1)
        tail = after_offset(prepared, position)
        if tail is None:  # stored before: the writer may have stopped before telling the dedup state
            self._remember(prepared.rows.column("mid").to_pylist(),
                           [r.key for r in prepared.request_keys if r.key is not None])
            self._intake.let_go(prepared.partition, prepared.last_offset)
            return 0
        prepared = tail
        outcome = finish_batch(prepared, self.mid_state, self.request_state)
        now = int(time.time() * 1000)
        self._store.write_batch(outcome, failed_at_ms=now,
                                token=f"p{outcome.partition}-{outcome.first_offset}-{outcome.last_offset}")
        # After the write only: the state never holds a key whose event is not stored.
        self._remember(outcome.stored_mids, outcome.new_request_keys, now)
        self._intake.let_go(outcome.partition, outcome.last_offset)
        self.batches += 1
        self.events += outcome.events_in
        return outcome.events_in

    def _remember(self, mids: list[str], request_keys: list[str], at_ms: int | None = None) -> None:
        """Tell the dedup state. Adding a key it holds changes nothing (the first time is kept), so keys
        of a batch stored before may be told again: every mid of its rows was stored, or was a duplicate
        of a stored one."""
        at = at_ms if at_ms is not None else int(time.time() * 1000)
        self.mid_state.add(mids, at)
        self.request_state.add(request_keys, at)

    def close(self) -> None:
        """Leave the consumer group and let the clients go (the store too, if this writer owns it)."""
        closers = [self._processed.close, self.mid_state.close, self.request_state.close, self._intake.close]
        for close in closers + ([self._store.close] if self._owns_store else []):
            try:
                close()
            except Exception as exc:
                log.warning("closing the store writer: %s", describe_failure(exc))

    def run(self, stop: threading.Event) -> None:
        """Until `stop` is set (or a terminal fault): steps, with backoff after a failed one."""
        run_role(self, stop, log, "store writer", "Prepared batches wait in the processed topic.")
