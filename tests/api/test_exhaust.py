"""GET /v1/exhaust/{dataset}: real events in through the ingest API, out as Parquet and CSV for each role; counts
reconcile with the store, other tenants' and out-of-scope rows never appear, bad requests are coded 4xx,
exports are audited before any row goes out and bounded in concurrency."""

from __future__ import annotations

import io
import threading
import uuid
from types import SimpleNamespace

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.testclient import TestClient

from analytics.metric_events import TENANT_A, TENANT_B, all_events, write_events
from cohort.analytics.exports import DATASETS, csv_end_rows
from cohort.api import exhaust
from cohort.api.exhaust import export_dataset
from cohort.api.query import QueryService
from cohort.core.errors import CohortError, ErrorCode
from cohort.security.audit_log import AuditLogUnavailable
from cohort.security.identity import Identity, Role, Scope
from cohort.settings import Settings
from cohort.store.clickhouse_store import ClickHouseStore
from support import envelope, query, wait_for

WINDOW = {"from": "2026-03-02", "to": "2026-03-04"}
COLUMNS = list(DATASETS["telemetry"].columns)


@pytest.fixture(scope="module")
def app(shared_client):
    events = all_events()
    response = shared_client.post("/v1/telemetry", content=envelope(events))
    assert response.status_code == 200, response.text
    assert wait_for(lambda: query(shared_client, "SELECT count(*) AS n FROM telemetry")[0]["n"] == len(events), 120)
    # a quarantined event of each tenant (no eid: refused by validation)
    bad = [{"ver": "3.0", "mid": f"bad-{t}", "ets": 1772409600000, "context": {"channel": t}} for t in (TENANT_A, TENANT_B)]
    assert shared_client.post("/v1/telemetry", content=envelope(bad)).status_code == 200
    assert wait_for(lambda: query(shared_client, "SELECT count(*) AS n FROM failed_events")[0]["n"] >= 2, 60)
    store = shared_client.app.state.authenticator.key_store
    for tenant in (TENANT_A, TENANT_B):
        store.create_tenant(tenant)
    keys = {
        "analyst_a": store.create_key(TENANT_A, Role.ANALYST),
        "analyst_b": store.create_key(TENANT_B, Role.ANALYST),
        "tenant_admin_a": store.create_key(TENANT_A, Role.TENANT_ADMIN),
        "educator_school_1": store.create_key(TENANT_A, Role.EDUCATOR, scope=Scope.parse("rollup.l3:school-1")),
        "ingestor_a": store.create_key(TENANT_A, Role.INGESTOR),
        "viewer_a": store.create_key(TENANT_A, Role.VIEWER),
    }
    shared_client.keys = {name: key for name, (_, key) in keys.items()}
    shared_client.key_ids = {name: info.key_id for name, (info, _) in keys.items()}
    return shared_client


def get(app, dataset: str, who: str | None = None, **params):
    headers = {} if who is None else {"Authorization": f"Bearer {app.keys[who]}"}
    given = {key: value for key, value in {**WINDOW, **params}.items() if value is not None}
    return app.get(f"/v1/exhaust/{dataset}", params=given, headers=headers)


def parquet(response) -> pa.Table:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/vnd.apache.parquet"
    return pq.read_table(io.BytesIO(response.content))


def store_count(app, where: str) -> int:
    return query(app, f"SELECT count(*) AS n FROM telemetry WHERE {where}")[0]["n"]


def test_parquet_export_is_the_tenants_rows_with_every_column(app):
    table = parquet(get(app, "telemetry", "analyst_a"))
    assert table.column_names == COLUMNS
    expected = store_count(app, f"channel = '{TENANT_A}' AND ets >= '2026-03-02' AND ets < '2026-03-04'")
    assert table.num_rows == expected > 0
    assert set(table.column("channel").to_pylist()) == {TENANT_A}
    assert table.schema.field("ets").type == pa.timestamp("ms", tz="UTC")
    assert pq.ParquetFile(io.BytesIO(get(app, "telemetry", "analyst_a").content)).metadata.row_group(0) \
        .column(0).compression == "ZSTD"


