"""The pipeline runner: reads the ingest log in batches, runs the core, commits.

Order per batch: prepare (pure core, possibly in worker processes, several
batches ahead) → dedup against what the store has committed → store commit
(rows, quarantine, counters and the batch's last offset, atomically) → remember
the stored mids → commit the log offset. Commits happen strictly in log order.
A crash anywhere replays from the store's offset, so every acknowledged event
is stored once, quarantined once, or counted as duplicate once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import BrokenExecutor, Future

from cohort.core.process_batch import PreparedBatch, finish_batch, prepare_batch
from cohort.core.telemetry_schema import compile_all, schema_version
from cohort.ingest.log import Log
from cohort.pipeline.core_pool import CorePool
from cohort.state.mid_window import MidWindow
from cohort.store.base import Store

log = logging.getLogger("cohort.pipeline")

CONSUMER = "pipeline"
TRUNCATE_EVERY_S = 60.0


class PipelineRunner:
    def __init__(self, log_: Log, store: Store, *, batch_events: int, dedup_period_s: float,
                 retention_s: float, idle_wait_s: float = 0.02, workers: int = 0,
                 dedup_max_mids: int = 2_500_000):
        self._log = log_
        self._store = store
        self._batch_events = batch_events
        self._retention_s = retention_s
        self._idle_wait_s = idle_wait_s
        self._workers = workers
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._backlog_lock = threading.Lock()
        self._config_version = schema_version()
        compile_all()
        self._last_truncate = 0.0
        self.last_error: str | None = None
        self.batches = 0
        # seconds the loop spent in each phase (for /metrics): where a slow pipeline waits
        self.phase_seconds = {"read_log": 0.0, "wait_prepare": 0.0, "dedup": 0.0, "store": 0.0, "commit_log": 0.0}

        self.offset = max(store.counts().last_offset, 0)
        log_end = log_.stats().last_offset
        if log_end < self.offset:
            # The log is behind the store: it was deleted or replaced. New records must get offsets
            # after what the store holds, or the runner would skip them as already processed.
            log.warning("ingest log ends at %d but the store is at %d: continuing offsets from the store",
                        log_end, self.offset)
            log_.advance_to(self.offset)
        if log_.committed(CONSUMER) < self.offset:
            log_.commit(CONSUMER, self.offset)  # the store committed but the log did not hear of it
        self.backlog_events = log_.stats(after=self.offset).events_after
        self.dedup = MidWindow(dedup_period_s, max_mids=dedup_max_mids)
        # Only what the window can hold, newest last, so the reload ends as the window was.
        self.dedup.add(store.mids_since(int((time.time() - dedup_period_s) * 1000), limit=dedup_max_mids // 2))

    # -- called by the API ------------------------------------------------------
    def acked(self, events: int) -> None:
        with self._backlog_lock:
            self.backlog_events += events
        self._wake.set()

    # -- one batch at a time, in the calling thread -----------------------------
    def step(self) -> int:
        """Process one batch; return how many events it held (0 when the log is drained)."""
        records = self._log.read(self.offset, self._batch_events)
        if not records:
            return 0
        return self._commit(prepare_batch(records, now_ms=_now_ms(), config_version=self._config_version))

    def drain(self) -> int:
        total = 0
        while n := self.step():
            total += n
        return total

    def _commit(self, prepared: PreparedBatch) -> int:
        if prepared.first_offset <= self.offset:
            raise RuntimeError(f"batch {prepared.first_offset}..{prepared.last_offset} is behind offset {self.offset}")
        phases = self.phase_seconds
        started = time.perf_counter()
        outcome = finish_batch(prepared, self.dedup)
        stored_at = time.perf_counter()
        phases["dedup"] += stored_at - started
        self._store.write_batch(outcome, failed_at_ms=_now_ms())
        self.dedup.add(outcome.stored_mids)
        committed_at = time.perf_counter()
        phases["store"] += committed_at - stored_at
        self.offset = outcome.last_offset
        with self._backlog_lock:
            self.backlog_events -= outcome.events_in
        self._log.commit(CONSUMER, self.offset)
        phases["commit_log"] += time.perf_counter() - committed_at
        self.batches += 1
        return outcome.events_in

    # -- the background loop ----------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="cohort-pipeline", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join()

    @property
    def running(self) -> bool:
        return bool(self._thread and self._thread.is_alive())

    def _run(self) -> None:
        pool = CorePool(self._workers)
        inflight: deque[Future] = deque()
        next_after = self.offset
        backoff = 0.05
        try:
            while not self._stop.is_set():
                try:
                    started = time.perf_counter()
                    while len(inflight) < pool.depth:
                        records = self._log.read(next_after, self._batch_events)
                        if not records:
                            break
                        inflight.append(pool.submit(records, _now_ms(), self._config_version))
                        next_after = records[-1].offset
                    waiting_at = time.perf_counter()
                    self.phase_seconds["read_log"] += waiting_at - started
                    if not inflight:
                        self._wake.wait(self._idle_wait_s)
                        self._wake.clear()
                        continue
                    prepared = inflight[0].result()
                    inflight.popleft()
                    self.phase_seconds["wait_prepare"] += time.perf_counter() - waiting_at
                    self._commit(prepared)
                    self._truncate_if_due()
                    self.last_error = None
                    backoff = 0.05
                except Exception as exc:  # nothing of a failed batch is committed: start again from the store
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    log.exception("pipeline batch failed; retrying in %.2fs", backoff)
                    for future in inflight:
                        future.cancel()
                    inflight.clear()
                    next_after = self.offset
                    if isinstance(exc, BrokenExecutor):
                        pool.restart()
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, 5.0)
        finally:
            pool.close()

    def _truncate_if_due(self) -> None:
        now = time.time()
        if now - self._last_truncate < TRUNCATE_EVERY_S:
            return
        self._last_truncate = now
        self._log.truncate(CONSUMER, int((now - self._retention_s) * 1000))


def _now_ms() -> int:
    return int(time.time() * 1000)
