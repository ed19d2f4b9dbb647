"""The embedded footprint: one data directory holding the ingest log and the store,
and the runner that moves events from one to the other, all in one process."""

from __future__ import annotations

from cohort.ingest.group_commit import GroupCommitter
from cohort.ingest.sqlite_log import SqliteLog
from cohort.pipeline.data_dir_lock import DataDirLock
from cohort.pipeline.runner import PipelineRunner
from cohort.settings import Settings
from cohort.store.duckdb_store import DuckDbStore


class EmbeddedNode:
    def __init__(self, settings: Settings):
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock = DataDirLock(settings.data_dir)
        self._lock.acquire()
        self.log = SqliteLog(settings.log_path)
        self.store = DuckDbStore(settings.store_path, memory_limit=settings.store_memory_limit,
                                 checkpoint_threshold=settings.store_checkpoint_threshold,
                                 engine_niceness=settings.query_niceness)
        self.committer = GroupCommitter(self.log, max_records=settings.group_commit_max_records)
        self.runner = PipelineRunner(
            self.log, self.store,
            batch_events=settings.pipeline_batch_events,
            dedup_period_s=settings.dedup_period_days * 86400,
            retention_s=settings.log_retention_hours * 3600,
            idle_wait_s=settings.pipeline_idle_wait_seconds,
            workers=settings.pipeline_workers,
            dedup_max_mids=settings.dedup_max_mids,
            stall_after_s=settings.pipeline_stall_seconds,
            batch_timeout_s=settings.pipeline_batch_timeout_seconds,
        )

    @property
    def backlog_events(self) -> int:
        """Events acknowledged or being made durable but not yet processed: what backpressure bounds."""
        return self.runner.backlog_events + self.committer.pending_events

    def start(self) -> None:
        self.runner.start()

    def close(self) -> None:
        self.committer.close()
        self.runner.stop()
        self.store.close()
        self.log.close()
        self._lock.release()
