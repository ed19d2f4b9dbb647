"""The attack suite of tenant-scoped SQL: an analyst of tenant A, over a real store that holds tenant A's
and tenant B's rows side by side, tries every way we know to read B's rows. Each attempt is refused with a
coded error or answers with A's rows only — never a value of B's rows (in the rows or in an error message),
never a count that includes them, never a 5xx. Run on both footprints' stores: DuckDB (embedded) and
ClickHouse over chdb (scale-out), through the query API (admission, the SQL checker's child process, the
store's bounds), every statement in both dialects (what one dialect does not parse it refuses, coded).

Then hypothesis composes the constructs (unions, joins, CTEs named like tables, subqueries, predicates that
try to widen or to reach B) at random over the same stores, and checks that every row returned is A's.
"""

from __future__ import annotations

import json
import os
import uuid

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from cohort.analytics.rollup_refresh import RollupRefresher
from cohort.core.errors import CohortError
from cohort.security.sql_guard import SqlGuard
from cohort.store.clickhouse_store import ClickHouseStore
from cohort.store.duckdb_store import DuckDbStore
from tenant_stores import A_EVENTS, B_EVENTS, B_SECRET, IDENTITIES, TENANT_A, TENANT_B, tenant_api, two_tenant_outcome

STATUSES = {200, 400, 403, 408, 413, 429}  # never a 5xx
TIMEOUT_S = 1.5
EXAMPLES = int(os.environ.get("COHORT_FUZZ_EXAMPLES", "60"))


@pytest.fixture(scope="module", params=["duckdb", "clickhouse"])
def footprint(request, tmp_path_factory):
    """(dialect, store holding both tenants' rows, API client over it)."""
    dialect = request.param
    outcome, now_ms = two_tenant_outcome()
    if dialect == "duckdb":
        store = DuckDbStore(tmp_path_factory.mktemp("tenants") / "store.duckdb")
    else:
        dsn = request.getfixturevalue("clickhouse_dsn")
        store = ClickHouseStore(dsn, database=f"tenants_{uuid.uuid4().hex[:10]}")
    store.write_batch(outcome, failed_at_ms=now_ms, token="two-tenants")
    RollupRefresher(store).refresh()  # the derived tables (rollups, workflow summaries) hold both tenants too
    client = tenant_api(store, dialect, tmp_path_factory.mktemp("api"), query_timeout_seconds=TIMEOUT_S,
                        query_max_memory_mb=128)
    with client:
        yield dialect, store, client
    client.app.state.queries.checker.close()
    store.close()


def ask(client, sql: str, params: dict | None = None, caller: str = "analyst-a"):
    """Post as `caller`; check what every answer must be whatever it says; return (status, body)."""
    response = client.post("/v1/query", json={"sql": sql, "params": params}, headers={"X-Test-Caller": caller})
    assert response.status_code in STATUSES, (sql, response.status_code, response.text[:500])
    body = response.json()
    assert B_SECRET not in response.text, (sql, response.text[:500])  # no value of B's, rows or error message
    if response.status_code != 200:
        assert body["params"]["err"].startswith("ERR_") and body["params"]["errmsg"], (sql, body["params"])
    return response.status_code, body


def only_a(client, sql: str, params: dict | None = None) -> tuple[int, list[dict]]:
    """`ask`, and every `channel` (or any column named like one) in the rows is A's."""
    status, body = ask(client, sql, params)
    rows = body["result"] if status == 200 else []
    for row in rows:
        for name, value in row.items():
            if "channel" in name.lower() or name.lower() == "other":
                assert value in (TENANT_A, None), (sql, row)
    return status, rows


def test_the_store_holds_both_tenants_and_the_admin_sees_them(footprint):
    _, _, client = footprint
    status, body = ask_admin(client, "SELECT channel, count(*) AS n FROM telemetry GROUP BY channel ORDER BY channel")
    assert status == 200 and body["result"] == [{"channel": TENANT_A, "n": A_EVENTS}, {"channel": TENANT_B, "n": B_EVENTS}]
    status, body = ask_admin(client, "SELECT count(*) AS n FROM ingest_batches")
    assert status == 200 and body["result"] == [{"n": 1}]


