"""Fuzzed /v1/query on the scale-out footprint, where users write ClickHouse SQL: values of every ClickHouse
type serialise or are refused with a code, and hostile statements are refused or bounded. Every answer is
one of the API's statuses with strict JSON (never NaN or Infinity, never a 5xx), every refusal is coded,
and nothing a statement says reads a file, reaches the network, writes, or changes a setting.

The statements run on the in-process scale-out app (Kafka, Redis, the chdb engine, one worker); the hostile
ones over the 500 sample events, with a short time limit and a small memory bound so that what runs to a
bound costs little. COHORT_FUZZ_EXAMPLES sets the examples per test (bench/fuzz.sh runs many more).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import uuid

import orjson
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from scaleout_deployment import scaleout_client, scaleout_settings  # noqa: F401 (fixtures)
from support import envelope, metric_values, wait_for

EXAMPLES = int(os.environ.get("COHORT_FUZZ_EXAMPLES", "100"))
HOSTILE_EXAMPLES = int(os.environ.get("COHORT_FUZZ_EXAMPLES", "30"))  # each may run to a bound
FUZZ = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
STATUSES = {200, 400, 403, 408, 413, 429}
TIMEOUT_S = 1.5
MAX_RESULT_BYTES = 16 * 1024 * 1024


@pytest.fixture(autouse=True)
def query_bounds(monkeypatch):
    """Read by scaleout_settings when it builds the node's settings: a short time limit and a small memory bound."""
    monkeypatch.setenv("COHORT_QUERY_TIMEOUT_SECONDS", str(TIMEOUT_S))
    monkeypatch.setenv("COHORT_QUERY_MAX_MEMORY_MB", "128")


def post(client, sql: str, params: dict | None = None):
    """Post a statement; check what every answer must be; return (status, body); `body` is exact (json)."""
    response = client.post("/v1/query", json={"sql": sql, "params": params})
    assert response.status_code in STATUSES, (sql[:300], response.status_code, response.text[:300])
    body = orjson.loads(response.content)  # strict: orjson refuses NaN and Infinity
    if response.status_code == 200:
        assert body["meta"]["row_count"] == len(body["result"])
        assert len(response.content) <= MAX_RESULT_BYTES + 64 * 1024, sql[:300]
    else:
        assert body["params"]["err"].startswith("ERR_") and body["params"]["errmsg"], (sql[:300], body["params"])
    return response.status_code, json.loads(response.content, parse_float=str)  # numbers as sent


def warm(client) -> None:
    """The SQL checker's child process starts on the first query, and that start counts against the first query's
    time limit (QueryService._answer): started here, so that the statements under test are timed alone."""
    assert wait_for(lambda: post(client, "SELECT 1 AS one")[0] == 200, timeout=30)


@pytest.fixture
def query_client(scaleout_client):
    """The scale-out API, its SQL checker started."""
    assert scaleout_client.app.state.queries.settings.query_timeout_seconds == TIMEOUT_S  # query_bounds took effect
    warm(scaleout_client)
    return scaleout_client


# -- values of every type --------------------------------------------------------------------------------------

