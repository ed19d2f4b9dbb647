"""GET /v1/metrics/{report}: top_content and item_stats through the app, the learning world's events sent
through the ingest API: the world's answers for the entitled, each educator's scope only, another tenant's
none, rows from fewer than k learners withheld from analysts and viewers, listed in the catalog, with a
lineage whose statement gives the same rows, audited, and every bad request a coded 4xx."""

from __future__ import annotations

from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analytics.rollup_world import world_and_truth
from cohort.analytics.lineage import DATASET_VERSIONS
from cohort.analytics.reports import REPORTS
from cohort.core.errors import ErrorCode
from cohort.security.audit_log import AuditLogUnavailable
from api.learning_world_app import WINDOW, auth, first_batch as _batch, first_school as _school, store_world

K = 10  # Settings.min_cell_learners' default


def _world():
    world, truth, uploads = world_and_truth()
    return world, truth, [e for upload in uploads for e in upload]


@pytest.fixture(scope="module")
def app(shared_client):
    """The world stored through the ingest API; keys per role (learning_world_app.store_world)."""
    return store_world(shared_client)


def _as(app, who: str | None) -> dict[str, str]:
    return auth(app, who)


def get(app, name: str, who: str | None = None, **params):
    given = {key: value for key, value in {**WINDOW, **params}.items() if value is not None}
    return app.get(f"/v1/metrics/{name}", params=given, headers=_as(app, who))


def result(app, name: str, who: str | None = None, **params) -> dict:
    response = get(app, name, who, **params)
    assert response.status_code == 200, response.text
    assert response.json()["params"]["status"] == "successful"
    return response.json()["result"]


def refused(response, status: int, code: ErrorCode) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["params"]["err"] == code and body["params"]["status"] == "failed" and not body.get("result")


def ranked(body: dict) -> list[tuple[str, int]]:
    return [(row[0], row[1]) for row in body["rows"]]


def test_the_tenant_admin_gets_the_worlds_top_content_and_item_statistics(app):
    _, truth, _ = _world()
    a = app.tenants[0]
    body = result(app, "top_content", "tenant_admin_a", limit="100")
    assert ranked(body) == truth.top_content(a, truth.start, until=truth.end, n=100)
    assert (body["metric"], body["kind"], body["tenant"], body["scope"]) == ("top_content", "report", a, None)
    assert [c["name"] for c in body["columns"]] == [c.name for c in REPORTS["top_content"].columns]
    assert body["params"] == {"from": "2026-06-22T00:00:00Z", "to": "2026-07-01T00:00:00Z", "tenant": a,
                              "scope": None, "limit": 100}
    assert body["suppression"] == {"applied": False, "k": K, "suppressed_rows": 0}
    assert body["freshness"]["as_of"].endswith("Z") and body["completeness"]["window_closed"] is True
    assert ranked(result(app, "top_content", "tenant_admin_a")) == ranked(body)[:10]  # limit's default
    items = result(app, "item_stats", "tenant_admin_a", limit="500")
    expected = truth.item_stats(a)
    assert {row[0]: (row[2], row[3]) for row in items["rows"]} == {
        item: (stats.attempts, stats.learners) for item, stats in expected.items()}
    for row in items["rows"]:
        assert row[4] == pytest.approx(expected[row[0]].first_attempt_correct_pct, abs=1e-3)


def test_an_educator_sees_its_scope_only(app):
    _, truth, _ = _world()
    a, b = app.tenants
    for who, tenant, scope in [("educator_school_a", a, f"rollup.l3:{_school(a)}"),
                               ("educator_batch_a", a, f"batch:{_batch(a)}"),
                               ("educator_school_b", b, f"rollup.l3:{_school(b)}")]:
        body = result(app, "top_content", who, limit="100")
        assert body["scope"] == scope and body["tenant"] == tenant and body["suppression"]["applied"] is False
        assert ranked(body) == truth.top_content(tenant, truth.start, scope, until=truth.end, n=100), who
        items = result(app, "item_stats", who, limit="500")
        assert {row[0]: row[3] for row in items["rows"]} == {
            item: stats.learners for item, stats in truth.item_stats(tenant, scope).items()}, who
    whole = {row[0] for row in result(app, "top_content", "tenant_admin_a", limit="100")["rows"]}
    school = {row[0] for row in result(app, "top_content", "educator_school_a", limit="100")["rows"]}
    assert school <= whole
    other = result(app, "top_content", "educator_school_b", limit="100")
    assert other["rows"] and not {row[0] for row in other["rows"]} & whole  # none of tenant A's content
    other_items = result(app, "item_stats", "educator_school_b", limit="500")
    a_items = {row[0] for row in result(app, "item_stats", "tenant_admin_a", limit="500")["rows"]}
    assert other_items["rows"] and not {row[0] for row in other_items["rows"]} & a_items