def ask_admin(client, sql: str):
    response = client.post("/v1/query", json={"sql": sql}, headers={"X-Test-Caller": "admin"})
    return response.status_code, response.json()


def test_the_analyst_reads_its_own_rows(footprint):
    _, _, client = footprint
    status, rows = only_a(client, "SELECT channel, mid FROM telemetry")
    assert status == 200 and len(rows) == A_EVENTS and all(r["mid"].startswith("a-mid-") for r in rows)
    status, rows = only_a(client, "SELECT channel, mid FROM failed_events")
    assert status == 200 and [r["mid"] for r in rows] == ["a-bad-1"]


@pytest.mark.parametrize("table", ["learner_hours", "device_hours", "workflow_summaries"])
def test_derived_tables_are_the_tenants_own_rows(footprint, table):
    _, _, client = footprint
    final = " FINAL" if footprint[0] == "clickhouse" else ""
    status, body = ask_admin(client, f"SELECT DISTINCT tenant FROM {table}{final} ORDER BY tenant")
    assert status == 200
    if table != "workflow_summaries":  # one event per device gives no summary with time spent
        assert body["result"] == [{"tenant": TENANT_A}, {"tenant": TENANT_B}]
    status, body = ask(client, f"SELECT tenant, count(*) AS n FROM {table}{final} GROUP BY tenant")
    assert status == 200 and all(row["tenant"] == TENANT_A for row in body["result"]), body["result"]
    status, body = ask(client, f"SELECT count(*) AS n FROM {table}{final} WHERE tenant = '{TENANT_B}'")
    assert status == 200 and body["result"] == [{"n": 0}]


