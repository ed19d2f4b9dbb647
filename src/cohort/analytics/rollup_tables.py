"""The rollup tables: learner-level hourly and daily aggregates of `telemetry`, in either store's dialect.

Why learner-level: distinct counts (active learners, devices, sessions) are not additive, so a rollup that
keeps them exact must keep who (and which device and session) is behind each row; a learner's rows are
also what a forget deletes (by actor_id within the tenant). Why the row's grain holds every dimension a
metric can be cut or scoped by (pdata_id, object_id, rollup l1..l4, batch and course ids): then a metric
over the rollups is the same aggregate as over the raw events, only over fewer rows, and equals it exactly.

Tables (one row per distinct grain in the slice; text dimensions hold '' for "none", read back as NULL):
- learner_hours: tenant, hour, actor_id, actor_type, did, sid, pdata_id, object_id, rollup_l1..l4,
  batch_ids, course_ids | events, content_plays, time_spent, timed_ends, qr_scans, assess_attempts,
  assess_score, assess_max. `sid` is part of the grain (not a count): sessions over any range are
  count(DISTINCT sid), which a per-row session count could not give.
- learner_days: tenant, day, actor_id, actor_type, did, sid, pdata_id, rollup_l1..l4 | events, content_plays,
  time_spent, timed_ends, qr_scans. learner_hours without the hour, the content and the batch/course ids:
  about one row per session (a session lies within a day), 3.5 times fewer rows than learner_hours in the
  benchmark's world, and still every id a distinct count needs; the metrics read it for whole-day windows
  not cut or scoped by content, batch or course (rollup_metric.rows_table).
- device_hours: tenant, hour, did, actor_id, pdata_id, rollup_l1..l4 | events, sessions (distinct sid).
- content_days: tenant, day, object_id, actor_id, rollup_l1..l4, batch_ids, course_ids | plays,
  time_spent, completed (player ENDs whose edata.summary holds progress 100), over content-player events.
- item_days: tenant, day, actor_id, item_id, content_id | attempts, first_ets, first_score, first_max,
  score_sum, max_sum, duration_sum, over ASSESS events.
Bookkeeping: rollup_dirty (the (tenant, day) slices written since their last refresh: one mark per batch
and slice, written by the store with the batch) and rollup_state (per slice: last refresh, the newest
acknowledgement it covered, when late data last re-opened it); on ClickHouse also forgotten_learners (the
(tenant, pseudonym) of each forget, kept FORGOTTEN_KEPT_HOURS: a refresh running beside a forget, in
another process, may land rows it read before the forget deleted them, and each refresh sweeps those).

A slice is (tenant, UTC day of ets): every rollup row belongs to exactly one, so a slice is recomputed by
deleting its rows and inserting them again from `telemetry` (DuckDB: one transaction) or by inserting
them again under a newer `version` (ClickHouse: ReplacingMergeTree(version), read with FINAL; telemetry is
append-only, so a slice's recomputed grains are a superset of the old ones and no row needs a tombstone;
rows that go with a forget are deleted directly).
"""

from __future__ import annotations

from datetime import date

from cohort.analytics.metric_sql import content_player, duration, json_number, json_text, qr_scan, timed_play_end
from cohort.security.scope_filter import BATCH_TYPES, COURSE_TYPES

ROLLUP_TABLES = ("learner_hours", "device_hours", "content_days", "item_days", "learner_days")
FORGOTTEN_KEPT_HOURS = 24  # ClickHouse: how long a forget's tombstone (tenant, pseudonym) is kept for the sweeps
SWEPT_HOURS = 1  # … and how far back each refresh sweeps: far longer than any refresh takes
LEVELS = ("l1", "l2", "l3", "l4")
_LEVEL_COLUMNS = tuple(f"rollup_{level}" for level in LEVELS)

# (name, duckdb type, clickhouse type) of each table's columns, grain first; ClickHouse adds `version`
_TEXT = ("VARCHAR", "String")
_LOW = ("VARCHAR", "LowCardinality(String)")
_IDS = ("VARCHAR[]", "Array(String)")
_COUNT = ("BIGINT", "Int64")
_SUM = ("DOUBLE", "Float64")
_HOUR = ("TIMESTAMP", "DateTime('UTC')")
_DAY = ("DATE", "Date")
_TS = ("TIMESTAMP", "DateTime64(3, 'UTC')")
_LEVEL_DEFS = tuple((c, *_TEXT) for c in _LEVEL_COLUMNS)

