"""scope_filter: the condition is true exactly for the events a scope covers, and never NULL, on both engines.

Each case is an event's JSON and whether a scope covers it; the condition runs over a one-row table on real
DuckDB and on ClickHouse (chdb), and the SQL it is written as reads back the same through sqlglot (the guard
re-parses what it hands the engine).
"""

from __future__ import annotations

import duckdb
import orjson
import pytest
import sqlglot

from cohort.security.identity import Scope
from cohort.security.scope_filter import describe_scope, scope_condition, scope_condition_sql


def _event(cdata=None, course=None, rollup=None) -> dict:
    event: dict = {"eid": "START", "context": {"channel": "t"}, "object": {"id": "do_1"}}
    if cdata is not None:
        event["context"]["cdata"] = cdata
    if course is not None:
        event["object"]["rollup"] = {"l1": course}
    if rollup is not None:
        event["context"]["rollup"] = rollup
    return event


CASES: list[tuple[str, dict, bool]] = [
    ("batch:b1", _event(cdata=[{"type": "Batch", "id": "b1"}]), True),
    ("batch:b1", _event(cdata=[{"id": "b1", "type": "CourseBatch", "extra": 1}]), True),
    ("batch:b0,b1", _event(cdata=[{"type": "Feature", "id": "x"}, {"type": "batch", "id": "b1"}]), True),
    ("batch:b1", _event(cdata=[{"type": "Course", "id": "b1"}]), False),
    ("batch:b1", _event(cdata=[{"type": "Batch", "id": "b10"}]), False),
    ("batch:b1", _event(cdata=[{"type": "Batch", "id": "B1"}]), False),
    ("batch:b1", _event(cdata=[{"type": "Batch"}, {"id": "b1"}]), False),  # the two fields in different entries
    ("batch:b1", _event(cdata=[]), False),
    ("batch:b1", _event(), False),
    ("batch:b1", _event(cdata="b1"), False),
    ("course:c1", _event(course="c1"), True),
    ("course:c1", _event(cdata=[{"type": "Course", "id": "c1"}]), True),
    ("course:c1", _event(course="c2", cdata=[{"type": "Batch", "id": "c1"}]), False),
    ("course:c1", _event(), False),
    ("rollup.l2:s1", _event(rollup={"l1": "state", "l2": "s1"}), True),
    ("rollup.l2:s1", _event(rollup={"l1": "s1", "l3": "s1"}), False),
    ("rollup.l2:s1", _event(rollup={"l2": "s10"}), False),
    ("rollup.l4:a,b", _event(rollup={"l4": "b"}), True),
    ("rollup.l2:s1", _event(), False),
]


@pytest.fixture(scope="module")
def clickhouse(clickhouse_dsn):
    import clickhouse_connect

    client = clickhouse_connect.get_client(dsn=clickhouse_dsn)
    yield client
    client.close()


@pytest.mark.parametrize("scope, event, covered", CASES, ids=[f"{s}-{i}" for i, (s, _, _) in enumerate(CASES)])
def test_the_condition_covers_exactly_the_scopes_events_on_duckdb(scope, event, covered):
    sql = scope_condition_sql(Scope.parse(scope), "duckdb")
    con = duckdb.connect()
    try:
        value = con.execute(f"SELECT {sql} FROM (SELECT CAST(? AS JSON) AS event)",
                            [orjson.dumps(event).decode()]).fetchone()[0]
    finally:
        con.close()
    assert value is covered, (scope, event, sql)


@pytest.mark.parametrize("scope, event, covered", CASES, ids=[f"{s}-{i}" for i, (s, _, _) in enumerate(CASES)])
def test_the_condition_covers_exactly_the_scopes_events_on_clickhouse(clickhouse, scope, event, covered):
    sql = scope_condition_sql(Scope.parse(scope), "clickhouse")
    value = clickhouse.query(f"SELECT toUInt8({sql}) FROM (SELECT {{e:String}} AS event)",
                             parameters={"e": orjson.dumps(event).decode()}).result_rows[0][0]
    assert value == int(covered), (scope, event, sql)


@pytest.mark.parametrize("dialect", ["duckdb", "clickhouse"])
@pytest.mark.parametrize("scope", ["batch:b1,b2", "course:c1", "rollup.l1:x", "rollup.l3:s-1,s.2"])
def test_the_condition_reads_back_as_written(dialect, scope):
    """What the rewrite writes is parsed again by the guard's re-check: it must read back the same."""
    written = scope_condition(Scope.parse(scope), dialect).sql(dialect=dialect)
    assert sqlglot.parse_one(written, read=dialect).sql(dialect=dialect) == written


def test_a_scope_is_described_for_people():
    assert describe_scope(Scope.parse("batch:b1,b2")) == "events whose context.cdata names course batch b1 or b2"
    assert "course c1" in describe_scope(Scope.parse("course:c1"))
    assert describe_scope(Scope.parse("rollup.l3:s1")) == "events whose context.rollup.l3 is s1"
