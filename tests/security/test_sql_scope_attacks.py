"""The attack suite of scope-narrowed SQL: an analyst of tenant A whose key carries a scope (one course batch,
one course, or one school of A's hierarchy) tries every way we know to read rows of A outside its scope, or
B's rows inside a batch of the same name. Over real stores (DuckDB, and ClickHouse over chdb) holding:

- A's events in the scope (`a-mine-<n>`: batch `b-mine`, course `c-mine`, school `s-mine`): MINE of them;
- A's events outside it, in another batch/course/school, without any, or naming `b-mine` under another
  cdata type: every value of theirs holds OUT_SECRET;
- B's events that name the same batch, course and school: every value holds B_SECRET;
- a quarantined event of A's, whose payload holds OUT_SECRET.

Each attempt is refused with a coded error or answers with the scope's rows only: never a value of another
row (in rows or error messages), never a count above MINE, never a 5xx. Through the query API (admission, the
checker's child process, the store's bounds), as tests/security/test_sql_tenant_attacks.py does for tenants.
"""

from __future__ import annotations

import time
import uuid
from types import SimpleNamespace

import orjson
import pytest
import sqlglot
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.testclient import TestClient

from cohort.api.query import QueryService, run_query
from cohort.api.tables import list_tables
from cohort.core.errors import CohortError, ErrorCode
from cohort.core.log_record import LogRecord
from cohort.core.process_batch import process_batch
from cohort.security.identity import Identity, Role, Scope
from cohort.security.sql_guard import SqlGuard
from cohort.security.sql_scope import check_tenant_reads
from cohort.settings import Settings
from cohort.state.mid_window import MidWindow
from cohort.store.clickhouse_store import ClickHouseStore
from cohort.store.duckdb_store import DuckDbStore
from support import SAMPLE_FILE

TENANT_A, TENANT_B = "tenant-a", "tenant-b"
OUT_SECRET, B_SECRET = "xsecret", "bsecret"
MINE = 5
STATUSES = {200, 400, 403, 408, 413, 429}
SCOPES = {"batch": "batch:b-mine", "course": "course:c-mine", "school": "rollup.l2:s-mine"}
IDENTITIES = {f"analyst-{name}": Identity(f"key-analyst-{name}", Role.ANALYST, TENANT_A, scope=Scope.parse(text))
              for name, text in SCOPES.items()}
IDENTITIES |= {"analyst": Identity("key-analyst", Role.ANALYST, TENANT_A),
               "educator-batch": Identity("key-educator", Role.EDUCATOR, TENANT_A, scope=Scope.parse(SCOPES["batch"])),
               "admin": Identity("key-admin", Role.ADMIN, None)}


def _event(line: str, tenant: str, mid: str, batch: tuple[str, str] | None, course: str | None,
           school: str | None) -> dict:
    event = orjson.loads(line)
    event["context"]["channel"] = tenant
    event["mid"] = mid
    event["actor"] = {"id": f"{mid}-actor", "type": "User"}
    event["context"]["did"] = f"{mid}-device"
    event["context"]["cdata"] = [{"type": "Feature", "id": f"{mid}-feature"}] + (
        [{"type": batch[0], "id": batch[1]}] if batch else [])
    if school:
        event["context"]["rollup"] = {"l1": f"{mid}-state", "l2": school}
    else:
        event["context"].pop("rollup", None)
    event["object"] = {"id": f"{mid}-content", "type": "Content", "ver": "1"}
    if course:
        event["object"]["rollup"] = {"l1": course}
    return event