def sql_text(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def quoted(*values: str) -> list[str]:
    return [sql_text(v) for v in values]


TEXT = st.text(max_size=12).map(sql_text)
# Each scalar type with values that fit it, at its edges: what a user's CAST of a value of that type looks like.
SCALARS: dict[str, st.SearchStrategy[str]] = {
    **{f"Int{bits}": st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1).map(str) for bits in (8, 16, 32, 64)},
    **{f"Int{bits}": st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1).map(lambda n: sql_text(str(n)))
       for bits in (128, 256)},
    **{f"UInt{bits}": st.integers(0, 2**bits - 1).map(str) for bits in (8, 16, 32, 64)},
    **{f"UInt{bits}": st.integers(0, 2**bits - 1).map(lambda n: sql_text(str(n))) for bits in (128, 256)},
    "Float32": st.floats(width=32).map(lambda f: sql_text(repr(f))),
    "Float64": st.floats().map(lambda f: sql_text(repr(f))) | st.sampled_from(["nan", "inf", "-inf", "-0.", "5e-324"]),
    "Decimal(9, 2)": st.sampled_from(quoted("1234567.89", "-0.01", "0")),
    "Decimal(38, 10)": st.decimals(-(10**27), 10**27, places=10, allow_nan=False).map(lambda d: sql_text(str(d))),
    "Decimal(76, 0)": st.sampled_from(quoted("9" * 76, "-" + "9" * 76, "0")),
    "Decimal(76, 38)": st.sampled_from(quoted("9" * 38 + "." + "9" * 38, "-0." + "0" * 37 + "1")),
    "Decimal(76, 75)": st.sampled_from(quoted("0." + "9" * 75, "-9." + "1" * 75)),
    "Decimal256(20)": st.sampled_from(quoted("1e50", "-12345678901234567890.12345678901234567890")),
    "String": TEXT | st.sampled_from(["unhex('ff00fe')", "'\\0\\0'", "'é😀'", "'\"quoted\" \\\\ and \\n'"]),
    "FixedString(16)": st.text(max_size=5).map(sql_text),
    "UUID": st.uuids().map(lambda u: sql_text(str(u))),
    "IPv4": st.ip_addresses(v=4).map(lambda a: sql_text(str(a))),
    "IPv6": st.ip_addresses(v=6).map(lambda a: sql_text(str(a))),
    "Date": st.sampled_from(quoted("1970-01-01", "2024-02-29", "2149-06-06")),
    "Date32": st.sampled_from(quoted("1900-01-01", "2299-12-31", "2024-02-29")),
    "DateTime('UTC')": st.sampled_from(quoted("1970-01-01 00:00:00", "2106-02-07 06:28:15")),
    "DateTime64(9)": st.sampled_from(quoted("1900-01-01 00:00:00.000000001", "2262-04-11 23:47:16.854775807")),
    "DateTime64(3, 'Asia/Kolkata')": st.sampled_from(quoted("2024-02-29 23:59:59.999", "1900-01-01 00:00:00")),
    "Enum8('a' = 1, 'b' = -128)": st.sampled_from(quoted("a", "b")),
    "Enum16('x' = 1000, 'y' = -1)": st.sampled_from(quoted("x", "y")),
    "Bool": st.sampled_from(["true", "false", "'true'", "0"]),
    "JSON": st.sampled_from(quoted('{"a": 1}', '{"a": {"b": [1, "x", null]}}', "{}", '{"n": 1e308, "m": -0.0}',
                                   '{"big": 18446744073709551615, "s": "\\u0000"}')),
    "Dynamic": st.sampled_from(["1", "'x'", "[1, 2]", "1.5", "nan", "NULL", "toDate('2024-01-01')"]),
    "Time": st.sampled_from(quoted("12:34:56", "-999:59:59")),
    "Time64(6)": st.sampled_from(quoted("12:34:56.123456", "00:00:00")),
    "IntervalDay": st.sampled_from(["1", "-5"]),
    "Point": st.sampled_from(["(1.5, -2.5)", "(nan, inf)"]),
    "Ring": st.sampled_from(["[(0, 0), (1, 1)]"]),
    "Polygon": st.sampled_from(["[[(0, 0), (1, 0), (1, 1)]]"]),
    "Nullable(Nothing)": st.just("NULL"),
}
SCALAR = st.sampled_from(sorted(SCALARS)).flatmap(lambda t: SCALARS[t].map(lambda v: (t, v)))
NULLABLE = frozenset({"Nullable(Nothing)", "JSON", "Dynamic", "Point", "Ring", "Polygon"})  # cannot be inside Nullable


def nullable(tv):
    t, v = tv
    return (t, v) if t in NULLABLE or t.startswith(("Array", "Tuple", "Map", "Nullable", "LowCardinality")) \
        else (f"Nullable({t})", v)