# Each: the statement, and what a run must show beyond `only_a`: the exact rows' count when it must run
# (an aggregate over A alone, or A's rows), None when a refusal or a coded failure is as good.
COUNTS = "SELECT count(*) AS n FROM telemetry"
ATTACKS: list[tuple[str, str, int | None]] = [
    # comments hiding predicates, always-true predicates
    ("comment", "SELECT channel, mid FROM telemetry -- WHERE channel = 'tenant-a'", A_EVENTS),
    ("comment", "SELECT channel, mid FROM telemetry /* WHERE channel = 'tenant-a' */", A_EVENTS),
    ("comment", "SELECT channel, mid FROM telemetry WHERE mid = 'x' /* */ OR /* */ 1 = 1 --", A_EVENTS),
    ("comment", "SELECT channel, mid FROM telemetry WHERE channel = 'tenant-a' -- ') OR 1=1 --", A_EVENTS),
    ("or-true", "SELECT channel, mid FROM telemetry WHERE channel = 'tenant-a' OR 1 = 1", A_EVENTS),
    ("or-true", "SELECT channel, mid FROM telemetry WHERE 1 = 1 OR channel = 'tenant-b'", A_EVENTS),
    ("or-true", "SELECT channel, mid FROM telemetry WHERE NOT (channel = 'tenant-a') OR true", A_EVENTS),
    ("or-true", "SELECT channel, mid FROM telemetry WHERE channel = 'tenant-a'' OR ''1''=''1'", 0),
    ("or-true", "SELECT channel, mid FROM telemetry WHERE channel = 'tenant-b'", 0),
    ("or-true", "SELECT channel, mid FROM telemetry WHERE channel <> 'tenant-a' OR channel IS NULL", 0),
    ("count", COUNTS, 1),
    ("count", "SELECT count(*) AS n FROM telemetry WHERE 1 = 1 OR 1 = 1", 1),
    ("count", "SELECT channel, count(*) OVER () AS n FROM telemetry", A_EVENTS),
    # unions with B's rows
    ("union", "SELECT channel, mid FROM telemetry UNION ALL SELECT channel, mid FROM telemetry WHERE channel = 'tenant-b'",
     A_EVENTS),
    ("union", "SELECT channel, mid FROM telemetry UNION SELECT channel, mid FROM failed_events", A_EVENTS + 1),
    ("union", "SELECT channel FROM telemetry WHERE false UNION ALL (SELECT channel FROM telemetry WHERE 1 = 1 OR "
     "channel <> 'tenant-a')", A_EVENTS),
    ("union", "SELECT * FROM (SELECT channel, mid FROM telemetry UNION ALL SELECT channel, mid FROM failed_events) AS u",
     A_EVENTS + 1),
    ("union", "SELECT channel, payload AS mid FROM failed_events UNION ALL SELECT channel, mid FROM telemetry "
     "INTERSECT SELECT channel, mid FROM telemetry", None),
    # CTEs named like the tables, and CTE tricks
    ("cte", "WITH telemetry AS (SELECT * FROM telemetry) SELECT channel, mid FROM telemetry", A_EVENTS),
    ("cte", "WITH telemetry AS (SELECT * FROM failed_events) SELECT channel, mid FROM telemetry", 1),
    ("cte", "WITH failed_events AS (SELECT * FROM telemetry) SELECT f.channel, t.mid FROM failed_events f "
     "JOIN telemetry t ON f.mid = t.mid", A_EVENTS),
    ("cte", "WITH t AS (SELECT * FROM telemetry WHERE channel = 'tenant-b') SELECT channel, mid FROM t", 0),
    ("cte", "WITH a AS (SELECT * FROM telemetry), telemetry AS (SELECT * FROM a) SELECT channel, mid FROM telemetry",
     A_EVENTS),
    ("cte", "WITH x AS (SELECT 1 AS one) SELECT channel, mid FROM telemetry AS x", A_EVENTS),
    ("cte", 'WITH "Telemetry" AS (SELECT 1 AS one) SELECT channel, mid FROM telemetry', None),
    ("cte", "WITH TELEMETRY AS (SELECT 'fake' AS ch) SELECT * FROM telemetry", None),
    ("cte", "WITH telemetry AS (SELECT 'fake' AS ch) SELECT channel, mid FROM telemetry", None),
    ("cte", "WITH c AS (SELECT * FROM telemetry) SELECT channel, mid FROM c UNION ALL SELECT channel, mid FROM "
     "(WITH c AS (SELECT * FROM failed_events) SELECT * FROM c) AS inner_c", None),
    ("cte", "SELECT channel, mid FROM telemetry UNION ALL WITH telemetry AS (SELECT * FROM telemetry) SELECT channel, mid "
     "FROM telemetry UNION ALL SELECT channel, mid FROM telemetry", None),  # sqlglot would drop this WITH
    ("cte", "SELECT 'x' AS channel, 1 AS mid UNION ALL WITH pipeline_state AS (SELECT 'y' AS channel, 2 AS mid) SELECT "
     "channel, mid FROM pipeline_state UNION ALL SELECT channel, mid FROM telemetry", None),
    ("cte", "WITH RECURSIVE r AS (SELECT channel, mid FROM telemetry UNION ALL SELECT channel, mid FROM r) "
     "SELECT * FROM r", None),
    # subqueries in SELECT, WHERE, HAVING, IN, EXISTS, FROM, LATERAL
    ("subquery", "SELECT channel, mid FROM telemetry WHERE mid IN (SELECT mid FROM telemetry WHERE channel = 'tenant-b')", 0),
    ("subquery", "SELECT (SELECT max(mid) FROM telemetry WHERE channel = 'tenant-b') AS m", 1),
    ("subquery", "SELECT (SELECT count(*) FROM telemetry) AS n", 1),
    ("subquery", "SELECT eid, count(*) AS n FROM telemetry GROUP BY eid HAVING count(*) >= (SELECT count(*) FROM "
     "failed_events)", None),
    ("subquery", "SELECT channel, mid FROM telemetry t WHERE EXISTS (SELECT 1 FROM telemetry u WHERE u.channel = "
     "'tenant-b')", 0),
    ("subquery", "SELECT channel, mid FROM telemetry t WHERE NOT EXISTS (SELECT 1 FROM failed_events f WHERE "
     "f.channel = t.channel)", 0),
    ("subquery", "SELECT channel, mid FROM (SELECT * FROM telemetry) AS sub", A_EVENTS),
    ("subquery", "SELECT channel, mid FROM (SELECT * FROM (SELECT * FROM telemetry WHERE 1 = 1) AS a) AS b", A_EVENTS),
    ("subquery", "SELECT channel, mid FROM telemetry WHERE (mid, channel) IN (SELECT mid, channel FROM failed_events)", 0),
    ("subquery", "SELECT t.channel, x.mid FROM telemetry t, LATERAL (SELECT mid FROM telemetry u WHERE "
     "u.channel = 'tenant-b') x", None),
    ("subquery", "SELECT channel, mid FROM telemetry WHERE mid IN telemetry", None),
    ("subquery", "SELECT channel, mid FROM telemetry WHERE mid IN (failed_events)", None),
    ("subquery", "SELECT channel, mid FROM telemetry WHERE mid = ANY (SELECT mid FROM telemetry)", A_EVENTS),
    # quoted, case-varied, schema- and catalog-qualified names
    ("names", 'SELECT channel, mid FROM "TELEMETRY"', None),
    ("names", 'SELECT channel, mid FROM "telemetry"', A_EVENTS),
    ("names", "SELECT channel, mid FROM TeLeMeTrY", A_EVENTS),
    ("names", "SELECT channel, mid FROM `telemetry`", None),
    ("names", 'SELECT "TELEMETRY".channel, "TELEMETRY".mid FROM "TELEMETRY"', None),
    ("names", "SELECT telemetry.channel, telemetry.mid FROM telemetry", A_EVENTS),
    ("names", "SELECT channel, mid FROM main.telemetry", None),
    ("names", 'SELECT channel, mid FROM "main"."telemetry"', None),
    ("names", "SELECT channel, mid FROM store.main.telemetry", None),
    ("names", "SELECT channel, mid FROM memory.main.telemetry", None),
    ("names", "SELECT channel, mid FROM cohort.telemetry", None),
    ("names", "SELECT channel, mid FROM default.telemetry", None),
    ("names", "SELECT name AS channel FROM system.tables", None),
    ("names", "SELECT table_name AS channel FROM information_schema.tables", None),
    ("names", "SELECT channel, mid FROM t\u0435lemetry", None),  # a Cyrillic е
    ("names", "SELECT channel, mid FROM {t:Identifier}", None),
    # joins of telemetry to itself, to failed_events, to ingest_batches
    ("join", "SELECT a.channel, b.channel AS other, b.mid FROM telemetry a JOIN telemetry b ON a.eid = b.eid", None),
    ("join", "SELECT a.channel, b.channel AS other, b.mid FROM telemetry a JOIN telemetry b ON b.channel = 'tenant-b'", 0),
    ("join", "SELECT t.channel, f.channel AS other, f.payload FROM telemetry t CROSS JOIN failed_events f", A_EVENTS),
    ("join", "SELECT t.channel, f.payload FROM telemetry t LEFT JOIN failed_events f ON f.channel = 'tenant-b'", A_EVENTS),
    ("join", "SELECT t.channel, f.channel AS other, f.payload FROM failed_events f FULL OUTER JOIN telemetry t ON 1 = 1",
     A_EVENTS),
    ("join", "SELECT channel, mid FROM telemetry NATURAL JOIN failed_events", None),
    ("join", "SELECT t.channel, f.mid FROM telemetry t JOIN failed_events f USING (channel)", A_EVENTS),
    ("join", "SELECT t.channel, b.headers FROM telemetry t JOIN ingest_batches b USING (log_offset)", None),
    ("join", "SELECT headers AS channel FROM ingest_batches", None),
    ("join", "SELECT a.channel, b.mid FROM telemetry a POSITIONAL JOIN failed_events b", None),
    ("join", "SELECT a.channel, b.mid FROM telemetry a ASOF JOIN telemetry b ON a.channel = b.channel AND a.ets >= b.ets",
     None),
    ("join", "SELECT t.channel, u.mid FROM telemetry AS t GLOBAL JOIN telemetry AS u USING mid", None),
    ("join", "SELECT channel, mid FROM telemetry, telemetry", None),
    # table functions and file readers
    ("files", "SELECT * FROM read_csv('/etc/passwd')", None),
    ("files", "SELECT * FROM read_csv_auto('/etc/hosts')", None),
    ("files", "SELECT * FROM read_parquet('telemetry.parquet')", None),
    ("files", "SELECT * FROM read_json_auto('/etc/hosts')", None),
    ("files", "SELECT * FROM read_text('/etc/hostname')", None),
    ("files", "SELECT * FROM '/etc/passwd'", None),
    ("files", "SELECT * FROM \"store.duckdb\"", None),
    ("files", "SELECT * FROM file('/etc/passwd')", None),
    ("files", "SELECT * FROM file('/etc/passwd', 'LineAsString')", None),
    ("files", "SELECT * FROM url('http://127.0.0.1:9/', 'LineAsString')", None),
    ("files", "SELECT * FROM s3('http://127.0.0.1:9/bucket/key')", None),
    ("files", "SELECT * FROM remote('127.0.0.1', system.one)", None),
    ("files", "SELECT * FROM merge(currentDatabase(), 'tele')", None),
    ("files", "SELECT * FROM merge('tele')", None),
    ("files", "SELECT * FROM query_table('telemetry')", None),
    ("files", "SELECT * FROM query('SELECT * FROM telemetry')", None),
    ("files", "SELECT * FROM duckdb_tables()", None),
    ("files", "SELECT * FROM glob('*')", None),
    ("files", "SELECT * FROM numbers(10)", None),
    ("files", "SELECT * FROM range(10)", None),
    ("files", "SELECT * FROM generate_series(1, 3)", None),
    ("files", "SELECT * FROM executable('cat /etc/passwd', 'TSV', 'x String')", None),
    ("files", "SELECT * FROM mysql('127.0.0.1:3306', 'db', 't', 'u', 'p')", None),
    ("files", "SELECT channel FROM telemetry WHERE mid IN (SELECT * FROM file('/etc/passwd'))", None),
    # settings functions and introspection
    ("settings", "SELECT current_setting('memory_limit') AS s", None),
    ("settings", "SELECT getSetting('readonly') AS s", None),
    ("settings", "SELECT getvariable('x') AS s", None),
    ("settings", "SELECT currentDatabase() AS s", None),
    ("settings", "SELECT current_database() AS s", None),
    ("settings", "SELECT * FROM duckdb_settings()", None),
    ("settings", "SELECT * FROM system.settings", None),
    ("settings", "SELECT dictGet('d', 'x', 1) AS s", None),
    ("settings", "SELECT joinGet('t', 'x', 1) AS s", None),
    ("settings", "SELECT hasColumnInTable('cohort', 'telemetry', 'mid') AS s", None),
    ("settings", "SELECT channel FROM telemetry SETTINGS readonly = 0", None),
    ("settings", "SELECT channel FROM telemetry FORMAT JSON", None),
    ("settings", "SELECT channel FROM telemetry INTO OUTFILE '/tmp/leak'", None),
    # statements other than one SELECT
    ("statements", "ATTACH 'other.db' AS other", None),
    ("statements", "ATTACH DATABASE ':memory:' AS m", None),
    ("statements", "DETACH DATABASE store", None),
    ("statements", "COPY telemetry TO '/tmp/leak.csv'", None),
    ("statements", "COPY (SELECT * FROM telemetry) TO '/tmp/leak.csv'", None),
    ("statements", "EXPORT DATABASE '/tmp/leak'", None),
    ("statements", "PRAGMA database_list", None),
    ("statements", "PRAGMA enable_external_access", None),
    ("statements", "SET memory_limit = '10GB'", None),
    ("statements", "SET readonly = 0", None),
    ("statements", "RESET enable_external_access", None),
    ("statements", "INSTALL httpfs", None),
    ("statements", "LOAD httpfs", None),
    ("statements", "CALL pragma_version()", None),
    ("statements", "USE system", None),
    ("statements", "DESCRIBE telemetry", None),
    ("statements", "SUMMARIZE telemetry", None),
    ("statements", "SHOW TABLES", None),
    ("statements", "PIVOT telemetry ON channel USING count(*)", None),
    ("statements", "SELECT * FROM (PIVOT telemetry ON channel USING count(*)) AS p", None),
    ("statements", "CREATE TABLE leak AS SELECT * FROM telemetry", None),
    ("statements", "INSERT INTO telemetry SELECT * FROM telemetry", None),
    ("statements", "UPDATE telemetry SET channel = 'tenant-a'", None),
    ("statements", "DELETE FROM telemetry WHERE channel = 'tenant-b'", None),
    ("statements", "DROP TABLE telemetry", None),
    ("statements", "SELECT 1 AS one; SELECT channel, mid FROM telemetry WHERE channel = 'tenant-b'", None),
    ("statements", "SELECT channel FROM telemetry; DROP TABLE telemetry", None),
    ("statements", "SELECT channel FROM telemetry;; SELECT 2", None),
    ("statements", "BEGIN; SELECT channel FROM telemetry; COMMIT", None),
    ("statements", "EXPLAIN SELECT channel FROM telemetry", None),
    ("statements", "TABLE telemetry", None),
    ("statements", "FROM telemetry SELECT channel, mid", None),
    # reading the table in other ways
    ("reads", "SELECT channel, mid FROM telemetry USING SAMPLE 100%", None),
    ("reads", "SELECT channel, mid FROM telemetry TABLESAMPLE 100%", None),
    ("reads", "SELECT channel, mid FROM telemetry FINAL", None),
    ("reads", "SELECT channel, mid FROM telemetry SAMPLE 1", None),
    ("reads", "SELECT channel, mid FROM telemetry PREWHERE 1 = 1", None),
    ("reads", "SELECT channel, mid, x FROM telemetry ARRAY JOIN [1, 2] AS x", None),
    ("reads", "SELECT channel, mid FROM telemetry QUALIFY row_number() OVER () > 0", None),
    ("reads", "SELECT t FROM telemetry t", None),
    ("reads", "SELECT t.* FROM telemetry AS t(a, b)", None),
    ("reads", "SELECT event->>'$.context.channel' AS channel, mid FROM telemetry", None),
    ("reads", "SELECT JSONExtractString(event, 'context', 'channel') AS channel, mid FROM telemetry", None),
    ("reads", "SELECT channel, mid FROM telemetry ORDER BY channel DESC LIMIT 1", 1),
    ("reads", "SELECT DISTINCT channel FROM telemetry", 1),
    ("reads", "SELECT channel, count(*) AS n FROM telemetry GROUP BY ALL", 1),
    ("reads", "SELECT * EXCLUDE (event) FROM telemetry", None),
    # errors that would quote a row's value: only A's rows may ever be evaluated
    ("oracle", "SELECT count(*) AS n FROM telemetry WHERE CAST(replace(mid, 'a-mid-', '') AS INTEGER) >= 0", 1),
    ("oracle", "SELECT count() AS n FROM telemetry WHERE toInt32(replaceAll(mid, 'a-mid-', '')) >= 0", 1),
    ("oracle", "SELECT count() AS n FROM telemetry WHERE toInt32(replaceAll(mid, 'a-mid-', '')) >= 0 AND eid != 'x' "
     "AND ets > '2000-01-01'", 1),
    ("oracle", "SELECT count(*) AS n FROM telemetry WHERE eid <> 'x' AND CAST(replace(actor_id, 'a-actor-', '') AS INT) "
     ">= 0", 1),
    ("oracle", "SELECT count() AS n FROM telemetry t JOIN failed_events f ON toInt32(replaceAll(t.mid, 'a-mid-', '')) = "
     "length(f.mid)", None),
    ("oracle", "SELECT channel FROM telemetry WHERE mid IN (SELECT mid FROM telemetry WHERE "
     "toInt32(replaceAll(mid, 'a-mid-', '')) >= 0)", A_EVENTS),
    ("oracle", "SELECT channel FROM telemetry WHERE mid IN (SELECT mid FROM telemetry WHERE "
     "CAST(replace(mid, 'a-mid-', '') AS INTEGER) >= 0)", A_EVENTS),
    ("oracle", "SELECT count() AS n FROM failed_events WHERE toInt32(replaceAll(ifNull(mid, ''), 'a-bad-', '')) >= 0", 1),
    ("oracle", "SELECT count(*) AS n FROM failed_events WHERE CAST(replace(mid, 'a-bad-', '') AS INTEGER) >= 0", 1),
    ("oracle", "SELECT channel FROM telemetry WHERE strptime(replace(mid, 'a-mid-', ''), '%d') IS NOT NULL", None),
    ("oracle", "SELECT channel FROM telemetry WHERE throwIf(mid LIKE 'b%') = 0", None),
    ("oracle", "SELECT channel FROM telemetry WHERE CAST(did AS DATE) IS NULL", None),
    ("oracle", "SELECT channel FROM telemetry WHERE toDate(did) IS NULL", None),
    ("oracle", "SELECT eid, min(CAST(replace(mid, 'a-mid-', '') AS INTEGER)) AS m FROM telemetry GROUP BY eid", None),
    # resource exhaustion: still bounded, and still coded
    ("bounds", "WITH v(x) AS (VALUES (1),(2),(3),(4),(5),(6),(7),(8),(9),(10)) SELECT count(*) FROM v a, v b, v c, v d, "
     "v e, v f, v g, v h, v i WHERE a.x + b.x + c.x + d.x + e.x + f.x + g.x + h.x + i.x = -1", None),
    ("bounds", "SELECT count(*) FROM telemetry a, telemetry b, telemetry c, telemetry d, telemetry e, telemetry f, "
     "telemetry g WHERE a.event || b.event || c.event = ''", None),
    ("bounds", "SELECT repeat('x', 1000000000) AS s", None),
    ("bounds", "SELECT string_agg(event, '') AS s FROM telemetry a, telemetry b, telemetry c", None),
    ("bounds", "SELECT " + " + ".join(["1"] * 40_000) + " AS n", None),
    ("bounds", "SELECT channel FROM telemetry WHERE " + "NOT " * 5000 + "false", None),
    ("bounds", "WITH " + ", ".join(f"c{i} AS (SELECT * FROM {'telemetry' if i == 0 else f'c{i - 1}'})" for i in range(300))
     + " SELECT channel FROM c299", None),
]