COLUMNS: dict[str, tuple[tuple[tuple[str, str, str], ...], tuple[tuple[str, str, str], ...]]] = {
    # table: (grain columns, measure columns)
    "learner_hours": (
        (("tenant", *_LOW), ("hour", *_HOUR), ("actor_id", *_TEXT), ("actor_type", *_LOW), ("did", *_TEXT),
         ("sid", *_TEXT), ("pdata_id", *_LOW), ("object_id", *_TEXT), *_LEVEL_DEFS, ("batch_ids", *_IDS),
         ("course_ids", *_IDS)),
        (("events", *_COUNT), ("content_plays", *_COUNT), ("time_spent", *_SUM), ("timed_ends", *_COUNT),
         ("qr_scans", *_COUNT), ("assess_attempts", *_COUNT), ("assess_score", *_SUM), ("assess_max", *_SUM)),
    ),
    "learner_days": (
        (("tenant", *_LOW), ("day", *_DAY), ("actor_id", *_TEXT), ("actor_type", *_LOW), ("did", *_TEXT),
         ("sid", *_TEXT), ("pdata_id", *_LOW), *_LEVEL_DEFS),
        (("events", *_COUNT), ("content_plays", *_COUNT), ("time_spent", *_SUM), ("timed_ends", *_COUNT),
         ("qr_scans", *_COUNT)),
    ),
    "device_hours": (
        (("tenant", *_LOW), ("hour", *_HOUR), ("did", *_TEXT), ("actor_id", *_TEXT), ("pdata_id", *_LOW),
         *_LEVEL_DEFS),
        (("events", *_COUNT), ("sessions", *_COUNT)),
    ),
    "content_days": (
        (("tenant", *_LOW), ("day", *_DAY), ("object_id", *_TEXT), ("actor_id", *_TEXT), *_LEVEL_DEFS,
         ("batch_ids", *_IDS), ("course_ids", *_IDS)),
        (("plays", *_COUNT), ("time_spent", *_SUM), ("completed", *_COUNT)),
    ),
    "item_days": (
        (("tenant", *_LOW), ("day", *_DAY), ("actor_id", *_TEXT), ("item_id", *_TEXT), ("content_id", *_TEXT)),
        (("attempts", *_COUNT), ("first_ets", *_TS), ("first_score", *_SUM), ("first_max", *_SUM),
         ("score_sum", *_SUM), ("max_sum", *_SUM), ("duration_sum", *_SUM)),
    ),
}
TIME_COLUMN = {"learner_hours": "hour", "learner_days": "day", "device_hours": "hour", "content_days": "day",
               "item_days": "day"}


def ddl(dialect: str, db: str = "") -> list[str]:
    """CREATE statements of the rollup tables and their bookkeeping (`db`: ClickHouse's database)."""
    if dialect == "clickhouse":
        out = []
        for table, (grain, measures) in COLUMNS.items():
            cols = ", ".join(f"{name} {ch}" for name, _, ch in (*grain, *measures))
            # the whole grain is the key: the version keeps one computation per grain, the newest slice's
            key = ", ".join(name for name, _, _ in grain)
            out.append(f"CREATE TABLE IF NOT EXISTS {db}.{table} ({cols}, version UInt64) "
                       f"ENGINE = ReplacingMergeTree(version) PARTITION BY toYYYYMM({TIME_COLUMN[table]}) "
                       f"ORDER BY ({key})")
        out.append(f"CREATE TABLE IF NOT EXISTS {db}.rollup_dirty (tenant String, day Date, "
                   f"first_ingested DateTime64(3, 'UTC'), last_ingested DateTime64(3, 'UTC'), mark String) "
                   f"ENGINE = MergeTree ORDER BY (tenant, day)")
        out.append(f"CREATE TABLE IF NOT EXISTS {db}.rollup_state (tenant String, day Date, "
                   "refreshed_at SimpleAggregateFunction(max, DateTime64(3, 'UTC')), "
                   "newest_ingested SimpleAggregateFunction(max, DateTime64(3, 'UTC')), "
                   "reopened_at SimpleAggregateFunction(max, DateTime64(3, 'UTC'))) "
                   "ENGINE = AggregatingMergeTree ORDER BY (tenant, day)")
        # learners forgotten lately, which each refresh sweeps from what it wrote (rollup_refresh.sweep_forgotten)
        out.append(f"CREATE TABLE IF NOT EXISTS {db}.forgotten_learners (tenant String, actor_id String, "
                   "forgotten_at DateTime64(3, 'UTC')) ENGINE = MergeTree ORDER BY (tenant, actor_id) "
                   f"TTL toDateTime(forgotten_at) + INTERVAL {FORGOTTEN_KEPT_HOURS} HOUR")
        return out
    out = []
    for table, (grain, measures) in COLUMNS.items():
        cols = ", ".join(f"{name} {duck}" for name, duck, _ in (*grain, *measures))
        out.append(f"CREATE TABLE IF NOT EXISTS {table} ({cols}, version UBIGINT)")
    out.append("CREATE TABLE IF NOT EXISTS rollup_dirty (tenant VARCHAR, day DATE, first_ingested TIMESTAMP, "
               "last_ingested TIMESTAMP, mark VARCHAR)")
    out.append("CREATE TABLE IF NOT EXISTS rollup_state (tenant VARCHAR, day DATE, refreshed_at TIMESTAMP, "
               "newest_ingested TIMESTAMP, reopened_at TIMESTAMP, PRIMARY KEY (tenant, day))")
    # the store's last log offset the slice's rollups include: a marked day is then read as its rollups plus the
    # events past it (rollup_metric.rows_sql). Added to stores from before it; NULL until the slice's next refresh
    out.append("ALTER TABLE rollup_state ADD COLUMN IF NOT EXISTS covered_offset BIGINT")
    return out


