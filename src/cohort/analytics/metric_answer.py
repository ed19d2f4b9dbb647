"""The answer to one metric request: its cells read from the store, suppressed for the caller's role, with
how fresh and how complete the figures are.

Runs on a query thread (the API puts it there), within the query bounds of the settings: the cells and
the freshness are two statements sharing one time limit. A request whose cells would not fit in the
row limit is refused (ERR_METRIC_TOO_LARGE) rather than cut short: suppression needs every cell of a
bucket, and a series missing its last buckets would read as a drop in activity.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cohort.analytics.metric_query import MetricQuery, iso
from cohort.analytics.metrics import Metric
from cohort.analytics.metric_sql import BoundSql
from cohort.analytics.rollup_metric import MarkedSlices, RollupMetric, late_slices_sql, marked_slices_sql
from cohort.analytics.sketch_cells import (ESTIMATE, marked_rows, marked_sql, sketch_cells, sketch_plan,
                                          sketches_sql)
from cohort.analytics.small_cells import Cell, SuppressedSeries, suppress
from cohort.analytics.small_cells import exact as unsuppressed
from cohort.core.errors import CohortError, ErrorCode
from cohort.store.base import QueryResult, QueryTimeout, Store


SKETCH_ROWS = 1_000_000  # rows of sketches a request may merge (the result's byte bound applies too)


@dataclass(frozen=True, slots=True)
class QueryBounds:
    row_limit: int  # most cells
    timeout_s: float
    max_result_bytes: int
    max_memory_bytes: int


def answer_metric(store: Store, metric: Metric, query: MetricQuery, *, suppressed: bool, k: int,
                  bounds: QueryBounds, now: datetime) -> dict[str, Any]:
    """The response body's `result` for `metric` over `query` (CohortError or QueryTimeout when it fails).

    Freshness is read first: every event acknowledged by then is in the figures read after it (its day is
    refreshed, or marked and read from telemetry), so `as_of` never claims more than the cells hold."""
    dialect = store.capabilities.sql_dialect
    deadline = time.monotonic() + bounds.timeout_s
    newest = metric.freshness_sql(query, dialect)
    newest_ms, _ = _freshness(_run(store, newest, 1, deadline, bounds).rows)
    cells, exact = sketched_cells(store, metric, query, dialect, bounds, deadline, learners=suppressed)
    if cells is None:
        statement = _cells_statement(store, metric, query, dialect, bounds, deadline)
        result = _run(store, statement, bounds.row_limit, deadline, bounds)
        if result.truncated:
            raise CohortError(ErrorCode.METRIC_TOO_LARGE, f"more than {bounds.row_limit} cells: narrow from/to, choose "
                              f"a coarser granularity or group by fewer values")
        cells = [_cell(row) for row in result.rows]
    if len(cells) > bounds.row_limit:
        raise CohortError(ErrorCode.METRIC_TOO_LARGE, f"more than {bounds.row_limit} cells: narrow from/to, choose a "
                          f"coarser granularity or group by fewer values")
    series = suppress(cells, k) if suppressed else unsuppressed(cells, k)
    late: list[dict[str, Any]] | None = None
    if "learner_hours" in metric.sources:  # the rollups know which days late data re-opened
        rows = _run(store, late_slices_sql(query, dialect, now), bounds.row_limit, deadline, bounds).rows
        late = [{"day": str(day), "reopened_at": iso(datetime.fromtimestamp(int(at) / 1000, tz=UTC)),
                 "refreshed": bool(refreshed)} for day, at, refreshed in rows]
    return _body(metric, query, series, newest_ms, now, late, exact)


def sketched_cells(store: Store, metric: Metric, query: MetricQuery, dialect: str, bounds: QueryBounds,
                   deadline: float, learners: bool = True) -> tuple[list[Cell] | None, bool]:
    """The cells merged from learner_sketches when they can answer (sketch_cells), and whether they are exact;
    (None, True) when they cannot, or when the sketches would not fit the result bounds: then the learner rows
    answer, exactly. Days marked since their refresh are sketched from telemetry (sketch_cells.marked_sql).
    Without `learners` (an answer not suppressed) the cells' learners are not counted."""
    plan = sketch_plan(metric.name, query, learners) if isinstance(metric, RollupMetric) else None
    if plan is None:
        return None, True
    marks = marked_slices_sql(query, dialect)
    if marks is None:
        return None, True
    marked = MarkedSlices.of(_run(store, marks, bounds.row_limit, deadline, bounds).rows)
    result = _run(store, sketches_sql(plan, query, dialect, marked.whole), SKETCH_ROWS, deadline, bounds)
    if result.truncated:
        return None, True
    rows = result.rows
    if marked.days:  # sketched now, from telemetry: whole days, and the rest of the others' since their refresh
        fresh = _run(store, marked_sql(plan, query, dialect, marked.whole, marked.deltas), SKETCH_ROWS, deadline,
                     bounds)
        if fresh.truncated:
            return None, True
        rows = rows + marked_rows(plan, query, fresh.rows)
    return sketch_cells(plan, query, rows)