def test_a_tenant_wide_reader_may_narrow_its_scope_and_an_educator_may_not_widen_it(app):
    _, truth, _ = _world()
    a = app.tenants[0]
    school = f"rollup.l3:{_school(a)}"
    narrowed = result(app, "top_content", "tenant_admin_a", scope=school, limit="100")
    assert narrowed["scope"] == school
    assert ranked(narrowed) == truth.top_content(a, truth.start, school, until=truth.end, n=100)
    assert narrowed["rows"] == result(app, "top_content", "educator_school_a", limit="100")["rows"]
    refused(get(app, "top_content", "educator_school_a", scope=f"batch:{_batch(a)}"), 403, ErrorCode.AUTH_FORBIDDEN)
    refused(get(app, "item_stats", "analyst_a", scope="school:1"), 400, ErrorCode.METRIC_PARAM)


@pytest.mark.parametrize("who", ["analyst_a", "viewer_a"])
def test_rows_from_fewer_than_k_learners_are_withheld_from_analysts_and_viewers(app, who):
    exact = result(app, "top_content", "tenant_admin_a", limit="100")["rows"]
    body = result(app, "top_content", who, limit="100")
    assert body["rows"] == [row for row in exact if row[4] >= K] and body["rows"]
    assert body["suppression"] == {"applied": True, "k": K, "suppressed_rows": len(exact) - len(body["rows"])}
    assert body["suppression"]["suppressed_rows"] > 0
    items = result(app, "item_stats", who, limit="500")
    assert all(row[3] >= K for row in items["rows"]) and items["suppression"]["suppressed_rows"] > 0


def test_an_individual_report_is_forbidden_to_analysts_and_viewers(app):
    individual = [name for name, report in REPORTS.items() if report.individual]
    if not individual:
        pytest.skip("no report of individual learners is registered yet (learner_reports)")
    for name in individual:
        for who in ("analyst_a", "viewer_a"):
            refused(get(app, name, who), 403, ErrorCode.AUTH_FORBIDDEN)


def test_naming_another_tenant_is_forbidden_and_an_admin_names_any(app):
    a, b = app.tenants
    for who in ("analyst_a", "educator_school_a", "tenant_admin_a"):
        refused(get(app, "top_content", who, tenant=b), 403, ErrorCode.AUTH_FORBIDDEN)
    assert result(app, "top_content", None, tenant=a)["rows"] == result(app, "top_content", "tenant_admin_a")["rows"]
    everyone = result(app, "top_content", None, limit="100")
    assert everyone["tenant"] is None and len(everyone["rows"]) > len(result(app, "top_content", None, tenant=a,
                                                                             limit="100")["rows"])


@pytest.mark.parametrize("name, params", [
    ("top_content", {"limit": "0"}), ("top_content", {"limit": "101"}), ("top_content", {"limit": "ten"}),
    ("top_content", {"limit": "9" * 64}), ("top_content", {"limit": "9" * 65}), ("top_content", {"limit": "-3"}),
    ("top_content", {"granularity": "day"}), ("top_content", {"by": "rollup.l3"}), ("top_content", {"content": "x"}),
    ("top_content", {"from": "2026-07-01", "to": "2026-06-22"}), ("top_content", {"from": "1990-01-01"}),
    ("top_content", {"from": "2020-01-01", "to": "2026-01-01"}), ("top_content", {"tenant": "a b"}),
    ("item_stats", {"content": "do_1' OR '1'='1"}), ("item_stats", {"content": "x" * 300}),
    ("item_stats", {"limit": "501"}), ("item_stats", {"content": "\u0000"}), ("item_stats", {"limit": "1e2"}),
])
def test_bad_parameters_are_400_with_a_code_never_500(app, name, params):
    refused(get(app, name, "analyst_a", **params), 400, ErrorCode.METRIC_PARAM)


def test_a_repeated_parameter_is_400(app):
    response = app.get("/v1/metrics/top_content?limit=5&limit=6", headers=_as(app, "analyst_a"))
    refused(response, 400, ErrorCode.METRIC_PARAM)


def test_too_many_rows_are_refused_not_cut_short(app, monkeypatch):
    monkeypatch.setattr(app.app.state.queries.settings, "query_row_limit", 5)
    refused(get(app, "top_content", "tenant_admin_a", limit="50"), 413, ErrorCode.METRIC_TOO_LARGE)
    assert len(result(app, "top_content", "tenant_admin_a", limit="5")["rows"]) == 5


def test_credentials_and_roles(app):
    assert app.get("/v1/metrics/top_content", headers={"Authorization": ""}).status_code == 401
    assert app.get("/v1/metrics/item_stats", headers={"Authorization": "Bearer ck_forged"}).status_code == 401
    refused(get(app, "top_content", "ingestor_a"), 403, ErrorCode.AUTH_FORBIDDEN)


