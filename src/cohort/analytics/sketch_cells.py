"""A metric's cells merged from learner_sketches (analytics/sketch_table.py), not counted over learner rows.

When: a tenant's request over whole UTC days, by day or coarser, for the whole tenant or a scope of hierarchy
levels, grouped as learner_sketches keeps it (sketch_table.COMBOS), of a metric the sketches hold (PLANS).
Then the cells are the same as over the rollups (rollup_metric): the same buckets and groups, sums equal,
distinct counts exact where every (day, group) merged is small (distinct_sketch.EXACT_ROWS) and estimated
(relative standard error distinct_sketch.RELATIVE_STANDARD_ERROR) where any is not; the answer says which.

The days of the window marked since their refresh (a live tenant's newest day, usually) are sketched at read
time from telemetry by the refresh's own SQL (marked_sql), and merged with the stored days'. A scope of
several values (an educator's schools) is the union of their sketches (distinct counts) and the sum of their
totals (a row has one value per level).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pyarrow as pa

from cohort.analytics import distinct_sketch
from cohort.analytics.metric_query import MetricQuery
from cohort.analytics.metric_sql import BoundSql
from cohort.analytics.rollup_metric import Deltas, date_literal, marked_events, whole_days
from cohort.analytics.small_cells import Cell
from cohort.analytics.sketch_table import (COMBOS, RESULT_SCHEMA, TOTALS, rows_of_events, sketch_rows, sketch_select,
                                          table_of)

# a marked day's slot is sketched from its events, not its learner rows: kept exact up to this many events (its
# learner rows, once refreshed, are fewer), so that a small tenant's live figures do not turn into estimates
MARKED_EXACT_ROWS = 65_536
ESTIMATE = {"method": f"HyperLogLog (2^{distinct_sketch.P} registers) over per-day sketches",
            "relative_standard_error": distinct_sketch.RELATIVE_STANDARD_ERROR}


@dataclass(frozen=True, slots=True)
class SketchPlan:
    """What a metric's cells read: the distinct count of `value_kind` (or the total of its rows, `summed`), and
    the learners of `learner_kind` (None: not read, when no suppression needs them)."""

    value_kind: str
    learner_kind: str | None
    summed: bool = False
    decimals: int | None = None  # a summed value's rounding (None: an integer count)


PLANS = {
    "active_learners": SketchPlan("learners", "learners"),
    "active_devices": SketchPlan("devices", "learners"),
    "sessions": SketchPlan("sessions", "learners"),
    "time_spent": SketchPlan("timed", "timed", summed=True, decimals=3),
    "content_plays": SketchPlan("played", "played", summed=True),
    "qr_scans": SketchPlan("scanned", "scanned", summed=True),
}


def sketch_plan(metric: str, query: MetricQuery, learners: bool = True) -> SketchPlan | None:
    """The plan when learner_sketches can answer the request, else None. Without `learners` (an answer that is
    not suppressed: only suppression reads a cell's learners), the learner sketches are not read: a distinct
    metric reads half the bytes, a summed one no sketch at all."""
    if metric not in PLANS or query.tenant is None or query.granularity == "hour" or not whole_days(query):
        return None
    if query.scope is not None and not query.scope.kind.startswith("rollup."):
        return None
    if (_level(query), _by_dim(query)) not in COMBOS:
        return None
    return PLANS[metric] if learners else replace(PLANS[metric], learner_kind=None)


def _level(query: MetricQuery) -> str:
    return "" if query.scope is None else query.scope.kind.removeprefix("rollup.")


def _by_dim(query: MetricQuery) -> str:
    """The sketches' by_dim that answers `by`: by the scope's own level, each value of the scope is one group,
    which its sketches by none hold."""
    level = _level(query)
    return "none" if level and query.by == f"rollup.{level}" else query.by


def sketches_sql(plan: SketchPlan, query: MetricQuery, dialect: str, marked: tuple[date, ...] = ()) -> BoundSql:
    """Rows (day, grp, value sketch, learners sketch, total) of the window's slots that have the metric's rows,
    less the `marked` days (read by marked_sql)."""
    clickhouse = dialect == "clickhouse"
    level, by_dim = _level(query), _by_dim(query)
    group = "scope_value" if by_dim != query.by else "grp"
    tenant = "{tenant:String}" if clickhouse else "$tenant"
    values = () if query.scope is None else query.scope.values  # checked by Scope.parse: no quotes
    scope = " AND scope_value IN (" + ", ".join(f"'{v}'" for v in values) + ")" if values else ""
    day_text = "toString(day)" if clickhouse else "CAST(day AS VARCHAR)"
    days = f"day >= {date_literal(query.start.date(), dialect)} AND day < {date_literal(query.end.date(), dialect)}"
    total = TOTALS.get(plan.value_kind, "0")
    table = table_of(by_dim)
    where = (f"tenant = {tenant} AND scope_level = '{level}' AND by_dim = '{by_dim}'{scope} AND {days} AND "
             f"{plan.value_kind} IS NOT NULL")
    if marked:
        where += f" AND day NOT IN ({', '.join(date_literal(day, dialect) for day in sorted(set(marked)))})"
    if clickhouse:  # a day's newest refresh only: a slot it no longer has (after a forget) is not read
        where += (f" AND (day, version) IN (SELECT day, max(version) FROM {table} WHERE tenant = {tenant} AND "
                  f"scope_level = '{level}' AND by_dim = '{by_dim}' AND {days} GROUP BY day)")
    final = " FINAL" if clickhouse else ""
    value = "NULL" if plan.summed else plan.value_kind  # a summed metric's cells need its sketch to exist only
    sql = (f"SELECT {day_text}, {group}, {value}, {plan.learner_kind or 'NULL'}, {total} FROM {table}{final} "
           f"WHERE {where}")
    return BoundSql(sql, {"tenant": query.tenant})


def marked_sql(plan: SketchPlan, query: MetricQuery, dialect: str, marked: tuple[date, ...],
               deltas: Deltas | None = None) -> BoundSql:
    """The `marked` days' slots of the request, sketched from telemetry by the refresh's own SQL (sketch_select's
    rows, for marked_rows): a live tenant's newest day is usually marked; the rest of the window is still read
    from the stored sketches. `deltas`: days whose stored sketches are read too (sketches_sql keeps them), and
    whose events past the covered offset are sketched here, to be merged with them (sketch_cells)."""
    clickhouse = dialect == "clickhouse"
    level, by_dim = _level(query), _by_dim(query)
    channel = "channel = {tenant:String}" if clickhouse else "channel = $tenant"
    rows = rows_of_events(f"{channel} AND ({marked_events(marked, deltas, dialect)})", dialect)
    if query.scope is not None:  # checked by Scope.parse: no quotes
        rows = (f"SELECT * FROM ({rows}) AS s WHERE rollup_{level} IN ("
                + ", ".join(f"'{v}'" for v in query.scope.values) + ")")
    kinds = tuple(kind for kind in dict.fromkeys((plan.value_kind, plan.learner_kind)) if kind is not None)
    select = sketch_select(rows, dialect, ((level, by_dim),), kinds, MARKED_EXACT_ROWS)
    return BoundSql(select, {"tenant": query.tenant})


def marked_rows(plan: SketchPlan, query: MetricQuery, result: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """marked_sql's result as sketches_sql's rows."""
    columns: list[tuple[Any, ...]] = list(zip(*result)) if result else [() for _ in RESULT_SCHEMA]
    data = {field.name: list(column) for field, column in zip(RESULT_SCHEMA, columns)}
    data["day"] = [None if d is None else date.fromisoformat(str(d)[:10]) for d in data["day"]]
    for name in ("key_id", "entry", "items"):  # 64-bit values may come back as text (store.query_results)
        data[name] = [None if v is None else int(v) for v in data[name]]
    slots = sketch_rows(pa.Table.from_pydict(data, schema=RESULT_SCHEMA), 0, MARKED_EXACT_ROWS).to_pylist()
    by_scope = _by_dim(query) != query.by
    total = TOTALS.get(plan.value_kind)
    return [(str(slot["day"]), slot["scope_value"] if by_scope else slot["grp"], slot[plan.value_kind],
             slot[plan.learner_kind] if plan.learner_kind else None, slot[total] if total else 0)
            for slot in slots if slot[plan.value_kind] is not None]


def sketch_cells(plan: SketchPlan, query: MetricQuery, rows: list[tuple[Any, ...]]) -> tuple[list[Cell], bool]:
    """The cells of the rows sketches_sql read, and whether every figure in them is exact (a plan without
    learners leaves each cell's learners at 0: nothing reads them)."""
    values: dict[tuple[int, str | None], list[str | None]] = defaultdict(list)
    learners: dict[tuple[int, str | None], list[str | None]] = defaultdict(list)
    totals: dict[tuple[int, str | None], float] = defaultdict(float)
    for day, grp, value_text, learner_text, total in rows:
        key = (_bucket(str(day)[:10], query), str(grp) if grp else None)
        learners[key].append(learner_text)
        if not plan.summed:
            values[key].append(value_text)
        totals[key] += float(total or 0)
    keys = sorted(learners, key=lambda k: (k[0], k[1] is None, k[1] or ""))
    who, who_exact = (distinct_sketch.counts([learners[key] for key in keys]) if plan.learner_kind
                      else ([0] * len(keys), [True]))
    if plan.summed:
        counted, counted_exact = [0] * len(keys), [True]
    elif plan.value_kind == plan.learner_kind:  # active learners: the same sketches, counted once
        counted, counted_exact = who, who_exact
    else:
        counted, counted_exact = distinct_sketch.counts([values[key] for key in keys])
    cells = []
    for key, learner_count, value_count in zip(keys, who, counted):
        value: float | int = value_count
        if plan.summed:
            value = round(totals[key], plan.decimals) if plan.decimals is not None else int(round(totals[key]))
        cells.append(Cell(key[0], key[1], value, learner_count))
    return cells, all(who_exact) and all(counted_exact)


def _bucket(day_text: str, query: MetricQuery) -> int:
    """The bucket (epoch seconds) of a day, as metric_sql.bucket computes it for the day's rows."""
    day = date.fromisoformat(day_text)
    if query.granularity == "all":
        return int(query.start.timestamp())
    if query.granularity == "week":
        day -= timedelta(days=day.weekday())
    elif query.granularity == "month":
        day = day.replace(day=1)
    return int(_midnight(day).timestamp())


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)
