"""Fuzzed /v1/query: values of every store type, and hostile statements, never give a 5xx; every answer
is strict JSON and every refusal is coded."""

from __future__ import annotations

import os

import orjson
from hypothesis import HealthCheck, given, settings, strategies as st

EXAMPLES = int(os.environ.get("COHORT_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
STATUSES = {200, 400, 403, 408, 413, 429}

TYPES = ["BOOLEAN", "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
         "UBIGINT", "UHUGEINT", "BIGNUM", "FLOAT", "DOUBLE", "DECIMAL(4,1)", "DECIMAL(18,6)", "DECIMAL(38,10)",
         "VARCHAR", "BLOB", "BIT", "UUID", "JSON", "DATE", "TIME", "TIMETZ", "TIMESTAMP", "TIMESTAMP_S",
         "TIMESTAMP_MS", "TIMESTAMP_NS", "TIMESTAMPTZ", "INTERVAL", "ENUM('a', 'b')", "VARCHAR[]", "DOUBLE[]",
         "INTEGER[2]", "STRUCT(a INTEGER, b VARCHAR)", "MAP(INTEGER, VARCHAR)", "UNION(n INTEGER, s VARCHAR)"]


def sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


literals = st.one_of(
    st.integers(-(2**130), 2**130).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda f: sql_text(repr(f))),
    st.sampled_from(["'NaN'", "'inf'", "'-inf'", "'infinity'", "'-infinity'", "'epoch'", "'2024-02-29'",
                     "'24:00:00'", "'12:00:00+15:59'", "'1 month 2 days'", "'0101'", "'\\xFF\\x00'",
                     "'[1, 2, null]'", "'{\"a\": [1]}'", "'{1: a}'", "'{a: 1, b: x}'", "'a'", "NULL",
                     "'5877642-06-25 (BC)'", "'294247-01-10 04:00:54.775806'", "'ffffffff-ffff-ffff-ffff-ffffffffffff'"]),
    st.text(max_size=12).map(sql_text),
)
values = st.builds(lambda literal, type_, try_: f"{'TRY_CAST' if try_ else 'CAST'}({literal} AS {type_})",
                   literals, st.sampled_from(TYPES), st.booleans())
nested = st.recursive(values, lambda inner: st.one_of(
    st.lists(inner, min_size=1, max_size=3).map(lambda items: "[" + ", ".join(items) + "]"),
    st.lists(inner, min_size=1, max_size=3).map(
        lambda items: "{" + ", ".join(f"'k{i}': {v}" for i, v in enumerate(items)) + "}"),
    st.tuples(inner, inner).map(lambda kv: f"MAP {{{kv[0]}: {kv[1]}}}"),
), max_leaves=4)


@FUZZ
@given(expressions=st.lists(nested, min_size=1, max_size=3))
def test_values_of_every_type_serialise_or_are_refused_with_a_code(client, expressions):
    sql = "SELECT " + ", ".join(f"{e} AS c{i}" for i, e in enumerate(expressions))
    response = client.post("/v1/query", json={"sql": sql})
    assert response.status_code in STATUSES, (sql, response.text)
    body = orjson.loads(response.content)  # strict: never NaN or Infinity in what is sent
    if response.status_code == 200:
        assert list(body["result"][0]) == [f"c{i}" for i in range(len(expressions))]
    else:
        assert body["params"]["err"].startswith("ERR_") and body["params"]["errmsg"]


hostile_parts = st.sampled_from([
    "range(100000000)", "generate_series(1, 100000000)", "repeat('x', 100000000)", "lpad('x', 100000000, 'y')",
    "list_resize([1], 100000000)", "string_agg(event, ',')", "list(event)", "event || event",
    "replace(event, 'a', '" + "b" * 500 + "')", "(SELECT string_agg(event, '') FROM telemetry)",
    "string_agg(event, ',') OVER (ORDER BY ets)", "list_transform([1, 2], x -> event)", "length(event)",
    "(" * 40 + "1" + ")" * 40, "count(*)", "eid", "1", "'x'", "$p",
])


@FUZZ
@given(parts=st.lists(hostile_parts, min_size=1, max_size=4), joins=st.integers(1, 3),
       recursive=st.booleans())
def test_hostile_statements_are_refused_or_bounded(client, parts, joins, recursive):
    tables = ", ".join(f"telemetry t{i}" for i in range(joins)).replace("telemetry t0", "telemetry")
    sql = f"SELECT {', '.join(parts)} FROM {tables}"
    if recursive:
        sql = f"WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r) {sql}"
    response = client.post("/v1/query", json={"sql": sql, "params": {"p": "v"}})
    assert response.status_code in STATUSES, (sql, response.text)
    body = orjson.loads(response.content)
    if response.status_code != 200:
        assert body["params"]["err"].startswith("ERR_") and body["params"]["errmsg"]
    else:
        assert len(response.content) < 17 * 1024 * 1024