def test_every_report_request_is_audited(app):
    a = app.tenants[0]
    audit = app.app.state.audit
    before = audit.entries(tenant=a, limit=10_000)[-1].seq
    result(app, "top_content", "analyst_a", limit="7")
    get(app, "item_stats", "analyst_a", limit="0")
    entries = [e for e in audit.entries(tenant=a, since_seq=before) if e.actor_subject == app.key_ids["analyst_a"]]
    assert [(e.action, e.target, e.outcome, e.detail["status"], e.detail["metric"]) for e in entries] == [
        ("metric", "/v1/metrics", "ok", 200, "top_content"), ("metric", "/v1/metrics", "refused", 400, "item_stats")]
    assert entries[0].detail["params"]["limit"] == 7 and entries[0].detail["params"]["tenant"] == a
    assert entries[0].detail["rows"] >= 1 and entries[0].detail["suppressed_rows"] >= 0
    assert entries[1].detail["params"] == {"from": "2026-06-22", "to": "2026-07-01", "limit": "0"}  # as sent
    assert audit.verify().ok


def test_a_report_that_cannot_be_audited_is_withheld(app, monkeypatch):
    def away(*args, **kwargs):
        raise AuditLogUnavailable("injected: the audit log's disk is full")

    monkeypatch.setattr(app.app.state.queries.audit, "append", away)
    response = get(app, "top_content", "tenant_admin_a")
    refused(response, 503, ErrorCode.AUDIT_UNAVAILABLE)
    assert "do_" not in response.text


def test_the_catalog_lists_the_reports_beside_the_metrics(app):
    body = app.get("/v1/metrics", headers=_as(app, "viewer_a")).json()["result"]
    assert all(entry["kind"] == "series" for entry in body["metrics"])
    listed = {entry["name"]: entry for entry in body["reports"]}
    assert list(listed) == list(REPORTS)
    top = listed["top_content"]
    assert top["kind"] == "report" and top["individual"] is False and top["sources"] == ["content_days", "telemetry"]
    assert [c["name"] for c in top["columns"]] == ["content_id", "plays", "time_spent", "completions", "learners"]
    assert top["options"] == [{"name": "limit", "type": "integer", "description": top["options"][0]["description"],
                               "default": 10, "minimum": 1, "maximum": 100, "required": False, "choices": None}]
    assert [o["name"] for o in listed["item_stats"]["options"]] == ["content", "limit"]


def test_report_lineage_is_the_statement_of_the_rows(app):
    store = app.app.state.node.store
    for who in ("tenant_admin_a", "educator_school_a", "analyst_a"):
        response = app.get("/v1/lineage/metric/top_content", params={**WINDOW, "limit": "20"}, headers=_as(app, who))
        assert response.status_code == 200, response.text
        body = response.json()["result"]
        assert (body["metric"], body["kind"]) == ("top_content", "report")
        assert [(d["table"], d["version"]) for d in body["datasets"]] == [
            ("content_days", DATASET_VERSIONS["content_days"]), ("telemetry", DATASET_VERSIONS["telemetry"])]
        assert [r["table"] for r in body["rollups"]] == ["content_days"] and body["pipeline"]
        assert any("progress 100" in rule for rule in body["rules"])
        statement = body["query"]
        rows = store.query(statement["sql"], statement["params"] or None, 1000, 30.0).rows
        exact = result(app, "top_content", "tenant_admin_a" if who == "analyst_a" else who, limit="20")["rows"]
        assert [[value for value in row] for row in rows] == exact
        assert body["suppression"]["applies"] is (who == "analyst_a")
    scoped = app.get("/v1/lineage/metric/item_stats", params=WINDOW, headers=_as(app, "educator_school_a")).json()
    assert scoped["result"]["scope"]["scope"] == f"rollup.l3:{_school(app.tenants[0])}"
    assert "content_days" not in scoped["result"]["query"]["sql"]
    bad = app.get("/v1/lineage/metric/top_content", params={"limit": "1000"}, headers=_as(app, "analyst_a"))
    refused(bad, 400, ErrorCode.METRIC_PARAM)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(list(REPORTS)),
       pairs=st.lists(st.tuples(st.sampled_from(["from", "to", "tenant", "scope", "limit", "content", "by",
                                                 "limit[]"]),
                                st.one_of(st.text(max_size=30), st.integers(-5, 1000).map(str),
                                          st.sampled_from(["2026-06-22", "2026-07-01", "do_1", "rollup.l3",
                                                           "rollup.l3:school-1", "batch:x"]))),
                      max_size=5))
def test_any_report_request_is_answered_or_refused_with_a_code_never_5xx(app, name, pairs):
    response = app.get(f"/v1/metrics/{quote(name)}?{urlencode(pairs)}", headers=_as(app, "analyst_a"))
    assert response.status_code in (200, 400, 403), response.text
    body = response.json()
    if response.status_code != 200:
        assert body["params"]["err"] in (ErrorCode.METRIC_PARAM, ErrorCode.AUTH_FORBIDDEN)
    else:
        assert body["result"]["tenant"] == app.tenants[0] and body["result"]["kind"] == "report"
        at = [c["name"] for c in body["result"]["columns"]].index("learners")
        assert all(row[at] >= K for row in body["result"]["rows"])