# rollup marks that are no batch's (a forget's, a recompute's, a backfill's): their slices are recomputed whole,
# and read whole until then (the rollups may hold what a forget deleted); a batch's mark is its token
WHOLE_MARK_PREFIXES = ("forget:", "recompute:", "backfill:")


def whole_mark(column: str = "mark") -> str:
    """A condition on a rollup_dirty mark (both dialects): it is no batch's (WHOLE_MARK_PREFIXES)."""
    return "(" + " OR ".join(f"{column} LIKE '{p}%'" for p in WHOLE_MARK_PREFIXES) + ")"


def backfill_marks(dialect: str, db: str = "") -> str:
    """Marks every refreshed slice again while learner_days is empty (a store whose rollups were refreshed before
    that table existed), with the slice's own newest acknowledgement (so it is not reported as late data): the
    metrics read those days from telemetry until the next refresh fills learner_days. Run after ddl() when a
    store opens; a no-op once learner_days has rows (or when nothing was ever refreshed)."""
    if dialect == "clickhouse":
        return (f"INSERT INTO {db}.rollup_dirty SELECT tenant, day, max(newest_ingested), max(newest_ingested), "
                f"'backfill:learner_days' FROM {db}.rollup_state WHERE (SELECT count() FROM {db}.learner_days) = 0 "
                "GROUP BY tenant, day")
    return ("INSERT INTO rollup_dirty SELECT tenant, day, newest_ingested, newest_ingested, 'backfill:learner_days' "
            "FROM rollup_state WHERE NOT EXISTS (SELECT 1 FROM learner_days)")


# -- per-event fragments ---------------------------------------------------------------------------------

def _text(expression: str) -> str:
    return f"COALESCE({expression}, '')"


def _level(level: str, dialect: str) -> str:
    return _text(json_text("event", ("context", "rollup", level), dialect))


def _cdata_ids(types: tuple[str, ...], dialect: str) -> str:
    """Ids (strings, not empty) of the event's context.cdata entries of one of `types`: what scope_filter's
    batch and course conditions look for, pulled out once so that a scope is an array test at read time."""
    listed = ", ".join(f"'{t}'" for t in types)
    if dialect == "clickhouse":
        return (f"arrayFilter(x -> x != '', arrayMap(x -> if(JSONExtractString(x, 'type') IN ({listed}), "
                f"JSONExtractString(x, 'id'), ''), JSONExtractArrayRaw(event, 'context', 'cdata')))")
    return ("[json_extract_string(x, '$.id') FOR x IN CAST(json_extract(event, '$.context.cdata[*]') AS JSON[]) "
            f"IF json_type(x, '$.id') = 'VARCHAR' AND json_extract_string(x, '$.type') IN ({listed}) "
            "AND json_extract_string(x, '$.id') <> '']")


def _ids(expression: str, dialect: str) -> str:
    if dialect == "clickhouse":
        return f"arraySort(arrayDistinct({expression}))"
    return f"list_sort(list_distinct({expression}))"


def batch_ids(dialect: str) -> str:
    return _ids(_cdata_ids(BATCH_TYPES, dialect), dialect)


