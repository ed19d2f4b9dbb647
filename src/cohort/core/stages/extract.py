"""Extract: turn acknowledged log records (raw batch envelopes) into individual events.

The API already checked each envelope, so a record that no longer parses means
corruption on disk; it is quarantined whole rather than skipped.
"""

from __future__ import annotations

import orjson

from cohort.core.errors import ErrorCode
from cohort.core.json_text import without_bom
from cohort.core.log_record import LogRecord
from cohort.core.original_payload import events_in, original_event_text
from cohort.core.work_item import FailedEvent, WorkItem

STAGE = "extract"


def extract(records: list[LogRecord]) -> tuple[list[WorkItem], list[FailedEvent]]:
    items: list[WorkItem] = []
    failed: list[FailedEvent] = []
    for record in records:
        events = _events_of(record)
        if events is None or len(events) != record.event_count:
            # Corruption, or the API counted differently from what the pipeline reads: quarantine
            # the record whole, counted as the API counted it, rather than guess or stall.
            found = ("does not hold a telemetry batch (corrupt payload)" if events is None
                     else f"holds {len(events)} events")
            failed.append(FailedEvent(
                code=ErrorCode.EXTRACT_PAYLOAD, stage=STAGE,
                message=f"log record {found}, {record.event_count} were acknowledged",
                payload=record.payload.decode("utf-8", "replace"), log_offset=record.offset,
                source=record.source, event_count=record.event_count,
            ))
            continue
        for index, event in enumerate(events):
            if isinstance(event, dict):
                items.append(WorkItem(event=event, record=record, index=index))
            else:
                failed.append(FailedEvent(
                    code=ErrorCode.EXTRACT_NOT_OBJECT, stage=STAGE,
                    message=f"event must be a JSON object, got {type(event).__name__}",
                    payload=original_event_text(record, index, event),
                    log_offset=record.offset, source=record.source,
                ))
    return items, failed


def _events_of(record: LogRecord) -> list | None:
    """The record's events, read as the API read them (a leading BOM ignored: records acked before the API
    stripped it still hold one)."""
    try:
        return events_in(orjson.loads(without_bom(record.payload)))
    except orjson.JSONDecodeError:
        return None