def test_another_tenants_rows_never_appear(app):
    a = parquet(get(app, "telemetry", "analyst_a"))
    b = parquet(get(app, "telemetry", "analyst_b"))
    assert set(b.column("channel").to_pylist()) == {TENANT_B}
    assert not set(a.column("mid").to_pylist()) & set(b.column("mid").to_pylist())
    assert b.num_rows == store_count(app, f"channel = '{TENANT_B}'")
    # naming the other tenant is refused, not answered with one's own rows
    refused = get(app, "telemetry", "analyst_b", tenant=TENANT_A)
    assert refused.status_code == 403 and refused.json()["params"]["err"] == ErrorCode.AUTH_FORBIDDEN


def test_a_scoped_educator_gets_its_scope_only(app):
    table = parquet(get(app, "telemetry", "educator_school_1"))
    expected = store_count(app, f"channel = '{TENANT_A}' AND json_extract_string(event, '$.context.rollup.l3') = "
                                "'school-1'")
    assert table.num_rows == expected > 0
    assert {e for e in table.column("event").to_pylist() if '"school-1"' not in e} == set()
    # the quarantine cannot be narrowed to a scope
    refused = get(app, "failed_events", "educator_school_1")
    assert refused.status_code == 403 and refused.json()["params"]["err"] == ErrorCode.AUTH_FORBIDDEN


def test_scope_narrows_an_export_and_never_widens_it(app):
    school = f"channel = '{TENANT_A}' AND json_extract_string(event, '$.context.rollup.l3') = 'school-1'"
    expected = store_count(app, school)
    for who, params in (("tenant_admin_a", {}), (None, {"tenant": TENANT_A})):  # a tenant admin; the admin
        table = parquet(get(app, "telemetry", who, scope="rollup.l3:school-1", **params))
        assert table.num_rows == expected > 0 and set(table.column("channel").to_pylist()) == {TENANT_A}
        assert {e for e in table.column("event").to_pylist() if '"school-1"' not in e} == set()
    # the educator of school-1 may name its own scope; another school is wider than its own
    assert parquet(get(app, "telemetry", "educator_school_1", scope="rollup.l3:school-1")).num_rows == expected
    wider = get(app, "telemetry", "educator_school_1", scope="rollup.l3:school-2")
    assert wider.status_code == 403 and wider.json()["params"]["err"] == ErrorCode.AUTH_FORBIDDEN
    for who, params, code in (("tenant_admin_a", {"scope": "nonsense"}, ErrorCode.EXPORT_PARAM),
                              (None, {"scope": "rollup.l3:school-1"}, ErrorCode.EXPORT_PARAM),  # whose tenant?
                              ("tenant_admin_a", {"scope": "rollup.l3:school-1", "tenant": TENANT_B},
                               ErrorCode.AUTH_FORBIDDEN)):
        refused = get(app, "telemetry", who, **params)
        assert refused.status_code in (400, 403) and refused.json()["params"]["err"] == code, refused.text
    # the quarantine cannot be narrowed to a scope, whoever asks
    refused = get(app, "failed_events", "tenant_admin_a", scope="rollup.l3:school-1")
    assert refused.status_code == 403 and refused.json()["params"]["err"] == ErrorCode.AUTH_FORBIDDEN


def test_csv_export_has_a_header_json_as_text_and_an_end_line(app):
    response = get(app, "telemetry", "tenant_admin_a", format="csv")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    assert 'filename="telemetry_tenant-a_20260302_20260304.csv"' in response.headers["content-disposition"]
    frame = pd.read_csv(io.BytesIO(response.content), comment="#")
    assert list(frame.columns) == COLUMNS
    assert len(frame) == csv_end_rows(response.content[-64:]) == parquet(get(app, "telemetry", "analyst_a")).num_rows
    assert frame["event"].map(lambda text: text.startswith("{")).all()


