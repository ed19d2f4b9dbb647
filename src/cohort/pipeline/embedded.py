"""The embedded footprint: one data directory holding the ingest log, the store, the dedup
indexes and the identity vault, and the runner that moves events from the log to the store
(pseudonymising them on the way), all in one process."""

from __future__ import annotations

import logging
import time
from typing import Callable

from cohort.analytics.rollup_refresh import RollupRefresher, RollupRefreshThread
from cohort.core.errors import first_line
from cohort.core.log_record import LogRecord
from cohort.ingest.group_commit import GroupCommitter
from cohort.ingest.sqlite_log import SqliteLog
from cohort.pipeline.data_dir_lock import DataDirLock
from cohort.pipeline.embedded_dedup import open_dedup_states
from cohort.pipeline.node_status import Ledger, NodeStatus
from cohort.pipeline.pseudonymisation import LazyPseudonymiser, PseudonymiserSource
from cohort.pipeline.runner import CONSUMER, PipelineRunner
from cohort.security.secrets import load_or_create_secrets
from cohort.settings import Settings
from cohort.state.dedup_state import DedupState
from cohort.store.duckdb_store import DuckDbStore

log = logging.getLogger("cohort.node")


class EmbeddedNode:
    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time):
        """`clock`: what the dedup indexes measure their period by (tests move it forward)."""
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock = DataDirLock(settings.data_dir)
        self._lock.acquire()
        try:
            # The keys before any pipeline worker starts (workers never race to create them), the vault
            # opened now: a vault made with other keys, or bad field settings, stop the start.
            self.pseudonyms = LazyPseudonymiser(PseudonymiserSource(settings, load_or_create_secrets(settings)))
            self.pseudonyms.open_now()
        except BaseException:
            self._lock.release()
            raise
        self.log = SqliteLog(settings.log_path)
        self.store = DuckDbStore(settings.store_path, memory_limit=settings.store_memory_limit,
                                 checkpoint_threshold=settings.store_checkpoint_threshold,
                                 engine_niceness=settings.query_niceness)
        try:  # may rebuild an index from the store; refuses a foreign or corrupt one (ERR_DEDUP_INDEX)
            dedup = open_dedup_states(self.store, settings.dedup_period_days * 86400,
                                      mid_path=settings.dedup_mid_path, msgid_path=settings.dedup_msgid_path,
                                      cache_bytes=settings.dedup_index_cache_mb << 20, clock=clock)
        except BaseException:
            self.store.close()
            self.log.close()
            self.pseudonyms.close()
            self._lock.release()
            raise
        self.committer = GroupCommitter(self.log, max_records=settings.group_commit_max_records)
        self.runner = PipelineRunner(
            self.log, self.store, **dedup,
            batch_events=settings.pipeline_batch_events,
            retention_s=settings.log_retention_hours * 3600,
            idle_wait_s=settings.pipeline_idle_wait_seconds,
            workers=settings.pipeline_workers,
            stall_after_s=settings.pipeline_stall_seconds,
            batch_timeout_s=settings.pipeline_batch_timeout_seconds,
            pseudonyms=self.pseudonyms,
        )
        # the rollups follow the store every few seconds (metrics read slices not refreshed yet from telemetry)
        self.rollups = RollupRefreshThread(RollupRefresher(self.store, submit=self.runner.submit_beside),
                                           settings.rollup_refresh_seconds,
                                           settings.rollup_max_busy_share)

    @property
    def backlog_events(self) -> int:
        """Events acknowledged or being made durable but not yet processed: what backpressure bounds."""
        return self.runner.backlog_events + self.committer.pending_events

    async def append(self, record: LogRecord) -> None:
        """Make an acknowledged request durable (raises LogUnavailable when it is not) and wake the pipeline."""
        await self.committer.append(record)
        self.runner.acked(record.event_count)

    # -- what a forget needs (cohort.pipeline.forget) ------------------------------------------------
    @property
    def mid_dedup(self) -> DedupState:
        return self.runner.mid_state

    def acked_mark(self) -> int:
        """The log's last offset: every acknowledged request is at or below it."""
        return self.log.stats().last_offset

    def processed_through(self, mark: int) -> bool:
        """The pipeline commits its log position after the store's commit and after the dedup state took the
        batch's mids: at or past `mark`, every event acknowledged by then is stored and its mid held."""
        return self.log.committed(CONSUMER) >= mark

    def status(self) -> NodeStatus:
        """The snapshot /health and /metrics read. Reads the store and the log: call it off the event loop."""
        runner = self.runner.status()
        ledger, store_error, pipeline_offset = None, None, runner.offset
        log_stats = self.log.stats()
        try:
            counts = self.store.counts()  # store first, then the log after its offset: one consistent ledger
        except Exception as exc:  # e.g. queries hold all of the engine's memory: say so, never fail the caller
            store_error = first_line(exc)
            log.warning("the store's counters cannot be read right now: %s", store_error)
        else:
            pipeline_offset = counts.last_offset
            log_stats = self.log.stats(after=counts.last_offset)
            ledger = Ledger(received=log_stats.received_events, stored=counts.stored, failed=counts.failed,
                            duplicate=counts.duplicate, in_flight=log_stats.events_after,
                            failed_by_stage=counts.failed_by_stage, duplicate_requests=counts.duplicate_requests,
                            received_requests=log_stats.received_records)
        return NodeStatus(footprint="embedded", runner=runner, backlog_events=self.backlog_events, ledger=ledger,
                          store_error=store_error, log_offset=log_stats.last_offset, pipeline_offset=pipeline_offset,
                          phase_seconds=dict(self.runner.phase_seconds),
                          dedup_reach_s={"mid": self.runner.mid_state.reach_seconds(),
                                         "msgid": self.runner.request_state.reach_seconds()})

    def start(self) -> None:
        self.runner.start()
        self.rollups.start()

    def close(self) -> None:
        self.committer.close()
        self.runner.stop()
        self.rollups.stop()
        self.runner.mid_state.close()
        self.runner.request_state.close()
        self.pseudonyms.close()
        self.store.close()
        self.log.close()
        self._lock.release()
