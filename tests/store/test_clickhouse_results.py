"""ClickHouse query results rendered for JSON: columns read by position, whatever names the engine gave them."""

from __future__ import annotations

import orjson
import pytest

from cohort.store.clickhouse_results import base_type, wrapped_sql
from cohort.store.clickhouse_store import ClickHouseStore
from cohort.store.query_results import encode_row


@pytest.fixture
def store(clickhouse_dsn, clickhouse_database):
    store = ClickHouseStore(clickhouse_dsn, database=clickhouse_database)
    yield store
    store.close()


def test_the_wrapper_reads_columns_by_position():
    wrapped, converters = wrapped_sql("SELECT 1, 1;", [("1", "UInt8"), ("1", "Nullable(Int128)")], 10)
    assert wrapped == "SELECT _q.c0, toString(_q.c1) FROM (\nSELECT 1, 1\n) AS _q(c0, c1) LIMIT 11"
    assert converters[0] is None and converters[1] is not None


@pytest.mark.parametrize("type_name, family", [("Nullable(Int128)", "Int128"), ("LowCardinality(Nullable(String))",
                                                                                  "String"),
                                                ("SimpleAggregateFunction(sum, Int64)", "Int64"),
                                                ("Array(Nullable(String))", "Array"), ("DateTime64(9, 'UTC')",
                                                                                       "DateTime64")])
def test_wrappers_that_do_not_change_values_are_seen_through(type_name, family):
    assert base_type(type_name) == family


def test_unnamed_subqueries_and_columns_of_one_name_come_back_each_in_its_place(store):
    """DESCRIBE names an unnamed scalar subquery `_subquery_N` and wrapping the statement renumbers it; two joined
    tables' columns may share a name: read by name, such a column was refused or read twice."""
    result = store.query("SELECT (SELECT 1), (SELECT 'two'), toInt128(3), tuple(4), (SELECT [5])", None, 10, 10.0)
    assert [list(orjson.loads(encode_row(result.columns, row)).values()) for row in result.rows] == [[1, "two", 3, [4],
                                                                                                      [5]]]
    assert result.columns[:2] == ["_subquery_1", "_subquery_2"]
    pairs = store.query("SELECT a.x, b.x FROM (SELECT 1 AS x) AS a, (SELECT 2 AS x) AS b", None, 10, 10.0)
    assert pairs.rows == [(1, 2)]
    same = store.query("SELECT 1, 1, 2 AS `1`", None, 10, 10.0)
    assert same.rows == [(1, 1, 2)] and same.columns == ["1", "1", "1"]