def scope_events() -> list[dict]:
    lines = SAMPLE_FILE.read_text().splitlines()
    events = []
    for i in range(MINE):  # in every one of the scopes
        events.append(_event(lines[i], TENANT_A, f"a-mine-{i}", ("CourseBatch" if i % 2 else "Batch", "b-mine"),
                             "c-mine", "s-mine"))
    outside = [(("Batch", "b-other"), "c-other", "s-other"), (None, None, None), (("Course", "b-mine"), None, None),
               (("Feature", "b-mine"), "c-mine-2", "s-mine-2"), (("Batch", "b-mine-x"), "C-MINE", "S-MINE")]
    for i, (batch, course, school) in enumerate(outside * 2):
        events.append(_event(lines[20 + i], TENANT_A, f"{OUT_SECRET}-mid-{i}", batch, course, school))
    for i in range(6):  # B's events in a batch, course and school of the same names
        events.append(_event(lines[40 + i], TENANT_B, f"{B_SECRET}-mid-{i}", ("Batch", "b-mine"), "c-mine", "s-mine"))
    return events


def stored_outcome():
    events = scope_events()
    bad = {"eid": "NOT_AN_EVENT", "mid": f"{OUT_SECRET}-bad", "context": {"channel": TENANT_A,
           "cdata": [{"type": "Batch", "id": "b-mine"}]}, "note": f"{OUT_SECRET}-payload"}
    now_ms = int(time.time() * 1000)
    record = LogRecord(payload=orjson.dumps({"id": "api.sunbird.telemetry", "events": events + [bad]}),
                       event_count=len(events) + 1, offset=1, received_at_ms=now_ms, headers={})
    return process_batch([record], MidWindow(3600), now_ms=now_ms, config_version="test"), now_ms


def scope_api(store, dialect: str, tmp_path) -> TestClient:
    service = QueryService(Settings(data_dir=tmp_path / "unused", query_timeout_seconds=8, query_max_memory_mb=256),
                           dialect=dialect)

    def as_caller(handler):
        async def endpoint(request):
            caller = request.headers.get("x-test-caller")
            if caller in IDENTITIES:  # what cohort.api.access does for an authenticated request
                request.state.identity = IDENTITIES[caller]
            return await handler(request)
        return endpoint

    app = Starlette(routes=[Route("/v1/query", as_caller(run_query), methods=["POST"]),
                            Route("/v1/tables", as_caller(list_tables), methods=["GET"])])
    app.state.queries = service
    app.state.node = SimpleNamespace(store=store)
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture(scope="module", params=["duckdb", "clickhouse"])
def footprint(request, tmp_path_factory):
    dialect = request.param
    outcome, now_ms = stored_outcome()
    if dialect == "duckdb":
        store = DuckDbStore(tmp_path_factory.mktemp("scopes") / "store.duckdb")
    else:
        store = ClickHouseStore(request.getfixturevalue("clickhouse_dsn"), database=f"scopes_{uuid.uuid4().hex[:10]}")
    store.write_batch(outcome, failed_at_ms=now_ms, token="scopes")
    client = scope_api(store, dialect, tmp_path_factory.mktemp("api"))
    with client:
        yield dialect, store, client
    client.app.state.queries.checker.close()
    store.close()


def ask(client, sql: str, caller: str):
    response = client.post("/v1/query", json={"sql": sql}, headers={"X-Test-Caller": caller})
    assert response.status_code in STATUSES, (sql, response.status_code, response.text[:500])
    for secret in (OUT_SECRET, B_SECRET):  # no value of a row outside the scope, in rows or error messages
        assert secret not in response.text, (caller, sql, response.text[:500])
    body = response.json()
    if response.status_code != 200:
        assert body["params"]["err"].startswith("ERR_") and body["params"]["errmsg"], (sql, body["params"])
    return response.status_code, body


def test_the_store_holds_rows_inside_and_outside_the_scope(footprint):
    _, _, client = footprint
    response = client.post("/v1/query", headers={"X-Test-Caller": "admin"},
                           json={"sql": "SELECT channel, count(*) AS n FROM telemetry GROUP BY channel ORDER BY channel"})
    assert response.json()["result"] == [{"channel": TENANT_A, "n": MINE + 10}, {"channel": TENANT_B, "n": 6}]
    response = client.post("/v1/query", headers={"X-Test-Caller": "analyst"},
                           json={"sql": "SELECT count(*) AS n FROM telemetry"})
    assert response.json()["result"] == [{"n": MINE + 10}]  # unscoped: the whole tenant


