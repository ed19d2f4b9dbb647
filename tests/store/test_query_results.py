"""Every type DuckDB can return becomes valid JSON with one documented rendering (query_results)."""

from __future__ import annotations

import json
import math

import duckdb
import orjson
import pytest

from cohort.core.errors import CohortError, ErrorCode
from cohort.store.query_results import encode_row, fetch_bounded, json_text, wrapped_sql


@pytest.fixture(scope="module")
def con():
    con = duckdb.connect()
    yield con
    con.close()


def rendered(con, sql: str, row_limit: int = 100, max_bytes: int | None = None):
    """Run `sql` the way the store does and return (rows decoded from the JSON the API sends, fetched)."""
    cursor = con.cursor()
    cursor.execute(f"SELECT * FROM ({sql}) AS _q LIMIT 0")
    columns = [d[0] for d in cursor.description]
    wrapped, converters = wrapped_sql(sql, [d[1] for d in cursor.description], row_limit)
    cursor.execute(wrapped)
    fetched = fetch_bounded(cursor, columns, converters, row_limit, max_bytes)
    body = b"[" + b",".join(encode_row(columns, row) for row in fetched.rows) + b"]"
    assert len(body) == fetched.json_bytes  # the byte bound counts exactly what is sent
    return orjson.loads(body), fetched  # orjson.loads is strict: no NaN, no Infinity, valid UTF-8


def test_every_type_of_test_all_types_renders_as_strict_json(con):
    rows, fetched = rendered(con, "SELECT * FROM test_all_types()")
    types = {d[0]: str(d[1]) for d in con.execute("SELECT * FROM test_all_types() LIMIT 0").description}
    assert len(rows) == 3 and fetched.columns == list(types)
    low, high, null = rows
    assert all(value is None for value in null.values())
    # integers beyond 64 bits are exact JSON numbers (Python's json module reads them exactly)
    exact = json.loads(b"[" + b",".join(encode_row(fetched.columns, r) for r in fetched.rows) + b"]")
    assert exact[1]["hugeint"] == 2**127 - 1 and exact[0]["hugeint"] == -(2**127)
    assert exact[1]["uhugeint"] == 2**128 - 1 and exact[1]["ubigint"] == 2**64 - 1
    assert exact[1]["bignum"] > 2**1000 and exact[0]["bignum"] < -(2**1000)
    assert high["dec38_10"] == pytest.approx(1e28) and str(exact[1]["dec_4_1"]) == "999.9"
    # dates and times: DuckDB's own text, exact at the extremes
    assert low["date"] == "5877642-06-25 (BC)" and high["date"] == "5881580-07-10"
    assert high["time"] == "24:00:00" and high["time_tz"] == "24:00:00-15:59:59"
    assert high["timestamp_ns"] == "2262-04-11 23:47:16.854775806"
    assert high["interval"] == "83 years 3 months 999 days 00:16:39.999999"
    assert high["uuid"] == "ffffffff-ffff-ffff-ffff-ffffffffffff"
    assert low["blob"] == "thisisalongblob\\x00withnullbytes" and high["bit"] == "10101"
    assert low["small_enum"] == "DUCK_DUCK_ENUM" and high["varchar"] == "goo\x00se"
    # nested values are JSON; NaN and infinities (not JSON) become null, even inside lists
    assert high["double_array"] == [42.0, None, None, None, None, -42.0]
    assert high["date_array"] == ["1970-01-01", "infinity", "-infinity", None, "2022-05-12"]
    assert high["struct"] == {"a": 42, "b": "🦆🦆🦆🦆🦆🦆"} and high["map"] == {"key1": "🦆🦆🦆🦆🦆🦆", "key2": "goose"}
    assert high["fixed_nested_int_array"] == [[4, 5, 6], [None, 2, 3], [4, 5, 6]]
    for column, value in high.items():  # nothing came out as something JSON cannot hold
        assert value is None or isinstance(value, (bool, int, float, str, list, dict)), (column, types[column])


