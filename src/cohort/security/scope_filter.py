"""Which stored events a scope covers, as a SQL condition over the event's JSON, for either store.

An educator's scope names course batches, courses or a level of the tenant's hierarchy (identity.Scope).
Sunbird telemetry says where an event belongs in three places, and the condition reads them as sent:
- batch: a `context.cdata` entry `{"type": "Batch" | "CourseBatch", "id": <batch>}`;
- course: `object.rollup.l1` (the course a content play sits in) or a `context.cdata` `Course` entry;
- rollup.lN: `context.rollup.lN` (the app's organisation hierarchy: e.g. state, district, school).

The condition is built from literals only (scope values are checked by `Scope.parse` to hold no quote),
tests the event's text for a scope value before parsing it (`_mentions`: cheap, and it can only narrow),
parsed once per dialect into a sqlglot tree, so the tenant rewrite of SQL, the metrics and the
re-identification check all use the one definition. An event that does not carry the field is outside
every scope (the condition is false, never NULL).
"""

from __future__ import annotations

import json

import sqlglot
from sqlglot import exp

from cohort.security.identity import Scope

BATCH_TYPES = ("Batch", "CourseBatch", "batch", "courseBatch", "coursebatch")
COURSE_TYPES = ("Course", "course")


def scope_condition(scope: Scope, dialect: str, event_column: str = "event") -> exp.Expr:
    """A boolean condition, true exactly for the events (rows with the JSON `event_column`) in `scope`."""
    return sqlglot.parse_one(scope_condition_sql(scope, dialect, event_column), read=dialect)


def scope_condition_sql(scope: Scope, dialect: str, event_column: str = "event") -> str:
    """`scope_condition` as SQL text of `dialect` (duckdb or clickhouse)."""
    column = _identifier(event_column)
    if scope.kind == "batch":
        exact = _cdata_has(column, BATCH_TYPES, scope.values, dialect)
    elif scope.kind == "course":
        in_rollup = _field_in(column, ("object", "rollup", "l1"), scope.values, dialect)
        exact = f"({in_rollup} OR {_cdata_has(column, COURSE_TYPES, scope.values, dialect)})"
    else:
        level = scope.kind.removeprefix("rollup.")
        exact = _field_in(column, ("context", "rollup", level), scope.values, dialect)
    return f"({_mentions(column, scope.values, dialect)} AND {exact})"


def scope_condition_columns(scope: Scope, dialect: str) -> str:
    """The scope as a condition over a rollup's columns (analytics/rollup_tables.py), which hold what the JSON
    condition above reads, pulled out when the rollup was computed: `batch_ids` (context.cdata Batch and
    CourseBatch ids), `course_ids` (object.rollup.l1 and context.cdata Course ids), `rollup_l1`..`rollup_l4`
    (context.rollup.lN). No JSON is parsed at read time; the same rows are in scope."""
    values = "[" + _list(scope.values) + "]"
    if scope.kind in ("batch", "course"):
        column = "batch_ids" if scope.kind == "batch" else "course_ids"
        if dialect == "clickhouse":
            return f"hasAny({column}, {values})"
        return f"COALESCE(list_has_any({column}, {values}), FALSE)"
    level = scope.kind.removeprefix("rollup.")
    if level not in ("l1", "l2", "l3", "l4"):
        raise ValueError(f"not a scope kind: {scope.kind!r}")
    return f"(rollup_{level} IN ({_list(scope.values)}))"


def _mentions(column: str, values: tuple[str, ...], dialect: str) -> str:
    """Whether the event's text holds one of `values` as a JSON string: a cheap test first, so that only those
    events are parsed (measured over 200 000 sample events, a batch scope's count took 7.5 s without it and
    1.6 s with it on DuckDB, 1.9 s and 0.7 s on ClickHouse). A value the exact test matches is a JSON string of
    letters, digits and `_.:-` (Scope.parse), which JSON writes unescaped, so it appears thus in the text; an
    event written with escapes there would only fall outside the scope, never inside."""
    needles = [_quote(json.dumps(value)) for value in values]
    if dialect == "clickhouse":
        return "(" + " OR ".join(f"position({column}, {needle}) > 0" for needle in needles) + ")"
    return "(" + " OR ".join(f"contains(CAST({column} AS VARCHAR), {needle})" for needle in needles) + ")"


def describe_scope(scope: Scope) -> str:
    """What `scope` covers, for a person (GET /v1/tables, error messages)."""
    values = " or ".join(scope.values)
    if scope.kind == "batch":
        return f"events whose context.cdata names course batch {values}"
    if scope.kind == "course":
        return f"events of course {values} (object.rollup.l1, or a context.cdata Course entry)"
    return f"events whose context.{scope.kind} is {values}"


def _field_in(column: str, path: tuple[str, ...], values: tuple[str, ...], dialect: str) -> str:
    listed = _list(values)
    if dialect == "clickhouse":
        return f"(JSONExtractString({column}, {_list(path)}) IN ({listed}))"
    return f"COALESCE(json_extract_string({column}, '$.{'.'.join(path)}') IN ({listed}), FALSE)"


def _cdata_has(column: str, types: tuple[str, ...], values: tuple[str, ...], dialect: str) -> str:
    if dialect == "clickhouse":
        return (f"arrayExists(x -> JSONExtractString(x, 'type') IN ({_list(types)}) AND JSONExtractString(x, 'id') "
                f"IN ({_list(values)}), JSONExtractArrayRaw({column}, 'context', 'cdata'))")
    # DuckDB: json_contains over the array is true when one element holds both fields (no lambda: sqlglot
    # does not write DuckDB lambdas back faithfully)
    needles = [_quote(json.dumps({"id": value, "type": kind}, separators=(",", ":")))
               for value in values for kind in types]
    # in parentheses: sqlglot reads `f(event -> '$.x', …)` back as a lambda, and the guard parses what it wrote
    cdata = f"(json_extract({column}, '$.context.cdata'))"
    return "COALESCE(" + " OR ".join(f"json_contains({cdata}, {needle})" for needle in needles) + ", FALSE)"


def _list(values: tuple[str, ...]) -> str:
    return ", ".join(_quote(value) for value in values)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _identifier(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise ValueError(f"not a column name: {name!r}")
    return name