# (type, value of that type): wrapped, in arrays, tuples (plain and named) and maps.
TYPED = st.recursive(SCALAR, lambda inner: st.one_of(
    inner.map(nullable),
    inner.map(lambda tv: (nullable(tv)[0], "NULL") if nullable(tv)[0].startswith("Nullable") else tv),
    inner.map(lambda tv: (f"LowCardinality({tv[0]})", tv[1]) if tv[0] in ("String", "FixedString(16)", "Date",
                                                                           "Nullable(String)") else tv),
    inner.map(lambda tv: (f"Array({tv[0]})", f"[{tv[1]}, {tv[1]}]")),
    inner.map(lambda tv: (f"Array({tv[0]})", "[]")),
    st.lists(inner, min_size=1, max_size=3).map(
        lambda tvs: ("Tuple(" + ", ".join(t for t, _ in tvs) + ")", "tuple(" + ", ".join(v for _, v in tvs) + ")")),
    st.lists(inner, min_size=1, max_size=3).map(
        lambda tvs: ("Tuple(" + ", ".join(f"f{i} {t}" for i, (t, _) in enumerate(tvs)) + ")",
                     "tuple(" + ", ".join(v for _, v in tvs) + ")")),
    inner.map(lambda tv: (f"Map(String, {tv[0]})", f"map('k', {tv[1]})")),
), max_leaves=4)
# Values that may not fit the type they are cast to: answered or refused with a code, never a 5xx.
ANY_LITERAL = st.sampled_from(sorted(SCALARS)).flatmap(lambda t: SCALARS[t]) | st.sampled_from([
    "'nan'", "'Infinity'", "1e308", "'[1, 2, null]'", "'(1, \\'a\\')'", "'{\\'k\\': 1}'", "'0000-00-00'",
    "'25:61:61'", "NULL", "''", "[nan, -inf]", "map('k', nan)",
])
MISMATCHED = st.tuples(st.sampled_from(sorted(SCALARS)) | st.sampled_from([
    "Variant(Int64, String)", "BFloat16", "Nothing", "Decimal(76, 76)", "FixedString(1)", "Enum8('a' = 1)", "IPv4", "Date",
]), ANY_LITERAL)
FORMS = ["cast", "cast text", "operator", "or null", "accurate"]


def cast(tv: tuple[str, str], form: str) -> str:
    """The value cast to the type in one of the forms users write (accurateCastOrNull only where Nullable may wrap)."""
    type_, value = tv
    if form == "or null" and type_.startswith(("Array", "Map", "Tuple", "LowCardinality", "JSON", "Dynamic")):
        form = "cast"
    return {"cast": f"CAST({value} AS {type_})", "cast text": f"CAST({value}, {sql_text(type_)})",
            "operator": f"({value})::{type_}", "or null": f"accurateCastOrNull({value}, {sql_text(type_)})",
            "accurate": f"accurateCast({value}, {sql_text(type_)})"}[form]


VALUES = st.recursive(st.builds(cast, TYPED, st.sampled_from(FORMS)), lambda inner: st.one_of(
    st.lists(inner, min_size=1, max_size=3).map(lambda items: "tuple(" + ", ".join(items) + ")"),
    inner.map(lambda v: f"map('k', {v})"),
    inner.map(lambda v: f"[{v}, {v}]"),
), max_leaves=4)
COLUMNS = VALUES | VALUES | VALUES | st.builds(cast, MISMATCHED, st.sampled_from(FORMS))