@pytest.mark.parametrize("caller", sorted(f"analyst-{name}" for name in SCOPES))
def test_a_scoped_analyst_reads_exactly_its_rows(footprint, caller):
    _, _, client = footprint
    status, body = ask(client, "SELECT mid, channel FROM telemetry ORDER BY mid", caller)
    assert status == 200 and body["result"] == [{"mid": f"a-mine-{i}", "channel": TENANT_A} for i in range(MINE)]


@pytest.mark.parametrize("caller", sorted(f"analyst-{name}" for name in SCOPES))
def test_the_quarantine_and_the_operators_table_are_refused_to_a_scoped_analyst(footprint, caller):
    _, _, client = footprint
    for sql in ("SELECT payload FROM failed_events", "SELECT mid FROM telemetry UNION ALL SELECT mid FROM failed_events",
                "SELECT t.mid FROM telemetry t JOIN failed_events f USING (mid)",
                "WITH telemetry AS (SELECT * FROM failed_events) SELECT mid FROM telemetry",
                "SELECT mid FROM telemetry WHERE mid IN (SELECT mid FROM failed_events)"):
        status, body = ask(client, sql, caller)
        assert status == 403 and body["params"]["err"] == "ERR_QUERY_FORBIDDEN", (sql, body)
        assert "failed_events" in body["params"]["errmsg"] and "scope" in body["params"]["errmsg"]
    status, body = ask(client, "SELECT count(*) AS n FROM ingest_batches", caller)
    assert status == 403 and body["params"]["err"] == "ERR_QUERY_FORBIDDEN"


def test_an_educator_with_a_scope_still_runs_no_sql(footprint):
    _, _, client = footprint
    status, body = ask(client, "SELECT mid FROM telemetry", "educator-batch")
    assert status == 403 and body["params"]["err"] == "ERR_AUTH_FORBIDDEN"