def _run(store: Store, statement: BoundSql, row_limit: int, deadline: float, bounds: QueryBounds) -> QueryResult:
    """One of the request's statements, within what is left of its time limit."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise QueryTimeout(f"the metric took longer than {bounds.timeout_s:g} s")
    return store.query(statement.sql, statement.params, row_limit, remaining,
                       max_result_bytes=bounds.max_result_bytes, max_memory_bytes=bounds.max_memory_bytes)


def _cells_statement(store: Store, metric: Metric, query: MetricQuery, dialect: str, bounds: QueryBounds,
                     deadline: float) -> BoundSql:
    """The cells' statement; a rollup metric's names the tenant's marked days, read first (one small read of
    rollup_dirty), so that with none marked it leaves telemetry out. A day marked after this read is read from
    the rollup as the refresher left it: each day's figures are exact as of a moment during the request."""
    if not isinstance(metric, RollupMetric) or not metric.reads_rollups(query):
        return metric.cell_sql(query, dialect)
    marks = marked_slices_sql(query, dialect)
    if marks is None:
        return metric.cell_sql(query, dialect)
    marked = MarkedSlices.of(_run(store, marks, bounds.row_limit, deadline, bounds).rows)
    return metric.cell_sql(query, dialect, marked.whole, marked.deltas)


def _cell(row: tuple[Any, ...]) -> Cell:
    bucket, group, value, learners = row
    if isinstance(value, str):  # exact numbers come back as text when they are wider than 64 bits
        value = float(value) if "." in value else int(value)
    return Cell(int(bucket), None if group is None else str(group), value, int(learners))


def _freshness(rows: list[tuple[Any, ...]]) -> tuple[int | None, int]:
    newest_ms, count = rows[0] if rows else (None, 0)
    if not count or newest_ms is None:
        return None, 0
    return int(newest_ms), int(count)


def _body(metric: Metric, query: MetricQuery, series: SuppressedSeries, newest_ms: int | None,
          now: datetime, late: list[dict[str, Any]] | None = None, exact: bool = True) -> dict[str, Any]:
    params = query.as_params()
    return {
        "metric": metric.name, "description": metric.description, "unit": metric.unit,
        "tenant": query.tenant, "scope": params["scope"], "from": params["from"], "to": params["to"],
        "granularity": query.granularity, "by": query.by,
        "series": [{"bucket": iso(datetime.fromtimestamp(cell.bucket, tz=UTC)), "group": cell.group,
                    "value": cell.value, "suppressed": cell.suppressed} for cell in series.cells],
        "suppression": {"applied": series.applied, "k": series.k, "suppressed_cells": series.suppressed_cells},
        "exact": exact, **({} if exact else {"estimate": ESTIMATE}),
        **freshness_and_completeness(query.end, newest_ms, now, late, "figures"),
    }


def freshness_and_completeness(end: datetime, newest_ms: int | None, now: datetime,
                               late: list[dict[str, Any]] | None, what: str) -> dict[str, Any]:
    """The `freshness` and `completeness` of an answer over a window ending at `end` whose newest acknowledgement
    is `newest_ms` (`what` names what grows: figures, rows); `late`: the days late (offline) events re-opened
    within the last LATE_DAYS, when known."""
    closed = end <= now
    as_of = None if newest_ms is None else datetime.fromtimestamp(newest_ms / 1000, tz=UTC)
    if not closed:
        note = f"the window is still open: its {what} grow as events arrive"
    elif as_of is None:
        note = "no events of this tenant (and scope) are stored yet"
    elif as_of < end:
        note = "the newest stored event was acknowledged before the window closed: events still on their way are " \
               "not counted"
    else:
        note = "the window is closed; events that devices send late (offline use) may still add to it"
    return {
        "freshness": {"as_of": None if as_of is None else iso(as_of),
                      "lag_seconds": None if as_of is None else round(max(0.0, (now - as_of).total_seconds()), 3)},
        "completeness": {"window_closed": closed, "note": note, **({} if late is None else {"late_slices": late})},
    }
