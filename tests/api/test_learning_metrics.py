"""GET /v1/metrics/{name}: figures exact per day for the entitled, suppressed for analysts, scoped, audited,
and every bad request a coded 4xx.

Events go in through the ingest API (two tenants, schools as context.rollup.l3, two days; the plan and its
hand-worked figures are in tests/analytics/metric_events.py) and are read back through the app as each
role would."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.testclient import TestClient

from analytics.metric_events import (D1_S, D2_S, EXPECTED_A_BY_SCHOOL, EXPECTED_A_DAILY, EXPECTED_B_DAILY, TENANT_A,
                                     TENANT_B, all_events, write_events)
from cohort.analytics.metrics import METRICS
from cohort.api.learning_metrics import get_metric
from cohort.api.query import QueryService
from cohort.core.errors import ErrorCode
from cohort.security.audit_log import AuditLogUnavailable
from cohort.security.identity import Identity, Role, Scope
from cohort.settings import Settings
from cohort.store.clickhouse_store import ClickHouseStore
from cohort.store.duckdb_store import DuckDbStore
from support import envelope, query, wait_for

WINDOW = {"from": "2026-03-02", "to": "2026-03-04"}
METRIC_NAMES = sorted(METRICS)
DAY = {D1_S: "2026-03-02T00:00:00Z", D2_S: "2026-03-03T00:00:00Z"}


@pytest.fixture(scope="module")
def app(shared_client):
    """The app with the plan's events stored and a key per role."""
    events = all_events()
    response = shared_client.post("/v1/telemetry", content=envelope(events))
    assert response.status_code == 200, response.text
    assert wait_for(lambda: query(shared_client, "SELECT count(*) AS n FROM telemetry")[0]["n"] == len(events), 120)
    store = shared_client.app.state.authenticator.key_store
    for tenant in (TENANT_A, TENANT_B):
        store.create_tenant(tenant)
    keys = {
        "analyst_a": store.create_key(TENANT_A, Role.ANALYST),
        "analyst_b": store.create_key(TENANT_B, Role.ANALYST),
        "tenant_admin_a": store.create_key(TENANT_A, Role.TENANT_ADMIN),
        "educator_school_1": store.create_key(TENANT_A, Role.EDUCATOR, scope=Scope.parse("rollup.l3:school-1")),
        "educator_school_2": store.create_key(TENANT_A, Role.EDUCATOR, scope=Scope.parse("rollup.l3:school-2")),
        "ingestor_a": store.create_key(TENANT_A, Role.INGESTOR),
    }
    shared_client.keys = {name: key for name, (_, key) in keys.items()}
    shared_client.key_ids = {name: info.key_id for name, (info, _) in keys.items()}
    return shared_client


def get(app, name: str, who: str | None = None, **params):
    headers = {} if who is None else {"Authorization": f"Bearer {app.keys[who]}"}
    given = {key: value for key, value in {**WINDOW, **params}.items() if value is not None}  # None: left out
    return app.get(f"/v1/metrics/{name}", params=given, headers=headers)


