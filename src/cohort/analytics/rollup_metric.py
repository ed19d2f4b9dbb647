"""A learning metric read from the rollups (learner_hours) instead of the raw events: the same cells, exactly.

learner_hours keeps every dimension a metric is cut or scoped by (rollup_tables), so a metric over it is
the same aggregate as over `telemetry`: distinct learners, devices and sessions are distinct counts of its
grain columns, plays, scans and time are sums of its measures, and the learners behind a cell are the
learners of the rows with the metric's events (`row_condition`). Slices the refresher has not caught up
with yet (marked in rollup_dirty) are read from `telemetry` as one row per event of the same shape
(rollup_tables.event_rows) and added to the rest, so the answer is exact at any moment, and as fresh as
the store. A window that does not start and end on whole hours cannot be cut from hourly rows: it is
answered from `telemetry` (`raw`), as are hour windows, since learner_hours is hourly anyway.

Freshness comes from rollup_state and rollup_dirty (the newest acknowledgement the rollups and the marked
slices hold); completeness lists the window's days that late data (events whose day had ended when they
were acknowledged) re-opened within LATE_DAYS.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from cohort.analytics.metric_query import GRANULARITIES, GROUP_BYS, MetricQuery
from cohort.analytics.metric_sql import BoundSql, bucket, distinct, learners, timestamp
from cohort.analytics.rollup_tables import COLUMNS, event_rows
from cohort.security.scope_filter import scope_condition_columns

if TYPE_CHECKING:  # metrics.py builds the registry from this module's classes
    from cohort.analytics.metrics import TelemetryMetric

LATE_DAYS = 7  # a slice re-opened by late data within this many days is reported in `completeness`

_READ = ("hour", "actor_id", "actor_type", "did", "sid", "pdata_id", "object_id", "rollup_l1", "rollup_l2",
         "rollup_l3", "rollup_l4", "batch_ids", "course_ids", "content_plays", "time_spent", "timed_ends", "qr_scans")
assert set(_READ) <= {name for name, _, _ in (*COLUMNS["learner_hours"][0], *COLUMNS["learner_hours"][1])}


@dataclass(frozen=True, slots=True)
class RollupSpec:
    value: str  # the cell's value over learner_hours-shaped rows (both dialects)
    row_condition: str | None  # which rows hold the metric's events (None: all)


def _sum(column: str) -> str:
    return f"CAST(sum({column}) AS BIGINT)"


SPECS: dict[str, RollupSpec] = {
    "active_learners": RollupSpec("", None),  # learners(): filled per dialect
    "active_devices": RollupSpec(distinct("did"), None),
    "sessions": RollupSpec(distinct("sid"), None),
    "time_spent": RollupSpec("round(COALESCE(sum(time_spent), 0), 3)", "timed_ends > 0"),
    "content_plays": RollupSpec(_sum("content_plays"), "content_plays > 0"),
    "qr_scans": RollupSpec(_sum("qr_scans"), "qr_scans > 0"),
}


@dataclass(frozen=True, slots=True)
class RollupMetric:
    """`raw`'s metric read from learner_hours (plus the not-yet-refreshed slices from telemetry)."""

    raw: TelemetryMetric
    spec: RollupSpec
    granularities: tuple[str, ...] = GRANULARITIES
    group_bys: tuple[str, ...] = GROUP_BYS
    sources: tuple[str, ...] = ("learner_hours", "telemetry")

    @property
    def name(self) -> str:
        return self.raw.name

    @property
    def description(self) -> str:
        return self.raw.description

    @property
    def unit(self) -> str:
        return self.raw.unit

    def reads_rollups(self, query: MetricQuery) -> bool:
        return query.granularity != "hour" and _whole_hour(query.start) and _whole_hour(query.end)

    def cell_sql(self, query: MetricQuery, dialect: str) -> BoundSql:
        if not self.reads_rollups(query):
            return self.raw.cell_sql(query, dialect)
        rows, params = rows_sql(query, dialect)
        value = self.spec.value or learners(dialect)
        where = [f"({self.spec.row_condition})"] if self.spec.row_condition else []
        if query.scope is not None:
            where.append(f"({scope_condition_columns(query.scope, dialect)})")
        grouping = None if query.by == "none" else (
            f"NULLIF({'rollup_' + query.by.removeprefix('rollup.') if query.by.startswith('rollup.') else query.by}, '')")
        null_text = "CAST(NULL AS Nullable(String))" if dialect == "clickhouse" else "CAST(NULL AS VARCHAR)"
        keys = "bucket, grp" if grouping is not None else "bucket"
        sql = (f"SELECT {bucket(query.granularity, query.start, dialect, 'hour')} AS bucket, "
               f"{grouping or null_text} AS grp, {value} AS value, {learners(dialect)} AS learners FROM ({rows}) AS r"
               + (f" WHERE {' AND '.join(where)}" if where else "") + f" GROUP BY {keys} ORDER BY bucket, grp")
        return BoundSql(sql, params)

    def freshness_sql(self, query: MetricQuery, dialect: str) -> BoundSql:
        return rollup_freshness_sql(query, dialect)