def test_values_of_every_type_serialise_exactly_or_are_refused_with_a_code(query_client):
    client = query_client
    outcomes: list[str] = []

    @settings(max_examples=EXAMPLES, **FUZZ)
    @given(expressions=st.lists(COLUMNS, min_size=1, max_size=3))
    def check(expressions):
        sql = "SELECT " + ", ".join(f"{e} AS c{i}" for i, e in enumerate(expressions))
        status, body = post(client, sql)
        outcomes.append(str(status) if status == 200 else body["params"]["err"])
        if status == 200:
            assert [list(row) for row in body["result"]] == [[f"c{i}" for i in range(len(expressions))]]

    check()
    print(f"{len(outcomes)} statements of typed values: "
          + ", ".join(f"{outcome} × {outcomes.count(outcome)}" for outcome in sorted(set(outcomes))))
    assert outcomes.count("200") >= len(outcomes) // 3, "the values of the types must mostly be served"
    assert_edge_values_come_back_exact(client)


EXACT = [
    # (expression, expected JSON value)
    ("CAST('-57896044618658097711785492504343953926634992332820282019728792003956564819968' AS Int256)",
     -(2**255)),
    ("CAST('115792089237316195423570985008687907853269984665640564039457584007913129639935' AS UInt256)", 2**256 - 1),
    ("toUInt64(18446744073709551615)", 2**64 - 1),
    ("CAST('9999999999999999999999999999999999999.9999999999999999999999999999999999999' AS Decimal(76, 37))", None),
    ("CAST(nan AS Float32)", None),
    ("CAST(-inf AS Float64)", None),
    ("[nan, inf, 1.5]", [None, None, 1.5]),
    ("map('k', -inf)", {"k": None}),
    ("CAST((nan, 'a') AS Tuple(x Float64, y String))", {"x": None, "y": "a"}),
    ("CAST('{\"a\": [1, 2]}' AS JSON)", {"a": [1, 2]}),
    ("CAST('2024-02-29 23:59:59.123456789' AS DateTime64(9))", "2024-02-29 23:59:59.123456789"),
    ("CAST('a' AS Enum8('a' = 1, 'b' = 2))", "a"),
    ("CAST('::ffff:1.2.3.4' AS IPv6)", "::ffff:1.2.3.4"),
    ("accurateCastOrNull(300, 'Int8')", None),
    ("CAST(NULL AS Nullable(Nothing))", None),
]


def assert_edge_values_come_back_exact(client) -> None:
    """The values at the edges of their types, exact (big integers and decimals digit for digit)."""
    wrong = []
    for expression, expected in EXACT:
        status, body = post(client, f"SELECT {expression} AS v")
        value = body["result"][0]["v"] if status == 200 else body["params"]  # floats as their JSON text
        if "Decimal(76, 37)" in expression:  # every digit, as a JSON number
            expected = "9999999999999999999999999999999999999.9999999999999999999999999999999999999"
        else:
            expected = json.loads(json.dumps(expected), parse_float=str)
        if value != expected:
            wrong.append((expression, value, expected))
    assert not wrong, wrong


# -- hostile statements -------------------------------------------------------------------------------------------


