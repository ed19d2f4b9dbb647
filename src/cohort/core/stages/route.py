"""Route: decide where each event lands and shape it into the columns of its table.

Today every valid, unique telemetry event goes to `telemetry`; an `ets` that
cannot be a real time is quarantined instead of being stored with a wrong date.
Columns are built as lists (column-major) so the store can insert them as one
Arrow table.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
import pyarrow as pa

from cohort.core.errors import ErrorCode
from cohort.core.log_record import LogRecord
from cohort.core.work_item import FailedEvent, WorkItem, describe_failure, failed_from_item

STAGE = "route"
# 2000-01-01 .. 2100-01-01 in ms: outside this an ets is a client bug, not a time.
MIN_ETS_MS = 946_684_800_000
MAX_ETS_MS = 4_102_444_800_000

TELEMETRY_COLUMNS = (
    "eid", "ets", "mid", "actor_id", "actor_type", "channel", "pdata_id", "pdata_pid", "pdata_ver",
    "env", "sid", "did", "object_id", "object_type", "object_ver", "rollup", "edata", "event",
    "trace", "ingested_at", "log_offset",
)
_TIMESTAMPS = ("ets", "ingested_at")
# JSON columns travel as text; the store declares them JSON.
TELEMETRY_SCHEMA = pa.schema([
    (name, pa.timestamp("ms") if name in _TIMESTAMPS else pa.int64() if name == "log_offset" else pa.string())
    for name in TELEMETRY_COLUMNS
])


# One row per acknowledged request: what the client sent once (msgid, kept headers) is stored once,
# and each event's row reaches it through `log_offset`.
INGEST_BATCH_SCHEMA = pa.schema([
    ("log_offset", pa.int64()), ("received_at", pa.timestamp("ms")), ("source", pa.string()),
    ("msgid", pa.string()), ("headers", pa.string()), ("event_count", pa.int32()),
])


def ingest_batch_rows(records: list[LogRecord]) -> pa.Table:
    """The `ingest_batches` rows of these log records."""
    headers = [{k: v for k, v in r.headers.items() if k != "msgid"} for r in records]
    return pa.Table.from_pydict({
        "log_offset": [r.offset for r in records],
        "received_at": [r.received_at_ms for r in records],
        "source": [r.source for r in records],
        "msgid": [r.headers.get("msgid") for r in records],
        "headers": [orjson.dumps(h).decode() for h in headers],
        "event_count": [r.event_count for r in records],
    }, schema=INGEST_BATCH_SCHEMA)


def route(items: list[WorkItem], trace_of) -> tuple[dict[str, list[Any]], list[FailedEvent]]:
    """Build the `telemetry` columns; `trace_of(item)` gives the processing trace to attach.

    An event that cannot be shaped (nested deeper than the JSON writer goes, or anything else
    unexpected) is quarantined alone: the columns are cut back to where they were before it.
    """
    columns: dict[str, list[Any]] = {name: [] for name in TELEMETRY_COLUMNS}
    all_columns = tuple(columns.values())
    failed: list[FailedEvent] = []
    for item in items:
        ets = item.event["ets"]
        if not (isinstance(ets, (int, float)) and math.isfinite(ets) and MIN_ETS_MS <= ets < MAX_ETS_MS):
            failed.append(failed_from_item(item, ErrorCode.ROUTE_TIMESTAMP, STAGE,
                                           f"ets {ets!r} is not a time in milliseconds between 2000 and 2100"))
            continue
        try:
            _append_row(columns, item, int(ets), trace_of)
        except Exception as exc:
            kept = len(columns["log_offset"])
            for column in all_columns:
                del column[kept:]
            failed.append(_unshapeable(item, exc))
    return columns, failed


def _append_row(columns: dict[str, list[Any]], item: WorkItem, ets: int, trace_of) -> None:
    """Append one event's values; `log_offset` goes last, so its length counts the complete rows."""
    dumps = orjson.dumps
    event = item.event
    actor = event["actor"]
    context = event["context"]
    pdata = context.get("pdata") or {}
    obj = event.get("object") or {}
    columns["eid"].append(event["eid"])
    columns["ets"].append(ets)
    columns["mid"].append(event["mid"])
    columns["actor_id"].append(actor.get("id"))
    columns["actor_type"].append(actor.get("type"))
    columns["channel"].append(context.get("channel"))
    columns["pdata_id"].append(pdata.get("id"))
    columns["pdata_pid"].append(pdata.get("pid"))
    columns["pdata_ver"].append(pdata.get("ver"))
    columns["env"].append(context.get("env"))
    columns["sid"].append(context.get("sid"))
    columns["did"].append(context.get("did"))
    columns["object_id"].append(obj.get("id"))
    columns["object_type"].append(obj.get("type"))
    columns["object_ver"].append(_text(obj.get("ver")))
    rollup = obj.get("rollup")
    columns["rollup"].append(dumps(rollup).decode() if rollup else None)
    columns["edata"].append(dumps(event.get("edata")).decode())
    columns["event"].append(dumps(event).decode())
    columns["trace"].append(trace_of(item))
    columns["ingested_at"].append(item.record.received_at_ms)
    columns["log_offset"].append(item.record.offset)


def _unshapeable(item: WorkItem, exc: Exception) -> FailedEvent:
    if isinstance(exc, orjson.JSONEncodeError) and "recursion" in str(exc).lower():
        return failed_from_item(item, ErrorCode.EVENT_TOO_DEEP, STAGE,
                                "event is nested deeper than 254 levels, more than the store keeps")
    return failed_from_item(item, ErrorCode.PIPELINE_POISON, STAGE, describe_failure(exc))


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
