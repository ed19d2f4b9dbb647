"""Batch dedup: a request retried with the same `params.msgid` adds nothing the second time.

Sunbird clients resend a whole batch when they did not hear the acknowledgement. Event dedup
(on `mid`) already keeps valid events from being stored twice, but a retried batch's invalid
events would be quarantined again and the operator would see each failure twice. So a request
whose msgid was committed within the dedup period is dropped whole: its events are counted as
duplicates, nothing of it is stored or quarantined again, and the ledger stays exact.

The key is the msgid within the request's channel (`X-Channel-Id`): one tenant's msgids can
never make another tenant's requests look retried. Requests without a msgid are never
batch-deduplicated (their events still are, one by one). Pure: the state is asked, not held.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

from cohort.core.log_record import LogRecord

STAGE = "batch_dedup"


class SeenKeys(Protocol):
    def seen(self, keys: Sequence[str]) -> set[str]:
        """Which of these keys were committed within the period."""


@dataclass(frozen=True, slots=True)
class RequestKey:
    """One log record (request) of a batch, as batch dedup needs it."""

    offset: int
    event_count: int
    key: str | None  # None: the request had no msgid


def request_keys(records: list[LogRecord]) -> list[RequestKey]:
    return [RequestKey(r.offset, r.event_count, batch_key(r)) for r in records]


def batch_key(record: LogRecord) -> str | None:
    msgid = record.headers.get("msgid")
    if not msgid:
        return None
    return f"{record.headers.get('x-channel-id', '')}/{msgid}"


def duplicate_requests(requests: list[RequestKey], state: SeenKeys | None) -> list[RequestKey]:
    """Requests whose key was committed before, or appears earlier in this batch (the first one wins)."""
    keyed = [r for r in requests if r.key is not None]
    if not keyed:
        return []
    already = state.seen([r.key for r in keyed if r.key is not None]) if state is not None else set()
    first_in_batch: set[str] = set()
    duplicates = []
    for request in keyed:
        assert request.key is not None
        if request.key in already or request.key in first_in_batch:
            duplicates.append(request)
        else:
            first_in_batch.add(request.key)
    return duplicates