def rows_sql(query: MetricQuery, dialect: str) -> tuple[str, dict[str, str] | None]:
    """learner_hours rows of the window and tenant: refreshed slices from the rollup, marked ones from telemetry."""
    start, end = timestamp(query.start, dialect), timestamp(query.end, dialect)
    tenant = ("{tenant:String}" if dialect == "clickhouse" else "$tenant")
    params = None if query.tenant is None else {"tenant": query.tenant}
    columns = ", ".join(_READ)
    if dialect == "clickhouse":
        rolled = (f"SELECT {columns} FROM learner_hours FINAL WHERE hour >= {start} AND hour < {end}"
                  f"{'' if params is None else f' AND tenant = {tenant}'} AND "
                  "(toString(tenant), toDate(hour, 'UTC')) NOT IN (SELECT tenant, day FROM rollup_dirty)")
        fresh = (f"SELECT {columns} FROM (SELECT {event_rows(dialect)} FROM telemetry WHERE ets >= {start} AND "
                 f"ets < {end}{'' if params is None else f' AND channel = {tenant}'} AND "
                 "(toString(channel), toDate(ets, 'UTC')) IN (SELECT tenant, day FROM rollup_dirty))")
    else:
        rolled = (f"SELECT {columns} FROM learner_hours AS lh WHERE hour >= {start} AND hour < {end}"
                  f"{'' if params is None else f' AND tenant = {tenant}'} AND NOT EXISTS (SELECT 1 FROM rollup_dirty d "
                  "WHERE d.tenant = lh.tenant AND d.day = CAST(lh.hour AS DATE))")
        fresh = (f"SELECT {columns} FROM (SELECT {event_rows(dialect)} FROM telemetry AS t WHERE ets >= {start} AND "
                 f"ets < {end}{'' if params is None else f' AND channel = {tenant}'} AND EXISTS (SELECT 1 FROM "
                 "rollup_dirty d WHERE d.tenant = t.channel AND d.day = CAST(t.ets AS DATE)))")
    return f"{rolled} UNION ALL {fresh}", params


def rollup_freshness_sql(query: MetricQuery, dialect: str) -> BoundSql:
    """The newest acknowledgement the rollups and the marked slices hold (ms), and whether there is any."""
    params = None if query.tenant is None else {"tenant": query.tenant}
    tenant = "" if params is None else (" WHERE tenant = {tenant:String}" if dialect == "clickhouse"
                                        else " WHERE tenant = $tenant")
    newest = "toUnixTimestamp64Milli(max(t))" if dialect == "clickhouse" else "epoch_ms(max(t))"
    sql = (f"SELECT {newest} AS newest_ms, count() AS n FROM (SELECT newest_ingested AS t FROM rollup_state{tenant} "
           f"UNION ALL SELECT last_ingested AS t FROM rollup_dirty{tenant})")
    if dialect != "clickhouse":
        sql = sql.replace("count()", "count(*)") + " AS f"
    return BoundSql(sql, params)


def late_slices_sql(query: MetricQuery, dialect: str, now: datetime) -> BoundSql:
    """The window's days (of the tenant) re-opened by late data since now − LATE_DAYS: (day, re-opened at ms,
    refreshed yet). Days whose late data is not refreshed yet are read from telemetry, so they count already."""
    since = timestamp(now - timedelta(days=LATE_DAYS), dialect)
    start, end = timestamp(query.start, dialect), timestamp(query.end, dialect)
    params = None if query.tenant is None else {"tenant": query.tenant}
    if dialect == "clickhouse":
        tenant = "" if params is None else " AND tenant = {tenant:String}"
        day_range = f"day >= toDate({start}, 'UTC') AND day <= toDate({end}, 'UTC')"
        sql = (f"SELECT * FROM (SELECT toString(day) AS slice_day, toUnixTimestamp64Milli(max(reopened_at)) AS at, 1 AS refreshed "
               f"FROM rollup_state WHERE {day_range}{tenant} GROUP BY tenant, day HAVING max(reopened_at) >= {since} "
               f"UNION ALL SELECT toString(day), toUnixTimestamp64Milli(max(last_ingested)), 0 FROM rollup_dirty "
               f"WHERE {day_range}{tenant} AND toDate(last_ingested, 'UTC') > day GROUP BY tenant, day) "
               "ORDER BY slice_day")
        return BoundSql(sql, params)
    tenant = "" if params is None else " AND tenant = $tenant"
    day_range = f"day >= CAST({start} AS DATE) AND day <= CAST({end} AS DATE)"
    sql = (f"SELECT * FROM (SELECT CAST(day AS VARCHAR) AS slice_day, epoch_ms(max(reopened_at)) AS at, 1 AS refreshed FROM rollup_state "
           f"WHERE {day_range}{tenant} GROUP BY tenant, day HAVING max(reopened_at) >= {since} "
           f"UNION ALL SELECT CAST(day AS VARCHAR), epoch_ms(max(last_ingested)), 0 FROM rollup_dirty WHERE "
           f"{day_range}{tenant} AND CAST(last_ingested AS DATE) > day GROUP BY tenant, day) AS s ORDER BY slice_day")
    return BoundSql(sql, params)


def _whole_hour(moment: datetime) -> bool:
    return moment.minute == 0 and moment.second == 0 and moment.microsecond == 0
