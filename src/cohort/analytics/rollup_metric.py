"""A learning metric read from the rollups (learner_days, learner_hours) instead of the raw events: the same
cells, exactly.

The rollups keep every dimension a metric is cut or scoped by (rollup_tables), so a metric over them is
the same aggregate as over `telemetry`: distinct learners, devices and sessions are distinct counts of their
grain columns, plays, scans and time are sums of their measures, and the learners behind a cell are the
learners of the rows with the metric's events (`row_condition`). A whole-day window not cut or scoped by
content, batch or course reads learner_days (about one row per session); any other whole-hour window reads
learner_hours (rows_table). Slices the refresher has not caught up with yet (marked in rollup_dirty) are
read from `telemetry` as one row per event of the same shape (rollup_tables.event_rows) and added to the
rest, so the answer is exact at any moment, and as fresh as the store. The API reads the tenant's marked
days first (marked_slices_sql) and names them in the statement: with none marked, telemetry is not read at
all, which is what makes a refreshed window fast. A window that does not start and end on whole hours
cannot be cut from hourly rows: it is answered from `telemetry` (`raw`), as are hour windows.

Freshness comes from rollup_state and rollup_dirty (the newest acknowledgement the rollups and the marked
slices hold); completeness lists the window's days that late data (events whose day had ended when they
were acknowledged) re-opened within LATE_DAYS.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING

from cohort.analytics.metric_query import GRANULARITIES, GROUP_BYS, MetricQuery
from cohort.analytics.metric_sql import BoundSql, bucket, distinct, learners, timestamp
from cohort.analytics.rollup_tables import COLUMNS, event_rows, whole_mark
from cohort.security.scope_filter import scope_condition_columns

if TYPE_CHECKING:  # metrics.py builds the registry from this module's classes
    from cohort.analytics.metrics import TelemetryMetric

LATE_DAYS = 7  # a slice re-opened by late data within this many days is reported in `completeness`

_HOURLY = ("hour", "actor_id", "actor_type", "did", "sid", "pdata_id", "object_id", "rollup_l1", "rollup_l2",
           "rollup_l3", "rollup_l4", "batch_ids", "course_ids", "content_plays", "time_spent", "timed_ends", "qr_scans")
_DAILY = ("actor_id", "actor_type", "did", "sid", "pdata_id", "rollup_l1", "rollup_l2", "rollup_l3", "rollup_l4",
          "content_plays", "time_spent", "timed_ends", "qr_scans")


def _columns(table: str) -> set[str]:
    return {name for name, _, _ in (*COLUMNS[table][0], *COLUMNS[table][1])}


assert set(_HOURLY) <= _columns("learner_hours") and set(_DAILY) <= _columns("learner_days")


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
    sources: tuple[str, ...] = ("learner_sketches", "content_sketches", "learner_days", "learner_hours", "telemetry")

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

    def cell_sql(self, query: MetricQuery, dialect: str, marked: tuple[date, ...] | None = None,
                 deltas: Deltas | None = None) -> BoundSql:
        """The cells' statement. `marked`: the tenant's marked days in the window, read just before
        (marked_slices_sql); None when not known, and then the statement finds them itself (what lineage shows).
        `deltas`: marked days read as their rollups plus the events past the offset their refresh covered
        (marked_slices_sql)."""
        if not self.reads_rollups(query):
            return self.raw.cell_sql(query, dialect)
        rows, params = rows_sql(query, dialect, marked, deltas)
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


def rows_sql(query: MetricQuery, dialect: str, marked: tuple[date, ...] | None = None,
             deltas: Deltas | None = None) -> tuple[str, dict[str, str] | None]:
    """Rollup rows of the window and tenant (rows_table: learner_days or learner_hours), with their `hour`:
    refreshed slices from the rollup, marked ones from telemetry (as event rows of the same columns).

    With `marked` known (a tenant's request: marked_slices_sql read them first), the statement names those days:
    none marked (the usual case once the refresher has caught up) leaves telemetry out altogether. Unknown
    (None), it reads the marks itself, and the window's telemetry is read whether or not any slice is marked
    (EXPLAIN ANALYZE over 400 000 events: the telemetry scan and its JSON reads were most of the time).
    `deltas` (with `marked` known): days whose rollups stay and whose events past the covered offset are added,
    so a live day costs what arrived since its refresh."""
    table = rows_table(query)
    daily = table == "learner_days"
    columns = ", ".join(_DAILY if daily else _HOURLY)
    final = " FINAL" if dialect == "clickhouse" else ""
    if daily:  # the day as the rows' hour: buckets of a day or coarser are the same
        hour = "toDateTime(day, 'UTC')" if dialect == "clickhouse" else "CAST(day AS TIMESTAMP)"
        start, end = date_literal(query.start.date(), dialect), date_literal(query.end.date(), dialect)
        window, row_day = f"day >= {start} AND day < {end}", "r.day"
        read = f"{hour} AS hour, {columns}"
        columns = f"hour, {columns}"
    else:
        window = f"hour >= {timestamp(query.start, dialect)} AND hour < {timestamp(query.end, dialect)}"
        row_day = "toDate(r.hour, 'UTC')" if dialect == "clickhouse" else "CAST(r.hour AS DATE)"
        read = columns
    tenant = "{tenant:String}" if dialect == "clickhouse" else "$tenant"
    params = None if query.tenant is None else {"tenant": query.tenant}
    rolled = f"SELECT {read} FROM {table} AS r{final} WHERE {window}{'' if params is None else f' AND tenant = {tenant}'}"
    events = (f"SELECT {columns} FROM (SELECT {event_rows(dialect)} FROM telemetry AS t WHERE "
              f"ets >= {timestamp(query.start, dialect)} AND ets < {timestamp(query.end, dialect)}"
              f"{'' if params is None else f' AND channel = {tenant}'}")
    if marked is not None and params is not None:
        if not marked and not deltas:
            return rolled, params
        days = sorted(set(marked))
        if days:
            rolled += f" AND {row_day} NOT IN ({', '.join(date_literal(day, dialect) for day in days)})"
        return f"{rolled} UNION ALL {events} AND ({marked_events(days, deltas, dialect)}))", params
    if dialect == "clickhouse":
        return (f"{rolled} AND (toString(tenant), {row_day}) NOT IN (SELECT tenant, day FROM rollup_dirty) UNION ALL "
                f"{events} AND (toString(channel), toDate(ets, 'UTC')) IN (SELECT tenant, day FROM rollup_dirty))",
                params)
    return (f"{rolled} AND NOT EXISTS (SELECT 1 FROM rollup_dirty d WHERE d.tenant = r.tenant AND d.day = {row_day}) "
            f"UNION ALL {events} AND EXISTS (SELECT 1 FROM rollup_dirty d WHERE d.tenant = t.channel AND "
            "d.day = CAST(t.ets AS DATE)))", params)


def rows_table(query: MetricQuery) -> str:
    """learner_days when the request can be cut from it (whole days; grouped and scoped by app or hierarchy
    only), else learner_hours: the daily rows are the same learners, devices and sessions without the hour,
    content and course/batch ids, so several times fewer rows for the common requests."""
    whole_days = _midnight_utc(query.start) and _midnight_utc(query.end)
    by_ok = query.by != "object_id"
    scope_ok = query.scope is None or query.scope.kind.startswith("rollup.")
    return "learner_days" if whole_days and by_ok and scope_ok else "learner_hours"


Deltas = dict[date, int]  # a marked day → the last log offset its rollups cover


@dataclass(frozen=True, slots=True)
class MarkedSlices:
    """The tenant's marked days of a window, as marked_slices_sql reads them: `whole`, read from telemetry whole
    (never refreshed, refreshed before offsets were kept, or marked by a forget, recompute or backfill: the rollups
    may hold what is gone), and `deltas`, read as their rollups plus the events past the offset they cover."""

    whole: tuple[date, ...]
    deltas: Deltas

    @property
    def days(self) -> tuple[date, ...]:
        return tuple(sorted({*self.whole, *self.deltas}))

    @classmethod
    def of(cls, rows: Iterable[tuple[object, ...]]) -> MarkedSlices:
        whole: list[date] = []
        deltas: Deltas = {}
        for day, covered in rows:
            parsed = day if isinstance(day, date) else date.fromisoformat(str(day)[:10])
            if covered is None:
                whole.append(parsed)
            else:
                deltas[parsed] = int(str(covered))
        return cls(tuple(whole), deltas)


def marked_slices_sql(query: MetricQuery, dialect: str) -> BoundSql | None:
    """The days of the window the tenant has marked, each with the log offset its rollups cover, or NULL when it
    must be read whole (MarkedSlices). ClickHouse keeps no covered offsets (several writers, no order of offsets
    across them): its marked days are read whole. None for a request over every tenant
    (an admin naming none): its statement reads the marks itself."""
    if query.tenant is None:
        return None
    start, end = timestamp(query.start, dialect), timestamp(query.end, dialect)
    if dialect == "clickhouse":
        sql = ("SELECT DISTINCT day, CAST(NULL AS Nullable(Int64)) FROM rollup_dirty WHERE tenant = {tenant:String} "
               f"AND day >= toDate({start}, 'UTC') AND day <= toDate({end}, 'UTC') ORDER BY day")
        return BoundSql(sql, {"tenant": query.tenant})
    sql = (f"SELECT d.day, CASE WHEN bool_or({whole_mark('d.mark')}) THEN NULL ELSE max(s.covered_offset) END "
           "FROM rollup_dirty AS d LEFT JOIN rollup_state AS s ON s.tenant = d.tenant AND s.day = d.day "
           f"WHERE d.tenant = $tenant AND d.day >= CAST({start} AS DATE) AND d.day <= CAST({end} AS DATE) "
           "GROUP BY d.day ORDER BY d.day")
    return BoundSql(sql, {"tenant": query.tenant})


def marked_events(whole: Iterable[date], deltas: Deltas | None, dialect: str) -> str:
    """A condition on telemetry: the events of the `whole` days, and those of the `deltas` days past their
    covered offsets."""
    parts = [days_of_ets(whole, dialect)] if whole else []
    for day, covered in sorted((deltas or {}).items()):
        parts.append(f"({days_of_ets((day,), dialect)} AND log_offset > {int(covered)})")
    return " OR ".join(parts) or "FALSE"


def date_literal(day: date, dialect: str) -> str:
    """A literal of the store's date type."""
    return f"toDate('{day.isoformat()}')" if dialect == "clickhouse" else f"DATE '{day.isoformat()}'"


def midnight_literal(day: date, dialect: str) -> str:
    """The store's timestamp literal of the day's first instant (UTC)."""
    return timestamp(datetime(day.year, day.month, day.day, tzinfo=UTC), dialect)


def days_of_ets(days: Iterable[date], dialect: str) -> str:
    """A condition on telemetry's `ets`: within one of the UTC `days` (the marked days read from telemetry)."""
    return " OR ".join(f"(ets >= {midnight_literal(day, dialect)} AND "
                       f"ets < {midnight_literal(day + timedelta(days=1), dialect)})" for day in sorted(set(days)))


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
        # a day re-opened before (refreshed) and again now (marked) is one entry: not refreshed, the newest time
        sql = (f"SELECT slice_day, max(reopened_ms), min(refreshed) FROM (SELECT toString(day) AS slice_day, "
               f"toUnixTimestamp64Milli(max(reopened_at)) AS reopened_ms, 1 AS refreshed "
               f"FROM rollup_state WHERE {day_range}{tenant} GROUP BY tenant, day HAVING max(reopened_at) >= {since} "
               f"UNION ALL SELECT toString(day), toUnixTimestamp64Milli(max(last_ingested)), 0 FROM rollup_dirty "
               f"WHERE {day_range}{tenant} AND toDate(last_ingested, 'UTC') > day GROUP BY tenant, day) "
               "GROUP BY slice_day ORDER BY slice_day")
        return BoundSql(sql, params)
    tenant = "" if params is None else " AND tenant = $tenant"
    day_range = f"day >= CAST({start} AS DATE) AND day <= CAST({end} AS DATE)"
    sql = (f"SELECT slice_day, max(reopened_ms), min(refreshed) FROM (SELECT CAST(day AS VARCHAR) AS slice_day, "
           f"epoch_ms(max(reopened_at)) AS reopened_ms, 1 AS refreshed FROM rollup_state "
           f"WHERE {day_range}{tenant} GROUP BY tenant, day HAVING max(reopened_at) >= {since} "
           f"UNION ALL SELECT CAST(day AS VARCHAR), epoch_ms(max(last_ingested)), 0 FROM rollup_dirty WHERE "
           f"{day_range}{tenant} AND CAST(last_ingested AS DATE) > day GROUP BY tenant, day) AS s "
           "GROUP BY slice_day ORDER BY slice_day")
    return BoundSql(sql, params)


def whole_days(query: MetricQuery) -> bool:
    """The window starts and ends at UTC midnights."""
    return _midnight_utc(query.start) and _midnight_utc(query.end)


def _midnight_utc(moment: datetime) -> bool:
    return _whole_hour(moment) and moment.astimezone(UTC).hour == 0


def _whole_hour(moment: datetime) -> bool:
    return moment.minute == 0 and moment.second == 0 and moment.microsecond == 0
