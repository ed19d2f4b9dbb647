"""The durable ingest log: what an acknowledgement promises is written here first.

Embedded deployments use SQLite (``SqliteLog``); scale-out ones a Kafka topic. The core
contracts are small and shaped like a partitioned log, so both fit: ``LogWriter`` (what
the ingest API needs) and ``LogConsumer`` (what a pipeline worker needs). ``Log`` is the
embedded log's fuller interface (one partition, event-counted backlog, retention,
rewinding after a lost log), which only the embedded runner relies on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from cohort.core.errors import TransientFault
from cohort.core.log_record import LogRecord


class LogUnavailable(TransientFault):
    """The log could not make a record durable: the client must not be acked."""


@dataclass(frozen=True, slots=True)
class LogStats:
    received_events: int
    received_records: int
    last_offset: int
    events_after: int  # events in records after the offset asked about: a consumer's backlog


class LogWriter(Protocol):
    def append_many(self, records: list[LogRecord]) -> list[int]:
        """Make records durable (one round trip for all: an fsync, or the broker's acks=all delivery
        reports) and return their offsets, in order. Raise LogUnavailable when any is not durable."""

    def close(self) -> None: ...


class LogConsumer(Protocol):
    """One member of a consumer group: records of the partitions it holds, and how far it got.

    Offsets are per partition; a record read has `partition` and `offset` set. `commit` is called
    only after what the records produced is safely stored downstream (store first, then offset)."""

    def poll(self, max_events: int, timeout_s: float) -> list[LogRecord]:
        """The next records of this member's partitions (in order within each partition), up to about
        `max_events` events; an empty list when none arrived within `timeout_s`."""

    def seek(self, partition: int, offset: int) -> None:
        """Make the next poll of `partition` start after `offset` (to replay after a failed batch)."""

    def commit(self, positions: dict[int, int]) -> None:
        """Remember, durably, that records up to `positions[partition]` are processed."""

    def committed(self) -> dict[int, int]:
        """The last committed offset of each partition this member holds (-1: none committed yet)."""

    def lag(self) -> dict[int, int]:
        """Records (messages) not yet committed, per partition this member holds."""

    def close(self) -> None: ...


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
