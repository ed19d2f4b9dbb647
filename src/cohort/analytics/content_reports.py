"""Reports over content and assessment items: which content is played most (top_content) and how hard each
assessment item is (item_stats), over a window of the caller's tenant and scope.

Both are read the way the series metrics are (rollup_metric): the daily rollups (content_days, item_days)
for the slices the refresher has caught up with, and `telemetry` for the slices marked in rollup_dirty
(one row per event, of the same shape, added to the rest: content_days' by its own definition,
rollup_tables.content_event_rows), so the figures are exact at any moment. The tenant's marked days are
read just before (report_answer.marked_days_sql) and named in the statement, so once the refresher has
caught up telemetry is not read at all; without them (an admin over every tenant, lineage) the statement
joins rollup_dirty itself. A window that does not start and end on whole UTC days cannot be cut from daily
rows: it is read from `telemetry` alone. item_days keeps no scope columns (no rollup levels, batch or course
ids), so a scoped caller's item statistics are read from `telemetry` alone, through the scope filter, which
the scope columns of the rollups stand for anyway.

Rules (those of the metrics, metrics.py, plus):
- a content's plays are START events of the content player for it (`object.id`); its time spent is the
  edata.duration of its player ENDs (0..86400 s); a completion is a player END whose edata.summary holds
  progress 100; its learners are the distinct actors with a play of it (content_days keeps actor ids
  only, and player STARTs come from the learner);
- an item is `edata.item.id` of ASSESS events, within the content that asked it (`object.id`); a learner's
  first attempt is their ASSESS of it with the earliest `ets` in the window and scope, correct when its
  score is the item's full marks (score ≥ maxscore > 0); the average score is Σscore / Σmaxscore over
  every attempt; the time per attempt is the mean edata.duration (a missing one counts 0, as item_days
  keeps it).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from cohort.analytics.metric_sql import BoundSql, json_number, json_text, scope_where, timestamp
from cohort.analytics.report_query import Report, ReportColumn, ReportOption, ReportQuery
from cohort.analytics.rollup_metric import rollup_freshness_sql
from cohort.analytics.rollup_tables import content_event_rows
from cohort.security.scope_filter import scope_condition_columns

TOP_CONTENT_LIMIT = 10
ITEM_STATS_LIMIT = 100


def reads_rollups(query: ReportQuery) -> bool:
    """Whether the window is made of whole UTC days, the grain of content_days and item_days."""
    return _midnight(query.start) and _midnight(query.end)


@dataclass(frozen=True, slots=True)
class TopContent:
    name: str = "top_content"
    description: str = ("contents ranked by plays (START events of the content player, object.id), most first, "
                        "ties by content id; with their time spent, completions and learners")
    columns: tuple[ReportColumn, ...] = (
        ReportColumn("content_id", "id", "the content (object.id of its player events)"),
        ReportColumn("plays", "plays", "START events of the content player for it"),
        ReportColumn("time_spent", "seconds", "edata.duration of its player ENDs (0..86400 s each)"),
        ReportColumn("completions", "plays", "player ENDs whose edata.summary holds progress 100"),
        ReportColumn("learners", "learners", "distinct actors with a play of it"),
    )
    options: tuple[ReportOption, ...] = (
        ReportOption("limit", int, "how many contents, most played first", TOP_CONTENT_LIMIT, 1, 100),
    )
    sources: tuple[str, ...] = ("content_days", "telemetry")
    individual: bool = False

    def rows_sql(self, query: ReportQuery, dialect: str) -> BoundSql:
        rows, params = _content_rows(query, dialect)
        limit = int(query.options.get("limit") or TOP_CONTENT_LIMIT)
        sql = (f"SELECT object_id AS content_id, CAST(sum(n_plays) AS BIGINT) AS plays, "
               f"round(COALESCE(sum(n_time), 0), 3) AS time_spent, CAST(sum(n_completed) AS BIGINT) AS completions, "
               f"CAST(count(DISTINCT CASE WHEN n_plays > 0 THEN NULLIF(actor_id, '') END) AS BIGINT) AS learners "
               f"FROM ({rows}) AS r WHERE object_id <> '' GROUP BY object_id HAVING sum(n_plays) > 0 "
               f"ORDER BY plays DESC, content_id LIMIT {limit}")
        return BoundSql(sql, params)

    def freshness_sql(self, query: ReportQuery, dialect: str) -> BoundSql:
        return _freshness(query, dialect)


@dataclass(frozen=True, slots=True)
class ItemStats:
    name: str = "item_stats"
    description: str = ("assessment items (edata.item.id of ASSESS events, per content) hardest first: the lowest "
                        "share of learners right at their first attempt; with attempts, average score and time")
    columns: tuple[ReportColumn, ...] = (
        ReportColumn("item_id", "id", "the item (edata.item.id)"),
        ReportColumn("content_id", "id", "the content that asked it (object.id)"),
        ReportColumn("attempts", "attempts", "ASSESS events of the item"),
        ReportColumn("learners", "learners", "distinct learners who attempted it"),
        ReportColumn("first_attempt_correct_pct", "percent",
                     "learners whose first attempt scored full marks, of the learners who attempted it"),
        ReportColumn("average_score_pct", "percent", "Σ edata.score / Σ edata.item.maxscore over every attempt"),
        ReportColumn("avg_seconds", "seconds", "mean edata.duration of an attempt"),
    )
    options: tuple[ReportOption, ...] = (
        ReportOption("content", str, "only the items of this content (object.id)"),
        ReportOption("limit", int, "how many items, hardest first", ITEM_STATS_LIMIT, 1, 500),
    )
    sources: tuple[str, ...] = ("item_days", "telemetry")
    individual: bool = False

    def rows_sql(self, query: ReportQuery, dialect: str) -> BoundSql:
        rows, params = _item_rows(query, dialect)
        limit = int(query.options.get("limit") or ITEM_STATS_LIMIT)
        argmin = "argMin" if dialect == "clickhouse" else "arg_min"
        double = "Float64" if dialect == "clickhouse" else "DOUBLE"
        per_learner = (f"SELECT content_id, item_id, actor_id, sum(n_attempts) AS a, {argmin}(f_score, f_ets) AS fs, "
                       f"{argmin}(f_max, f_ets) AS fm, sum(s_score) AS ss, sum(s_max) AS sm, sum(s_seconds) AS sd "
                       f"FROM ({rows}) AS r WHERE item_id <> '' GROUP BY content_id, item_id, actor_id")
        learners = "count(DISTINCT NULLIF(actor_id, ''))"
        correct = "sum(CASE WHEN actor_id <> '' AND fm > 0 AND fs >= fm THEN 1 ELSE 0 END)"
        sql = (f"SELECT item_id, content_id, CAST(sum(a) AS BIGINT) AS attempts, CAST({learners} AS BIGINT) AS learners, "
               f"100 * CAST({correct} AS {double}) / NULLIF({learners}, 0) AS first_attempt_correct_pct, "
               f"100 * CAST(sum(ss) AS {double}) / NULLIF(sum(sm), 0) AS average_score_pct, "
               f"CAST(sum(sd) AS {double}) / sum(a) AS avg_seconds FROM ({per_learner}) AS l "
               f"GROUP BY item_id, content_id "
               f"ORDER BY first_attempt_correct_pct ASC NULLS LAST, attempts DESC, item_id, content_id LIMIT {limit}")
        return BoundSql(sql, params)

    def freshness_sql(self, query: ReportQuery, dialect: str) -> BoundSql:
        return _freshness(query, dialect)


# -- the rows each report aggregates: refreshed slices from its rollup, marked ones (or all) from telemetry

def _content_rows(query: ReportQuery, dialect: str) -> tuple[str, dict[str, Any] | None]:
    """(object_id, actor_id, n_plays, n_time, n_completed) rows of the scope: content_days' rows, and for the
    marked slices (or a window off whole days) the same rows per event, by the rollup's own definition
    (rollup_tables.content_event_rows), so one scope condition over the scope columns serves both."""
    # window, tenant and the scope over the event's JSON: the same events as the scope columns' condition
    # (scope_filter), kept on the event rows too because its cheap text test first skips most events before
    # their cdata is parsed into batch and course ids
    where, params = scope_where(query.window(), dialect)
    scope = [] if query.scope is None else [f"({scope_condition_columns(query.scope, dialect)})"]
    columns = "object_id, actor_id, plays AS n_plays, time_spent AS n_time, completed AS n_completed"

    def from_events(condition: list[str]) -> str:
        rows = content_event_rows(" AND ".join(condition), dialect)
        return f"SELECT {columns} FROM ({rows}) AS e" + (f" WHERE {' AND '.join(scope)}" if scope else "")

    if not reads_rollups(query):
        return from_events(where), params
    final = " FINAL" if dialect == "clickhouse" else ""
    rolled = (f"SELECT {columns} FROM content_days AS cd{final} "
              f"WHERE {' AND '.join([*_rollup_where('cd', query, dialect, params), *scope])}")
    marked = _marked_events("telemetry", query, dialect)
    return (rolled if marked is None else f"{rolled} UNION ALL {from_events([*where, marked])}"), params


def _item_rows(query: ReportQuery, dialect: str) -> tuple[str, dict[str, Any] | None]:
    """(actor_id, item_id, content_id, n_attempts, f_ets, f_score, f_max, s_score, s_max, s_seconds) rows:
    item_days' grain, or one per ASSESS event. A scoped query reads telemetry only (item_days has no scope
    columns)."""
    where, params = scope_where(query.window(), dialect)
    content = query.options.get("content")
    if content is not None:
        params = {**(params or {}), "content": str(content)}
    bind = "{content:String}" if dialect == "clickhouse" else "$content"
    score = f"COALESCE({json_number('edata', ('score',), dialect)}, 0)"
    top = f"COALESCE({json_number('edata', ('item', 'maxscore'), dialect)}, 0)"
    spent = f"COALESCE({json_number('edata', ('duration',), dialect)}, 0)"
    raw = (f"SELECT COALESCE(actor_id, '') AS actor_id, COALESCE({json_text('edata', ('item', 'id'), dialect)}, '') "
           f"AS item_id, COALESCE(object_id, '') AS content_id, 1 AS n_attempts, ets AS f_ets, {score} AS f_score, "
           f"{top} AS f_max, {score} AS s_score, {top} AS s_max, {spent} AS s_seconds FROM telemetry AS t WHERE ")
    raw_where = ["eid = 'ASSESS'", *where]  # first: DuckDB tests the conditions in this order, the scope's last
    if content is not None:
        raw_where.append(f"object_id = {bind}")
    if not reads_rollups(query) or query.scope is not None:
        return raw + " AND ".join(raw_where), params
    rolled_where = _rollup_where("i", query, dialect, params)
    if content is not None:
        rolled_where.append(f"content_id = {bind}")
    final = " FINAL" if dialect == "clickhouse" else ""
    rolled = (f"SELECT actor_id, item_id, content_id, attempts AS n_attempts, first_ets AS f_ets, "
              f"first_score AS f_score, first_max AS f_max, score_sum AS s_score, max_sum AS s_max, "
              f"duration_sum AS s_seconds FROM item_days AS i{final} WHERE {' AND '.join(rolled_where)}")
    marked = _marked_events("t", query, dialect)
    return (rolled if marked is None else f"{rolled} UNION ALL {raw + ' AND '.join([*raw_where, marked])}"), params


def _rollup_where(alias: str, query: ReportQuery, dialect: str, params: dict[str, Any] | None) -> list[str]:
    """A daily rollup's rows of the window and tenant whose slice is not marked (those come from telemetry)."""
    where = [f"day >= {_date(query.start, dialect)}", f"day < {_date(query.end, dialect)}"]
    if params is not None and "tenant" in params:
        where.append("tenant = {tenant:String}" if dialect == "clickhouse" else "tenant = $tenant")
    if _marks_known(query):
        if query.marked:
            where.append(f"day NOT IN ({', '.join(_date(day, dialect) for day in query.marked)})")
    elif dialect == "clickhouse":
        where.append("(toString(tenant), day) NOT IN (SELECT tenant, day FROM rollup_dirty)")
    else:
        where.append(f"NOT EXISTS (SELECT 1 FROM rollup_dirty d WHERE d.tenant = {alias}.tenant AND d.day = {alias}.day)")
    return where