def course_ids(dialect: str) -> str:
    in_rollup = json_text("event", ("object", "rollup", "l1"), dialect)
    courses = _cdata_ids(COURSE_TYPES, dialect)
    if dialect == "clickhouse":
        return _ids(f"arrayConcat({courses}, if({in_rollup} IS NULL, [], [assumeNotNull({in_rollup})]))", dialect)
    return _ids(f"list_concat({courses}, CASE WHEN {in_rollup} IS NULL THEN [] ELSE [{in_rollup}] END)", dialect)


def _flag(condition: str, dialect: str) -> str:
    return f"CAST(CASE WHEN {condition} THEN 1 ELSE 0 END AS {'Int64' if dialect == 'clickhouse' else 'BIGINT'})"


def _number_if(condition: str, number: str, dialect: str) -> str:
    double = "Float64" if dialect == "clickhouse" else "DOUBLE"
    return f"CAST(COALESCE(CASE WHEN {condition} THEN {number} END, 0) AS {double})"


def hour_of(column: str, dialect: str) -> str:
    if dialect == "clickhouse":
        return f"toDateTime(toStartOfHour({column}), 'UTC')"
    return f"date_trunc('hour', {column})"


def day_of(column: str, dialect: str) -> str:
    return f"toDate({column}, 'UTC')" if dialect == "clickhouse" else f"CAST({column} AS DATE)"


def event_rows(dialect: str) -> str:
    """One learner_hours-shaped row per event (events = 1): the rollup is its sum per grain, and a metric over
    slices not refreshed yet reads these rows from telemetry in place of the rollup's (rollup_metric)."""
    assess = "eid = 'ASSESS'"
    grain = [
        "channel AS tenant", f"{hour_of('ets', dialect)} AS hour", f"{_text('actor_id')} AS actor_id",
        f"{_text('actor_type')} AS actor_type", f"{_text('did')} AS did", f"{_text('sid')} AS sid",
        f"{_text('pdata_id')} AS pdata_id", f"{_text('object_id')} AS object_id",
        *(f"{_level(level, dialect)} AS rollup_{level}" for level in LEVELS),
        f"{batch_ids(dialect)} AS batch_ids", f"{course_ids(dialect)} AS course_ids",
    ]
    measures = [
        f"{_flag('1 = 1', dialect)} AS events",
        f"{_flag(content_player('START', dialect), dialect)} AS content_plays",
        f"{_number_if(timed_play_end(dialect), duration(dialect), dialect)} AS time_spent",
        f"{_flag(timed_play_end(dialect), dialect)} AS timed_ends",
        f"{_flag(qr_scan(dialect), dialect)} AS qr_scans",
        f"{_flag(assess, dialect)} AS assess_attempts",
        f"{_number_if(assess, json_number('edata', ('score',), dialect), dialect)} AS assess_score",
        f"{_number_if(assess, json_number('edata', ('item', 'maxscore'), dialect), dialect)} AS assess_max",
    ]
    return ", ".join(grain + measures)


def _completed(dialect: str) -> str:
    """A player END whose edata.summary holds {"progress": 100} (the learning world's completion rule)."""
    end = content_player("END", dialect)
    if dialect == "clickhouse":
        return (f"{end} AND arrayExists(x -> JSONHas(x, 'progress') AND JSONExtractFloat(x, 'progress') = 100, "
                "JSONExtractArrayRaw(edata, 'summary'))")
    return f"{end} AND COALESCE(json_contains(json_extract(edata, '$.summary'), '{{\"progress\":100}}'), FALSE)"


def content_event_rows(slice_filter: str, dialect: str, source: str = "telemetry") -> str:
    """One content_days-shaped row per content-player START or END of the telemetry rows `slice_filter` picks:
    the rollup is their sum per grain, and a report over slices not refreshed yet reads these in its place
    (`source`: a table of telemetry's columns, such as a report's own selection of telemetry rows)."""
    levels = ", ".join(f"{_level(level, dialect)} AS rollup_{level}" for level in LEVELS)
    return (f"SELECT channel AS tenant, {day_of('ets', dialect)} AS day, {_text('object_id')} AS object_id, "
            f"{_text('actor_id')} AS actor_id, {levels}, {batch_ids(dialect)} AS batch_ids, "
            f"{course_ids(dialect)} AS course_ids, "
            f"{_flag(content_player('START', dialect), dialect)} AS plays, "
            f"{_number_if(timed_play_end(dialect), duration(dialect), dialect)} AS time_spent, "
            f"{_flag(_completed(dialect), dialect)} AS completed FROM {source} WHERE ({slice_filter}) AND "
            f"({content_player('START', dialect)} OR {content_player('END', dialect)})")


