"""The unit the pipeline stages pass along, and what they produce."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from cohort.core.errors import ErrorCode, first_line
from cohort.core.log_record import LogRecord
from cohort.core.original_payload import original_event_text


@dataclass(slots=True)
class WorkItem:
    """One event on its way through the stages, with the log record it came in."""

    event: dict[str, Any]
    record: LogRecord
    index: int = 0  # position among the record's events: finds the original text again
    schema: str | None = None


@dataclass(frozen=True, slots=True)
class FailedEvent:
    """A quarantined event: why (code, stage, message) and the original payload, verbatim."""

    code: ErrorCode
    stage: str
    message: str
    payload: str
    log_offset: int
    source: str
    mid: str | None = None
    eid: str | None = None
    channel: str | None = None
    event_count: int = 1


def failed_from_item(item: WorkItem, code: ErrorCode, stage: str, message: str) -> FailedEvent:
    event = item.event
    context = event.get("context")
    channel = context.get("channel") if isinstance(context, dict) else None
    return FailedEvent(
        code=code,
        stage=stage,
        message=message,
        payload=original_event_text(item.record, item.index, event),
        log_offset=item.record.offset,
        source=item.record.source,
        mid=_as_text(event.get("mid")),
        eid=_as_text(event.get("eid")),
        channel=_as_text(channel),
    )


def describe_failure(exc: BaseException) -> str:
    """What a quarantine row says about an unexpected exception: its type and first line, bounded."""
    return f"{type(exc).__name__}: {first_line(exc)}"[:500] if str(exc) else type(exc).__name__


def _as_text(value: Any) -> str | None:
    """An id column's text: strings as sent, anything else as (at most 200 characters of) JSON."""
    if value is None or isinstance(value, str):
        return value
    try:
        return orjson.dumps(value).decode()[:200]
    except (TypeError, orjson.JSONEncodeError):
        return type(value).__name__