def _marked_events(table: str, query: ReportQuery, dialect: str) -> str | None:
    """The condition on rows of `table` (telemetry, or its alias) of marked slices: not in the rollup yet, so
    read here. None: no slice is marked (the rollup alone answers)."""
    if _marks_known(query):
        if not query.marked:
            return None
        return "(" + " OR ".join(f"(ets >= {timestamp(_at(day), dialect)} AND ets < "
                                 f"{timestamp(_at(day + timedelta(days=1)), dialect)})" for day in query.marked) + ")"
    if dialect == "clickhouse":
        return "(toString(channel), toDate(ets, 'UTC')) IN (SELECT tenant, day FROM rollup_dirty)"
    return (f"EXISTS (SELECT 1 FROM rollup_dirty d WHERE d.tenant = {table}.channel AND "
            f"d.day = CAST({table}.ets AS DATE))")


def _marks_known(query: ReportQuery) -> bool:
    """Whether the tenant's marked days were read before (report_answer), so the statement can name them."""
    return query.marked is not None and query.tenant is not None


def _freshness(query: ReportQuery, dialect: str) -> BoundSql:
    """What the rows can include at most: the newest acknowledgement of the tenant the rollups and the marked
    slices hold. Every stored batch marks its slices, so this is telemetry's newest too, whichever the rows
    are read from, without scanning telemetry (a scope narrowed over the events' JSON took most of a scoped
    item_stats' time)."""
    return rollup_freshness_sql(query.window(), dialect)


def _date(moment: datetime | date, dialect: str) -> str:
    day = moment.date().isoformat() if isinstance(moment, datetime) else moment.isoformat()  # midnights of UTC
    return f"toDate('{day}')" if dialect == "clickhouse" else f"DATE '{day}'"


def _at(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _midnight(moment: datetime) -> bool:
    return (moment.hour, moment.minute, moment.second, moment.microsecond) == (0, 0, 0, 0)


REPORTS: tuple[Report, ...] = (TopContent(), ItemStats())
