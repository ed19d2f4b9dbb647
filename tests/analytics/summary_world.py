"""Sunbird's summariser test data written into a real store as stored rows: the events as the summariser's file
mode reads them (some do not pass the strict schema the pipeline checks, so they go in past validation, shaped
by the pipeline's own route stage), for the workflow_summaries tests."""

from __future__ import annotations

import time
from pathlib import Path

import orjson

from cohort.analytics.workflow_events import unwrap
from cohort.core.log_record import LogRecord
from cohort.core.process_batch import BatchOutcome
from cohort.core.stages.extract import extract
from cohort.core.stages.route import ingest_batch_rows, route
import pyarrow as pa
from cohort.core.stages.route import TELEMETRY_SCHEMA

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sunbird" / "workflow-summary"


def fixture_events(name: str) -> list[dict]:
    """The file's events that a store can hold (an eid, a channel, a context and an actor; a mid given
    where it had none: the summariser reads none of these but the eid)."""
    out = []
    for number, line in enumerate((FIXTURES / name).read_bytes().splitlines()):
        for at, event in enumerate(unwrap(orjson.loads(line))):
            if not isinstance(event, dict) or not isinstance(event.get("eid"), str):
                continue
            context = event.get("context")
            if not isinstance(context, dict) or not isinstance(context.get("channel"), str):
                continue
            out.append({**event, "mid": event.get("mid") or f"{name}:{number}:{at}",
                        "actor": event.get("actor") if isinstance(event.get("actor"), dict) else {}})
    return out


def store_events(store, events: list[dict], offset: int, received_ms: int | None = None) -> int:
    """`events` stored as one batch (log record `offset`), shaped by the route stage; the rows stored."""
    now_ms = received_ms if received_ms is not None else int(time.time() * 1000)
    record = LogRecord(payload=orjson.dumps({"events": events}), event_count=len(events), offset=offset,
                       received_at_ms=now_ms)
    items, failed = extract([record])
    assert not failed
    columns, misrouted = route(items, lambda item: "{}")
    assert not misrouted, misrouted
    rows = pa.Table.from_pydict(columns, schema=TELEMETRY_SCHEMA)
    outcome = BatchOutcome(rows=rows, failed=[], duplicates=0, events_in=len(events), first_offset=offset,
                           last_offset=offset, requests=ingest_batch_rows([record]))
    store.write_batch(outcome, failed_at_ms=now_ms, token=f"wfs-{offset}")
    return rows.num_rows