def _select(table: str, slice_filter: str, dialect: str, version: int | None) -> str:
    """INSERT … SELECT of `table`'s rows of the slices `slice_filter` (a condition over telemetry) picks."""
    grain = [name for name, _, _ in COLUMNS[table][0]]
    keys = ", ".join(grain)
    sums = {"DOUBLE": "CAST(sum({0}) AS DOUBLE)", "BIGINT": "CAST(sum({0}) AS BIGINT)"}
    if dialect == "clickhouse":
        sums = {"DOUBLE": "toFloat64(sum({0}))", "BIGINT": "toInt64(sum({0}))"}
    tail = f", {int(version or 0)} AS version"
    if table == "learner_hours":
        measures = ", ".join(sums[duck].format(name) for name, duck, _ in COLUMNS[table][1])
        body = f"SELECT {event_rows(dialect)} FROM telemetry WHERE {slice_filter}"
        return f"INSERT INTO {table} SELECT {keys}, {measures}{tail} FROM ({body}) AS e GROUP BY {keys}"
    if table == "learner_days":  # learner_hours' grain less the hour, content and batch/course ids
        measures = ", ".join(sums[duck].format(name) for name, duck, _ in COLUMNS[table][1])
        body = f"SELECT {day_of('ets', dialect)} AS day, {event_rows(dialect)} FROM telemetry WHERE {slice_filter}"
        return f"INSERT INTO {table} SELECT {keys}, {measures}{tail} FROM ({body}) AS e GROUP BY {keys}"
    if table == "device_hours":
        body = f"SELECT {event_rows(dialect)} FROM telemetry WHERE {slice_filter}"
        sessions = "toInt64(count(DISTINCT nullIf(sid, '')))" if dialect == "clickhouse" else \
            "CAST(count(DISTINCT NULLIF(sid, '')) AS BIGINT)"
        return (f"INSERT INTO {table} SELECT {keys}, {sums['BIGINT'].format('events')}, {sessions}{tail} "
                f"FROM ({body}) AS e GROUP BY {keys}")
    if table == "content_days":
        body = content_event_rows(slice_filter, dialect)
        measures = ", ".join(sums[duck].format(name) for name, duck, _ in COLUMNS[table][1])
        return f"INSERT INTO {table} SELECT {keys}, {measures}{tail} FROM ({body}) AS e GROUP BY {keys}"
    # item_days: ASSESS events, the first attempt by ets
    score = json_number("edata", ("score",), dialect)
    top = json_number("edata", ("item", "maxscore"), dialect)
    spent = json_number("edata", ("duration",), dialect)
    body = (f"SELECT channel AS tenant, {day_of('ets', dialect)} AS day, {_text('actor_id')} AS actor_id, "
            f"{_text(json_text('edata', ('item', 'id'), dialect))} AS item_id, {_text('object_id')} AS content_id, "
            f"ets, COALESCE({score}, 0) AS score, COALESCE({top}, 0) AS top, COALESCE({spent}, 0) AS spent "
            f"FROM telemetry WHERE ({slice_filter}) AND eid = 'ASSESS'")
    first = "argMin({0}, ets)" if dialect == "clickhouse" else "arg_min({0}, ets)"
    return (f"INSERT INTO {table} SELECT {keys}, {sums['BIGINT'].format('1')}, min(ets), "
            f"{first.format('score')}, {first.format('top')}, {sums['DOUBLE'].format('score')}, "
            f"{sums['DOUBLE'].format('top')}, {sums['DOUBLE'].format('spent')}{tail} FROM ({body}) AS e "
            f"GROUP BY {keys}")


def insert_statements(slice_filter: str, dialect: str, version: int | None = None) -> list[str]:
    """One INSERT … SELECT per rollup table over the telemetry rows `slice_filter` picks."""
    return [_select(table, slice_filter, dialect, version) for table in ROLLUP_TABLES]


def text_literal(value: str) -> str:
    """ClickHouse: `value` as a string literal (escaped)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def slice_literal(slices: list[tuple[str, date]]) -> str:
    """ClickHouse: the slices as a literal array of (tenant, day) tuples (tenants escaped for its literals)."""
    return "[" + ", ".join(f"({text_literal(t)}, toDate('{d.isoformat()}'))" for t, d in slices) + "]"