def test_the_suite_is_as_large_as_reported():
    assert len(ATTACKS) >= 175, len(ATTACKS)  # × 2 stores: the count the report gives


@pytest.mark.parametrize("kind, sql, expected", ATTACKS, ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(ATTACKS)])
def test_attack_is_refused_or_scoped(footprint, kind, sql, expected):
    _, _, client = footprint
    status, rows = only_a(client, sql)
    if status == 200 and expected is not None:
        assert len(rows) == expected, (sql, rows[:3])
        for row in rows:  # counts over A alone: never B's events in them
            for name in ("n", "m"):
                if isinstance(row.get(name), int):
                    assert row[name] <= A_EVENTS, (sql, row)


@pytest.mark.parametrize("sql", [
    "SELECT count(*) AS n FROM telemetry",
    "SELECT count(*) AS n FROM telemetry WHERE 1 = 1 OR 1 = 1",
    "WITH telemetry AS (SELECT * FROM telemetry) SELECT count(*) AS n FROM telemetry",
    "SELECT count(*) AS n FROM (SELECT mid FROM telemetry UNION ALL SELECT mid FROM telemetry WHERE channel = 'tenant-b') AS u",
    "SELECT (SELECT count(*) FROM telemetry) AS n",
])
def test_counts_are_the_tenants_own(footprint, sql):
    _, _, client = footprint
    status, rows = only_a(client, sql)
    assert status == 200 and rows == [{"n": A_EVENTS}], (sql, rows)


