"""The rollup_dirty rows a batch writes with its telemetry: one per (tenant, UTC day of ets) it touches, the
slices the refresher recomputes next (analytics/rollup_tables.py).

Why apart from rollup_tables: the SQL checker's process reads the rollups' declaration, and these rows are
built with pyarrow; a process that only parses SQL should not load it.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

MARK_SCHEMA = pa.schema([("tenant", pa.string()), ("day", pa.date32()), ("first_ingested", pa.timestamp("ms")),
                         ("last_ingested", pa.timestamp("ms")), ("mark", pa.string())])


def slice_marks(rows: pa.Table, mark: str) -> pa.Table:
    """The rollup_dirty rows of a batch's telemetry rows: one per (tenant, day of ets) it touches."""
    if not rows.num_rows:
        return MARK_SCHEMA.empty_table()
    days = pc.cast(rows.column("ets"), pa.date32())
    grouped = pa.table({"tenant": rows.column("channel"), "day": days, "at": rows.column("ingested_at")}) \
        .group_by(["tenant", "day"]).aggregate([("at", "min"), ("at", "max")])
    return pa.Table.from_pydict({
        "tenant": grouped.column("tenant"), "day": grouped.column("day"),
        "first_ingested": pc.cast(grouped.column("at_min"), pa.timestamp("ms")),
        "last_ingested": pc.cast(grouped.column("at_max"), pa.timestamp("ms")),
        "mark": [mark] * grouped.num_rows}, schema=MARK_SCHEMA)


DEVICE_MARK_SCHEMA = pa.schema([("tenant", pa.string()), ("day", pa.date32()), ("did", pa.string()),
                                ("last_offset", pa.int64()), ("mark", pa.string())])


def device_marks(rows: pa.Table, mark: str) -> pa.Table:
    """The summary_devices rows of a batch's telemetry rows (DuckDB): one per (tenant, day of ets, device) it
    touches, with the batch's last log offset among them (what tells this batch's mark from a later one's), so
    the workflow summaries recompute those devices only (summary_table), not whole days."""
    if not rows.num_rows:
        return DEVICE_MARK_SCHEMA.empty_table()
    grouped = pa.table({"tenant": rows.column("channel"), "day": pc.cast(rows.column("ets"), pa.date32()),
                        "did": pc.fill_null(rows.column("did"), ""), "offset": rows.column("log_offset")}) \
        .group_by(["tenant", "day", "did"]).aggregate([("offset", "max")])
    return pa.Table.from_pydict({"tenant": grouped.column("tenant"), "day": grouped.column("day"),
                                 "did": grouped.column("did"), "last_offset": grouped.column("offset_max"),
                                 "mark": [mark] * grouped.num_rows}, schema=DEVICE_MARK_SCHEMA)