# Each: the statement and, when it must run, the count of rows it must answer (None: a refusal or a coded
# failure is as good). Every answer must hold the scope's rows only.
COUNT = "SELECT count(*) AS n FROM telemetry"
ATTACKS: list[tuple[str, str, int | None]] = [
    ("or-true", "SELECT mid FROM telemetry WHERE 1 = 1 OR mid LIKE 'xs%'", MINE),
    ("or-true", "SELECT mid FROM telemetry WHERE mid LIKE 'xsecret%' OR mid LIKE 'bsecret%'", 0),
    ("or-true", "SELECT mid FROM telemetry WHERE NOT (mid LIKE 'a-mine%') OR true", MINE),
    ("or-true", "SELECT mid FROM telemetry WHERE channel = 'tenant-a' OR channel = 'tenant-b'", MINE),
    ("comment", "SELECT mid FROM telemetry -- WHERE batch = 'b-mine'", MINE),
    ("comment", "SELECT mid FROM telemetry WHERE mid = 'x' /* */ OR /* */ 1 = 1 --", MINE),
    ("comment", "SELECT mid FROM telemetry /* ) OR (1 = 1 */ WHERE 1 = 1", MINE),
    ("count", "SELECT count(*) AS n FROM telemetry WHERE 1 = 1 OR 1 = 1", 1),
    ("count", "SELECT mid, count(*) OVER () AS n FROM telemetry", MINE),
    ("union", "SELECT mid FROM telemetry UNION ALL SELECT mid FROM telemetry WHERE mid NOT LIKE 'a-mine%'", MINE),
    ("union", "SELECT mid FROM telemetry WHERE false UNION ALL (SELECT mid FROM telemetry WHERE 1 = 1)", MINE),
    ("union", "SELECT * FROM (SELECT mid FROM telemetry UNION ALL SELECT mid FROM telemetry) AS u", 2 * MINE),
    ("cte", "WITH telemetry AS (SELECT * FROM telemetry) SELECT mid FROM telemetry", MINE),
    ("cte", "WITH a AS (SELECT * FROM telemetry), telemetry AS (SELECT * FROM a) SELECT mid FROM telemetry", MINE),
    ("cte", "WITH t AS (SELECT * FROM telemetry WHERE mid LIKE 'xsecret%') SELECT mid FROM t", 0),
    ("cte", 'WITH "Telemetry" AS (SELECT 1 AS one) SELECT mid FROM telemetry', None),
    ("cte", "WITH TELEMETRY AS (SELECT 'fake' AS mid) SELECT mid FROM telemetry", None),
    ("cte", "SELECT mid FROM telemetry UNION ALL WITH telemetry AS (SELECT * FROM telemetry) SELECT mid "
     "FROM telemetry UNION ALL SELECT mid FROM telemetry", None),
    ("cte", "WITH c AS (SELECT * FROM telemetry) SELECT mid FROM c UNION ALL SELECT mid FROM "
     "(WITH c AS (SELECT * FROM telemetry) SELECT * FROM c) AS inner_c", None),
    ("subquery", "SELECT mid FROM telemetry WHERE mid IN (SELECT mid FROM telemetry WHERE mid LIKE 'xsecret%')", 0),
    ("subquery", "SELECT (SELECT max(mid) FROM telemetry WHERE mid NOT LIKE 'a-mine%') AS m", 1),
    ("subquery", "SELECT (SELECT count(*) FROM telemetry) AS n", 1),
    ("subquery", "SELECT mid FROM telemetry t WHERE EXISTS (SELECT 1 FROM telemetry u WHERE u.mid LIKE 'xs%')", 0),
    ("subquery", "SELECT mid FROM (SELECT * FROM (SELECT * FROM telemetry WHERE 1 = 1) AS a) AS b", MINE),
    ("subquery", "SELECT mid FROM telemetry WHERE mid = ANY (SELECT mid FROM telemetry)", MINE),
    ("subquery", "SELECT mid FROM telemetry WHERE mid IN telemetry", None),
    ("join", "SELECT a.mid, b.mid AS other FROM telemetry a JOIN telemetry b ON a.eid = b.eid OR 1 = 1", MINE * MINE),
    ("join", "SELECT a.mid, b.mid AS other FROM telemetry a JOIN telemetry b ON b.mid LIKE 'xs%'", 0),
    ("join", "SELECT a.mid, b.mid AS other FROM telemetry a LEFT JOIN telemetry b ON b.channel = 'tenant-b'", MINE),
    ("join", "SELECT a.mid, b.mid AS other FROM telemetry a CROSS JOIN telemetry b", MINE * MINE),
    ("join", "SELECT a.mid FROM telemetry a, telemetry b WHERE a.mid = b.mid", MINE),
    ("names", 'SELECT mid FROM "telemetry"', MINE),
    ("names", "SELECT mid FROM TeLeMeTrY", MINE),
    ("names", 'SELECT mid FROM "TELEMETRY"', None),
    ("names", "SELECT mid FROM `telemetry`", None),
    ("names", "SELECT mid FROM main.telemetry", None),
    ("names", "SELECT mid FROM default.telemetry", None),
    ("names", "SELECT mid FROM t\u0435lemetry", None),
    ("reads", "SELECT mid FROM telemetry FINAL", None),
    ("reads", "SELECT mid FROM telemetry PREWHERE 1 = 1", None),
    ("reads", "SELECT mid FROM telemetry SAMPLE 1", None),
    ("reads", "SELECT mid FROM telemetry USING SAMPLE 100%", None),
    ("reads", "SELECT DISTINCT json_extract_string(event, '$.context.cdata[1].id') AS v FROM telemetry", 1),
    ("reads", "SELECT DISTINCT JSONExtractString(event, 'object', 'rollup', 'l1') AS v FROM telemetry", None),
    # errors that would quote a value of a row outside the scope: such a row must never meet the query
    ("oracle", "SELECT count(*) AS n FROM telemetry WHERE CAST(replace(mid, 'a-mine-', '') AS INTEGER) >= 0", 1),
    ("oracle", "SELECT count() AS n FROM telemetry WHERE toInt32(replaceAll(mid, 'a-mine-', '')) >= 0", 1),
    ("oracle", "SELECT count() AS n FROM telemetry WHERE toInt32(replaceAll(mid, 'a-mine-', '')) >= 0 AND eid != 'x'", 1),
    ("oracle", "SELECT mid FROM telemetry WHERE mid IN (SELECT mid FROM telemetry WHERE "
     "CAST(replace(mid, 'a-mine-', '') AS INTEGER) >= 0)", MINE),
    ("oracle", "SELECT mid FROM telemetry WHERE mid IN (SELECT mid FROM telemetry WHERE "
     "toInt32(replaceAll(mid, 'a-mine-', '')) >= 0)", MINE),
    ("oracle", "SELECT count(*) AS n FROM telemetry WHERE CAST(replace(json_extract_string(event, '$.object.id'), "
     "'-content', '') AS DATE) IS NULL", None),
    ("oracle", "SELECT count() AS n FROM telemetry WHERE toDate(JSONExtractString(event, 'object', 'id')) IS NULL", None),
    ("oracle", "SELECT mid FROM telemetry WHERE throwIf(mid LIKE 'x%') = 0", None),
    ("oracle", "SELECT eid, min(CAST(replace(mid, 'a-mine-', '') AS INTEGER)) AS m FROM telemetry GROUP BY eid", None),
]