def test_the_tables_without_a_tenant_column_are_refused_by_name(footprint):
    _, _, client = footprint
    status, body = ask(client, "SELECT count(*) AS n FROM ingest_batches")
    assert status == 403 and body["params"]["err"] == "ERR_QUERY_FORBIDDEN"
    assert "ingest_batches" in body["params"]["errmsg"]


@pytest.mark.parametrize("caller", ["ingestor-a", "educator-a"])
def test_roles_without_sql_are_forbidden(footprint, caller):
    _, _, client = footprint
    status, body = ask(client, "SELECT channel FROM telemetry", caller=caller)
    assert status == 403 and body["params"]["err"] == "ERR_AUTH_FORBIDDEN"


def test_a_request_without_an_identity_is_refused_not_answered(footprint):
    _, _, client = footprint
    response = client.post("/v1/query", json={"sql": "SELECT channel FROM telemetry"})
    assert response.status_code == 401 and response.json()["params"]["err"] == "ERR_AUTH_REQUIRED"


def test_a_tenant_admin_is_scoped_like_an_analyst(footprint):
    _, _, client = footprint
    response = client.post("/v1/query", json={"sql": COUNTS + " WHERE 1 = 1 OR channel = 'tenant-b'"},
                           headers={"X-Test-Caller": "tenant-admin-a"})
    assert response.status_code == 200 and response.json()["result"] == [{"n": A_EVENTS}]


