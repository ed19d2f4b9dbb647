"""The pipeline runner: reads the ingest log in batches, runs the core, commits.

Order per batch: prepare (pure core, possibly in worker processes, several
batches ahead) → dedup against what the store has committed → store commit
(rows, quarantine, counters and the batch's last offset, atomically) → remember
the stored mids → commit the log offset. Commits happen strictly in log order.
A crash anywhere replays from the store's offset, so every acknowledged event
is stored once, quarantined once, or counted as duplicate once.

Failures are of two kinds. Infrastructure faults (the store's disk, the log) are
retried with backoff for as long as they last. Anything else may be the input's
fault, and input in a durable log comes back after every retry and restart: so a
batch that fails twice at the same offset is isolated — processed one record at a
time, a failing record one event at a time (`prepare_isolated`), and what still
fails is quarantined with its reason (`ERR_PIPELINE_POISON`, `ERR_STORE_REJECTED`).
A terminal fault (`TerminalFault`: Cohort's own invariant broken) is neither retried nor
blamed on the input: the runner stops and says why. A pipeline that keeps failing, stops
moving or stopped is reported as stalled.

Dedup state (event mids, request msgids) is injected: it only ever learns keys after the
store committed them, so it can miss keys (a crash between the two) but never hold a key
whose event is not stored.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import deque
from concurrent.futures import BrokenExecutor, Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Callable

from cohort.core.completed_future import completed_future
from cohort.core.errors import ErrorCode, TerminalFault, TransientFault
from cohort.core.log_record import LogRecord
from cohort.core.process_batch import (CORE_STAGE, STORE_STAGE, PreparedBatch, finish_batch, prepare_batch,
                                       prepare_isolated, quarantine_record)
from cohort.core.telemetry_schema import compile_all, schema_version
from cohort.core.work_item import describe_failure
from cohort.ingest.log import Log, LogUnavailable
from cohort.core.stages.transform import Pseudonymiser
from cohort.pipeline.core_pool import CorePool
from cohort.pipeline.pseudonymisation import LazyPseudonymiser
from cohort.state.dedup_state import DedupState
from cohort.store.base import Store

log = logging.getLogger("cohort.pipeline")

CONSUMER = "pipeline"
TRUNCATE_EVERY_S = 60.0
POISON_ATTEMPTS = 2  # a batch failing this often at the same offset is isolated
_INFRASTRUCTURE_FAULTS = (TransientFault, LogUnavailable, sqlite3.Error, OSError)


@dataclass(frozen=True, slots=True)
class RunnerStatus:
    """One snapshot of the pipeline for /health and /metrics."""

    running: bool
    offset: int
    backlog_events: int
    last_error: str | None
    consecutive_failures: int
    failing_for_s: float
    oldest_unprocessed_age_s: float
    stalled: bool
    isolated_records: int
    terminal_error: str | None = None  # why the runner stopped for good, if it did


class _StoreRefused(Exception):
    """The store refused a batch for a reason that is not an infrastructure fault."""

    def __init__(self, cause: Exception):
        super().__init__(str(cause))
        self.cause = cause


class PipelineRunner:
    def __init__(self, log_: Log, store: Store, *, mid_state: DedupState, request_state: DedupState,
                 batch_events: int, retention_s: float, idle_wait_s: float = 0.02, workers: int = 0,
                 stall_after_s: float = 60.0, batch_timeout_s: float = 120.0,
                 pseudonyms: LazyPseudonymiser | None = None):
        """`pseudonyms`: the identity vault's pseudonymiser of this process (workers open their own from its
        source); without it identifiers are stored as sent (tests of other concerns only)."""
        self._log = log_
        self._pseudonyms = pseudonyms
        self._store = store
        self.mid_state = mid_state
        self.request_state = request_state
        self._batch_events = batch_events
        self._retention_s = retention_s
        self._idle_wait_s = idle_wait_s
        self._workers = workers
        self._stall_after_s = stall_after_s
        self._batch_timeout_s = batch_timeout_s
        self._infrastructure_faults = _INFRASTRUCTURE_FAULTS + tuple(store.transient_errors)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._core_pool: CorePool | None = None  # while the pipeline runs: its workers, for `submit_beside`
        self._backlog_lock = threading.Lock()
        self._config_version = schema_version()
        compile_all()
        self._last_truncate = 0.0
        self.last_error: str | None = None
        self.terminal_error: str | None = None
        self._unremembered: list[tuple[DedupState, list[str], int]] = []  # committed keys the state has not taken
        self.consecutive_failures = 0
        self.isolated_records = 0
        self._failing_since: float | None = None
        self._suspect_offset = -1  # the offset after which input-suspect failures are being counted
        self._suspect_failures = 0
        self._last_progress = time.monotonic()
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

    # -- called by the API ------------------------------------------------------
    def acked(self, events: int) -> None:
        with self._backlog_lock:
            self.backlog_events += events
        self._wake.set()

    def status(self) -> RunnerStatus:
        """The pipeline as an operator needs it. Reads the log (one indexed row), so call it off the loop."""
        now = time.monotonic()
        backlog = self.backlog_events
        oldest_ms = self._log.first_received_at(self.offset) if backlog > 0 else None
        oldest_age = max(0.0, time.time() - oldest_ms / 1000) if oldest_ms is not None else 0.0
        failing_for = now - self._failing_since if self._failing_since is not None else 0.0
        idle_for = now - self._last_progress if oldest_ms is not None else 0.0
        stalled = (not self.running or self.terminal_error is not None or failing_for >= self._stall_after_s
                   or min(idle_for, oldest_age) >= self._stall_after_s)
        return RunnerStatus(running=self.running, offset=self.offset, backlog_events=backlog,
                            last_error=self.last_error, consecutive_failures=self.consecutive_failures,
                            failing_for_s=failing_for, oldest_unprocessed_age_s=oldest_age, stalled=stalled,
                            isolated_records=self.isolated_records, terminal_error=self.terminal_error)

    # -- one batch at a time, in the calling thread -----------------------------
    def step(self) -> int:
        """Process one batch; return how many events it held (0 when the log is drained).

        A batch that fails is isolated at once (this is the synchronous path: tests and tools)."""
        records = self._log.read(self.offset, self._batch_events)
        if not records:
            return 0
        try:
            return self._commit(prepare_batch(records, now_ms=_now_ms(), config_version=self._config_version,
                                              pseudonyms=self._own_pseudonyms()))
        except Exception as exc:
            if self._is_infrastructure_fault(exc) or isinstance(exc, TerminalFault):
                raise
            return self._isolate(records, _InlineCalls(self._pseudonyms))

    def _own_pseudonyms(self) -> Pseudonymiser | None:
        """This process's pseudonymiser (raises PseudonymsUnavailable, a fault, when the vault cannot open)."""
        return self._pseudonyms.get() if self._pseudonyms is not None else None

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
        self._remember_committed_keys()  # a previous batch's, if telling the state failed: before this dedup
        outcome = finish_batch(prepared, self.mid_state, self.request_state)
        stored_at = time.perf_counter()
        phases["dedup"] += stored_at - started
        now = _now_ms()
        try:
            self._store.write_batch(outcome, failed_at_ms=now)
        except Exception as exc:
            if self._is_infrastructure_fault(exc) or isinstance(exc, TerminalFault):
                raise
            raise _StoreRefused(exc) from exc
        self.offset = outcome.last_offset  # committed: whatever fails from here, this batch is not written again
        with self._backlog_lock:
            self.backlog_events -= outcome.events_in
        committed_at = time.perf_counter()
        phases["store"] += committed_at - stored_at
        # Only now: the state never holds a key whose event is not stored. If telling it fails (a state
        # fault, retried), the keys wait and go in before the next batch is deduplicated.
        self._unremembered = [(self.mid_state, outcome.stored_mids, now),
                              (self.request_state, outcome.new_request_keys, now)]
        self._remember_committed_keys()
        self._log.commit(CONSUMER, self.offset)
        phases["commit_log"] += time.perf_counter() - committed_at
        self.batches += 1
        self._last_progress = time.monotonic()
        return outcome.events_in

    def _remember_committed_keys(self) -> None:
        while self._unremembered:
            state, keys, at_ms = self._unremembered[0]
            state.add(keys, at_ms)
            self._unremembered.pop(0)

    # -- failures ---------------------------------------------------------------
    def _is_infrastructure_fault(self, exc: BaseException) -> bool:
        """Faults of the disk, the log or the store's engine: retried for as long as they last, never
        blamed on the input. Everything else (including a store refusing a batch) may be the input's."""
        return isinstance(exc, self._infrastructure_faults)

    def _record_failure(self, exc: BaseException) -> None:
        self.last_error = describe_failure(exc.cause if isinstance(exc, _StoreRefused) else exc)
        self.consecutive_failures += 1
        if self._failing_since is None:
            self._failing_since = time.monotonic()

    def _record_success(self) -> None:
        self.last_error = None
        self.consecutive_failures = 0
        self._failing_since = None

    def _blames_input(self, exc: BaseException) -> bool:
        """Count an input-suspect failure at the current offset; True once it has repeated enough."""
        if self._is_infrastructure_fault(exc):
            return False
        if self._suspect_offset != self.offset:
            self._suspect_offset, self._suspect_failures = self.offset, 0
        self._suspect_failures += 1
        return self._suspect_failures >= POISON_ATTEMPTS

    def _isolate(self, records: list[LogRecord], calls) -> int:
        """Commit a failing batch record by record; each record takes the first way that works."""
        log.warning("isolating log records %d..%d after repeated failures", records[0].offset, records[-1].offset)
        total = 0
        for record in records:
            total += self._commit_isolated(record, calls)
        return total

    def _commit_isolated(self, record: LogRecord, calls) -> int:
        now = _now_ms()
        version = self._config_version
        attempts = (
            lambda: calls.run(prepare_batch, [record], now_ms=now, config_version=version),
            lambda: calls.run(prepare_isolated, record, now_ms=now, config_version=version, prepare=prepare_batch),
        )
        failure: Exception | None = None
        for attempt in attempts:
            try:
                return self._commit(attempt())
            except Exception as exc:
                if self._is_infrastructure_fault(exc) or isinstance(exc, TerminalFault):
                    raise
                if failure is None:
                    self.isolated_records += 1  # this record could not be processed whole
                failure = exc
        assert failure is not None
        if isinstance(failure, _StoreRefused):
            code, stage = ErrorCode.STORE_REJECTED, STORE_STAGE
        else:
            code, stage = ErrorCode.PIPELINE_POISON, CORE_STAGE
        message = f"every attempt to process this request failed: {describe_failure(failure)}"
        log.error("quarantining log record %d (%d events, %s): %s", record.offset, record.event_count, code, message)
        return self._commit(quarantine_record(record, code, stage, message, self._own_pseudonyms()))

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
        pool = CorePool(self._workers, self._pseudonyms)
        self._core_pool = pool
        calls = _PoolCalls(pool, self._batch_timeout_s)
        inflight: deque[tuple[Future, list[LogRecord]]] = deque()
        next_after = self.offset
        backoff = 0.05
        try:
            while not self._stop.is_set():
                batch: list[LogRecord] | None = None  # the records of the batch being prepared or committed
                try:
                    started = time.perf_counter()
                    while len(inflight) < pool.depth:
                        records = self._log.read(next_after, self._batch_events)
                        if not records:
                            break
                        future = pool.submit(prepare_batch, records, now_ms=_now_ms(),
                                             config_version=self._config_version)
                        inflight.append((future, records))
                        next_after = records[-1].offset
                    waiting_at = time.perf_counter()
                    self.phase_seconds["read_log"] += waiting_at - started
                    if not inflight:
                        self._wake.wait(self._idle_wait_s)
                        self._wake.clear()
                        continue
                    future, batch = inflight[0]
                    prepared = calls.result(future)
                    inflight.popleft()
                    self.phase_seconds["wait_prepare"] += time.perf_counter() - waiting_at
                    self._commit(prepared)
                    self._truncate_if_due()
                    self._record_success()
                    backoff = 0.05
                except TerminalFault:
                    raise  # out of the loop: see below
                except Exception as exc:  # nothing of a failed batch is committed: start again from the store
                    self._record_failure(exc)
                    for future, _ in inflight:
                        future.cancel()
                    inflight.clear()
                    next_after = self.offset
                    if isinstance(exc, (BrokenExecutor, FutureTimeout)):
                        pool.restart()
                    if batch and batch[0].offset > self.offset and self._blames_input(exc):
                        try:
                            self._isolate(batch, calls)
                            next_after = self.offset
                            self._record_success()
                            backoff = 0.05
                            continue
                        except TerminalFault:
                            raise
                        except Exception as isolation_exc:
                            self._record_failure(isolation_exc)
                            exc = isolation_exc
                            next_after = self.offset  # what isolation committed before it failed stays done
                    log.error("pipeline batch after offset %d failed (%s); retrying in %.2fs",
                              self.offset, self.last_error, backoff, exc_info=self.consecutive_failures == 1)
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, 5.0)
        except TerminalFault as exc:
            self._record_failure(exc)
            self.terminal_error = describe_failure(exc)
            log.critical("pipeline stopped at offset %d: %s. Nothing after it is processed until this is fixed "
                         "and the server restarted; acknowledged events stay in the ingest log",
                         self.offset, self.terminal_error, exc_info=True)
        finally:
            self._core_pool = None
            pool.close()

    def submit_beside(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Run a module-level function on the pipeline's workers, queued beside its batches: CPU work the server
        process must not do under its interpreter lock, where it would delay every acknowledgement (the workflow
        summaries). Inline (in the calling thread) while the pipeline is not running or runs without workers. If
        the pool is restarted meanwhile the future fails, and the caller tries again later."""
        pool = self._core_pool
        if pool is None or not pool.workers:
            return completed_future(fn, *args)
        return pool.submit(fn, *args)

    def _truncate_if_due(self) -> None:
        now = time.time()
        if now - self._last_truncate < TRUNCATE_EVERY_S:
            return
        self._last_truncate = now
        self._log.truncate(CONSUMER, int((now - self._retention_s) * 1000))


class _InlineCalls:
    def __init__(self, pseudonyms: LazyPseudonymiser | None):
        self._pseudonyms = pseudonyms

    def run(self, fn, *args, **kwargs) -> PreparedBatch:
        if self._pseudonyms is not None:
            kwargs["pseudonyms"] = self._pseudonyms.get()
        return fn(*args, **kwargs)


class _PoolCalls:
    """Core calls on the pool, with a time bound: a worker hung on an input is killed and replaced."""

    def __init__(self, pool: CorePool, timeout_s: float):
        self._pool = pool
        self._timeout_s = timeout_s

    def result(self, future: Future) -> PreparedBatch:
        return future.result(timeout=self._timeout_s)

    def run(self, fn, *args, **kwargs) -> PreparedBatch:
        try:
            return self.result(self._pool.submit(fn, *args, **kwargs))
        except (BrokenExecutor, FutureTimeout):
            self._pool.restart()
            raise


def _now_ms() -> int:
    return int(time.time() * 1000)