_CALLERS = sorted(f"analyst-{name}" for name in SCOPES)


# Each attack against one scope kind, in turn (the rewrite is the same for every kind; only the condition
# differs, and test_counts_are_the_scopes_own / test_every_composition_… hold every kind on every shape).
@pytest.mark.parametrize("caller, kind, sql, expected",
                         [(_CALLERS[i % len(_CALLERS)], *attack) for i, attack in enumerate(ATTACKS)],
                         ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(ATTACKS)])
def test_attack_is_refused_or_scoped(footprint, caller, kind, sql, expected):
    _, _, client = footprint
    status, body = ask(client, sql, caller)
    rows = body["result"] if status == 200 else []
    for row in rows:
        for name, value in row.items():
            if name in ("mid", "other") and value not in (None, ""):  # ClickHouse: an unmatched join gives ""
                assert value.startswith("a-mine-"), (sql, row)
            if name in ("n", "m") and isinstance(value, int):
                assert value <= MINE, (sql, row)
    if status == 200 and expected is not None:
        assert len(rows) == expected, (sql, rows[:3])


@pytest.mark.parametrize("sql", [COUNT, COUNT + " WHERE 1 = 1 OR 1 = 1", "SELECT (SELECT count(*) FROM telemetry) AS n",
                                 "WITH telemetry AS (SELECT * FROM telemetry) SELECT count(*) AS n FROM telemetry"])
def test_counts_are_the_scopes_own(footprint, sql):
    _, _, client = footprint
    for caller in _CALLERS:
        status, body = ask(client, sql, caller)
        assert status == 200 and body["result"] == [{"n": MINE}], (caller, sql, body)


def test_every_composition_reads_the_scopes_rows_only(footprint):
    """The guard in process over the store: nested reads of each construct, for every scope."""
    dialect, store, _ = footprint
    guard = SqlGuard(dialect=dialect)
    inner = ["telemetry", "(SELECT * FROM telemetry WHERE 1 = 1) AS s", "(SELECT * FROM telemetry UNION ALL SELECT * "
             "FROM telemetry) AS u", "telemetry AS failed_events"]
    for caller in sorted(f"analyst-{name}" for name in SCOPES):
        for source in inner:
            for where in ("", " WHERE mid NOT LIKE 'a-mine%'", " WHERE 1 = 1 OR channel <> 'tenant-a'"):
                sql = f"SELECT mid FROM {source}{where}"
                try:
                    rows = store.query(guard.check(sql, identity=IDENTITIES[caller]), None, 1000, 10.0).rows
                except CohortError as exc:
                    assert OUT_SECRET not in exc.message and B_SECRET not in exc.message, (sql, exc)
                    continue
                assert all(str(mid).startswith("a-mine-") for (mid,) in rows), (caller, sql, rows)


