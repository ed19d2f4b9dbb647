"""The SQL of a metric's cells over `telemetry`, in either store's dialect.

A cell is one (bucket, group): the metric's value over the events in it and the number of distinct
learners behind that value (what small-cell suppression judges a cell by). The statement is built from
checked values only (cohort.analytics.metric_query): times become literals written from datetimes, the
granularity and group-by pick fixed expressions, the scope's condition is scope_filter's (its values are
checked to hold no quote), and the tenant is bound as a parameter. So the two dialects differ only in
the few fragments below, each written once per dialect.

DuckDB and ClickHouse read JSON differently: DuckDB gives NULL for a missing field and ClickHouse an empty
string or zero, so every field read here is normalised (an empty string is no value; a number counts only
when the field is a JSON number), and the same events give the same figures in both stores.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cohort.analytics.metric_query import MetricQuery
from cohort.security.scope_filter import scope_condition_sql

DIALECTS = ("duckdb", "clickhouse")
LEARNER = "User"  # actor.type of a learner (or teacher) in Sunbird telemetry; System, Consumer are not
MAX_DURATION_SECONDS = 86_400  # a longer END duration is a device's clock fault, not time spent


@dataclass(frozen=True, slots=True)
class BoundSql:
    sql: str
    params: dict[str, Any] | None


def json_text(column: str, path: tuple[str, ...], dialect: str) -> str:
    """The string at `path` in JSON `column`; NULL when missing, not a string, or empty."""
    if dialect == "clickhouse":
        return f"nullIf(JSONExtractString({column}, {_keys(path)}), '')"
    return f"NULLIF(json_extract_string({column}, '$.{'.'.join(path)}'), '')"


def json_number(column: str, path: tuple[str, ...], dialect: str) -> str:
    """The number at `path` in JSON `column` as a double; NULL unless the field is a JSON number."""
    if dialect == "clickhouse":
        keys = _keys(path)
        return (f"if(toString(JSONType({column}, {keys})) IN ('Int64', 'UInt64', 'Double'), "
                f"JSONExtractFloat({column}, {keys}), NULL)")
    where = f"'$.{'.'.join(path)}'"
    return (f"CASE WHEN json_type({column}, {where}) IN ('BIGINT', 'UBIGINT', 'DOUBLE') "
            f"THEN CAST(json_extract({column}, {where}) AS DOUBLE) END")


def json_present(column: str, path: tuple[str, ...], dialect: str) -> str:
    """True when the field at `path` is a non-empty string or a non-empty array (never NULL)."""
    if dialect == "clickhouse":
        keys = _keys(path)
        return (f"multiIf(toString(JSONType({column}, {keys})) = 'String', JSONExtractString({column}, {keys}) != '', "
                f"toString(JSONType({column}, {keys})) = 'Array', JSONLength({column}, {keys}) > 0, 0) = 1")
    where = f"'$.{'.'.join(path)}'"
    return (f"COALESCE(CASE json_type({column}, {where}) WHEN 'VARCHAR' THEN json_extract_string({column}, {where}) "
            f"<> '' WHEN 'ARRAY' THEN json_array_length({column}, {where}) > 0 ELSE FALSE END, FALSE)")


def equals(expression: str, literal: str, dialect: str) -> str:
    """`expression = 'literal'`, false (never NULL) when the expression is NULL."""
    false = "0" if dialect == "clickhouse" else "FALSE"
    return f"COALESCE({expression} = {quote(literal)}, {false})"


def learners(dialect: str) -> str:
    """Distinct learners among a cell's events: actor ids of actors of type User."""
    return f"count(DISTINCT CASE WHEN {equals('actor_type', LEARNER, dialect)} THEN NULLIF(actor_id, '') END)"


def distinct(column: str) -> str:
    return f"count(DISTINCT NULLIF({column}, ''))"


# -- the event rules of the metrics (metrics.py's docstring): one definition, read by the telemetry metrics
# and written into the rollups (rollup_tables.py)

def content_player(eid: str, dialect: str) -> str:
    edata_type = f"lower({json_text('edata', ('type',), dialect)})"
    return (f"eid = '{eid}' AND ({equals('env', 'contentplayer', dialect)} OR "
            f"{equals(edata_type, 'content', dialect)})")


def duration(dialect: str) -> str:
    return json_number("edata", ("duration",), dialect)


def timed_play_end(dialect: str) -> str:
    return (f"{content_player('END', dialect)} AND {duration(dialect)} >= 0 AND "
            f"{duration(dialect)} <= {MAX_DURATION_SECONDS}")