def test_parameters_cannot_reach_the_other_tenant(footprint):
    dialect, _, client = footprint
    sql = ("SELECT channel, mid FROM telemetry WHERE mid = {m:String} OR channel = {c:String}" if dialect == "clickhouse"
           else "SELECT channel, mid FROM telemetry WHERE mid = $m OR channel = $c")
    status, rows = only_a(client, sql, {"m": f"{B_SECRET}-mid-1", "c": TENANT_B})
    assert status == 200 and rows == []


# -- random compositions --------------------------------------------------------------------------------------

TABLES = ["telemetry", "failed_events"]
WIDENING = ["1 = 1", "channel = 'tenant-b'", "channel <> 'tenant-a'", "mid LIKE 'bs%'", "NOT (channel = 'tenant-a')",
            "channel IS NULL", "true", "channel IN ('tenant-a', 'tenant-b')", "mid IS NOT NULL"]


@st.composite
def sources(draw, depth: int = 0) -> str:
    """A FROM item whose rows have a `channel` and a `mid` column."""
    choice = draw(st.integers(0, 4 if depth < 2 else 1))
    table = draw(st.sampled_from(TABLES))
    if choice == 0:
        return table
    if choice == 1:
        return f"{table} AS {draw(st.sampled_from(['t', 'telemetry', 'failed_events', 'x']))}"
    inner = draw(selects(depth + 1))
    if choice == 2:
        return f"({inner}) AS {draw(st.sampled_from(['s', 'telemetry', 'failed_events']))}"
    if choice == 3:
        return f"(SELECT l.channel, r.mid FROM {table} AS l JOIN ({inner}) AS r ON " \
               f"{draw(st.sampled_from(['1 = 1', 'l.mid = r.mid', 'r.channel = ' + repr(TENANT_B)]))}) AS j"
    return f"(SELECT channel, mid FROM {table} WHERE mid IN (SELECT mid FROM {draw(sources(depth + 1))} " \
           f"WHERE {draw(st.sampled_from(WIDENING))})) AS w"


