"""The scale-out store writer: prepared batches from the processed topic into the store.

Per prepared batch of raw partition p: keep only records after the store's position in p (a worker
replayed after a crash may publish records again, with other boundaries) → dedup against the shared
state (retried requests by msgid, then events by mid) → write with a token naming the raw range →
tell the dedup state → let the intake ledger's entries go → commit the processed offset.

Why a crash anywhere doubles nothing: the store's position in p moves with the batch's last insert;
until it does, the processed message is read again, cut at the same position, deduplicated against
a state that learned nothing of it yet (keys are added only after the write), so the same rows come
out under the same token and the store keeps them once. After it moved, the cut leaves nothing, and
what it left out is told to the state again (the writer may have stopped between write and telling).

Poison input never stops a partition (as in the embedded runner): when the store refuses a batch for
a reason that is not an infrastructure fault (`store.transient_errors`, retried for as long as they
last), the writer writes its halves, and theirs, each under a token naming its own raw range and
each told to the state before the next is deduplicated, down to a record the store refuses alone
(twice), which is quarantined whole (ERR_STORE_REJECTED, stage `store`: each event with its text)
under a token of its own. Halves rather than one record at a time: one refused record among n costs
about 2·log2(n) writes, not n (which could outlast the consumer group's poll interval). The argument
above holds per part: the position moves with each. Which parts a message is written in depends only
on the message, the position and what the store refuses, so a replay retraces them under the same
tokens: a part holding the position (the writer stopped inside it) goes straight to its halves, and
a part tried whole that the store refuses leaves nothing behind (ClickHouse: `ClickHousePartlyRefused`
otherwise). Telling the state again after a stop leaves out the events the store refused
(`store_rejected`): a key for an event that is not stored would make it a duplicate when it is sent
again.

One writer per processed partition at a time (a consumer group). With the embedded ClickHouse engine
(one process per path) the writer runs inside `cohort serve`, which also answers queries on the same
store; with a ClickHouse server it may run anywhere: a deployment choice, not another code path.
"""

from __future__ import annotations

import logging
import threading
import time

from cohort.analytics.rollup_refresh import MAX_BUSY_SHARE, REFRESH_INTERVAL_S, RollupRefresher, RollupRefreshThread
from cohort.core.errors import ErrorCode, TerminalFault
from cohort.core.prepared_codec import CorruptPreparedBatch, decode_prepared
from cohort.core.prepared_split import halves, rejected_by_store, through_offset
from cohort.core.process_batch import BatchOutcome, PreparedBatch, after_offset, finish_batch
from cohort.core.work_item import describe_failure
from cohort.ingest.kafka_log import KafkaLogConsumer
from cohort.pipeline.gc_tuning import collector_paused
from cohort.pipeline.isolation import POISON_ATTEMPTS, RecordIsolation, StoreRefused, quarantine_message
from cohort.pipeline.role_loop import run_role
from cohort.state.dedup_state import DedupState
from cohort.state.redis_intake import RedisIntake
from cohort.store.base import Store

log = logging.getLogger("cohort.store_writer")