def test_failed_events_by_quarantine_time_for_unscoped_tenant_roles(app):
    table = parquet(get(app, "failed_events", "tenant_admin_a", **{"from": "2000-01-01", "to": "2100-01-01"}))
    assert table.column_names == list(DATASETS["failed_events"].columns)
    assert set(table.column("channel").to_pylist()) == {TENANT_A}
    assert "bad-tenant-a" in "".join(table.column("payload").to_pylist())


def test_an_admin_exports_one_tenant_or_all(app):
    one = parquet(app.get("/v1/exhaust/telemetry", params={**WINDOW, "tenant": TENANT_B}))
    assert set(one.column("channel").to_pylist()) == {TENANT_B}
    every = parquet(app.get("/v1/exhaust/telemetry", params=WINDOW))
    assert every.num_rows == store_count(app, "ets >= '2026-03-02' AND ets < '2026-03-04'")
    assert 'filename="telemetry_all_' in app.get("/v1/exhaust/telemetry", params=WINDOW).headers["content-disposition"]


def test_the_range_is_from_inclusive_to_exclusive(app):
    first_day = parquet(get(app, "telemetry", "analyst_a", to="2026-03-03"))
    second_day = parquet(get(app, "telemetry", "analyst_a", **{"from": "2026-03-03T00:00:00Z", "to": "2026-03-04"}))
    both = parquet(get(app, "telemetry", "analyst_a"))
    assert first_day.num_rows + second_day.num_rows == both.num_rows
    assert first_day.num_rows > 0 and second_day.num_rows > 0


@pytest.mark.parametrize("name", ["nope", "TELEMETRY", "telemetry;", "x" * 300, "ingest_batches", "%2e%2e"])
def test_an_unknown_dataset_is_404_coded(app, name):
    response = get(app, name, "analyst_a")
    assert response.status_code == 404 and response.json()["params"]["err"] == ErrorCode.EXPORT_UNKNOWN


@pytest.mark.parametrize("params", [
    {"from": "yesterday"}, {"to": "2026-13-01"}, {"from": "2026-03-04", "to": "2026-03-02"},
    {"from": "2026-03-02", "to": "2026-03-02"}, {"format": "xlsx"}, {"format": "PARQUET"}, {"limit": "10"},
    {"from": "1999-12-31"}, {"to": "2100-01-02"}, {"from": "2026-03-02T00:00:00.0001Z"}, {"tenant": "bad tenant"},
    {"from": "2026-03-02' OR 1=1 --"}, {"from": "9" * 200},
])
def test_bad_parameters_are_400_coded(app, params):
    response = get(app, "telemetry", "analyst_a", **params)
    assert response.status_code == 400, response.text
    assert response.json()["params"]["err"] == ErrorCode.EXPORT_PARAM


def test_credentials_and_roles(app):
    assert app.get("/v1/exhaust/telemetry", headers={"Authorization": ""}).status_code == 401
    assert app.get("/v1/exhaust/telemetry", headers={"Authorization": "Bearer ck_not_a_real_key"}).status_code == 401
    for who in ("ingestor_a", "viewer_a"):
        response = get(app, "telemetry", who)
        assert response.status_code == 403 and response.json()["params"]["err"] == ErrorCode.AUTH_FORBIDDEN


def test_audited_before_and_after(app):
    before = app.app.state.audit.entries(tenant=TENANT_A, limit=10_000)[-1].seq
    table = parquet(get(app, "telemetry", "analyst_a", format="parquet"))

    def exports():
        return [e for e in app.app.state.audit.entries(tenant=TENANT_A, since_seq=before)
                if e.actor_subject == app.key_ids["analyst_a"] and e.action == "export"]

    # the outcome is written when the stream has ended, which may be just after the client read its last byte
    entries = wait_for(lambda: (found := exports()) and len(found) >= 2 and found, timeout=10) or exports()
    assert [e.outcome for e in entries] == ["started", "ok"]
    assert entries[0].detail["dataset"] == "telemetry" and entries[0].detail["format"] == "parquet"
    assert entries[0].detail["from"] == "2026-03-02T00:00:00Z" and entries[0].detail["to"] == "2026-03-04T00:00:00Z"
    assert entries[1].detail["rows"] == table.num_rows and entries[1].detail["bytes"] > 0


