"""The analytical store contract: DuckDB embedded, ClickHouse scale-out.

Stores differ in what a write guarantees, and say so in `capabilities` instead of the
runner assuming the first backend. DuckDB commits a batch's rows, quarantined events,
counters and the last log offset in one transaction (`atomic_offset`): after a restart
the runner resumes after the store's offset and nothing is written or counted twice.
ClickHouse cannot; it makes a write idempotent instead (`idempotent_insert`): the same
batch written again with the same token is stored once, so a replay is harmless.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol

import pyarrow as pa

from cohort.core.process_batch import BatchOutcome


@dataclass(frozen=True, slots=True)
class StoreCounts:
    stored: int
    failed: int
    duplicate: int
    last_offset: int  # the embedded log's (one partition): where the runner resumes
    failed_by_stage: dict[str, int] = field(default_factory=dict)
    # the last stored log offset of each partition (the embedded store: {0: last_offset}); a writer that
    # replays a partition skips records at or below it
    positions: dict[int, int] = field(default_factory=dict)
    duplicate_requests: int = 0  # requests dropped whole as retries (batch dedup on msgid); events in `duplicate`


@dataclass(frozen=True, slots=True)
class ForgetCounts:
    """What `forget_rows` deleted. The counters (`StoreCounts`) are not changed by it: they count what the
    pipeline did with each event when it processed it (`received = stored + failed + duplicate + in
    flight` keeps holding), not the rows held now; what was deleted is recorded in the audit log."""

    telemetry: int  # rows deleted from telemetry
    failed: int  # quarantined rows deleted from failed_events
    mids: list[str] = field(default_factory=list)  # the mids of the deleted rows (for the dedup state)


@dataclass(frozen=True, slots=True)
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]  # values ready for JSON (see cohort.store.query_results)
    truncated: bool
    truncated_by: str | None = None  # "rows" or "bytes": which bound cut the result short
    json_bytes: int = 0  # size of the rows as a JSON array of objects


@dataclass(frozen=True, slots=True)
class StoreCapabilities:
    atomic_offset: bool  # rows, quarantine, counters and log offset commit together, or not at all
    idempotent_insert: bool  # a write repeated with the same token is stored once
    sql_dialect: str  # the sqlglot dialect of `query` ("duckdb", "clickhouse"): what the SQL guard parses


class QueryTimeout(Exception):
    """The query ran past its time limit and was interrupted."""


class Store(Protocol):
    # Exceptions that mean the store's infrastructure failed (disk, memory, connection): the runner
    # retries them for as long as they last. Anything else a write raises may be the batch's fault.
    transient_errors: tuple[type[BaseException], ...]
    capabilities: StoreCapabilities

    def write_batch(self, outcome: BatchOutcome, *, failed_at_ms: int, token: str | None = None) -> None:
        """Commit the batch: stored rows, quarantined events (stamped `failed_at_ms`), counters and
        `outcome.last_offset`. With `idempotent_insert`, `token` names the batch: writing it again
        with the same token changes nothing."""

    def counts(self) -> StoreCounts: ...

    def mids_since(self, since_ms: int, limit: int | None = None) -> Iterator[str]:
        """Mids of events ingested since the cut-off, oldest first (at most the newest `limit`):
        the dedup window to reload after a restart."""

    def query(self, sql: str, params: dict[str, Any] | None, row_limit: int, timeout_s: float,
              max_result_bytes: int | None = None, max_memory_bytes: int | None = None) -> QueryResult:
        """One read-only query within its bounds; engine errors raise CohortError, not the engine's own."""

    def learner_mids(self, tenant: str, pseudonym: str) -> list[str]:
        """The mids of the rows `forget_rows` would delete now (read before it, so that a forget that stops
        after deleting the rows can still be finished: the dedup keys go first)."""

    def forget_rows(self, tenant: str, pseudonym: str) -> ForgetCounts:
        """Delete a learner's rows: telemetry rows of channel `tenant` whose actor_id is `pseudonym`, and the
        tenant's quarantined rows whose payload holds it. Deleted rows never come back (a replayed batch
        included); calling it again deletes nothing more."""

    def close(self) -> None: ...

    def stream_rows(self, sql: str, params: dict[str, Any] | None, *, batch_rows: int, timeout_s: float,
                    max_memory_bytes: int | None = None) -> Iterator[pa.RecordBatch]:
        """The rows of one read-only statement built by Cohort (exports, the lake; never a user's SQL), as Arrow
        batches of at most about `batch_rows` rows, read from the engine as they are consumed, so any number
        of rows passes in constant memory. Ends the query when the consumer stops (closing the iterator) or
        after `timeout_s` (QueryTimeout); engine errors raise CohortError (ERR_QUERY_FAILED, ERR_QUERY_MEMORY
        past `max_memory_bytes`)."""
        ...