class Listener:
    """A TCP port on 127.0.0.1 that counts the connections made to it: nothing a query says may reach it."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            conn.close()

    def close(self):
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def loaded_client(query_client, sample_events):
    """The scale-out API holding the 500 sample events."""
    client = query_client
    assert client.post("/v1/telemetry", content=envelope(sample_events)).status_code == 200
    assert wait_for(lambda: metric_values(client)["cohort_events_stored_total"] == 500, timeout=60)
    return client


@pytest.fixture
def traps(tmp_path):
    """A file whose text must never come back, a path that must never be written, a port never reached."""
    canary = tmp_path / "canary.txt"
    secret = f"canary-{uuid.uuid4()}"
    canary.write_text(secret + "\n")
    listener = Listener()
    yield {"CANARY": str(canary), "SECRET": secret, "OUTFILE": str(tmp_path / "written.txt"),
           "PORT": str(listener.port), "listener": listener, "dir": tmp_path}
    listener.close()


def fill(template: str, traps: dict) -> str:
    for key in ("CANARY", "OUTFILE", "PORT"):
        template = template.replace(key, traps[key])
    return template


# Expressions: builders of huge values, list-building aggregates, blow-ups, introspection, files, settings.
CONSTANT_PARTS = ["1", "'x'", "{p:String}", "nan", "-inf", "[nan, inf]", "map('k', nan)", "(" * 30 + "1" + ")" * 30,
                  "(SELECT groupArray(event) FROM telemetry)",
                  "(SELECT count() FROM telemetry a, telemetry b, telemetry c, telemetry d)"]
AGGREGATE_PARTS = CONSTANT_PARTS + [
    "groupArray(t.event)", "groupConcat(t.event)", "groupUniqArray(t.event)", "topK(1000000)(t.event)",
    "groupArray(1000000000)(t.event)", "arrayJoin(groupArray(t.event))", "count()", "uniqExact(t.event)",
    "max(t.event)", "arraySort(groupArray(t.log_offset))", "sum(length(t.event))",
    "windowFunnel(1000000000)(toDateTime(t.ets), t.eid = 'START', t.eid = 'END')",
]
ROW_PARTS = CONSTANT_PARTS + [
    "arrayJoin(splitByChar(',', t.event))", "t.event || t.event", "concat(t.event, t.event, t.event)",
    "length(t.event)", "t.eid", "t.event", "splitByChar(',', t.event)", "leftPad(t.eid, 1024, 'x')",
    "extractAll(t.event, '.')", "replaceRegexpAll(t.event, '(.)', '\\\\1\\\\1')", "CAST(t.eid AS FixedString(16000000))",
    "toTypeName(t.event)", "row_number() OVER (ORDER BY t.event)",
]
REFUSED_PARTS = [
    "range(100000000)", "arrayWithConstant(100000000, 'x')", "repeat('x', 100000000)", "space(100000000)",
    "randomString(100000000)", "toFixedString(t.event, 100000)", "leftPad('x', 100000000, 'y')",
    "replaceAll(t.event, '\"', '" + "x" * 500 + "')", "arrayMap(x -> t.event, splitByChar(',', t.event))",
    "groupArray(t.event) OVER (ORDER BY t.ets)", "sleep(3)", "sleepEachRow(1)", "getSetting('readonly')",
    "hostName()", "version()", "currentUser()", "currentDatabase()", "dictGet('d', 'a', toUInt64(1))",
    "file('CANARY')", "throwIf(1)", "sumState(t.log_offset)", "0 IN system.one", "t.log_offset IN system.numbers",
    "'x' IN pipeline_progress", "joinGet('t', 'a', 1)", "arrayFold((acc, x) -> concat(acc, acc), [1, 2], '')",
    "(" * 60 + "1" + ")" * 60,
]
BOUNDED_SOURCES = [
    "telemetry AS t", "(SELECT * FROM telemetry) AS t", "telemetry AS t ARRAY JOIN splitByChar(',', t.event) AS part",
    "telemetry AS t, telemetry AS u", "telemetry AS t, telemetry AS u, telemetry AS v",
    "telemetry AS t CROSS JOIN telemetry AS u CROSS JOIN telemetry AS v CROSS JOIN telemetry AS w",
    "telemetry AS t JOIN failed_events AS f ON 1 = 1", "telemetry AS t PASTE JOIN telemetry AS u",
]
REFUSED_SOURCES = [
    "numbers(1000000000) AS t", "zeros(1000000000) AS t", "system.numbers AS t", "system.one AS t",
    "system.tables AS t", "system.settings AS t", "system.processes AS t", "INFORMATION_SCHEMA.TABLES AS t",
    "pipeline_progress AS t", "url('http://127.0.0.1:PORT/', 'LineAsString') AS t",
    "file('CANARY', 'LineAsString') AS t", "file('../../../../../..CANARY', 'LineAsString') AS t",
    "url('file://CANARY', 'LineAsString') AS t", "s3('http://127.0.0.1:PORT/bucket/key.csv', 'CSV') AS t",
    "remote('127.0.0.1:PORT', system.one) AS t", "remoteSecure('127.0.0.1:PORT', system.one) AS t",
    "cluster('default', system.one) AS t", "mysql('127.0.0.1:PORT', 'd', 't', 'u', 'p') AS t",
    "postgresql('127.0.0.1:PORT', 'd', 't', 'u', 'p') AS t", "hdfs('hdfs://127.0.0.1:PORT/x', 'TSV') AS t",
    "urlCluster('default', 'http://127.0.0.1:PORT/') AS t", "generateRandom('a String') AS t",
    "input('a String') AS t", "merge('system', '.*') AS t", "executable('id', 'TSV', 'a String') AS t",
    "view(SELECT 1) AS t", "dictionary('d') AS t", "telemetry AS t JOIN system.one AS o ON 1 = 1",
    "telemetry AS t JOIN url('http://127.0.0.1:PORT/', 'LineAsString') AS o ON 1 = 1",
]
BOUNDED_FILTERS = ["", " WHERE t.eid = 'START'", " WHERE t.log_offset IN (SELECT log_offset FROM telemetry a, "
                   "telemetry b)", " WHERE t.eid IN ('START', 'END')", " WHERE t.mid IN {ids:Array(String)}"]
REFUSED_FILTERS = [
    " WHERE t.mid IN (" + ", ".join(f"'m{i}'" for i in range(3000)) + ")", " WHERE 0 IN system.one",
    " WHERE t.mid IN (SELECT name FROM system.tables)", " WHERE t.eid IN {tbl:Identifier}",
]
BOUNDED_PREFIXES = ["", "/* a comment */ ", "WITH (SELECT count() FROM telemetry) AS total "]
REFUSED_PREFIXES = ["WITH RECURSIVE r AS (SELECT 1 AS i UNION ALL SELECT i + 1 FROM r) ", "EXPLAIN ",
                    "SET max_memory_usage = 0; ", "SET readonly = 0; ", "INSERT INTO telemetry (eid) "]
BOUNDED_TAILS = ["", " LIMIT 3", " /* ; DROP TABLE telemetry */", " -- ; DROP TABLE telemetry\n", ";"]
REFUSED_TAILS = [
    " SETTINGS max_memory_usage = 0", " SETTINGS readonly = 0, max_execution_time = 0, allow_ddl = 1",
    " SETTINGS max_result_rows = 0, max_result_bytes = 0", " FORMAT JSON", " FORMAT TSVRaw",
    " INTO OUTFILE 'OUTFILE'", " INTO OUTFILE 'OUTFILE' FORMAT CSV", "; DROP TABLE telemetry", "; SELECT 1",
    "\n; INSERT INTO telemetry (eid) VALUES ('x')", " ORDER BY 1 WITH FILL FROM 0 TO 1000000000 STEP 1",
]


DIMENSIONS = {"part": (ROW_PARTS, REFUSED_PARTS), "source": (BOUNDED_SOURCES, REFUSED_SOURCES),
              "where": (BOUNDED_FILTERS, REFUSED_FILTERS), "prefix": (BOUNDED_PREFIXES, REFUSED_PREFIXES),
              "tail": (BOUNDED_TAILS, REFUSED_TAILS)}


@st.composite
def hostile_statements(draw) -> tuple[str, bool]:
    """A statement and whether it must be refused: half of them only of parts that may run (to a bound), the
    others with one or two parts that must get them refused."""
    chosen = {name: draw(st.sampled_from(bounded)) for name, (bounded, _) in DIMENSIONS.items()}
    parts = draw(st.lists(st.sampled_from(draw(st.sampled_from([AGGREGATE_PARTS, ROW_PARTS]))), min_size=1, max_size=3))
    refused = draw(st.booleans())
    if refused:
        for name in draw(st.lists(st.sampled_from(sorted(DIMENSIONS)), min_size=1, max_size=2, unique=True)):
            part = draw(st.sampled_from(DIMENSIONS[name][1]))
            if name == "part":
                parts.insert(draw(st.integers(0, len(parts))), part)
            else:
                chosen[name] = part
    sql = f"{chosen['prefix']}SELECT {', '.join(parts)} FROM {chosen['source']}{chosen['where']}{chosen['tail']}"
    return sql, refused


def test_hostile_statements_are_refused_or_bounded_and_reach_nothing(loaded_client, traps):
    client = loaded_client
    outcomes: list[str] = []

    @settings(max_examples=HOSTILE_EXAMPLES, **FUZZ)
    @given(statement=hostile_statements(), identifier=st.sampled_from(["system.one", "pipeline_progress", "telemetry"]))
    def check(statement, identifier):
        template, must_be_refused = statement
        sql = fill(template, traps)
        params = {"p": "v", "ids": ["a", "b"], "tbl": identifier} if "{" in sql else None  # placeholders only
        status, body = post(client, sql, params)
        outcomes.append(str(status) if status == 200 else body["params"]["err"])
        if must_be_refused:
            assert status != 200, ("must be refused", sql[:300])
        assert traps["SECRET"].encode() not in orjson.dumps(body), sql[:300]

    check()
    print(f"{len(outcomes)} hostile statements: "
          + ", ".join(f"{outcome} × {outcomes.count(outcome)}" for outcome in sorted(set(outcomes))))
    assert traps["listener"].connections == 0, "a query reached the network"
    assert not os.path.exists(traps["OUTFILE"]), "a query wrote a file"
    assert_store_untouched_and_bounds_hold(client)


def assert_store_untouched_and_bounds_hold(client) -> None:
    """Nothing was written or dropped, and the bounds a SETTINGS clause or SET would have lifted still hold."""
    warm(client)  # a check the fuzzing made late restarts the SQL checker
    counts = post(client, "SELECT (SELECT count() FROM telemetry) AS events, "
                          "(SELECT count() FROM ingest_batches) AS requests, "
                          "(SELECT count() FROM failed_events) AS failed")[1]["result"]
    assert counts == [{"events": 500, "requests": 1, "failed": 0}]
    status, body = post(client, "SELECT length(groupArray(a.event)) AS n FROM telemetry AS a, telemetry AS b")
    assert (status, body["params"].get("err")) == (400, "ERR_QUERY_MEMORY"), body["params"]
    status, body = post(client, "SELECT count() AS n FROM telemetry AS a, telemetry AS b, telemetry AS c, "
                                "telemetry AS d, telemetry AS e")
    assert (status, body["params"].get("err")) == (408, "ERR_QUERY_TIMEOUT"), body["params"]


# Each form of reaching outside, on its own: refused by the guard (or, if it got through, by the engine), never served.
ESCAPES = [
    "SELECT * FROM file('CANARY', 'LineAsString')",
    "SELECT * FROM file('CANARY', 'CSV', 'line String')",
    "SELECT * FROM url('file://CANARY', 'LineAsString')",
    "SELECT * FROM url('http://127.0.0.1:PORT/x', 'LineAsString')",
    "SELECT * FROM s3('http://127.0.0.1:PORT/b/k.csv', 'CSV')",
    "SELECT * FROM remote('127.0.0.1:PORT', system.one)",
    "SELECT * FROM telemetry WHERE mid IN (SELECT * FROM url('http://127.0.0.1:PORT/x', 'LineAsString'))",
    "SELECT file('CANARY') AS v",
    "SELECT * FROM system.one",
    "SELECT name, value FROM system.settings WHERE changed",
    "SELECT query FROM system.query_log",
    "SELECT 'x' AS v WHERE 0 IN system.one",
    "SELECT 'x' AS v WHERE 0 IN (system.one)",
    "SELECT 'x' AS v WHERE 0 GLOBAL NOT IN system.one",
    "SELECT count() AS n FROM telemetry WHERE log_offset IN system.numbers",
    "SELECT count() AS n FROM telemetry WHERE (log_offset, 0) IN pipeline_positions",
    "SELECT arrayFilter(x -> x IN system.one, [0, 1]) AS v",
    "SELECT 1 AS one INTO OUTFILE 'OUTFILE'",
    "SELECT 1 AS one SETTINGS readonly = 0",
    "SELECT * FROM (SELECT 1 AS one SETTINGS max_memory_usage = 0)",
    "SELECT 1 AS one FORMAT Native",
    "SET readonly = 0",
    "SELECT 1 AS one; SELECT * FROM system.one",
    "INSERT INTO FUNCTION file('OUTFILE', 'CSV') SELECT 1",
    "CREATE TABLE leak ENGINE = File(CSV, 'OUTFILE') AS SELECT 1",
    "SELECT 1 AS one /* */ , hostName() AS h /* */",
]
# Statements hidden in comments, or comments that try to end early: answered as the statement outside them.
COMMENTED = [
    "SELECT 1 AS one -- */ ; SELECT * FROM system.one /*\n",
    "SELECT 1 AS one /* /* */ ; SELECT * FROM system.one */",
    "SELECT 1 AS one # */ , hostName() AS h #\n",
    "/* ; DROP TABLE telemetry; */ SELECT 1 AS one",
    "SELECT 1 AS one -- \n-- ; SELECT * FROM file('CANARY', 'LineAsString')\n",
]


def test_files_network_settings_and_server_tables_are_out_of_reach(query_client, traps):
    client = query_client
    served = []
    for template in ESCAPES:
        status, body = post(client, fill(template, traps))
        if status not in (400, 403) or traps["SECRET"].encode() in orjson.dumps(body):
            served.append((template, status, body["params"].get("err")))
    for template in COMMENTED:
        status, body = post(client, fill(template, traps))
        if status != 200 or body["result"] != [{"one": 1}]:
            served.append((template, status, body["params"].get("err")))
    assert not served, served
    assert traps["listener"].connections == 0 and not os.path.exists(traps["OUTFILE"])
    assert_a_name_after_in_is_an_exposed_table_or_a_cte(client)


def assert_a_name_after_in_is_an_exposed_table_or_a_cte(client) -> None:
    """ClickHouse reads the table a name alone after IN stands for; a parameter of type Identifier is such a name."""
    for table in ("system.one", "pipeline_progress"):
        status, body = post(client, "SELECT 'x' AS v WHERE 0 IN {t:Identifier}", {"t": table})
        assert (status, body["params"]["err"]) == (403, "ERR_QUERY_FORBIDDEN"), body["params"]
    for sql in ["SELECT 'x' AS v WHERE 0 IN pipeline_progress", "SELECT 'x' AS v WHERE 0 IN (system.one)",
                "SELECT count() AS n FROM telemetry AS t WHERE eid IN (t.env)"]:
        status, body = post(client, sql)
        assert (status, body["params"]["err"]) == (403, "ERR_QUERY_FORBIDDEN"), (sql, body["params"])
        assert "a name alone after IN" in body["params"]["errmsg"]
    for sql in ["WITH ('START', 'END') AS s SELECT count() AS n FROM telemetry WHERE eid IN s",
                "WITH s AS (SELECT eid FROM telemetry) SELECT count() AS n FROM telemetry WHERE eid IN s",
                "SELECT count() AS n FROM telemetry WHERE eid IN ('START', 'END')",
                "SELECT count() AS n FROM telemetry WHERE eid IN (SELECT eid FROM failed_events)"]:
        status, body = post(client, sql)
        assert status == 200 and body["result"] == [{"n": 0}], (sql, body)
    status, body = post(client, "SELECT count() AS n FROM telemetry WHERE (eid, mid) IN Telemetry")
    assert status == 400 and "columns" in body["params"]["errmsg"], body  # an exposed table: read (21 columns)
    status, body = post(client, "SELECT {c:Identifier} AS v FROM telemetry", {"c": "eid"})
    assert status == 200, body["params"]  # a column named by a parameter is still a column
