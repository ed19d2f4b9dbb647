"""The durable ingest log: what an acknowledgement promises is written here first.

Embedded deployments use SQLite (``SqliteLog``); scale-out ones a Kafka topic.
Both offer the same small contract so the API and the pipeline runner do not care.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from cohort.core.log_record import LogRecord


class LogUnavailable(Exception):
    """The log could not make a record durable: the client must not be acked."""


@dataclass(frozen=True, slots=True)
class LogStats:
    received_events: int
    received_records: int
    last_offset: int
    events_after: int  # events in records after the offset asked about: a consumer's backlog


class Log(Protocol):
    def append_many(self, records: list[LogRecord]) -> list[int]:
        """Make records durable (one fsync for all) and return their offsets, in order."""

    def read(self, after: int, max_events: int) -> list[LogRecord]:
        """Records with offset > after, in order, up to about max_events events (at least one record)."""

    def commit(self, consumer: str, offset: int) -> None:
        """Remember that `consumer` has processed everything up to `offset`."""

    def committed(self, consumer: str) -> int:
        """The last committed offset of `consumer` (0 when it never committed)."""

    def first_received_at(self, after: int) -> int | None:
        """When the first record after `after` was received (ms), or None: the age of a consumer's lag."""

    def advance_to(self, offset: int) -> None:
        """Make the next appended offset greater than `offset` (after a log was lost or recreated)."""

    def truncate(self, consumer: str, older_than_ms: int) -> int:
        """Drop records the consumer has committed and that are older than the cut-off."""

    def stats(self, after: int = 0) -> LogStats:
        """Totals and the backlog after `after`, read from one consistent snapshot."""

    def close(self) -> None: ...
