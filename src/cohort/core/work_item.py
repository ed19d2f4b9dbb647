"""The unit the pipeline stages pass along, and what they produce."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from cohort.core.errors import ErrorCode
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
        payload=original_event_text(item.record, item.index) or orjson.dumps(event).decode(),
        log_offset=item.record.offset,
        source=item.record.source,
        mid=_as_text(event.get("mid")),
        eid=_as_text(event.get("eid")),
        channel=_as_text(channel),
    )


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else orjson.dumps(value).decode()

