"""GET /v1/lineage/event/{mid} and GET /v1/lineage/metric/{name} on the embedded footprint, events ingested
through the API: where each copy of an event ended and the request that carried it, only for the caller's
tenant and scope; a metric's lineage is the very statement its figures come from (run here through the
store, it gives the endpoint's values); every bad request a coded 4xx; audited. One test reads an event's
lineage from ClickHouse (chdb), the scale-out store."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from types import SimpleNamespace
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.testclient import TestClient

from analytics.metric_events import D1, TENANT_A, TENANT_B, all_events, event, write_events
from cohort.analytics.lineage import DATASET_VERSIONS
from cohort.analytics.metric_query import iso
from cohort.analytics.metrics import METRICS
from cohort.api.lineage import event_lineage, metric_lineage
from cohort.api.query import QueryService
from cohort.core.errors import ErrorCode
from cohort.core.stages import STAGES
from cohort.security.audit_log import AuditLogUnavailable
from cohort.security.identity import Identity, Role, Scope
from cohort.settings import Settings
from cohort.store.clickhouse_store import ClickHouseStore
from support import envelope, query, wait_for

WINDOW = {"from": "2026-03-02", "to": "2026-03-04"}
METRIC_NAMES = sorted(METRICS)


def _start(tenant: str, school: str, mid: str, minute: int = 500, ets: int | None = None) -> dict:
    item = event("START", tenant, D1, minute, f"learner-{mid}", f"dev-{mid}", f"sid-{mid}", school,
                 {"type": "content", "mode": "play", "pageid": ""})
    item["mid"] = mid
    if ets is not None:
        item["ets"] = ets  # not a time: quarantined at route
    return item


MIDS = SimpleNamespace(stored="lin-stored-1", quarantined="lin-bad-ets-1", duplicate="lin-dup-1",
                       shared="lin-shared-1", absent="lin-absent-1")


def _post(client, events: list[dict], msgid: str) -> None:
    response = client.post("/v1/telemetry", content=envelope(events, msgid=msgid))
    assert response.status_code == 200, response.text


def _processed(client, msgid: str) -> bool:
    """Whether the request of `msgid` went through the pipeline (its ingest_batches row is committed with it)."""
    return query(client, "SELECT count(*) AS n FROM ingest_batches WHERE msgid = $m", {"m": msgid})[0]["n"] == 1


@pytest.fixture(scope="module")
def app(shared_client):
    """The metric plan's events, plus: a stored event of school-1, a quarantined one, one sent twice (two
    requests), and one mid stored in tenant A whose copy in tenant B is quarantined; a key per role."""
    plan = all_events()
    _post(shared_client, plan, "lin-plan")
    _post(shared_client, [_start(TENANT_A, "school-1", MIDS.stored), _start(TENANT_A, "school-1", MIDS.quarantined,
                                                                         ets=5)], "lin-first")
    _post(shared_client, [_start(TENANT_A, "school-1", MIDS.duplicate), _start(TENANT_A, "school-2", MIDS.shared)],
          "lin-dup-a")
    assert wait_for(lambda: _processed(shared_client, "lin-dup-a") and _processed(shared_client, "lin-first"), 120)
    _post(shared_client, [_start(TENANT_A, "school-1", MIDS.duplicate)], "lin-dup-b")  # the resend
    _post(shared_client, [_start(TENANT_B, "school-1", MIDS.shared, ets=7)], "lin-shared-b")
    assert wait_for(lambda: all(_processed(shared_client, m) for m in ("lin-plan", "lin-dup-b", "lin-shared-b")), 120)
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
        "viewer_a": store.create_key(TENANT_A, Role.VIEWER),
    }
    shared_client.keys = {name: key for name, (_, key) in keys.items()}
    shared_client.key_ids = {name: info.key_id for name, (info, _) in keys.items()}
    return shared_client


def _as(app, who: str | None) -> dict[str, str]:
    return {} if who is None else {"Authorization": f"Bearer {app.keys[who]}"}  # None: the admin


def lineage(app, mid: str, who: str | None = None, **params):
    return app.get(f"/v1/lineage/event/{mid}", params=params, headers=_as(app, who))


def found(app, mid: str, who: str | None = None, **params) -> dict:
    response = lineage(app, mid, who, **params)
    assert response.status_code == 200, response.text
    assert response.json()["params"]["status"] == "successful"
    return response.json()["result"]


def refused(response, status: int, code: ErrorCode) -> None:
    assert response.status_code == status, response.text
    assert response.json()["params"]["err"] == code and response.json()["params"]["status"] == "failed"


def test_a_stored_event_shows_every_stage_and_its_request(app):
    body = found(app, MIDS.stored, "analyst_a")
    assert (body["mid"], body["tenant"], body["status"]) == (MIDS.stored, TENANT_A, "stored")
    assert body["quarantined"] == [] and body["truncated"] is False
    [copy] = body["stored"]
    assert (copy["table"], copy["tenant"], copy["eid"], copy["source"]) == ("telemetry", TENANT_A, "START",
                                                                             "/v1/telemetry")
    assert copy["ets"] == "2026-03-02T08:20:00Z"  # minute 500 of D1
    assert copy["ingested_at"] <= copy["processed_at"]
    assert copy["config_version"].startswith("telemetry-3.0:")
    stages = {stage["name"]: stage for stage in copy["stages"]}
    assert [stage["name"] for stage in copy["stages"]] == list(STAGES)
    for name in ("extract", "validate", "transform"):
        assert stages[name]["ok"] is True and stages[name]["batch_us"] >= 0, stages[name]
    assert stages["route"] == {"name": "route", "recorded": True, "ok": True, "table": "telemetry"}
    assert stages["dedup"]["ok"] is True and stages["batch_dedup"] == {"name": "batch_dedup", "recorded": False}
    assert stages["denorm"]["ok"] is False and stages["denorm"]["skipped"]
    assert copy["pseudonymised"] >= 4  # actor id and device id of each of the request's two events
    assert stages["transform"]["pseudonymised"] == copy["pseudonymised"]
    request = copy["request"]
    assert (request["msgid"], request["source"], request["event_count"]) == ("lin-first", "/v1/telemetry", 2)
    assert request["log_offset"] == copy["log_offset"] and request["received_at"] == copy["ingested_at"]
    assert "headers" not in request  # raw sender data: admins only
    # the figures agree with the store, read as SQL
    [row] = query(app, "SELECT log_offset, ingested_at FROM telemetry WHERE mid = $m", {"m": MIDS.stored})
    assert row["log_offset"] == copy["log_offset"]


def test_an_admin_sees_the_request_headers(app):
    body = found(app, MIDS.stored)
    assert body["tenant"] is None  # every tenant
    assert isinstance(body["stored"][0]["request"]["headers"], dict)
    assert found(app, MIDS.stored, tenant=TENANT_A)["tenant"] == TENANT_A


def test_a_quarantined_event_shows_its_code_and_stage(app):
    body = found(app, MIDS.quarantined, "tenant_admin_a")
    assert body["status"] == "quarantined" and body["stored"] == []
    [copy] = body["quarantined"]
    assert (copy["table"], copy["error_code"], copy["stage"], copy["tenant"]) == (
        "failed_events", ErrorCode.ROUTE_TIMESTAMP, "route", TENANT_A)
    assert "ets 5" in copy["message"] and copy["failed_at"].endswith("Z")
    assert copy["request"]["msgid"] == "lin-first"
    assert body["duplicates"]["stored_copies"] == 0


def test_a_resent_event_is_stored_once_from_its_first_request(app):
    body = found(app, MIDS.duplicate, "analyst_a")
    assert body["status"] == "stored" and len(body["stored"]) == 1
    assert body["stored"][0]["request"]["msgid"] == "lin-dup-a"  # not the resend lin-dup-b
    assert body["duplicates"]["stored_copies"] == 1 and "duplicate" in body["duplicates"]["note"]
    # the resend was processed (its request is committed) and left no second row
    assert query(app, "SELECT count(*) AS n FROM telemetry WHERE mid = $m", {"m": MIDS.duplicate})[0]["n"] == 1
    assert _processed(app, "lin-dup-b")


def test_a_mid_in_two_tenants_shows_only_the_callers_copy(app):
    mine = found(app, MIDS.shared, "analyst_a")
    assert mine["status"] == "stored" and mine["quarantined"] == [] and mine["stored"][0]["tenant"] == TENANT_A
    theirs = found(app, MIDS.shared, "analyst_b")
    assert theirs["status"] == "quarantined" and theirs["stored"] == []
    assert [(c["tenant"], c["error_code"]) for c in theirs["quarantined"]] == [(TENANT_B, ErrorCode.ROUTE_TIMESTAMP)]
    assert theirs["quarantined"][0]["request"]["msgid"] == "lin-shared-b"
    everyone = found(app, MIDS.shared)  # the admin, no tenant named: both
    assert everyone["status"] == "stored_and_quarantined"
    assert found(app, MIDS.shared, tenant=TENANT_B)["status"] == "quarantined"


@pytest.mark.parametrize("mid", [MIDS.stored, MIDS.quarantined, MIDS.duplicate])
def test_another_tenants_event_is_404_like_an_absent_one(app, mid):
    other = lineage(app, mid, "analyst_b")
    absent = lineage(app, MIDS.absent, "analyst_b")
    refused(other, 404, ErrorCode.LINEAGE_NOT_FOUND)
    refused(absent, 404, ErrorCode.LINEAGE_NOT_FOUND)
    assert other.json()["params"]["errmsg"].replace(mid, "M") == absent.json()["params"]["errmsg"].replace(
        MIDS.absent, "M")


def test_a_scoped_educator_sees_stored_events_in_its_scope_only(app):
    inside = found(app, MIDS.stored, "educator_school_1")
    assert inside["status"] == "stored" and "headers" not in inside["stored"][0]["request"]
    refused(lineage(app, MIDS.stored, "educator_school_2"), 404, ErrorCode.LINEAGE_NOT_FOUND)
    assert found(app, MIDS.shared, "educator_school_2")["quarantined"] == []  # school-2's stored copy only
    refused(lineage(app, MIDS.quarantined, "educator_school_1"), 404, ErrorCode.LINEAGE_NOT_FOUND)  # no quarantine


def test_a_viewer_sees_no_event_but_the_metrics_lineage(app):
    for mid in (MIDS.stored, MIDS.quarantined, MIDS.absent):
        refused(lineage(app, mid, "viewer_a"), 404, ErrorCode.LINEAGE_NOT_FOUND)
    body = metric_lineage_of(app, "sessions", "viewer_a")
    assert body["suppression"]["applies"] is True and body["query"]["params"] == {"tenant": TENANT_A}


@pytest.mark.parametrize("mid", ["a b", "x" * 129, "-leading", "a'b", "a%00b", "ü", "a;DROP", "a\\b"])
def test_a_bad_mid_is_400_coded(app, mid):
    refused(app.get(f"/v1/lineage/event/{mid}", headers=_as(app, "analyst_a")), 400, ErrorCode.LINEAGE_MID)


def test_bad_parameters_are_coded(app):
    refused(lineage(app, MIDS.stored, "analyst_a", k="1"), 400, ErrorCode.LINEAGE_PARAM)
    refused(app.get(f"/v1/lineage/event/{MIDS.stored}?tenant={TENANT_A}&tenant={TENANT_A}",
                    headers=_as(app, "analyst_a")), 400, ErrorCode.LINEAGE_PARAM)
    refused(lineage(app, MIDS.stored, None, tenant="no'such"), 400, ErrorCode.LINEAGE_PARAM)
    refused(lineage(app, MIDS.shared, "analyst_b", tenant=TENANT_A), 403, ErrorCode.AUTH_FORBIDDEN)
    assert found(app, MIDS.stored, "analyst_a", tenant=TENANT_A)["status"] == "stored"


@pytest.mark.parametrize("path", [f"/v1/lineage/event/{MIDS.stored}", "/v1/lineage/metric/sessions"])
def test_credentials_and_roles(app, path):
    refused(app.get(path, headers={"Authorization": ""}), 401, ErrorCode.AUTH_REQUIRED)
    refused(app.get(path, headers={"Authorization": "Bearer ck_not_a_real_key"}), 401, ErrorCode.AUTH_INVALID)
    refused(app.get(path, headers=_as(app, "ingestor_a")), 403, ErrorCode.AUTH_FORBIDDEN)


def test_every_event_lineage_is_audited(app):
    audit = app.app.state.audit
    before = audit.entries(tenant=TENANT_A, limit=10_000)[-1].seq
    found(app, MIDS.stored, "analyst_a")
    lineage(app, MIDS.absent, "analyst_a")
    lineage(app, "a b", "analyst_a")
    entries = [e for e in audit.entries(tenant=TENANT_A, since_seq=before) if e.actor_subject == app.key_ids["analyst_a"]]
    assert [(e.action, e.outcome, e.detail["status"], e.detail["mid"]) for e in entries] == [
        ("lineage.event", "ok", 200, MIDS.stored), ("lineage.event", "refused", 404, MIDS.absent),
        ("lineage.event", "refused", 400, "a b")]
    assert entries[0].detail["found"] == "stored" and audit.verify().ok


def test_a_lineage_that_cannot_be_audited_is_withheld(app, monkeypatch):
    def away(*args, **kwargs):
        raise AuditLogUnavailable("injected: the audit log's disk is full")

    monkeypatch.setattr(app.app.state.queries.audit, "append", away)
    response = lineage(app, MIDS.stored, "analyst_a")
    refused(response, 503, ErrorCode.AUDIT_UNAVAILABLE)
    assert "lin-first" not in response.text


def test_a_store_fault_is_a_coded_500(app, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("injected: the store's connection broke")

    monkeypatch.setattr(app.app.state.node.store, "query", broken)
    refused(lineage(app, MIDS.stored, "analyst_a"), 500, ErrorCode.INTERNAL)


def test_admission_answers_429(app, monkeypatch):
    admission = app.app.state.queries.admission
    monkeypatch.setattr(admission, "max_per_caller", 0)
    monkeypatch.setattr(admission, "max_total", 0)
    response = lineage(app, MIDS.stored, "analyst_a")
    refused(response, 429, ErrorCode.TOO_MANY_QUERIES)
    assert "Retry-After" in response.headers


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mid=st.one_of(st.text(max_size=140), st.sampled_from([MIDS.stored, MIDS.quarantined, MIDS.shared,
                                                             MIDS.absent, "x" * 128, "x" * 129])),
       pairs=st.lists(st.tuples(st.sampled_from(["tenant", "mid", "tenant[]"]),
                                st.one_of(st.text(max_size=20), st.sampled_from([TENANT_A, TENANT_B]))),
                      max_size=3))
def test_any_event_lineage_request_is_answered_or_refused_with_a_code_never_5xx(app, mid, pairs):
    response = app.get(f"/v1/lineage/event/{quote(mid, safe='')}?{urlencode(pairs)}",
                       headers=_as(app, "analyst_b"))
    assert response.status_code in (200, 400, 403, 404), response.text
    body = response.json()
    if response.status_code == 200:  # only tenant B's copy of the shared mid is B's
        assert mid == MIDS.shared and body["result"]["stored"] == []
        assert {c["tenant"] for c in body["result"]["quarantined"]} == {TENANT_B}
    else:
        assert body["params"]["err"] in (ErrorCode.LINEAGE_MID, ErrorCode.LINEAGE_PARAM, ErrorCode.LINEAGE_NOT_FOUND,
                                         ErrorCode.AUTH_FORBIDDEN, ErrorCode.NOT_FOUND)


# ---- metric lineage ----

def metric_lineage_of(app, name: str, who: str | None, **params) -> dict:
    response = app.get(f"/v1/lineage/metric/{name}", params={**WINDOW, **params}, headers=_as(app, who))
    assert response.status_code == 200, response.text
    return response.json()["result"]


def metric_series(app, name: str, who: str | None, **params) -> list[tuple]:
    response = app.get(f"/v1/metrics/{name}", params={**WINDOW, **params}, headers=_as(app, who))
    assert response.status_code == 200, response.text
    return [(cell["bucket"], cell["group"], cell["value"]) for cell in response.json()["result"]["series"]]


def run_lineage_sql(app, body: dict) -> list[tuple]:
    """The lineage's statement run through the store as given, its rows shaped as the endpoint's series."""
    statement = body["query"]
    rows = app.app.state.node.store.query(statement["sql"], statement["params"] or None, 10_000, 30.0).rows
    return [(iso(datetime.fromtimestamp(int(bucket), tz=UTC)), grp, value) for bucket, grp, value, _ in rows]


def _by_cell(rows: list[tuple]) -> dict:
    cells = {(bucket, group): value for bucket, group, value in rows}
    assert len(cells) == len(rows), "one row per cell"
    return cells


@pytest.mark.parametrize("name", METRIC_NAMES)
@pytest.mark.parametrize("who,by", [("tenant_admin_a", "rollup.l3"), ("tenant_admin_a", "none"),
                                    ("educator_school_2", "rollup.l3"), (None, "pdata_id")])
def test_the_lineage_sql_gives_the_metric_endpoints_values(app, name, who, by):
    body = metric_lineage_of(app, name, who, by=by)
    expected = metric_series(app, name, who, by=by)
    assert expected, "the plan has figures for every metric"
    assert _by_cell(run_lineage_sql(app, body)) == _by_cell(expected)
    assert body["query"]["dialect"] == "duckdb" and body["suppression"]["applies"] is False


def test_metric_lineage_says_what_the_figures_are_made_of(app):
    body = metric_lineage_of(app, "content_plays", "analyst_a", by="rollup.l3")
    assert (body["metric"], body["unit"]) == ("content_plays", "plays") and "START" in body["description"]
    assert any("content play" in rule for rule in body["rules"]) and any("ets" in rule for rule in body["rules"])
    assert body["params"]["tenant"] == TENANT_A and body["params"]["by"] == "rollup.l3"
    dataset = next(d for d in body["datasets"] if d["table"] == "telemetry")
    assert (dataset["version"], dataset["store"]) == (DATASET_VERSIONS["telemetry"], "duckdb")
    assert dataset["config_version"].startswith("telemetry-3.0:")
    assert [stage["name"] for stage in body["pipeline"]] == list(STAGES)
    assert [r["table"] for r in body["rollups"]] == ["learner_sketches", "content_sketches", "learner_days",
                                                      "learner_hours"]
    sketches = body["sketch_query"]  # whole days, one tenant, by a level: the per-day sketches can answer
    assert "learner_sketches" in sketches["sql"] and sketches["params"] == {"tenant": TENANT_A}
    assert "by_dim = 'rollup.l3'" in sketches["sql"] and "exact" in sketches["merge"]
    hourly = metric_lineage_of(app, "content_plays", "analyst_a", by="rollup.l3", granularity="hour")
    assert hourly["sketch_query"] is None  # hours are not sketched: `query` answers
    assert body["query"]["params"] == {"tenant": TENANT_A} and "$tenant" in body["query"]["sql"]
    assert body["suppression"] == {"role": "analyst", "applies": True, "k": 10, "rule": body["suppression"]["rule"]}
    assert "fewer than 10" in body["suppression"]["rule"]
    assert body["freshness_query"]["params"] == {"tenant": TENANT_A}
    scoped = metric_lineage_of(app, "content_plays", "educator_school_2")
    assert "school-2" in scoped["query"]["sql"] and scoped["scope"]["scope"] == "rollup.l3:school-2"


def test_metric_lineage_bad_requests_are_coded(app):
    def get(name: str, who: str | None = "analyst_a", **params):
        return app.get(f"/v1/lineage/metric/{name}", params=params, headers=_as(app, who))

    for name in ("nope", "ACTIVE_LEARNERS", "x" * 300, "sessions;"):
        refused(get(name), 404, ErrorCode.METRIC_UNKNOWN)
    refused(get("sessions", granularity="minute"), 400, ErrorCode.METRIC_PARAM)
    refused(get("sessions", **{"from": "2026-03-05", "to": "2026-03-01"}), 400, ErrorCode.METRIC_PARAM)
    refused(get("sessions", sql="SELECT 1"), 400, ErrorCode.METRIC_PARAM)
    refused(get("sessions", tenant=TENANT_B), 403, ErrorCode.AUTH_FORBIDDEN)


def test_metric_lineage_is_audited(app):
    audit = app.app.state.audit
    before = audit.entries(tenant=TENANT_A, limit=10_000)[-1].seq
    metric_lineage_of(app, "qr_scans", "analyst_a", by="rollup.l3")
    app.get("/v1/lineage/metric/nope", headers=_as(app, "analyst_a"))
    entries = [e for e in audit.entries(tenant=TENANT_A, since_seq=before) if e.actor_subject == app.key_ids["analyst_a"]]
    assert [(e.action, e.outcome, e.detail["status"], e.detail["metric"]) for e in entries] == [
        ("lineage.metric", "ok", 200, "qr_scans"), ("lineage.metric", "refused", 404, "nope")]


# ---- scale-out store ----

def test_event_lineage_over_clickhouse(clickhouse_dsn, tmp_path):
    """The scale-out store (ClickHouse, here chdb): the same lineage, read with its dialect."""
    store = ClickHouseStore(clickhouse_dsn, database=f"lineage_{uuid.uuid4().hex[:12]}")
    plan = all_events()
    mid_a = plan[0]["mid"]
    received_ms = write_events(store, plan, offset=7)
    callers = {"analyst-a": Identity("key-a", Role.ANALYST, TENANT_A),
               "analyst-b": Identity("key-b", Role.ANALYST, TENANT_B),
               "educator-2": Identity("key-e", Role.EDUCATOR, TENANT_A, Scope.parse("rollup.l3:school-2"))}

    def with_caller(handler):
        async def endpoint(request):
            request.state.identity = callers[request.headers["x-test-caller"]]
            return await handler(request)
        return endpoint

    app = Starlette(routes=[Route("/v1/lineage/event/{mid}", with_caller(event_lineage)),
                            Route("/v1/lineage/metric/{name}", with_caller(metric_lineage))])
    app.state.queries = QueryService(Settings(data_dir=tmp_path / "unused"), dialect="clickhouse")
    app.state.node = SimpleNamespace(store=store)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            response = client.get(f"/v1/lineage/event/{mid_a}", headers={"X-Test-Caller": "analyst-a"})
            assert response.status_code == 200, response.text
            body = response.json()["result"]
            [copy] = body["stored"]
            assert (body["status"], copy["log_offset"], copy["config_version"]) == ("stored", 7, "test")
            assert [stage["name"] for stage in copy["stages"]] == list(STAGES)
            assert copy["request"]["event_count"] == len(plan)
            assert copy["request"]["received_at"] == copy["ingested_at"]
            assert copy["ingested_at"] == iso(datetime.fromtimestamp(received_ms / 1000, tz=UTC))
            for caller in ("analyst-b", "educator-2"):  # another tenant; school-1's event outside school-2
                other = client.get(f"/v1/lineage/event/{mid_a}", headers={"X-Test-Caller": caller})
                refused(other, 404, ErrorCode.LINEAGE_NOT_FOUND)
            metric = client.get("/v1/lineage/metric/content_plays", params={**WINDOW, "by": "rollup.l3"},
                                headers={"X-Test-Caller": "analyst-a"})
            assert metric.status_code == 200, metric.text
            statement = metric.json()["result"]["query"]
            assert statement["dialect"] == "clickhouse" and "{tenant:String}" in statement["sql"]
            rows = store.query(statement["sql"], statement["params"], 1000, 30.0).rows
            assert {(grp, int(value)) for _bucket, grp, value, _learners in rows} == {
                ("school-1", 12), ("school-2", 3), ("school-3", 20)}  # D1's plays by school; D2: school-1's 12
    finally:
        store.close()

