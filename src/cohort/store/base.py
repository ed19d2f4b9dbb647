"""The analytical store contract: DuckDB embedded, ClickHouse scale-out.

`write_batch` is one atomic commit of a batch's stored rows, quarantined events,
counters and the last log offset it covers. Keeping the offset inside the store's
own transaction is what makes a crash replay exact: after a restart the runner
resumes after the store's offset, so nothing is written or counted twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol

from cohort.core.process_batch import BatchOutcome


@dataclass(frozen=True, slots=True)
class StoreCounts:
    stored: int
    failed: int
    duplicate: int
    last_offset: int
    failed_by_stage: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]  # values ready for JSON (see cohort.store.query_results)
    truncated: bool
    truncated_by: str | None = None  # "rows" or "bytes": which bound cut the result short
    json_bytes: int = 0  # size of the rows as a JSON array of objects


class QueryTimeout(Exception):
    """The query ran past its time limit and was interrupted."""


class Store(Protocol):
    # Exceptions that mean the store's infrastructure failed (disk, memory, connection): the runner
    # retries them for as long as they last. Anything else a write raises may be the batch's fault.
    transient_errors: tuple[type[BaseException], ...]

    def write_batch(self, outcome: BatchOutcome) -> None: ...

    def counts(self) -> StoreCounts: ...

    def mids_since(self, since_ms: int, limit: int | None = None) -> Iterator[str]:
        """Mids of events ingested since the cut-off, oldest first (at most the newest `limit`):
        the dedup window to reload after a restart."""

    def query(self, sql: str, params: dict[str, Any] | None, row_limit: int, timeout_s: float,
              max_result_bytes: int | None = None, max_memory_bytes: int | None = None) -> QueryResult:
        """One read-only query within its bounds; engine errors raise CohortError, not the engine's own."""

    def close(self) -> None: ...