def test_an_export_that_cannot_be_audited_sends_nothing(app, monkeypatch):
    def away(*args, **kwargs):
        raise AuditLogUnavailable("injected: the audit log's disk is full")

    called = []
    monkeypatch.setattr(app.app.state.queries.audit, "append", away)
    monkeypatch.setattr(app.app.state.node.store, "stream_rows", lambda *a, **k: called.append(1) or iter(()))
    response = get(app, "telemetry", "analyst_a")
    assert response.status_code == 503 and response.json()["params"]["err"] == ErrorCode.AUDIT_UNAVAILABLE
    assert not called and exhaust.export_service_of(app.app).admission.in_flight == 0


def test_one_export_per_caller_and_a_bound_overall_429(app, monkeypatch):
    """A held export (the store's stream waits) takes the caller's slot: a second gets 429 + Retry-After, another
    caller is still served; queries are not affected."""
    gate, entered = threading.Event(), threading.Event()
    real = app.app.state.node.store.stream_rows

    def held(*args, **kwargs):
        entered.set()
        gate.wait(30)
        yield from real(*args, **kwargs)

    monkeypatch.setattr(app.app.state.node.store, "stream_rows", held)
    results = {}
    worker = threading.Thread(target=lambda: results.setdefault("first", get(app, "telemetry", "analyst_a")))
    worker.start()
    try:
        assert entered.wait(30)
        second = get(app, "telemetry", "analyst_a")
        assert second.status_code == 429 and second.json()["params"]["err"] == ErrorCode.TOO_MANY_EXPORTS
        assert int(second.headers["retry-after"]) >= 1
        assert query(app, "SELECT 1 AS one")[0]["one"] == 1  # a query is not held by the export
    finally:
        gate.set()
        worker.join(60)
    assert results["first"].status_code == 200
    assert wait_for(lambda: exhaust.export_service_of(app.app).admission.in_flight == 0, 10)
    assert get(app, "telemetry", "analyst_a").status_code == 200


def test_a_store_error_before_any_byte_is_a_coded_answer(app, monkeypatch):
    from cohort.core.errors import CohortError

    def failing(*args, **kwargs):
        raise CohortError(ErrorCode.QUERY_MEMORY, "injected")
        yield  # pragma: no cover

    monkeypatch.setattr(app.app.state.node.store, "stream_rows", failing)
    response = get(app, "telemetry", "analyst_a")
    assert response.status_code == 503 and response.json()["params"]["err"] == ErrorCode.QUERY_MEMORY
    assert wait_for(lambda: exhaust.export_service_of(app.app).admission.in_flight == 0, 10)


# -- the scale-out store: the same exports from ClickHouse ---------------------------------------------------

CALLERS = {
    "analyst_a": Identity("analyst-a", Role.ANALYST, TENANT_A),
    "analyst_b": Identity("analyst-b", Role.ANALYST, TENANT_B),
    "educator_school_1": Identity("edu-1", Role.EDUCATOR, TENANT_A, Scope.parse("rollup.l3:school-1")),
}


@pytest.fixture(scope="module")
def scaleout(tmp_path_factory, clickhouse_dsn):
    tmp = tmp_path_factory.mktemp("exhaust-scaleout")
    store = ClickHouseStore(clickhouse_dsn, database=f"exhaust_{uuid.uuid4().hex[:12]}")
    write_events(store, all_events())

    async def endpoint(request):
        request.state.identity = CALLERS[request.headers["x-test-caller"]]
        return await export_dataset(request)

    web = Starlette(routes=[Route("/v1/exhaust/{dataset}", endpoint, methods=["GET"])])
    web.state.queries = QueryService(Settings(data_dir=tmp / "unused"), dialect="clickhouse")
    web.state.node = SimpleNamespace(store=store)
    with TestClient(web, raise_server_exceptions=False) as client:
        yield client, store
    store.close()