def qr_scan(dialect: str) -> str:
    return f"eid = 'SEARCH' AND {json_present('edata', ('filters', 'dialcodes'), dialect)}"



def bucket(granularity: str, start: datetime, dialect: str, column: str = "ets") -> str:
    """The start of an event's bucket in whole seconds since the epoch (UTC); weeks start on Monday (ISO).
    `all`: one bucket, named by the window's start. `column`: the time column (a rollup's `hour`)."""
    if granularity == "all":
        return str(int(start.timestamp()))
    if dialect == "clickhouse":
        truncated = {"hour": f"toStartOfHour({column})", "day": f"toStartOfDay({column})",
                     "week": f"toDateTime(toMonday({column}), 'UTC')",
                     "month": f"toDateTime(toStartOfMonth({column}), 'UTC')"}[granularity]
        return f"toInt64(toUnixTimestamp({truncated}))"
    return f"CAST(epoch(date_trunc('{granularity}', {column})) AS BIGINT)"


def group(by: str, dialect: str) -> str | None:
    """The group an event belongs to under `by` (NULL: it carries no such field); None for `none`."""
    if by == "none":
        return None
    if by.startswith("rollup."):
        return json_text("event", ("context", "rollup", by.removeprefix("rollup.")), dialect)
    if by in ("pdata_id", "object_id"):
        return f"NULLIF({by}, '')"
    raise ValueError(f"not a group-by: {by!r}")


def scope_where(query: MetricQuery, dialect: str) -> tuple[list[str], dict[str, Any] | None]:
    """The conditions that keep a statement to the window, the tenant and the scope, and their parameters."""
    conditions = [f"ets >= {timestamp(query.start, dialect)}", f"ets < {timestamp(query.end, dialect)}"]
    params: dict[str, Any] | None = None
    if query.tenant is not None:
        conditions.append("channel = {tenant:String}" if dialect == "clickhouse" else "channel = $tenant")
        params = {"tenant": query.tenant}
    if query.scope is not None:
        conditions.append(f"({scope_condition_sql(query.scope, dialect, 'event')})")
    return conditions, params


def cells_sql(query: MetricQuery, value: str, condition: str | None, dialect: str) -> BoundSql:
    """One row per non-empty (bucket, group): bucket, grp, value, learners; ordered, so results are stable."""
    where, params = scope_where(query, dialect)
    if condition is not None:
        where.append(f"({condition})")
    grouping = group(query.by, dialect)
    group_select = grouping if grouping is not None else (
        "CAST(NULL AS Nullable(String))" if dialect == "clickhouse" else "CAST(NULL AS VARCHAR)")
    keys = "bucket, grp" if grouping is not None else "bucket"
    sql = (f"SELECT {bucket(query.granularity, query.start, dialect)} AS bucket, {group_select} AS grp, "
           f"{value} AS value, {learners(dialect)} AS learners FROM telemetry WHERE {' AND '.join(where)} "
           f"GROUP BY {keys} ORDER BY bucket, grp")
    return BoundSql(sql, params)


def freshness_sql(query: MetricQuery, dialect: str) -> BoundSql:
    """The newest time Cohort acknowledged an event of the tenant (and scope), in ms since the epoch: what the
    figures can include at most. Any window: late events (devices sync days later) land in old buckets."""
    where, params = scope_where(query, dialect)
    where = where[2:]  # not limited to the window
    newest = "toUnixTimestamp64Milli(max(ingested_at))" if dialect == "clickhouse" else "epoch_ms(max(ingested_at))"
    # ClickHouse's max over no rows is the epoch, not NULL: count the rows to tell
    sql = f"SELECT {newest} AS newest_ms, count() AS n FROM telemetry" if dialect == "clickhouse" else \
        f"SELECT {newest} AS newest_ms, count(*) AS n FROM telemetry"
    if where:
        sql += f" WHERE {' AND '.join(where)}"
    return BoundSql(sql, params)


def timestamp(moment: datetime, dialect: str) -> str:
    """A literal of the store's timestamp type (UTC, millisecond precision)."""
    text = moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}"
    if dialect == "clickhouse":
        return f"toDateTime64('{text}', 3, 'UTC')"
    return f"TIMESTAMP '{text}'"


def quote(text: str) -> str:
    """A string literal of this module's own constants (event types, field names): plain text only, so it is
    written the same in both dialects (ClickHouse reads backslash escapes in literals, DuckDB does not)."""
    if not text.replace("_", "").replace(".", "").isalnum():
        raise ValueError(f"not a plain literal: {text!r}")
    return f"'{text}'"


def _keys(path: tuple[str, ...]) -> str:
    return ", ".join(quote(key) for key in path)
