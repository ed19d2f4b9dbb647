"""GET /v1/metrics/course_progress and /v1/metrics/at_risk_learners through the app, the learning world's events
sent through the ingest API (so learners are the vault's pseudonyms): the world's answers once re-identified,
each educator's scope only, another tenant's educator none of tenant A's learners, analysts and viewers
refused, an at-risk learner revealed through POST /v1/learners/reidentify and audited, and every bad option a
coded 400, never a 5xx."""

from __future__ import annotations

from collections import defaultdict
from datetime import date

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analytics.rollup_world import world_and_truth
from cohort.core.errors import ErrorCode
from api.learning_world_app import WINDOW, auth, first_batch as _batch, first_school as _school, store_world
from api.learning_world_app import world_events as _events

# nine days are too few for the default thresholds: these find learners for every reason but stalled, whose
# progress needs a course's every content played once (the 50-day world of tests/analytics covers it)
OPTIONS = {"inactive_days": "3", "min_assessments": "3", "score_below": "60", "stalled_days": "365"}
TRUTH_OPTIONS = {"inactive_days": 3, "min_assessments": 3, "low_score": 0.6, "stalled_days": 365}


@pytest.fixture(scope="module")
def app(shared_client):
    """The world stored through the ingest API; keys per role (learning_world_app.store_world)."""
    return store_world(shared_client)


def _as(app, who: str | None) -> dict[str, str]:
    return auth(app, who)


def get(app, name: str, who: str | None, **params):
    return app.get(f"/v1/metrics/{name}", params={**WINDOW, **params}, headers=_as(app, who))


def rows(app, name: str, who: str | None, **params) -> list[list]:
    response = get(app, name, who, **params)
    assert response.status_code == 200, response.text
    body = response.json()["result"]
    assert body["kind"] == "report" and body["suppression"]["applied"] is False
    return body["rows"]


def refused(response, status: int, code: ErrorCode) -> None:
    assert response.status_code == status, response.text
    assert response.json()["params"]["err"] == code and not response.json().get("result")


def reveal(app, who: str | None, pseudonyms: list[str], tenant: str | None = None) -> dict[str, str]:
    found: dict[str, str] = {}
    for at in range(0, len(pseudonyms), 100):
        body = {"pseudonyms": pseudonyms[at:at + 100], **({} if tenant is None else {"tenant": tenant})}
        response = app.post("/v1/learners/reidentify", json=body, headers=_as(app, who))
        assert response.status_code == 200, response.text
        found |= {item["pseudonym"]: item["id"] for item in response.json()["result"]["learners"]}
    return found


def clear(app, tenant: str, pseudonyms) -> dict[str, str]:
    """{pseudonym: clear id}, by the operator's admin (every one must be a learner of `tenant`)."""
    listed = sorted(set(pseudonyms))
    found = reveal(app, None, listed, tenant)
    assert set(found) == set(listed)
    return found


def played(tenant: str) -> dict[tuple[str, str], set[str]]:
    """(learner, course) → contents of the course the learner played, from the events."""
    found: dict[tuple[str, str], set[str]] = defaultdict(set)
    for event in _events():
        course = ((event.get("object") or {}).get("rollup") or {}).get("l1")
        if event["context"]["channel"] == tenant and event["eid"] in ("START", "END") and course \
                and event["context"]["env"] == "contentplayer":
            found[(event["actor"]["id"], course)].add(event["object"]["id"])
    return found


def test_a_tenant_admin_gets_the_worlds_course_progress(app):
    world, truth, _ = world_and_truth()
    a = app.tenants[0]
    got = rows(app, "course_progress", "tenant_admin_a")
    ids = clear(app, a, [row[0] for row in got])
    pairs = played(a)
    catalogue: dict[str, set[str]] = defaultdict(set)
    for (_, course), contents in pairs.items():
        catalogue[course] |= contents
    assert {(ids[row[0]], row[1]) for row in got} == set(pairs)
    for pseudonym, course, done, contents, pct, last_progress, last_active in got:
        learner = ids[pseudonym]
        total = len(world.courses[course].contents)
        assert done == round(truth.course_progress(learner, course) * total / 100)
        assert contents == len(catalogue[course]) <= total  # nine days: not every content was played yet
        assert pct == pytest.approx(100 * done / contents, abs=1e-3)
        moved = truth.last_progress(learner, course)
        assert last_progress == (None if moved is None else moved.isoformat())
        assert last_active == truth.last_active(learner).isoformat()
    assert rows(app, "course_progress", None, tenant=a) == got  # the operator's admin naming the tenant