@st.composite
def selects(draw, depth: int = 0) -> str:
    select = f"SELECT channel, mid FROM {draw(sources(depth))}"
    if draw(st.booleans()):
        select += f" WHERE {draw(st.sampled_from(WIDENING))}"
        if draw(st.booleans()):
            select += f" OR {draw(st.sampled_from(WIDENING))}"
    if depth < 2 and draw(st.booleans()):
        select = f"{select} UNION ALL {draw(selects(depth + 1))}"
    if depth < 2 and draw(st.booleans()):
        name = draw(st.sampled_from(["telemetry", "failed_events", "c"]))
        select = f"WITH {name} AS ({draw(selects(depth + 1))}) SELECT channel, mid FROM {name}" \
                 f"{' WHERE ' + draw(st.sampled_from(WIDENING)) if draw(st.booleans()) else ''}"
    return select


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])
@given(sql=selects())
def test_random_compositions_return_only_the_tenants_rows(footprint, sql):
    """Run in process (the guard as the checker runs it, then the store), so many compositions fit the time."""
    dialect, store, _ = footprint
    guard = SqlGuard(dialect=dialect)
    try:
        checked = guard.check(sql, identity=IDENTITIES["analyst-a"])
        rows = store.query(checked, None, 1000, 10.0).rows
    except CohortError as exc:  # a composition the engine cannot run (ambiguous names, types of a union)
        assert exc.code.startswith("ERR_") and B_SECRET not in exc.message, (sql, exc)
        return
    for channel, mid in rows:
        assert channel in (TENANT_A, None) and B_SECRET not in str(mid), (sql, checked, channel, mid)
    assert B_SECRET not in json.dumps(rows, default=str)