def test_scaleout_exports_match_the_store_per_tenant_and_scope(scaleout, app):
    client, store = scaleout
    for caller, where in [("analyst_a", f"channel = '{TENANT_A}'"), ("analyst_b", f"channel = '{TENANT_B}'"),
                          ("educator_school_1", f"channel = '{TENANT_A}' AND JSONExtractString(event, 'context', "
                                                "'rollup', 'l3') = 'school-1'")]:
        response = client.get("/v1/exhaust/telemetry", params=WINDOW, headers={"X-Test-Caller": caller})
        table = parquet(response)
        expected = store.query(f"SELECT count() FROM telemetry WHERE {where} AND ets >= '2026-03-02' "
                               "AND ets < '2026-03-04'", None, 10, 30).rows[0][0]
        assert table.num_rows == expected > 0, caller
        assert table.column_names == COLUMNS
        assert table.schema.field("ets").type == pa.timestamp("ms", tz="UTC")
        tenant = CALLERS[caller].tenant
        assert set(table.column("channel").to_pylist()) == {tenant}
    # the same plan's rows as the embedded store holds (mids are drawn afresh): the same events by type
    embedded = parquet(get(app, "telemetry", "analyst_a"))
    scaled = parquet(client.get("/v1/exhaust/telemetry", params=WINDOW, headers={"X-Test-Caller": "analyst_a"}))
    assert sorted(embedded.column("eid").to_pylist()) == sorted(scaled.column("eid").to_pylist())
    assert embedded.schema == scaled.schema
    csv = client.get("/v1/exhaust/telemetry", params={**WINDOW, "format": "csv"}, headers={"X-Test-Caller": "analyst_b"})
    assert csv.status_code == 200
    assert len(pd.read_csv(io.BytesIO(csv.content), comment="#")) == csv_end_rows(csv.content[-64:]) > 0


def test_every_dataset_has_one_export_type_per_catalog_column():
    """A dataset added to the registry (a rollup, say) with a column type the export cannot write fails here."""
    from cohort.analytics.exports import arrow_schema

    for dataset in DATASETS.values():
        assert arrow_schema(dataset).names == list(dataset.columns)
        assert dataset.time_column in dataset.columns


def test_a_callers_exports_one_after_another_are_each_admitted(app):
    """The one slot per caller is given back before the response ends: a script exporting day by day never
    meets its own previous export."""
    for day in ("2026-03-02", "2026-03-03", "2026-03-02", "2026-03-03", "2026-03-02"):
        response = get(app, "telemetry", "analyst_a", **{"from": day, "to": None})
        assert response.status_code == 200, response.text


def test_export_slots_and_time_limits_come_from_the_settings():
    settings = Settings(export_max_concurrent=3, export_max_per_caller=2, export_timeout_seconds=60,
                        export_idle_seconds=5)
    app = SimpleNamespace(state=SimpleNamespace(queries=SimpleNamespace(settings=settings)))
    service = exhaust.export_service_of(app)
    try:
        releases = [service.admission.admit("caller-a"), service.admission.admit("caller-a")]
        with pytest.raises(CohortError) as third:  # a third of one caller's is refused, as configured
            service.admission.admit("caller-a")
        assert third.value.code == ErrorCode.TOO_MANY_EXPORTS
        releases.append(service.admission.admit("caller-b"))
        with pytest.raises(CohortError):  # three at once overall
            service.admission.admit("caller-c")
        assert (service.timeout_s, service.idle_s) == (60, 5)
        for release in releases:
            release()
    finally:
        service.executor.shutdown()
