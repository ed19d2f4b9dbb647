"""learner_sketches: per (tenant, day, scope, group) the distinct learners, devices and sessions as mergeable
sketches (distinct_sketch), and the sums of time spent, plays and scans, in either store's dialect.

Why: a metric over a long window, tenant-wide or for a level of the hierarchy, cut by school, app or content,
would otherwise count distinct ids over millions of learner rows per request; with one row per (day, group)
it merges at most a few thousand small sketches (analytics/sketch_cells.py).

Rows: one per slot — tenant, day, scope_level ('' for the whole tenant, else l1..l4), scope_value (the scope
level's value; '' for the whole tenant), by_dim (a metric's `by`), grp (the group's value; '' for none or a
row without the field) — with a sketch (text) per kind, NULL where the slot has no row of the kind:
- learners, devices, sessions: the distinct actor ids of type User, device ids, session ids of every row;
- timed, played, scanned: the distinct learners of the rows with timed plays, content plays, QR scans;
and the slot's time_spent, content_plays, qr_scans. A kind's sketch exists exactly where the cell of a metric
over the rollups exists, so sketch answers and exact answers have the same cells.

Layout, for what a read costs: DuckDB decompresses a whole vector (2 048 rows) of a text column to read any
row of it, so the bytes a read touches, not the rows it returns, are its cost. Hence kinds are columns (a
request reads the two it needs), and the by-content slots, most of the rows (a slot per content and scope
value), are a table of their own, `content_sketches`, so that the other requests read only theirs.

The (scope, by) pairs kept: the whole tenant by anything, and each hierarchy level by none, app, content or a
deeper level (COMBOS). Other requests (scoped by batch or course, or by a level above the scope's) are
answered from the learner rows.

Computed by the refresh from learner_days (learner_hours for by content) of the refreshed slices: the
store's SQL hashes and ranks (sketch_select), Python packs them (sketch_rows). DuckDB: deleted and inserted
again with the slice, in the refresh's transaction; ClickHouse: inserted under the refresh's version, read
FINAL and only from each day's newest version (a slot a forget left empty is not written again; the version
filter drops its old row). A learner's hash stays in a sketch until the refresh after their forget
recomputes the slice (the forget marks it): seconds, and a hash of a pseudonym the vault no longer maps.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cohort.analytics import distinct_sketch
from cohort.analytics.distinct_sketch import EXACT_ROWS, P, Q
from cohort.analytics.metric_sql import LEARNER
from cohort.analytics.rollup_tables import LEVELS, day_of, event_rows
from cohort.store.arrow_insert import append_arrow

TABLE = "learner_sketches"
CONTENT_TABLE = "content_sketches"  # the by-content slots: 87 % of the rows at 50 M events, kept apart (below)
TABLES = (TABLE, CONTENT_TABLE)
KINDS = ("learners", "devices", "sessions", "timed", "played", "scanned")
# (scope level, by): the pairs sketched; '' is the whole tenant
COMBOS: tuple[tuple[str, str], ...] = (
    *(("", by) for by in ("none", *(f"rollup.{level}" for level in LEVELS), "pdata_id", "object_id")),
    *((level, by) for i, level in enumerate(LEVELS)
      for by in ("none", *(f"rollup.{deeper}" for deeper in LEVELS[i + 1:]), "pdata_id", "object_id")),
)
_KEYS = ("tenant", "day", "scope_level", "scope_value", "by_dim", "grp", "kind")
_ROW_COLUMNS = ("tenant", "day", "actor_id", "actor_type", "did", "sid", "pdata_id", "object_id",
                *(f"rollup_{level}" for level in LEVELS), "content_plays", "time_spent", "timed_ends", "qr_scans")


_SLOT = ("tenant", "day", "scope_level", "scope_value", "by_dim", "grp")  # one row per slot: its kinds are columns
TOTALS = {"timed": "time_spent", "played": "content_plays", "scanned": "qr_scans"}  # kind: its total's column
SCHEMA = pa.schema([("tenant", pa.string()), ("day", pa.date32()), ("scope_level", pa.string()),
                    ("scope_value", pa.string()), ("by_dim", pa.string()), ("grp", pa.string()),
                    *((kind, pa.string()) for kind in KINDS), *((column, pa.float64()) for column in TOTALS.values()),
                    ("version", pa.uint64())])


def ddl(dialect: str, db: str = "") -> list[str]:
    if dialect == "clickhouse":
        kinds = ", ".join(f"{kind} Nullable(String)" for kind in KINDS)
        totals = ", ".join(f"{column} Float64" for column in TOTALS.values())
        return [f"CREATE TABLE IF NOT EXISTS {db}.{table} (tenant LowCardinality(String), day Date, "
                "scope_level LowCardinality(String), scope_value String, by_dim LowCardinality(String), grp String, "
                f"{kinds}, {totals}, version UInt64) ENGINE = ReplacingMergeTree(version) PARTITION BY toYYYYMM(day) "
                "ORDER BY (tenant, scope_level, by_dim, scope_value, day, grp)" for table in TABLES]
    kinds = ", ".join(f"{kind} VARCHAR" for kind in KINDS)
    totals = ", ".join(f"{column} DOUBLE" for column in TOTALS.values())
    return [f"CREATE TABLE IF NOT EXISTS {table} (tenant VARCHAR, day DATE, scope_level VARCHAR, scope_value VARCHAR, "
            f"by_dim VARCHAR, grp VARCHAR, {kinds}, {totals}, version UBIGINT)" for table in TABLES]


def table_of(by_dim: str) -> str:
    """The table holding the slots of `by_dim`."""
    return CONTENT_TABLE if by_dim == "object_id" else TABLE


def rows_of_rollups(slice_filter: str, dialect: str, by_content: bool) -> str:
    """The learner rows of the slices `slice_filter` picks (a condition over `r.tenant` and `{day}`, the row's
    day), in the columns the sketches read: learner_days' (no content), or learner_hours' for by content."""
    final = " FINAL" if dialect == "clickhouse" else ""
    if by_content:
        day = day_of("r.hour", dialect)
        columns = ", ".join(f"{day} AS day" if c == "day" else f"r.{c}" for c in _ROW_COLUMNS)
        return f"SELECT {columns} FROM learner_hours AS r{final} WHERE {slice_filter.format(day=day)}"
    columns = ", ".join("'' AS object_id" if c == "object_id" else f"r.{c}" for c in _ROW_COLUMNS)
    return f"SELECT {columns} FROM learner_days AS r{final} WHERE {slice_filter.format(day='r.day')}"


def rows_of_events(event_filter: str, dialect: str) -> str:
    """The same columns from telemetry, one row per event (`event_filter`: a condition over telemetry): the
    slices marked since their refresh, sketched when a request reads them (sketch_cells.marked_sql)."""
    columns = ", ".join(f"{day_of('hour', dialect)} AS day" if c == "day" else c for c in _ROW_COLUMNS)
    return f"SELECT {columns} FROM (SELECT {event_rows(dialect)} FROM telemetry WHERE {event_filter}) AS e"


RESULT_SCHEMA = pa.schema([("key_id", pa.uint64()), ("tenant", pa.string()), ("day", pa.date32()),
                           ("scope_level", pa.string()), ("scope_value", pa.string()), ("by_dim", pa.string()),
                           ("grp", pa.string()), ("kind", pa.string()), ("total", pa.float64()),
                           ("items", pa.int64()), ("entry", pa.uint64())])  # sketch_select's columns


def sketch_select(rows: str, dialect: str, combos: tuple[tuple[str, str], ...] = COMBOS,
                  kinds: tuple[str, ...] = KINDS, exact_rows: int | None = None) -> str:
    """What sketch_rows turns into learner_sketches' rows, over `rows` (rows_of_rollups): one row per (slot, kind)
    with its total and learner rows' count, and one per entry (a hash of a key of at most EXACT_ROWS rows, or
    a register × 64 + its maximum rank). Keys are grouped by a 64-bit hash of their columns: grouping millions
    of expanded rows by seven text columns took several times longer (32 s against 7 s for a 50 M-scale day)."""
    clickhouse = dialect == "clickhouse"
    limit = EXACT_ROWS if exact_rows is None else exact_rows  # sketch_rows must be given the same
    pairs = ", ".join(f"('{level}', '{by}')" for level, by in combos)
    kind_list = ", ".join(f"('{kind}')" for kind in kinds)
    if clickhouse:
        combo_table = f"(SELECT * FROM values('scope_level String, by_dim String', {pairs})) AS c"
        kind_table = f"(SELECT * FROM values('kind String', {kind_list})) AS k"
    else:
        combo_table = f"(VALUES {pairs}) AS c(scope_level, by_dim)"
        kind_table = f"(VALUES {kind_list}) AS k(kind)"
    level_value = "CASE " + " ".join(f"WHEN scope_level = '{lv}' THEN rollup_{lv}" for lv in LEVELS) + " ELSE '' END"
    group_value = ("CASE " + " ".join(f"WHEN by_dim = 'rollup.{lv}' THEN rollup_{lv}" for lv in LEVELS)
                   + " WHEN by_dim = 'pdata_id' THEN pdata_id WHEN by_dim = 'object_id' THEN object_id ELSE '' END")
    learner = f"CASE WHEN actor_type = '{LEARNER}' THEN actor_id ELSE '' END"
    item = f"CASE WHEN kind = 'devices' THEN did WHEN kind = 'sessions' THEN sid ELSE {learner} END"
    double = "Float64" if clickhouse else "DOUBLE"
    amount = (f"CASE WHEN kind = 'timed' THEN time_spent WHEN kind = 'played' THEN CAST(content_plays AS {double}) "
              f"WHEN kind = 'scanned' THEN CAST(qr_scans AS {double}) ELSE CAST(0 AS {double}) END")
    wanted = ("kind IN ('learners', 'devices', 'sessions') OR (kind = 'timed' AND timed_ends > 0) OR "
              "(kind = 'played' AND content_plays > 0) OR (kind = 'scanned' AND qr_scans > 0)")
    keys = ", ".join(_KEYS)
    if clickhouse:
        key_id, hashed = f"cityHash64({keys})", "xxHash64(item)"
        low, rest = f"bitAnd(h, {(1 << P) - 1})", f"bitShiftRight(h, {P})"
        rank = f"if({rest} = 0, {Q + 1}, {Q} - toInt32(floor(log2(toFloat64({rest})))))"
        hex16, hex4 = "leftPad(hex(h), 16, '0')", "leftPad(hex(toUInt16(reg * 64 + rk)), 4, '0')"
        concat, pick, counted = "arrayStringConcat(groupArray({0}))", "any({0})", "countIf(has_item)"
    else:
        key_id, hashed = f"hash({keys})", "hash(item)"
        low, rest = f"(h & {(1 << P) - 1})", f"(h >> {P})"
        rank = f"CASE WHEN {rest} = 0 THEN {Q + 1} ELSE {Q} - CAST(floor(log2(CAST({rest} AS DOUBLE))) AS INTEGER) END"
        hex16, hex4 = "lpad(to_hex(h), 16, '0')", "lpad(to_hex(CAST(reg * 64 + rk AS INTEGER)), 4, '0')"
        concat, pick, counted = "string_agg({0}, '')", "any_value({0})", "count(*) FILTER (WHERE has_item)"
    expanded = (f"SELECT {key_id} AS key_id, *, {hashed} AS h, item <> '' AS has_item FROM ("
                f"SELECT tenant, day, scope_level, {level_value} AS scope_value, by_dim, {group_value} AS grp, kind, "
                f"{item} AS item, {amount} AS amount FROM ({rows}) AS r CROSS JOIN {combo_table} CROSS JOIN "
                f"{kind_table} WHERE ({wanted})) AS x WHERE scope_level = '' OR scope_value <> ''")
    picked = ", ".join(f"{pick.format(key)} AS {key}" for key in _KEYS)
    entry = "toUInt64(reg * 64 + rk)" if clickhouse else "CAST(reg * 64 + rk AS UBIGINT)"
    if clickhouse:  # an entry row's key columns: only key_id is read
        blank = ", ".join((*("toDate(0)" if key == "day" else "''" for key in _KEYS), "0", "toUInt64(0)"))
    else:
        blank = ", ".join(["NULL"] * (len(_KEYS) + 2))
    hashes = (f"SELECT e.key_id AS key_id, e.h AS h FROM expanded AS e JOIN keyed AS k ON k.key_id = e.key_id "
              f"WHERE k.items {{0}} {limit} AND e.has_item")
    return (
        f"WITH expanded AS ({expanded}), "
        f"keyed AS (SELECT key_id, {picked}, sum(amount) AS total, {counted} AS items FROM expanded GROUP BY key_id) "
        f"SELECT key_id, {keys}, total, items, NULL AS entry FROM keyed "
        f"UNION ALL SELECT key_id, {blank}, h AS entry FROM ({hashes.format('<=')}) AS x GROUP BY key_id, h "
        f"UNION ALL SELECT key_id, {blank}, {entry} AS entry FROM (SELECT key_id, {low} AS reg, max({rank}) AS rk "
        f"FROM ({hashes.format('>')}) AS b GROUP BY key_id, reg) AS y")


def sketch_rows(result: pa.Table, version: int, exact_rows: int | None = None) -> pa.Table:
    """learner_sketches' rows from sketch_select's result: one per slot, a sketch (text) per kind the slot has
    rows of (None for the others), the totals. Key rows carry the key and its learner rows' count; entry rows
    (key columns empty) carry a hash of an exact key, or a register × 64 + rank of the others."""
    entry = result.column("entry")
    keyed = result.filter(pc.is_null(entry)).to_pydict()
    entries = result.filter(pc.is_valid(entry))
    ids = entries.column("key_id").to_numpy(zero_copy_only=False).astype(np.uint64)
    values = entries.column("entry").to_numpy(zero_copy_only=False).astype(np.uint64)
    order = np.argsort(ids, kind="stable")
    ids, values = ids[order], values[order]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if len(ids) else np.zeros(0, dtype=np.int64)
    spans = {int(ids[at]): (at, end) for at, end in zip(starts, np.r_[starts[1:], len(ids)].astype(np.int64))}
    slots: dict[tuple, dict[str, Any]] = {}
    for i, key_id in enumerate(keyed["key_id"]):
        slot = tuple(keyed[column][i] for column in _SLOT)
        row = slots.setdefault(slot, {**dict(zip(_SLOT, slot)), **{kind: None for kind in KINDS},
                                      **{column: 0.0 for column in TOTALS.values()}})
        kind = keyed["kind"][i]
        at, end = spans.get(int(key_id), (0, 0))
        part = values[at:end]
        if int(keyed["items"][i] or 0) <= (EXACT_ROWS if exact_rows is None else exact_rows):
            row[kind] = distinct_sketch.Sketch(hashes=part).text()
        else:
            row[kind] = distinct_sketch.from_packed(part).text()
        if kind in TOTALS:
            row[TOTALS[kind]] = float(keyed["total"][i] or 0)
    rows = list(slots.values())
    return pa.Table.from_pylist([{**row, "version": version} for row in rows], schema=SCHEMA)


def refresh_selects(slice_filter: str, dialect: str) -> list[tuple[str, str]]:
    """(table, sketch_select) of the slices `slice_filter` picks (rows_of_rollups), over the rollups already
    recomputed for them: learner_days' rows into learner_sketches, learner_hours' into content_sketches. Their
    results go through sketch_rows into the table."""
    out = []
    for by_content in (False, True):
        combos = tuple(c for c in COMBOS if (c[1] == "object_id") == by_content)
        select = sketch_select(rows_of_rollups(slice_filter, dialect, by_content), dialect, combos)
        out.append((CONTENT_TABLE if by_content else TABLE, select))
    return out


def write_duckdb(con: Any, slice_filter: str) -> int:
    """Sketch the slices `slice_filter` picks, on DuckDB connection `con` (in the caller's transaction); the rows
    written."""
    written = 0
    for table, select in refresh_selects(slice_filter, "duckdb"):
        rows = sketch_rows(con.sql(select).to_arrow_table(), 0)
        append_arrow(con, table, rows)
        written += rows.num_rows
    return written


def write_clickhouse(client: Any, slice_filter: str, version: int) -> int:
    """The same on ClickHouse, under the refresh's `version`."""
    written = 0
    for table, select in refresh_selects(slice_filter, "clickhouse"):
        rows = sketch_rows(client.query_arrow(select), version)
        if rows.num_rows:
            client.insert_arrow(table, rows, settings={"insert_deduplicate": 0, "async_insert": 0})
            written += rows.num_rows
    return written


def backfill_marks(dialect: str, db: str = "") -> str:
    """Marks every refreshed slice again while learner_sketches is empty (a store refreshed before the table
    existed), as rollup_tables.backfill_marks does for learner_days: those days are read from telemetry until
    the next refresh sketches them. A no-op once the table has rows, or when nothing was ever refreshed."""
    if dialect == "clickhouse":
        return (f"INSERT INTO {db}.rollup_dirty SELECT tenant, day, max(newest_ingested), max(newest_ingested), "
                f"'backfill:{TABLE}' FROM {db}.rollup_state WHERE (SELECT count() FROM {db}.{TABLE}) = 0 "
                "GROUP BY tenant, day")
    return (f"INSERT INTO rollup_dirty SELECT tenant, day, newest_ingested, newest_ingested, 'backfill:{TABLE}' "
            f"FROM rollup_state WHERE NOT EXISTS (SELECT 1 FROM {TABLE})")