@pytest.mark.parametrize("sql, expected", [
    ("SELECT 'NaN'::DOUBLE AS x", None),
    ("SELECT 'inf'::FLOAT AS x", None),
    ("SELECT '-infinity'::DOUBLE AS x", None),
    ("SELECT 'infinity'::DATE AS x", "infinity"),
    ("SELECT '-infinity'::TIMESTAMP AS x", "-infinity"),
    ("SELECT 'infinity'::TIMESTAMPTZ AS x", "infinity"),
    ("SELECT INTERVAL 1 MONTH + INTERVAL 2 DAY AS x", "1 month 2 days"),
    ("SELECT '2024-05-01 10:11:12.5'::TIMESTAMP AS x", "2024-05-01 10:11:12.5"),
    ("SELECT '\\xAA\\xFF'::BLOB AS x", "\\xAA\\xFF"),
    ("SELECT MAP {1: 'a', 2: 'b'} AS x", {"1": "a", "2": "b"}),
    ("SELECT MAP {[1, 2]: 'a'} AS x", {"[1, 2]": "a"}),
    ("SELECT [1.5, 'NaN'::DOUBLE] AS x", [1.5, None]),
    ("SELECT ['NaN'] AS x", ["NaN"]),  # a string that reads NaN stays a string
    ("SELECT {'k': 'Infinity is \"NaN\"'} AS x", {"k": 'Infinity is "NaN"'}),
    ("SELECT union_value(n := 5) AS x", {"n": 5}),  # a UNION keeps its tag
    ("SELECT 9223372036854775807::BIGINT AS x", 2**63 - 1),
    ("SELECT 123::HUGEINT AS x", 123),
    ("SELECT '{\"a\": [1]}'::JSON AS x", '{"a": [1]}'),  # JSON columns come back as their text
    ("SELECT NULL AS x", None),
])
def test_values_render_as_documented(con, sql, expected):
    rows, _ = rendered(con, sql)
    assert rows == [{"x": expected}]


def test_sums_wider_than_64_bits_are_exact(con):
    rows, fetched = rendered(con, "SELECT sum(x) AS s FROM (VALUES (9223372036854775807), (9223372036854775807)) t(x)")
    text = encode_row(fetched.columns, fetched.rows[0])
    assert text == b'{"s":18446744073709551614}'


def test_row_bound_sets_truncated_by_rows(con):
    rows, fetched = rendered(con, "SELECT i FROM range(100) t(i)", row_limit=7)
    assert len(rows) == 7 and fetched.truncated_by == "rows"
    rows, fetched = rendered(con, "SELECT i FROM range(7) t(i)", row_limit=7)
    assert len(rows) == 7 and fetched.truncated_by is None


def test_byte_bound_stops_fetching_and_says_so(con):
    rows, fetched = rendered(con, "SELECT repeat('x', 1000) AS v FROM range(10000)", row_limit=10_000, max_bytes=50_000)
    assert fetched.truncated_by == "bytes" and 40 <= len(rows) < 50
    assert fetched.json_bytes <= 50_000


def test_a_single_row_over_the_byte_bound_is_refused(con):
    with pytest.raises(CohortError) as info:
        rendered(con, "SELECT repeat('x', 100000) AS v", max_bytes=50_000)
    assert info.value.code == ErrorCode.QUERY_RESULT_TOO_LARGE and "50000" in info.value.message


def test_duplicate_and_odd_column_names_survive(con):
    rows, fetched = rendered(con, 'SELECT 1 AS a, 2 AS a, 3 AS "we""ird name", 4')
    assert fetched.columns == ["a", "a_1", 'we"ird name', "4"]
    assert rows == [{"a": 1, "a_1": 2, 'we"ird name': 3, "4": 4}]


def test_order_is_kept_through_the_wrapping(con):
    rows, _ = rendered(con, "SELECT i FROM range(50) t(i) ORDER BY i DESC", row_limit=5)
    assert [r["i"] for r in rows] == [49, 48, 47, 46, 45]


def test_json_text_replaces_only_bare_non_numbers():
    assert orjson.loads(bytes(orjson.dumps(json_text('[NaN,"NaN",-Infinity,{"Infinity":Infinity},"a\\"NaN"]')))) == \
        [None, "NaN", None, {"Infinity": None}, 'a"NaN']
    assert math.isnan(float("nan"))  # (the renderer never sees Python floats: DuckDB writes the text)


def test_json_values_duckdb_writes_with_non_numbers_become_strict_json():
    import orjson

    from cohort.store.query_results import json_text

    assert orjson.loads(orjson.dumps([json_text("[inf, -inf, NaN, \"inf\"]")])) == [[None, None, None, "inf"]]
    assert orjson.loads(orjson.dumps(json_text('{"a": Infinity}'))) == {"a": None}
    assert orjson.loads(orjson.dumps(json_text("[nan2]"))) == "[nan2]"  # not JSON at all: sent as text