def test_a_tenant_admin_gets_the_worlds_at_risk_learners(app):
    _, truth, _ = world_and_truth()
    a = app.tenants[0]
    got = rows(app, "at_risk_learners", "tenant_admin_a", **OPTIONS)
    ids = clear(app, a, [row[0] for row in got])
    expected = {risk.learner: risk for risk in truth.at_risk(a, **TRUTH_OPTIONS)}
    assert {"inactive", "low_scores"} <= {reason for risk in expected.values() for reason in risk.reasons}
    assert {ids[row[0]] for row in got} == set(expected)
    for pseudonym, reasons, last_active, days_inactive, n, score, stalled in got:
        risk = expected[ids[pseudonym]]
        assert tuple(reasons) == risk.reasons and last_active == risk.last_active.isoformat()
        assert days_inactive == (truth.end - risk.last_active).days and n == risk.recent_assessments
        assert score == (None if risk.recent_score is None else pytest.approx(100 * risk.recent_score, abs=1e-3))
        assert stalled == []
    # the defaults: the one learner whose recent scores are low
    default = rows(app, "at_risk_learners", "tenant_admin_a")
    assert [(ids.get(row[0]), row[1]) for row in default] == [(r.learner, list(r.reasons)) for r in truth.at_risk(a)]


@pytest.mark.parametrize("who, scope", [("educator_batch_a", "batch"), ("educator_school_a", "rollup.l3")])
def test_an_educator_sees_its_scope_only(app, who, scope):
    _, truth, _ = world_and_truth()
    a = app.tenants[0]
    text = f"batch:{_batch(a)}" if scope == "batch" else f"rollup.l3:{_school(a)}"
    in_scope = truth.learners_in(a, text)
    risky = rows(app, "at_risk_learners", who, **OPTIONS)
    progress = rows(app, "course_progress", who)
    ids = clear(app, a, [row[0] for row in risky + progress])
    assert {ids[row[0]] for row in risky} == {r.learner for r in truth.at_risk(a, scope=text, **TRUTH_OPTIONS)}
    assert risky and {ids[row[0]] for row in risky} <= in_scope
    assert progress and {ids[row[0]] for row in progress} <= in_scope
    whole = rows(app, "at_risk_learners", "tenant_admin_a", **OPTIONS)
    assert {row[0] for row in risky} < {row[0] for row in whole}  # fewer than the tenant's
    if scope == "batch":
        assert {row[1] for row in progress} == {world_and_truth()[0].batches[_batch(a)].course}


def test_another_tenants_educator_sees_none_of_tenant_as_learners(app):
    a, b = app.tenants
    mine = {row[0] for name in ("at_risk_learners", "course_progress")
            for row in rows(app, name, "tenant_admin_a", **(OPTIONS if name == "at_risk_learners" else {}))}
    theirs = {row[0] for name in ("at_risk_learners", "course_progress")
              for row in rows(app, name, "educator_school_b", **(OPTIONS if name == "at_risk_learners" else {}))}
    assert mine and theirs and not mine & theirs
    assert set(reveal(app, "tenant_admin_b", sorted(theirs))) == theirs  # tenant B's own learners
    for name in ("at_risk_learners", "course_progress"):
        refused(get(app, name, "educator_school_b", tenant=a), 403, ErrorCode.AUTH_FORBIDDEN)


@pytest.mark.parametrize("who", ["analyst_a", "viewer_a"])
@pytest.mark.parametrize("name", ["course_progress", "at_risk_learners"])
def test_analysts_and_viewers_are_refused_individual_records(app, who, name):
    response = get(app, name, who)
    refused(response, 403, ErrorCode.AUTH_FORBIDDEN)
    assert "u:" not in response.text


def test_an_at_risk_learner_is_revealed_to_its_educator_and_audited(app):
    _, truth, _ = world_and_truth()
    a = app.tenants[0]
    audit = app.app.state.audit
    before = max((e.seq for e in audit.entries(tenant=a, limit=10_000)), default=0)
    risky = rows(app, "at_risk_learners", "educator_batch_a", **OPTIONS)
    pseudonym = risky[0][0]
    revealed = reveal(app, "educator_batch_a", [pseudonym])
    learner = revealed[pseudonym]
    assert learner in {r.learner for r in truth.at_risk(a, scope=f"batch:{_batch(a)}", **TRUTH_OPTIONS)}
    educator = app.key_ids["educator_batch_a"]
    entries = [e for e in audit.entries(tenant=a, since_seq=before) if e.actor_subject == educator]
    assert [(e.action, e.outcome) for e in entries] == [("metric", "ok"), ("reidentify", "ok")]
    assert entries[0].detail["metric"] == "at_risk_learners" and entries[0].detail["rows"] == len(risky)
    assert entries[1].detail["pseudonyms"] == [[pseudonym]] and entries[1].detail["revealed"] == 1
    assert learner not in str([e.as_dict() for e in entries])  # the audit holds pseudonyms, never the id
    # another tenant's educator cannot reveal it
    other = app.post("/v1/learners/reidentify", json={"pseudonyms": [pseudonym]}, headers=_as(app, "educator_school_b"))
    assert other.status_code == 200 and other.json()["result"]["learners"] == [] and learner not in other.text
    assert audit.verify().ok