def result(app, name: str, who: str | None = None, **params) -> dict:
    response = get(app, name, who, **params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["params"]["status"] == "successful" and body["responseCode"] == "SUCCESS"
    return body["result"]


def series(body: dict) -> dict[tuple[str, str | None], object]:
    return {(cell["bucket"], cell["group"]): cell["value"] for cell in body["series"]}


@pytest.mark.parametrize("name", METRIC_NAMES)
def test_daily_figures_are_exact_for_the_tenant_admin(app, name):
    body = result(app, name, "tenant_admin_a")
    assert series(body) == {(DAY[bucket], None): value for bucket, value in EXPECTED_A_DAILY[name].items()}
    assert body["suppression"] == {"applied": False, "k": 10, "suppressed_cells": 0}
    assert not any(cell["suppressed"] for cell in body["series"])


@pytest.mark.parametrize("name", METRIC_NAMES)
def test_per_school_figures_are_exact_for_the_tenant_admin(app, name):
    body = result(app, name, "tenant_admin_a", by="rollup.l3")
    assert series(body) == {(DAY[bucket], group): value
                            for (bucket, group), (value, _) in EXPECTED_A_BY_SCHOOL[name].items()}


def test_the_response_says_what_was_asked_how_fresh_and_how_complete(app):
    body = result(app, "content_plays", "tenant_admin_a", by="rollup.l3")
    assert {key: body[key] for key in ("metric", "unit", "tenant", "scope", "from", "to", "granularity", "by")} == {
        "metric": "content_plays", "unit": "plays", "tenant": TENANT_A, "scope": None,
        "from": "2026-03-02T00:00:00Z", "to": "2026-03-04T00:00:00Z", "granularity": "day", "by": "rollup.l3"}
    assert "START" in body["description"]
    assert body["freshness"]["as_of"].endswith("Z") and 0 <= body["freshness"]["lag_seconds"] < 600
    assert body["completeness"]["window_closed"] is True and body["completeness"]["note"]
    assert [cell["bucket"] for cell in body["series"]] == sorted(cell["bucket"] for cell in body["series"])


def test_an_open_window_is_said_to_be_open(app):
    today = datetime.now(UTC).date()
    body = result(app, "sessions", "tenant_admin_a", **{"from": today.isoformat(),
                                                         "to": (today + timedelta(days=2)).isoformat()})
    assert body["completeness"]["window_closed"] is False and body["series"] == []
    default = result(app, "sessions", "tenant_admin_a", **{"from": None, "to": None})  # the last 30 days
    assert default["completeness"]["window_closed"] is False
    assert default["to"] == f"{today + timedelta(days=1)}T00:00:00Z"


def test_an_analyst_gets_small_cells_withheld_with_their_complements(app):
    body = result(app, "active_learners", "analyst_a", by="rollup.l3")
    assert body["suppression"] == {"applied": True, "k": 10, "suppressed_cells": 4}
    assert [(c["bucket"], c["group"], c["value"], c["suppressed"]) for c in body["series"]] == [
        # D1: school-2 has 3 learners; school-1 (12, the next smallest) is withheld with it; the System
        # actor's cell (no learner) is not shown at all
        (DAY[D1_S], "school-1", None, True), (DAY[D1_S], "school-2", None, True), (DAY[D1_S], "school-3", 20, False),
        # D2: school-2 has one learner (b1's QR scan); school-1 is the only other cell
        (DAY[D2_S], "school-1", None, True), (DAY[D2_S], "school-2", None, True)]
    totals = result(app, "active_learners", "analyst_a")  # by none: 35 and 13 learners, both shown
    assert series(totals) == {(DAY[D1_S], None): 35, (DAY[D2_S], None): 13}


@pytest.mark.parametrize("name", METRIC_NAMES)
def test_what_an_analyst_sees_is_exact_or_withheld_and_never_from_fewer_than_k(app, name):
    expected = EXPECTED_A_BY_SCHOOL[name]
    body = result(app, name, "analyst_a", by="rollup.l3")
    shown = {(cell["bucket"], cell["group"]): cell for cell in body["series"]}
    learners = {(DAY[bucket], group): people for (bucket, group), (_, people) in expected.items()}
    values = {(DAY[bucket], group): value for (bucket, group), (value, _) in expected.items()}
    assert set(shown) == {key for key, people in learners.items() if people > 0}  # no learner: no row
    for key, cell in shown.items():
        if cell["suppressed"]:
            assert cell["value"] is None
        else:
            assert learners[key] >= 10 and cell["value"] == values[key]
    for day in DAY.values():
        withheld = [key for key, cell in shown.items() if key[0] == day and cell["suppressed"]]
        assert len(withheld) != 1 or len([key for key in shown if key[0] == day]) == 1
    assert body["suppression"]["suppressed_cells"] == sum(cell["suppressed"] for cell in body["series"])


def test_an_educator_sees_the_small_group_of_its_own_school_exact(app):
    body = result(app, "active_learners", "educator_school_2", by="rollup.l3")
    assert series(body) == {(DAY[D1_S], "school-2"): 3, (DAY[D2_S], "school-2"): 1}
    assert body["suppression"]["applied"] is False and body["scope"] == "rollup.l3:school-2"
    analyst = result(app, "active_learners", "analyst_a", by="rollup.l3")
    assert series(analyst)[(DAY[D1_S], "school-2")] is None  # the same cell, withheld from the analyst


@pytest.mark.parametrize("name", METRIC_NAMES)
def test_an_educator_scoped_to_school_1_sees_only_school_1(app, name):
    grouped = result(app, name, "educator_school_1", by="rollup.l3")
    assert series(grouped) == {(DAY[bucket], group): value for (bucket, group), (value, _)
                               in EXPECTED_A_BY_SCHOOL[name].items() if group == "school-1"}
    daily = result(app, name, "educator_school_1")
    assert series(daily) == {(DAY[bucket], None): value for (bucket, group), (value, _)
                             in EXPECTED_A_BY_SCHOOL[name].items() if group == "school-1"}


@pytest.mark.parametrize("name", METRIC_NAMES)
def test_tenant_b_sees_nothing_of_tenant_a(app, name):
    body = result(app, name, "analyst_b")
    assert body["tenant"] == TENANT_B
    assert series(body) == {(DAY[bucket], None): value for bucket, value in EXPECTED_B_DAILY[name].items()}
    grouped = result(app, name, "analyst_b", by="rollup.l3")  # B's school-1 is not A's school-1
    assert all(cell["bucket"] == DAY[D1_S] and cell["group"] == "school-1" for cell in grouped["series"])


@pytest.mark.parametrize("who, tenant", [("analyst_b", TENANT_A), ("analyst_a", TENANT_B),
                                         ("educator_school_1", TENANT_B), ("tenant_admin_a", TENANT_B)])
def test_naming_another_tenant_is_forbidden(app, who, tenant):
    response = get(app, "content_plays", who, tenant=tenant)
    assert response.status_code == 403 and response.json()["params"]["err"] == ErrorCode.AUTH_FORBIDDEN
    assert "series" not in response.text


def test_an_admin_reads_any_tenant_or_all(app):
    as_admin = result(app, "content_plays", tenant=TENANT_A)  # the client's own key is an admin's
    assert series(as_admin) == series(result(app, "content_plays", "tenant_admin_a"))
    everyone = result(app, "content_plays")
    assert everyone["tenant"] is None and series(everyone) == {(DAY[D1_S], None): 46, (DAY[D2_S], None): 12}


def test_other_cuts(app):
    weekly = result(app, "time_spent", "tenant_admin_a", granularity="week")
    assert series(weekly) == {(DAY[D1_S], None): 1730}  # Monday 2026-03-02
    everything = result(app, "content_plays", "tenant_admin_a", granularity="all", by="pdata_id")
    assert series(everything) == {(DAY[D1_S], "prod.diksha.app"): 47}
    hourly = result(app, "content_plays", "analyst_b", granularity="hour", by="object_id")
    assert series(hourly) == {(DAY[D1_S], "do_content_1"): 11}


@pytest.mark.parametrize("params", [
    {"from": "not-a-date"}, {"to": "2026-02-30"}, {"from": "2026-03-04", "to": "2026-03-02"},
    {"from": "2020-01-01", "to": "2026-01-01"}, {"granularity": "minute"}, {"by": "actor_id"},
    {"by": "rollup.l3' OR 1=1 --"}, {"from": "2026-01-01", "to": "2026-03-01", "granularity": "hour"},
    {"tenant": "a b"}, {"tenant": "x" * 300}, {"order": "desc"}, {"from": "\u0000"}, {"from": "２０２６-03-01"},
    {"from": "2026-03-01T00:00:00.0001Z"}, {"granularity": "day" * 50},
])
def test_bad_parameters_are_400_with_a_code_never_500(app, params):
    response = get(app, "content_plays", "analyst_a", **params)
    assert response.status_code == 400, response.text
    assert response.json()["params"]["err"] == ErrorCode.METRIC_PARAM


def test_a_repeated_parameter_is_400(app):
    response = app.get("/v1/metrics/sessions?by=none&by=rollup.l3",
                       headers={"Authorization": f"Bearer {app.keys['analyst_a']}"})
    assert response.status_code == 400 and response.json()["params"]["err"] == ErrorCode.METRIC_PARAM


@pytest.mark.parametrize("name", ["nope", "ACTIVE_LEARNERS", "active_learners;", "x" * 500, "%2e%2e"])
def test_an_unknown_metric_is_404_coded(app, name):
    response = get(app, name, "analyst_a")
    assert response.status_code == 404 and response.json()["params"]["err"] == ErrorCode.METRIC_UNKNOWN


def test_credentials_and_roles(app):
    anonymous = app.get("/v1/metrics/sessions", headers={"Authorization": ""})
    assert anonymous.status_code == 401
    forged = app.get("/v1/metrics/sessions", headers={"Authorization": "Bearer ck_not_a_real_key"})
    assert forged.status_code == 401
    ingestor = get(app, "sessions", "ingestor_a")
    assert ingestor.status_code == 403 and ingestor.json()["params"]["err"] == ErrorCode.AUTH_FORBIDDEN


def test_every_request_is_audited_with_its_parameters(app):
    before = app.app.state.audit.entries(tenant=TENANT_A, limit=10_000)[-1].seq
    result(app, "qr_scans", "analyst_a", by="rollup.l3")
    get(app, "qr_scans", "analyst_a", granularity="minute")
    get(app, "nope", "analyst_a")
    entries = [e for e in app.app.state.audit.entries(tenant=TENANT_A, since_seq=before)
               if e.actor_subject == app.key_ids["analyst_a"]]
    assert [(e.action, e.outcome, e.detail["status"]) for e in entries] == [
        ("metric", "ok", 200), ("metric", "refused", 400), ("metric", "refused", 404)]
    assert entries[0].detail["metric"] == "qr_scans" and entries[0].detail["params"]["by"] == "rollup.l3"
    assert entries[0].detail["params"]["tenant"] == TENANT_A and entries[0].detail["suppressed_cells"] == 1  # b1 alone
    assert entries[1].detail["params"]["granularity"] == "minute"
    assert app.app.state.audit.verify().ok


def test_a_request_that_cannot_be_audited_gets_no_figures(app, monkeypatch):
    def away(*args, **kwargs):
        raise AuditLogUnavailable("injected: the audit log's disk is full")

    monkeypatch.setattr(app.app.state.queries.audit, "append", away)
    response = get(app, "content_plays", "tenant_admin_a")
    assert response.status_code == 503 and response.json()["params"]["err"] == ErrorCode.AUDIT_UNAVAILABLE
    assert "series" not in response.text and "35" not in response.json()["params"]["errmsg"]


def test_too_many_cells_is_refused_not_cut_short(app, monkeypatch):
    monkeypatch.setattr(app.app.state.queries.settings, "query_row_limit", 3)
    response = get(app, "active_learners", "tenant_admin_a", by="rollup.l3")  # 6 cells
    assert response.status_code == 413 and response.json()["params"]["err"] == ErrorCode.METRIC_TOO_LARGE
    assert get(app, "active_learners", "tenant_admin_a").status_code == 200  # 2 cells


def test_admission_answers_429(app, monkeypatch):
    admission = app.app.state.queries.admission
    monkeypatch.setattr(admission, "max_per_caller", 0)
    monkeypatch.setattr(admission, "max_total", 0)
    response = get(app, "sessions", "analyst_a")
    assert response.status_code == 429 and response.json()["params"]["err"] == ErrorCode.TOO_MANY_QUERIES
    assert "Retry-After" in response.headers



# --- the endpoint over each store ------------------------------------------------------------------------

CALLERS = {
    "analyst-a": Identity("key-analyst-a", Role.ANALYST, TENANT_A),
    "analyst-b": Identity("key-analyst-b", Role.ANALYST, TENANT_B),
    "educator-school-2": Identity("key-educator", Role.EDUCATOR, TENANT_A, Scope.parse("rollup.l3:school-2")),
}


@pytest.fixture(scope="module", params=["duckdb", "clickhouse"])
def over_store(request, tmp_path_factory):
    """GET /v1/metrics/{name} alone over a DuckDB file or ClickHouse (chdb) holding the plan's events, each
    request made as CALLERS[X-Test-Caller] (what the access layer hands the handler)."""
    tmp = tmp_path_factory.mktemp("metrics-store")
    if request.param == "duckdb":
        store = DuckDbStore(tmp / "store.duckdb")
    else:
        store = ClickHouseStore(request.getfixturevalue("clickhouse_dsn"), database=f"metrics_{uuid.uuid4().hex[:12]}")
    write_events(store, all_events())

    async def endpoint(request):
        request.state.identity = CALLERS[request.headers["x-test-caller"]]
        return await get_metric(request)

    app = Starlette(routes=[Route("/v1/metrics/{name}", endpoint, methods=["GET"])])
    app.state.queries = QueryService(Settings(data_dir=tmp / "unused"), dialect=request.param)
    app.state.node = SimpleNamespace(store=store)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client
    store.close()


def as_caller(client, name: str, caller: str, **params) -> dict:
    response = client.get(f"/v1/metrics/{name}", params={**WINDOW, **params}, headers={"X-Test-Caller": caller})
    assert response.status_code == 200, response.text
    return response.json()["result"]


def test_each_store_gives_the_same_suppressed_and_scoped_answers(over_store):
    analyst = as_caller(over_store, "active_learners", "analyst-a", by="rollup.l3")
    assert [(c["group"], c["value"]) for c in analyst["series"]] == [
        ("school-1", None), ("school-2", None), ("school-3", 20), ("school-1", None), ("school-2", None)]
    educator = as_caller(over_store, "time_spent", "educator-school-2", by="rollup.l3")
    assert series(educator) == {(DAY[D1_S], "school-2"): 90}
    other = as_caller(over_store, "content_plays", "analyst-b", granularity="all", by="pdata_id")
    assert series(other) == {(DAY[D1_S], "prod.diksha.app"): 11}
    assert other["freshness"]["as_of"] is not None
    refused = over_store.get("/v1/metrics/qr_scans", params={"by": "rollup.l9"}, headers={"X-Test-Caller": "analyst-a"})
    assert refused.status_code == 400 and refused.json()["params"]["err"] == ErrorCode.METRIC_PARAM


def test_a_fault_while_computing_is_a_coded_500_and_audited(app, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("injected: the store's connection broke")

    monkeypatch.setattr(app.app.state.node.store, "query", broken)
    response = get(app, "sessions", "analyst_a")
    assert response.status_code == 500 and response.json()["params"]["err"] == ErrorCode.INTERNAL
    last = app.app.state.audit.entries(tenant=TENANT_A, limit=10_000)[-1]
    assert (last.action, last.outcome, last.detail["status"]) == ("metric", "error", 500)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from([*METRIC_NAMES, "nope", "x" * 70, "%00", "a b"]),
       pairs=st.lists(st.tuples(st.sampled_from(["from", "to", "granularity", "by", "tenant", "k", "from[]"]),
                                st.one_of(st.text(max_size=30),
                                          st.sampled_from(["2026-03-02", "2026-03-04", "day", "hour", "rollup.l3",
                                                           TENANT_A, TENANT_B, "all", "2026-03-02T00:00:00Z"]))),
                      max_size=5))
def test_any_request_is_answered_or_refused_with_a_code_never_5xx(app, name, pairs):
    query_string = urlencode(pairs)
    response = app.get(f"/v1/metrics/{quote(name)}?{query_string}",
                       headers={"Authorization": f"Bearer {app.keys['analyst_a']}"})
    assert response.status_code in (200, 400, 403, 404), response.text
    body = response.json()
    if response.status_code != 200:
        assert body["params"]["err"] in (ErrorCode.METRIC_PARAM, ErrorCode.METRIC_UNKNOWN, ErrorCode.AUTH_FORBIDDEN)
    else:
        assert body["result"]["tenant"] == TENANT_A
        assert all(cell["suppressed"] or cell["value"] is not None for cell in body["result"]["series"])