# -- the independent re-check on what the guard hands the engine ------------------------------------------------

@pytest.mark.parametrize("dialect", ["duckdb", "clickhouse"])
def test_the_recheck_refuses_a_read_narrowed_to_the_tenant_only_or_to_another_scope(dialect):
    scoped = IDENTITIES["analyst-batch"]
    guard = SqlGuard(dialect=dialect)
    tenant_only = guard.check("SELECT mid FROM telemetry", identity=IDENTITIES["analyst"])
    other_scope = guard.check("SELECT mid FROM telemetry", identity=IDENTITIES["analyst-school"])
    own = guard.check("SELECT mid FROM telemetry", identity=scoped)
    for text in (tenant_only, other_scope, own.replace("b-mine", "b-other"), own.replace(" AND (", " OR (", 1),
                 own.replace("tenant-a", "tenant-b")):
        tree = sqlglot.parse_one(text, read=dialect)
        with pytest.raises(CohortError) as info:
            check_tenant_reads(tree, scoped, dialect, guard._check_sources(tree))
        assert info.value.code == ErrorCode.QUERY_INVALID, text
    tree = sqlglot.parse_one(own, read=dialect)
    check_tenant_reads(tree, scoped, dialect, guard._check_sources(tree))  # what the guard wrote passes
    with pytest.raises(CohortError):  # and the unscoped analyst's own reads are not taken for a scope's
        check_tenant_reads(tree, IDENTITIES["analyst"], dialect, guard._check_sources(tree))


@pytest.mark.parametrize("dialect", ["duckdb", "clickhouse"])
def test_the_functions_the_rewrite_adds_pass_the_guard_it_has_already_passed(dialect, monkeypatch):
    """The allowlist checks what the user wrote, before the rewrite: the scope's condition may call functions a
    user may or may not call (today a user may call them all), and a user who writes them is judged as before.
    Held here with an allowlist that refuses the condition's functions."""
    import cohort.security.sql_guard as sql_guard
    from cohort.security.sql_functions import check_function, function_name

    refused = {"json_contains", "arrayexists", "jsonextractarrayraw"}

    def stricter(node, dialect_name="duckdb"):
        if function_name(node).lower() in refused:
            raise CohortError(ErrorCode.QUERY_FORBIDDEN, f"function {function_name(node)} is not allowed")
        check_function(node, dialect_name)

    monkeypatch.setattr(sql_guard, "check_function", stricter)
    guard = SqlGuard(dialect=dialect)
    for name in ("course", "batch"):
        text = guard.check("SELECT count(*) AS n FROM telemetry", identity=IDENTITIES[f"analyst-{name}"])
        assert ("arrayExists" if dialect == "clickhouse" else "JSON_CONTAINS") in text
    written = ("SELECT arrayExists(x -> x = '1', JSONExtractArrayRaw(event, 'a')) AS v FROM telemetry"
               if dialect == "clickhouse" else "SELECT json_contains(event, '1') AS v FROM telemetry")
    with pytest.raises(CohortError) as info:
        guard.check(written, identity=IDENTITIES["analyst-course"])
    assert info.value.code == ErrorCode.QUERY_FORBIDDEN
    with pytest.raises(CohortError) as info:  # a function refused today stays refused when the user writes it
        guard.check("SELECT getSetting('readonly') AS s" if dialect == "clickhouse"
                    else "SELECT current_setting('memory_limit') AS s", identity=IDENTITIES["analyst-course"])
    assert info.value.code == ErrorCode.QUERY_FORBIDDEN