@pytest.mark.parametrize("name, params", [
    ("course_progress", {"limit": "0"}), ("course_progress", {"limit": "5001"}), ("course_progress", {"limit": "x"}),
    ("course_progress", {"course": "do_1' OR '1'='1"}), ("course_progress", {"course": "c" * 65}),
    ("course_progress", {"course": ""}), ("course_progress", {"inactive_days": "3"}),
    ("at_risk_learners", {"inactive_days": "0"}), ("at_risk_learners", {"inactive_days": "-1"}),
    ("at_risk_learners", {"inactive_days": "366"}), ("at_risk_learners", {"score_below": "101"}),
    ("at_risk_learners", {"score_below": "nan"}), ("at_risk_learners", {"score_below": "-5"}),
    ("at_risk_learners", {"recent_days": "1.5"}), ("at_risk_learners", {"min_assessments": "0"}),
    ("at_risk_learners", {"stalled_days": "1e3"}), ("at_risk_learners", {"lookback_days": "401"}),
    ("at_risk_learners", {"limit": "99999999999999999999"}), ("at_risk_learners", {"as_of": "2026-07-01"}),
    ("at_risk_learners", {"as_of": "2026-06-21"}), ("at_risk_learners", {"as_of": "2026-02-30"}),
    ("at_risk_learners", {"as_of": "yesterday"}), ("at_risk_learners", {"as_of": "2026-06-25T10:00:00Z"}),
    ("at_risk_learners", {"course": "x"}), ("at_risk_learners", {"from": "2026-07-01", "to": "2026-06-01"}),
])
def test_bad_options_are_a_coded_400(app, name, params):
    refused(get(app, name, "educator_batch_a", **params), 400, ErrorCode.METRIC_PARAM)


def test_an_as_of_inside_the_window_judges_that_day(app):
    _, truth, _ = world_and_truth()
    a = app.tenants[0]
    day = date(2026, 6, 27)
    got = rows(app, "at_risk_learners", "tenant_admin_a", as_of=day.isoformat(), **OPTIONS)
    ids = clear(app, a, [row[0] for row in got])
    assert {ids[row[0]]: tuple(row[1]) for row in got} == {
        r.learner: r.reasons for r in truth.at_risk(a, day, **TRUTH_OPTIONS)}


_OPTION_NAMES = ["limit", "course", "as_of", "inactive_days", "score_below", "recent_days", "min_assessments",
                 "stalled_days", "lookback_days", "from", "to", "tenant", "scope", "granularity"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["course_progress", "at_risk_learners"]),
       params=st.dictionaries(st.sampled_from(_OPTION_NAMES),
                              st.one_of(st.text(max_size=12), st.integers(-10, 10_000).map(str),
                                        st.sampled_from(["2026-06-25", "2026-06-30", "50.5", "1e9", "NaN"])),
                              max_size=4))
def test_any_options_are_answered_or_refused_with_a_code(app, name, params):
    response = get(app, name, "educator_batch_a", **params)
    assert response.status_code in (200, 400, 403), response.text
    if response.status_code != 200:
        assert response.json()["params"]["err"] in (ErrorCode.METRIC_PARAM, ErrorCode.AUTH_FORBIDDEN)


def test_a_window_in_the_past_still_judges_on_its_last_day(app):
    """Before the world's first day nothing is stored: no rows, and no error."""
    assert rows(app, "at_risk_learners", "tenant_admin_a", **{"from": "2026-01-01", "to": "2026-02-01"}) == []
    assert rows(app, "course_progress", "tenant_admin_a", **{"from": "2026-01-01", "to": "2026-02-01"}) == []


@pytest.mark.parametrize("name", ["course_progress", "at_risk_learners"])
def test_lineage_is_the_statement_of_the_rows(app, name):
    params = {**WINDOW, **(OPTIONS if name == "at_risk_learners" else {})}
    response = app.get(f"/v1/lineage/metric/{name}", params=params, headers=_as(app, "educator_batch_a"))
    assert response.status_code == 200, response.text
    body = response.json()["result"]
    assert (body["metric"], body["kind"]) == (name, "report")
    assert {d["table"] for d in body["datasets"]} == {"content_days", "learner_hours", "telemetry"}
    assert any('{"progress": 100}' in rule for rule in body["rules"])
    assert any("inactive_days" in rule for rule in body["rules"])
    statement = body["query"]
    got = app.app.state.node.store.query(statement["sql"], statement["params"] or None, 1000, 30.0).rows
    assert len(got) == len(rows(app, name, "educator_batch_a", **(OPTIONS if name == "at_risk_learners" else {})))
    assert [row[0] for row in got] == [row[0] for row in rows(app, name, "educator_batch_a",
                                                             **(OPTIONS if name == "at_risk_learners" else {}))]
