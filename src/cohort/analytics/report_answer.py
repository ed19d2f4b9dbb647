"""The answer to one report request: its rows read from the store, withheld where they could single out a
learner for the caller's role, with how fresh and how complete they are.

Runs on a query thread, within the query bounds, like a series metric (metric_answer): rows, freshness and
late slices are statements sharing one time limit, and a result over the row limit is refused
(ERR_METRIC_TOO_LARGE), not cut short. Suppression, for roles not entitled to individual records
(small_cells.suppression_applies): a report of individual learners (course progress, at-risk) is refused
whole (ERR_AUTH_FORBIDDEN), since no row of it is an aggregate; an aggregate row from fewer than k
distinct learners (its `learners` column) is withheld, and counted. A ranking has no total beside it to
subtract a withheld row from, so no complementary row is withheld (the series metrics' content_plays by
object_id is suppressed by its own cells).
"""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, date, datetime
from typing import Any

from cohort.analytics.metric_answer import QueryBounds, freshness_and_completeness
from cohort.analytics.metric_query import iso
from cohort.analytics.metric_sql import BoundSql
from cohort.analytics.report_query import Report, ReportQuery
from cohort.analytics.rollup_metric import late_slices_sql
from cohort.analytics.rollup_tables import ROLLUP_TABLES
from cohort.core.errors import CohortError, ErrorCode
from cohort.store.base import QueryTimeout, Store

DECIMALS = 3  # floats are rounded here, not in SQL: the two stores round halves differently
MAX_MARKED_DAYS = 400  # more marked days than a window has: the statement finds them itself


def answer_report(store: Store, report: Report, query: ReportQuery, *, suppressed: bool, k: int,
                  bounds: QueryBounds, now: datetime) -> dict[str, Any]:
    """The response body's `result` for `report` over `query` (CohortError or QueryTimeout when it fails)."""
    if report.individual and suppressed:
        raise CohortError(ErrorCode.AUTH_FORBIDDEN, f"{report.name} lists individual learners: your role reads "
                          f"aggregate figures only")
    dialect = store.capabilities.sql_dialect
    deadline = time.monotonic() + bounds.timeout_s

    def run(sql: str, params: dict[str, Any] | None, row_limit: int) -> Any:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise QueryTimeout(f"the report took longer than {bounds.timeout_s:g} s")
        return store.query(sql, params, row_limit, remaining, max_result_bytes=bounds.max_result_bytes,
                           max_memory_bytes=bounds.max_memory_bytes)

    reads_rollups = any(table in ROLLUP_TABLES for table in report.sources)
    marks = marked_days_sql(query, dialect) if reads_rollups else None
    if marks is not None:  # which days to read from telemetry: usually none, once the refresher has caught up
        days = run(marks.sql, marks.params, MAX_MARKED_DAYS + 1).rows
        if len(days) <= MAX_MARKED_DAYS:
            query = replace(query, marked=tuple(sorted(date.fromisoformat(str(day)[:10]) for (day,) in days)))
    statement = report.rows_sql(query, dialect)
    result = run(statement.sql, statement.params, bounds.row_limit)
    if result.truncated:
        raise CohortError(ErrorCode.METRIC_TOO_LARGE, f"more than {bounds.row_limit} rows: narrow from/to or ask "
                          f"for fewer rows (limit)")
    rows = [[_value(value) for value in row] for row in result.rows]
    withheld = 0
    if suppressed:
        at = learners_column(report)
        shown = [row for row in rows if isinstance(row[at], int) and row[at] >= k]
        withheld, rows = len(rows) - len(shown), shown
    newest = report.freshness_sql(query, dialect)
    newest_rows = run(newest.sql, newest.params, 1).rows
    newest_ms = int(newest_rows[0][0]) if newest_rows and newest_rows[0][1] and newest_rows[0][0] is not None \
        else None
    late: list[dict[str, Any]] | None = None
    if reads_rollups:  # the rollups know which days late data re-opened
        statement = late_slices_sql(query.window(), dialect, now)
        late = [{"day": str(day), "reopened_at": iso(datetime.fromtimestamp(int(at) / 1000, tz=UTC)),
                 "refreshed": bool(refreshed)}
                for day, at, refreshed in run(statement.sql, statement.params, bounds.row_limit).rows]
    return _body(report, query, rows, suppressed, k, withheld, newest_ms, now, late)


def marked_days_sql(query: ReportQuery, dialect: str) -> BoundSql | None:
    """The days of the window the tenant has marked in rollup_dirty (what ReportQuery.marked holds). None for a
    request over every tenant (an admin naming none): its statement reads the marks itself.

    Read first because a statement that finds the marks itself scans the window's telemetry to join them
    (measured: most of a refreshed top_content's time). Read this way, an answer is exact as of this read: a
    day marked now is read whole from telemetry; one refreshed since is in both telemetry and the rollup, and
    read from telemetry only (the rollup's rows of a listed day are left out)."""
    if query.tenant is None:
        return None
    first, last = _day(query.start.date(), dialect), _day(query.end.date(), dialect)
    tenant = "{tenant:String}" if dialect == "clickhouse" else "$tenant"
    return BoundSql(f"SELECT DISTINCT day FROM rollup_dirty WHERE tenant = {tenant} AND day >= {first} AND "
                    f"day <= {last} ORDER BY day", {"tenant": query.tenant})


def _day(day: date, dialect: str) -> str:
    return f"toDate('{day.isoformat()}')" if dialect == "clickhouse" else f"DATE '{day.isoformat()}'"


def learners_column(report: Report) -> int:
    """Where an aggregate report's rows say how many distinct learners are behind them."""
    for at, column in enumerate(report.columns):
        if column.name == "learners":
            return at
    raise ValueError(f"report {report.name} is an aggregate without a learners column")


def _value(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, DECIMALS)
    return value


def _body(report: Report, query: ReportQuery, rows: list[list[Any]], suppressed: bool, k: int, withheld: int,
          newest_ms: int | None, now: datetime, late: list[dict[str, Any]] | None) -> dict[str, Any]:
    params = query.as_params()
    return {
        "metric": report.name, "kind": "report", "description": report.description,
        "tenant": query.tenant, "scope": params["scope"], "from": params["from"], "to": params["to"],
        "params": params,
        "columns": [{"name": c.name, "unit": c.unit, "description": c.description} for c in report.columns],
        "rows": rows,
        "suppression": {"applied": suppressed, "k": k, "suppressed_rows": withheld},
        **freshness_and_completeness(query.end, newest_ms, now, late, "rows"),
    }