class StoreWriter:
    def __init__(self, processed: KafkaLogConsumer, store: Store, *, mid_state: DedupState,
                 request_state: DedupState, intake: RedisIntake, poll_timeout_s: float = 0.2,
                 owns_store: bool = False, refresh_interval_s: float = REFRESH_INTERVAL_S,
                 refresh_busy_share: float = MAX_BUSY_SHARE):
        if not store.capabilities.idempotent_insert and not store.capabilities.atomic_offset:
            raise ValueError("the store writer needs a store with idempotent inserts or an atomic offset")
        self._processed = processed
        self._store = store
        self.mid_state = mid_state
        self.request_state = request_state
        self._intake = intake
        self._poll_timeout_s = poll_timeout_s
        self._refresh = (refresh_interval_s, refresh_busy_share)
        self._owns_store = owns_store  # a `cohort store-writer` process closes its store; `serve` closes its own
        self._isolation = RecordIsolation(tuple(store.transient_errors))
        # what the store refused of a list of mids (ClickHouseStore.store_rejected); a store without it gets
        # no mids told again after a crash (a missed key at worst, never a key for an event not stored)
        self._store_rejected = getattr(store, "store_rejected", None)
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
            with collector_paused():
                events = sum(self._write(message.payload) for message in messages)
            self._processed.commit({partition: messages[-1].offset})
        except BaseException:
            self._processed.seek(partition, self._processed.committed().get(partition, -1))
            raise
        return events

    @property
    def isolated_records(self) -> int:
        """Records the store refused alone (quarantined, ERR_STORE_REJECTED, unless the second attempt took them)."""
        return self._isolation.isolated_records

    def _write(self, payload: bytes) -> int:
        try:
            prepared = decode_prepared(payload)
        except CorruptPreparedBatch as exc:  # not ours, or another version's: never guess, stop and say so
            raise TerminalFault(f"the processed topic holds a message this store writer cannot read: {exc}") from exc
        position = self._store.counts().positions.get(prepared.partition, -1)
        head = through_offset(prepared, position)
        if head is not None:  # stored before: the writer may have stopped before telling the dedup state
            self._tell_again(head)
        if after_offset(prepared, position) is None:
            self._intake.let_go(prepared.partition, prepared.last_offset)
            return 0
        return self._write_range(prepared, position)

    def _write_range(self, part: PreparedBatch, position: int) -> int:
        """Write the records of `part` after `position`: whole when none of them was written before, and if
        the store refuses it, each half the same way, down to a record the store refuses alone, which is
        quarantined. A part holding the position (a replay of a message this writer stopped in) goes
        straight to its halves, so a replay retraces the same parts under the same tokens."""
        if part.last_offset <= position:
            return 0
        if len(part.request_keys) == 1:
            return self._write_alone(part)
        if part.first_offset > position:
            try:
                return self._write_part(part)
            except StoreRefused as refused:
                log.warning("the store refused raw records %d..%d of partition %d (%s): writing them in halves",
                            part.first_offset, part.last_offset, part.partition, describe_failure(refused.cause))
        first, second = halves(part)
        return self._write_range(first, position) + self._write_range(second, position)

    def _write_alone(self, record: PreparedBatch) -> int:
        """One record under a token of its own; if the store refuses it every time, its quarantine under another."""
        outcome = finish_batch(record, self.mid_state, self.request_state)

        def quarantine(failure: Exception) -> int:
            message = quarantine_message(failure)
            log.error("quarantining raw record %d of partition %d (%d events, %s): %s", record.first_offset,
                      record.partition, record.events_in, ErrorCode.STORE_REJECTED, message)
            return self._write_outcome(rejected_by_store(outcome, message), token_suffix="-rejected")

        return self._isolation.first_that_works([lambda: self._write_outcome(outcome)] * POISON_ATTEMPTS, quarantine)

    def _write_part(self, part: PreparedBatch) -> int:
        return self._write_outcome(finish_batch(part, self.mid_state, self.request_state))

    def _write_outcome(self, outcome: BatchOutcome, token_suffix: str = "") -> int:
        """Write under the token of the outcome's raw range, then tell the dedup state and the intake ledger."""
        now = int(time.time() * 1000)
        token = f"p{outcome.partition}-{outcome.first_offset}-{outcome.last_offset}{token_suffix}"
        try:
            self._store.write_batch(outcome, failed_at_ms=now, token=token)
        except Exception as exc:
            if self._isolation.passes_through(exc):
                raise
            raise StoreRefused(exc) from exc
        # After the write only: the state never holds a key whose event is not stored.
        self._remember(outcome.stored_mids, outcome.new_request_keys, now)
        self._intake.let_go(outcome.partition, outcome.last_offset)
        self.batches += 1
        self.events += outcome.events_in
        return outcome.events_in

    def _tell_again(self, head: PreparedBatch) -> None:
        """Tell the state the keys of records stored before, leaving out events the store refused."""
        mids = head.rows.column("mid").to_pylist()
        if mids:
            refused = self._store_rejected(mids) if self._store_rejected is not None else set(mids)
            mids = [mid for mid in mids if mid not in refused]
        self._remember(mids, [r.key for r in head.request_keys if r.key is not None])

    def _remember(self, mids: list[str], request_keys: list[str], at_ms: int | None = None) -> None:
        """Tell the dedup state. Adding a key it holds changes nothing (the first time is kept), so keys
        of a batch stored before may be told again: every mid of its rows was stored, was a duplicate of
        a stored one, or was refused by the store (left out by the caller)."""
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
        """Until `stop` is set (or a terminal fault): steps, with backoff after a failed one. The rollups of the
        store are refreshed beside it (rollup_refresh: several writers refreshing at once is safe)."""
        refreshing = None
        if hasattr(self._store, "rollup_client"):
            refreshing = RollupRefreshThread(RollupRefresher(self._store), *self._refresh)
            refreshing.start()
        try:
            run_role(self, stop, log, "store writer", "Prepared batches wait in the processed topic.")
        finally:
            if refreshing is not None:
                refreshing.stop()
