"""The learning analytics on the scale-out footprint as processes, end to end: `cohort serve` and two `cohort
worker`s on Kafka (Tansu), Redis and ClickHouse (chdb), a small learning world (synthetic_cohorts) sent through
POST /v1/telemetry as its devices upload it, and every answer read back through the HTTP API against the world's
ground truth: series metrics, reports, learner reports, lineage and exports for a tenant admin, educators of a
batch and of a school (their scope only) and another tenant's educator (none of the first tenant's figures); a
device upload synced days late, after a refresh, moves its old day's figure and is named in `late_slices`; the
workflow summaries the refresher keeps equal `cohort summarise` over the same events as a file.

One deployment for the module (tests/scaleout_deployment.py's shape on the session's engines); the loading,
the refresh waits and the late upload happen once, in the fixture, which keeps what it saw on the way."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from functools import cache
from types import SimpleNamespace

import httpx
import orjson
import pandas as pd
import pyarrow.parquet as pq
import pytest

import engines
from cohort.analytics.exports import DATASETS, csv_end_rows
from cohort.analytics.metrics import METRICS
from cohort.benchmark.scaleout_deployment import CLICKHOUSE_DATABASE, ScaleoutDeployment
from cohort.core.errors import ErrorCode
from cohort.core.stages import STAGES
from cohort.security.api_keys import open_key_store
from cohort.security.identity import Role, Scope
from cohort.settings import Settings
from cohort.synthetic_cohorts import CohortWorld, DeviceUpload, GroundTruth
from scaleout_deployment import QUICK_GROUPS
from support import wait_for

pytestmark = pytest.mark.e2e

# ten days, two tenants of two schools each: 2,714 events in 109 uploads, 16 of them late (synced a day or more after
# their first event)
WORLD = {"seed": 23, "states": 2, "districts": 1, "schools": 2, "classes": 1, "learners": 8, "courses": 2, "days": 10}
SERIES = ("active_learners", "active_devices", "sessions", "time_spent", "content_plays", "qr_scans")
# ten days are too few for the default thresholds (learner reports): these find inactive and low-score learners
OPTIONS = {"inactive_days": "3", "min_assessments": "3", "score_below": "60", "stalled_days": "365"}
TRUTH_OPTIONS = {"inactive_days": 3, "min_assessments": 3, "low_score": 0.6, "stalled_days": 365}


@cache
def world() -> tuple[CohortWorld, GroundTruth, tuple[DeviceUpload, ...]]:
    cohorts = CohortWorld(**WORLD)
    truth = GroundTruth(cohorts)
    uploads = tuple(cohorts.uploads(batch_size=200, truth=truth))
    return cohorts, truth, uploads


def events_of(uploads) -> list[dict]:
    return [e for upload in uploads for e in upload.envelope["events"]]


def window() -> dict[str, str]:
    _, truth, _ = world()
    return {"from": truth.start.isoformat(), "to": (truth.end + timedelta(days=1)).isoformat()}


def day_of(ets_ms: int) -> date:
    return datetime.fromtimestamp(ets_ms / 1000, UTC).date()


def is_play(event: dict) -> bool:
    return event["eid"] == "START" and event["context"].get("env") == "contentplayer"


def held_back(uploads) -> DeviceUpload:
    """The late upload the fixture sends after the rest is refreshed: synced two or more days after its first
    event, with content plays on that first day."""
    for upload in uploads:
        events = upload.envelope["events"]
        first = day_of(events[0]["ets"])
        if upload.late and (day_of(upload.synced_ms) - first).days >= 2 \
                and any(is_play(e) and day_of(e["ets"]) == first for e in events):
            return upload
    raise AssertionError("the world has no upload synced days late with a play on its first day")


def in_scope(event: dict, scope: str) -> bool:
    """Whether `event` is in `scope` by the rules synthetic_cohorts states (batch: cdata names it; rollup.l3:
    the learner's school)."""
    kind, _, value = scope.partition(":")
    if kind == "batch":
        return any(c.get("type") == "Batch" and c.get("id") == value for c in event["context"].get("cdata") or [])
    assert kind == "rollup.l3"
    return (event["context"].get("rollup") or {}).get("l3") == value


# --- the deployment -------------------------------------------------------------------------------------

def as_who(loaded, who: str | None) -> dict[str, str]:
    return loaded.deployment.headers if who is None else {"Authorization": f"Bearer {loaded.keys[who]}"}


def get(loaded, path: str, who: str | None, **params) -> httpx.Response:
    return loaded.http.get(path, params=params, headers=as_who(loaded, who))


def ok(response: httpx.Response) -> dict:
    assert response.status_code == 200, response.text
    assert response.json()["params"]["status"] == "successful"
    return response.json()["result"]


def metric(loaded, name: str, who: str | None, **params) -> dict:
    return ok(get(loaded, f"/v1/metrics/{name}", who, **{**window(), **params}))


def refused(response: httpx.Response, status: int, code: ErrorCode) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["params"]["err"] == code and body["params"]["status"] == "failed" and not body.get("result")


def sql(loaded, text: str) -> list[dict]:
    response = loaded.http.post("/v1/query", json={"sql": text}, headers=loaded.deployment.headers)
    assert response.status_code == 200, response.text
    return response.json()["result"]


def ledger(metrics: dict[str, float]) -> dict[str, float]:
    failed = sum(v for k, v in metrics.items() if k.startswith("cohort_events_failed_total"))
    return {"received": metrics["cohort_events_received_total"], "stored": metrics["cohort_events_stored_total"],
            "failed": failed, "duplicate": metrics["cohort_events_duplicate_total"],
            "in_flight": metrics["cohort_events_in_flight"], "unaccounted": metrics["cohort_events_unaccounted"]}


def late_slices(loaded, who: str) -> dict[str, tuple[str, bool]]:
    body = metric(loaded, "content_plays", who)
    return {s["day"]: (s["reopened_at"], s["refreshed"]) for s in body["completeness"]["late_slices"]}


def refreshed(loaded, who: str, days: set[str]) -> dict[str, tuple[str, bool]] | None:
    """The late slices `who` sees once the refresher has recomputed each of `days` (and no other is pending)."""
    slices = late_slices(loaded, who)
    if days <= set(slices) and all(done for _, done in slices.values()):
        return slices
    return None


def post(loaded, upload: DeviceUpload) -> None:
    response = loaded.http.post("/v1/telemetry", content=orjson.dumps(upload.envelope),
                                headers={**upload.headers, **loaded.deployment.headers})
    assert response.status_code == 200, response.text


def days_with_events(events: list[dict], tenant: str) -> set[str]:
    return {day_of(e["ets"]).isoformat() for e in events if e["context"]["channel"] == tenant}


@pytest.fixture(scope="module")
def loaded(tmp_path_factory, kafka_broker, redis_server):
    """The world through the API of a running deployment: all but one late upload, drained and refreshed; then
    that upload, drained and refreshed again. Keeps the content plays and late slices seen in between."""
    cohorts, truth, uploads = world()
    late = held_back(uploads)
    first = [u for u in uploads if u is not late]
    db = next(engines._next_db, None)  # a Redis database no other test of this process uses (as redis_url)
    if db is None:
        import redis

        db = 1
        redis.Redis.from_url(redis_server.url.rsplit("/", 1)[0] + "/1").flushdb()
    redis_url = redis_server.url.rsplit("/", 1)[0] + f"/{db}"
    directory = tmp_path_factory.mktemp("analytics-scaleout")
    started = time.monotonic()
    deployment = ScaleoutDeployment(directory, kafka_broker.bootstrap, redis_url,
                                    f"cohort-analytics-{uuid.uuid4().hex[:10]}",
                                    # refreshed every 1 s, not 5 s: the fixture waits for two refreshes
                                    env={**QUICK_GROUPS, "COHORT_ROLLUP_REFRESH_SECONDS": "1"}).start()
    http = httpx.Client(base_url=deployment.url, timeout=60)
    try:
        a, b = truth.tenants
        keys = make_keys(redis_url, cohorts, a, b)
        up = time.monotonic()
        loaded = SimpleNamespace(deployment=deployment, http=http, keys=keys, tenants=(a, b), late=late)
        for upload in first:
            post(loaded, upload)
        sent = time.monotonic()
        loaded.first_ledger = ledger(deployment.wait_drained(120))
        drained = time.monotonic()
        for tenant, who in ((a, "tenant_admin_a"), (b, "tenant_admin_b")):
            slices = wait_for(lambda: refreshed(loaded, who, days_with_events(events_of(first), tenant)), 60, 0.5)
            assert slices, f"rollups not refreshed: {late_slices(loaded, who)}\n{deployment.logs()}"
        who = "tenant_admin_a" if late.headers["X-Channel-Id"] == a else "tenant_admin_b"
        loaded.late_who = who
        loaded.late_before = late_slices(loaded, who)
        loaded.plays_before = metric(loaded, "content_plays", who)
        first_refreshed = time.monotonic()
        post(loaded, late)  # synced days late, after the refresh of its days
        loaded.ledger = ledger(deployment.wait_drained(120))
        late_day = day_of(late.envelope["events"][0]["ets"]).isoformat()
        old = loaded.late_before[late_day][0]
        loaded.late_after = wait_for(lambda: (s := refreshed(loaded, who, {late_day})) and s[late_day][0] > old and s,
                                     timeout=60, interval=0.5)
        assert loaded.late_after, f"the late upload's day was not refreshed: {late_slices(loaded, who)}"
        loaded.timings = {"start_s": round(up - started, 1), "send_s": round(sent - up, 1),
                          "drain_s": round(drained - sent, 1), "refresh_s": round(first_refreshed - drained, 1),
                          "late_s": round(time.monotonic() - first_refreshed, 1)}
        print("\nscale-out analytics timings:", loaded.timings, "events:", truth.events)
        yield loaded
    finally:
        http.close()
        deployment.stop()


def make_keys(redis_url: str, cohorts: CohortWorld, a: str, b: str) -> dict[str, str]:
    """Keys as an operator makes them (`cohort keys create`, in the deployment's Redis)."""
    store = open_key_store(Settings(footprint="scaleout", redis_url=redis_url))
    try:
        for tenant in (a, b):
            if not store.tenant_exists(tenant):
                store.create_tenant(tenant)
        made = {
            "tenant_admin_a": store.create_key(a, Role.TENANT_ADMIN),
            "tenant_admin_b": store.create_key(b, Role.TENANT_ADMIN),
            "educator_batch_a": store.create_key(a, Role.EDUCATOR, scope=Scope.parse(batch_scope(cohorts, a))),
            "educator_school_a": store.create_key(a, Role.EDUCATOR, scope=Scope.parse(school_scope(cohorts, a))),
            "educator_school_b": store.create_key(b, Role.EDUCATOR, scope=Scope.parse(school_scope(cohorts, b))),
            "analyst_a": store.create_key(a, Role.ANALYST),
        }
    finally:
        store.close()
    return {name: key for name, (_, key) in made.items()}


def batch_scope(cohorts: CohortWorld, tenant: str) -> str:
    return f"batch:{min(b.id for b in cohorts.batches.values() if b.tenant == tenant)}"


def school_scope(cohorts: CohortWorld, tenant: str) -> str:
    return f"rollup.l3:{min(c.school for c in cohorts.classes.values() if c.tenant == tenant)}"


SCOPES = {"tenant_admin_a": (0, None), "educator_batch_a": (0, "batch"), "educator_school_a": (0, "school"),
          "educator_school_b": (1, "school")}


def scope_of(who: str) -> tuple[str, str | None]:
    cohorts, truth, _ = world()
    index, kind = SCOPES[who]
    tenant = truth.tenants[index]
    if kind is None:
        return tenant, None
    return tenant, batch_scope(cohorts, tenant) if kind == "batch" else school_scope(cohorts, tenant)


def expected_series(name: str, tenant: str, scope: str | None) -> dict[str, float]:
    _, truth, _ = world()
    figure = getattr(truth, name)
    found = {}
    for day in truth.days():
        value = figure(tenant, day, scope)
        if value:
            found[f"{day.isoformat()}T00:00:00Z"] = value
    return found


def got_series(body: dict) -> dict[str, float]:
    assert all(cell["group"] is None and not cell["suppressed"] for cell in body["series"])
    return {cell["bucket"]: cell["value"] for cell in body["series"] if cell["value"]}


@pytest.fixture(autouse=True)
def serving(request):
    """`serve` running for each test that reads through the API: started again if `on_store` stopped it (tests run
    in file order, so only when they were picked out of it)."""
    if "loaded" in request.fixturenames and "on_store" not in request.fixturenames:
        deployment = request.getfixturevalue("loaded").deployment
        if deployment.server.proc is None or deployment.server.proc.poll() is not None:
            deployment.restart_server()
            deployment.wait_store_writer()


# --- the ledger ---------------------------------------------------------------------------------------

def test_every_event_sent_is_stored_once_and_the_ledger_reconciles(loaded):
    _, truth, _ = world()
    held = len(loaded.late.envelope["events"])
    assert loaded.first_ledger == {"received": truth.events - held, "stored": truth.events - held, "failed": 0,
                                   "duplicate": 0, "in_flight": 0, "unaccounted": 0}, loaded.deployment.logs()
    assert loaded.ledger == {"received": truth.events, "stored": truth.events, "failed": 0, "duplicate": 0,
                             "in_flight": 0, "unaccounted": 0}
    assert sql(loaded, "SELECT count() AS n, uniqExact(mid) AS m FROM telemetry") == [
        {"n": truth.events, "m": truth.events}]
    health = httpx.get(loaded.deployment.url + "/health", timeout=10).json()
    assert health["footprint"] == "scaleout" and health["status"] == "ok"


# --- series metrics -----------------------------------------------------------------------------------

@pytest.mark.parametrize("who", list(SCOPES))
@pytest.mark.parametrize("name", SERIES)
def test_series_metrics_are_the_worlds_within_the_callers_scope(loaded, name, who):
    tenant, scope = scope_of(who)
    body = metric(loaded, name, who)
    assert (body["metric"], body["tenant"], body["scope"]) == (name, tenant, scope)
    expected = expected_series(name, tenant, scope)
    # a QR scan is in no course batch: a batch's educator has none (and gets none)
    assert expected or (name == "qr_scans" and str(scope).startswith("batch:")), f"the world has {name} in {scope}"
    got = got_series(body)
    if name == "time_spent":
        assert got.keys() == expected.keys()
        for bucket, value in expected.items():
            assert got[bucket] == pytest.approx(value, abs=1e-6), bucket
    else:
        assert got == expected
    assert body["freshness"]["as_of"] and body["completeness"]["window_closed"] is True


def test_an_educators_figures_are_a_part_of_the_tenants(loaded):
    whole = got_series(metric(loaded, "content_plays", "tenant_admin_a"))
    for who in ("educator_batch_a", "educator_school_a"):
        part = got_series(metric(loaded, "content_plays", who))
        assert part and all(value <= whole[bucket] for bucket, value in part.items())
        assert sum(part.values()) < sum(whole.values())


def test_another_tenants_educator_gets_none_of_the_first_tenants_figures(loaded):
    a, b = loaded.tenants
    for name in SERIES:
        refused(get(loaded, f"/v1/metrics/{name}", "educator_school_b", tenant=a, **window()), 403,
                ErrorCode.AUTH_FORBIDDEN)
        body = metric(loaded, name, "educator_school_b")
        assert body["tenant"] == b
    # grouped by school: only its own school's group, never one of tenant A's schools
    cohorts, _, _ = world()
    schools_a = {c.school for c in cohorts.classes.values() if c.tenant == a}
    grouped = metric(loaded, "active_learners", "educator_school_b", by="rollup.l3")
    assert {cell["group"] for cell in grouped["series"]} == {school_scope(cohorts, b).split(":")[1]}
    assert not {cell["group"] for cell in grouped["series"]} & schools_a
    # an educator cannot widen its scope to the tenant or another school
    widened = get(loaded, "/v1/metrics/sessions", "educator_school_a", scope=f"rollup.l3:{max(schools_a)}",
                  **window())
    assert widened.status_code in (400, 403) and widened.json()["params"]["err"] in (
        ErrorCode.METRIC_PARAM, ErrorCode.AUTH_FORBIDDEN), widened.text


@pytest.mark.parametrize("params", [
    {"from": "not-a-date"}, {"granularity": "minute"}, {"by": "actor_id"}, {"by": "rollup.l3' OR 1=1 --"},
    {"from": "2026-06-30", "to": "2026-06-21"}, {"tenant": "a b"}, {"from": "\u0000"},
])
def test_bad_metric_parameters_are_a_coded_400_never_a_5xx(loaded, params):
    refused(get(loaded, "/v1/metrics/content_plays", "educator_batch_a", **{**window(), **params}), 400,
            ErrorCode.METRIC_PARAM)


def test_an_unknown_metric_and_missing_credentials_are_coded(loaded):
    refused(get(loaded, "/v1/metrics/nope", "tenant_admin_a"), 404, ErrorCode.METRIC_UNKNOWN)
    refused(loaded.http.get("/v1/metrics/sessions"), 401, ErrorCode.AUTH_REQUIRED)
    refused(loaded.http.get("/v1/metrics/sessions", headers={"Authorization": "Bearer ck_nope"}), 401,
            ErrorCode.AUTH_INVALID)


# --- late data ----------------------------------------------------------------------------------------

def test_a_device_upload_synced_days_late_moves_its_old_day_and_is_named(loaded):
    _, truth, _ = world()
    late = loaded.late
    tenant = late.headers["X-Channel-Id"]
    late_day = day_of(late.envelope["events"][0]["ets"])
    plays = Counter(day_of(e["ets"]) for e in late.envelope["events"] if is_play(e))
    assert plays[late_day] > 0 and day_of(late.synced_ms) - late_day >= timedelta(days=2)
    before = got_series(loaded.plays_before)
    after = got_series(metric(loaded, "content_plays", loaded.late_who))
    bucket = f"{late_day.isoformat()}T00:00:00Z"
    for day in truth.days():
        key = f"{day.isoformat()}T00:00:00Z"
        assert after.get(key, 0) == truth.content_plays(tenant, day)
        assert before.get(key, 0) == truth.content_plays(tenant, day) - plays[day], key
    assert after[bucket] == before.get(bucket, 0) + plays[late_day]
    # the old day is named: re-opened by the late upload, after the refresh that preceded it, and refreshed
    reopened, done = loaded.late_after[late_day.isoformat()]
    assert done is True and reopened > loaded.late_before[late_day.isoformat()][0]
    assert reopened.endswith("Z")
    late_days = {day_of(e["ets"]).isoformat() for e in late.envelope["events"]}
    untouched = set(loaded.late_before) - late_days  # days the upload holds no event of keep their mark
    assert untouched and all(loaded.late_after[day] == loaded.late_before[day] for day in untouched)


# --- reports ------------------------------------------------------------------------------------------

def report(loaded, name: str, who: str | None, **params) -> dict:
    body = metric(loaded, name, who, **params)
    assert body["kind"] == "report" and body["metric"] == name
    return body


@pytest.mark.parametrize("who", list(SCOPES))
def test_top_content_and_item_statistics_are_the_worlds_within_the_callers_scope(loaded, who):
    _, truth, _ = world()
    tenant, scope = scope_of(who)
    top = report(loaded, "top_content", who, limit="100")
    assert (top["tenant"], top["scope"]) == (tenant, scope) and top["suppression"]["applied"] is False
    assert [(row[0], row[1]) for row in top["rows"]] == truth.top_content(tenant, truth.start, scope,
                                                                         until=truth.end, n=100)
    items = report(loaded, "item_stats", who, limit="500")
    expected = truth.item_stats(tenant, scope)
    assert expected and {row[0]: (row[2], row[3]) for row in items["rows"]} == {
        item: (stats.attempts, stats.learners) for item, stats in expected.items()}
    for row in items["rows"]:
        assert row[4] == pytest.approx(expected[row[0]].first_attempt_correct_pct, abs=1e-3)


def test_another_tenants_educator_gets_none_of_the_first_tenants_content(loaded):
    a, _ = loaded.tenants
    whole = {row[0] for row in report(loaded, "top_content", "tenant_admin_a", limit="100")["rows"]}
    items = {row[0] for row in report(loaded, "item_stats", "tenant_admin_a", limit="500")["rows"]}
    other = report(loaded, "top_content", "educator_school_b", limit="100")["rows"]
    other_items = report(loaded, "item_stats", "educator_school_b", limit="500")["rows"]
    assert other and not {row[0] for row in other} & whole
    assert other_items and not {row[0] for row in other_items} & items
    for name in ("top_content", "item_stats"):
        refused(get(loaded, f"/v1/metrics/{name}", "educator_school_b", tenant=a, **window()), 403,
                ErrorCode.AUTH_FORBIDDEN)


def reveal(loaded, tenant: str, pseudonyms) -> dict[str, str]:
    """{pseudonym: clear id} by the operator's admin (each must be a learner of `tenant`)."""
    listed = sorted(set(pseudonyms))
    found: dict[str, str] = {}
    for at in range(0, len(listed), 100):
        response = loaded.http.post("/v1/learners/reidentify", json={"pseudonyms": listed[at:at + 100],
                                                                      "tenant": tenant},
                                    headers=loaded.deployment.headers)
        found |= {item["pseudonym"]: item["id"] for item in ok(response)["learners"]}
    assert set(found) == set(listed)
    return found


def test_course_progress_is_the_worlds_for_the_admin_and_the_batchs_educator(loaded):
    cohorts, truth, _ = world()
    a = loaded.tenants[0]
    whole = report(loaded, "course_progress", "tenant_admin_a", limit="5000")["rows"]
    batch = report(loaded, "course_progress", "educator_batch_a", limit="5000")["rows"]
    ids = reveal(loaded, a, [row[0] for row in whole + batch])
    assert whole and batch and {tuple(row) for row in batch} <= {tuple(row) for row in whole}
    for pseudonym, course, done, _contents, _pct, last_progress, last_active in whole:
        learner = ids[pseudonym]
        total = len(cohorts.courses[course].contents)
        assert done == round(truth.course_progress(learner, course) * total / 100)
        moved = truth.last_progress(learner, course)
        assert last_progress == (None if moved is None else moved.isoformat())
        assert last_active == truth.last_active(learner).isoformat()
    course = cohorts.batches[batch_scope(cohorts, a).split(":")[1]].course
    assert {row[1] for row in batch} == {course}
    assert {ids[row[0]] for row in batch} <= truth.learners_in(a, batch_scope(cohorts, a))


@pytest.mark.parametrize("who", ["tenant_admin_a", "educator_school_a", "educator_school_b"])
def test_at_risk_learners_are_the_worlds_within_the_callers_scope(loaded, who):
    _, truth, _ = world()
    tenant, scope = scope_of(who)
    rows = report(loaded, "at_risk_learners", who, **OPTIONS)["rows"]
    expected = {risk.learner: risk for risk in truth.at_risk(tenant, scope=scope, **TRUTH_OPTIONS)}
    assert expected, "the options find learners at risk in the world"
    ids = reveal(loaded, tenant, [row[0] for row in rows])
    assert {ids[row[0]] for row in rows} == set(expected)
    for pseudonym, reasons, last_active, days_inactive, n, score, _stalled in rows:
        risk = expected[ids[pseudonym]]
        assert tuple(reasons) == risk.reasons and last_active == risk.last_active.isoformat()
        assert days_inactive == (truth.end - risk.last_active).days and n == risk.recent_assessments
        assert score == (None if risk.recent_score is None else pytest.approx(100 * risk.recent_score, abs=1e-3))


def test_learner_reports_refuse_analysts_and_other_tenants(loaded):
    a, _ = loaded.tenants
    for name in ("course_progress", "at_risk_learners"):
        refused(get(loaded, f"/v1/metrics/{name}", "analyst_a", **window()), 403, ErrorCode.AUTH_FORBIDDEN)
        refused(get(loaded, f"/v1/metrics/{name}", "educator_school_b", tenant=a, **window()), 403,
                ErrorCode.AUTH_FORBIDDEN)
    refused(get(loaded, "/v1/metrics/at_risk_learners", "educator_batch_a", inactive_days="0", **window()), 400,
            ErrorCode.METRIC_PARAM)
    mine = {row[0] for row in report(loaded, "course_progress", "tenant_admin_a", limit="5000")["rows"]}
    theirs = {row[0] for row in report(loaded, "course_progress", "educator_school_b", limit="5000")["rows"]}
    assert mine and theirs and not mine & theirs


# --- lineage ------------------------------------------------------------------------------------------

def test_a_metrics_lineage_names_the_scale_out_store_and_the_callers_scope(loaded):
    body = ok(get(loaded, "/v1/lineage/metric/content_plays", "educator_school_a", **window()))
    assert (body["metric"], body["unit"]) == ("content_plays", "plays")
    tenant, scope = scope_of("educator_school_a")
    assert scope and body["query"]["dialect"] == "clickhouse" and scope.split(":")[1] in body["query"]["sql"]
    assert body["scope"]["scope"] == scope and body["params"]["tenant"] == tenant
    assert {d["store"] for d in body["datasets"]} == {"clickhouse"}
    assert [stage["name"] for stage in body["pipeline"]] == list(STAGES)
    assert {r["table"] for r in body["rollups"]} <= set(METRICS["content_plays"].sources)
    refused(get(loaded, "/v1/lineage/metric/nope", "educator_school_a"), 404, ErrorCode.METRIC_UNKNOWN)


def test_an_events_lineage_shows_its_stages_in_scope_and_is_404_elsewhere(loaded):
    _, _, uploads = world()
    a, _ = loaded.tenants
    _, school = scope_of("educator_school_a")
    assert school
    event = next(e for e in events_of(uploads) if e["context"]["channel"] == a and in_scope(e, school))
    outside = next(e for e in events_of(uploads) if e["context"]["channel"] == a and not in_scope(e, school))
    body = ok(get(loaded, f"/v1/lineage/event/{event['mid']}", "tenant_admin_a"))
    assert (body["mid"], body["tenant"], body["status"]) == (event["mid"], a, "stored")
    [copy] = body["stored"]
    assert (copy["table"], copy["eid"], copy["source"]) == ("telemetry", event["eid"], "/v1/telemetry")
    assert [stage["name"] for stage in copy["stages"]] == list(STAGES)
    stages = {stage["name"]: stage for stage in copy["stages"]}
    assert stages["validate"]["ok"] is True and stages["route"]["table"] == "telemetry"
    assert copy["ingested_at"] <= copy["processed_at"] and body["quarantined"] == []
    assert ok(get(loaded, f"/v1/lineage/event/{event['mid']}", "educator_school_a"))["status"] == "stored"
    refused(get(loaded, f"/v1/lineage/event/{outside['mid']}", "educator_school_a"), 404, ErrorCode.LINEAGE_NOT_FOUND)
    refused(get(loaded, f"/v1/lineage/event/{event['mid']}", "educator_school_b"), 404, ErrorCode.LINEAGE_NOT_FOUND)
    refused(get(loaded, f"/v1/lineage/event/{event['mid']}", "tenant_admin_b"), 404, ErrorCode.LINEAGE_NOT_FOUND)
    refused(get(loaded, "/v1/lineage/event/a;DROP", "tenant_admin_a"), 400, ErrorCode.LINEAGE_MID)


# --- exports ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("who", list(SCOPES))
def test_exports_are_the_scopes_events_as_parquet_and_csv(loaded, who):
    _, _, uploads = world()
    tenant, scope = scope_of(who)
    expected = {e["mid"] for e in events_of(uploads) if e["context"]["channel"] == tenant
                and (scope is None or in_scope(e, scope))}
    assert expected
    response = get(loaded, "/v1/exhaust/telemetry", who, format="parquet", **window())
    assert response.status_code == 200, response.text
    table = pq.read_table(io.BytesIO(response.content))
    assert table.column_names == list(DATASETS["telemetry"].columns)
    mids = table.column("mid").to_pylist()
    assert len(mids) == len(expected) and set(mids) == expected
    assert set(table.column("channel").to_pylist()) == {tenant}
    response = get(loaded, "/v1/exhaust/telemetry", who, format="csv", **window())
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    frame = pd.read_csv(io.BytesIO(response.content), comment="#")
    assert len(frame) == csv_end_rows(response.content[-64:]) == len(expected)
    assert set(frame["mid"]) == expected


def test_exports_refuse_other_tenants_and_bad_requests(loaded):
    a, _ = loaded.tenants
    refused(get(loaded, "/v1/exhaust/telemetry", "educator_school_b", tenant=a, **window()), 403,
            ErrorCode.AUTH_FORBIDDEN)
    refused(get(loaded, "/v1/exhaust/failed_events", "educator_school_a", **window()), 403, ErrorCode.AUTH_FORBIDDEN)
    bad = get(loaded, "/v1/exhaust/telemetry", "tenant_admin_a", format="xlsx", **window())
    assert 400 <= bad.status_code < 500 and bad.json()["params"]["err"].startswith("ERR_"), bad.text
    bad = get(loaded, "/v1/exhaust/telemetry", "tenant_admin_a", **{"from": "2026-06-30", "to": "2026-06-01"})
    assert 400 <= bad.status_code < 500 and bad.json()["params"]["err"].startswith("ERR_"), bad.text


# --- read on the store itself (chdb: one process per path, so `serve` steps aside meanwhile) ---------------

_ON_STORE = """
import json, sys
from cohort.store.clickhouse_store import ClickHouseStore
store = ClickHouseStore(sys.argv[1], database=sys.argv[2])
try:
    answers = [store.query(sql, params or None, 10_000, 120.0).rows for sql, params in json.load(sys.stdin)]
finally:
    store.close()
print(json.dumps(answers, default=str))
"""
SUMMARIES_BY_TYPE = "SELECT type, count() FROM workflow_summaries FINAL GROUP BY type"
LINEAGE_OF = (("time_spent", "educator_batch_a"), ("active_learners", "educator_school_a"),
              ("content_plays", "tenant_admin_a"), ("qr_scans", "educator_school_b"))


def by_type(path) -> dict[str, int]:
    return dict(Counter(orjson.loads(line)["dimensions"]["type"] for line in path.read_bytes().splitlines()))


@pytest.fixture(scope="module")
def on_store(loaded, tmp_path_factory):
    """What the API said of some metrics (lineage, figures); then, with `serve` stopped, read on its ClickHouse:
    each lineage statement's rows and the workflow summaries by type as the refresher left them, and `cohort
    summarise --from --to` recomputing the range; meanwhile `cohort summarise --input` over the world's events
    as a file. `serve` stays stopped: the tests using this come last in the file (`serving` starts it again for
    a test that needs it, when they ran first)."""
    _, _, uploads = world()
    deployment = loaded.deployment
    said = {}
    for name, who in LINEAGE_OF:
        said[(name, who)] = (ok(get(loaded, f"/v1/lineage/metric/{name}", who, **window())),
                             got_series(metric(loaded, name, who)))
    env = {**os.environ, **deployment.env}
    cli = [sys.executable, "-m", "cohort.cli", "summarise"]
    directory = tmp_path_factory.mktemp("summaries")
    raw, from_file, from_range = directory / "events.jsonl", directory / "file.jsonl", directory / "range.jsonl"
    raw.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events_of(uploads)))
    file_mode = subprocess.Popen([*cli, "--input", str(raw), "--output", str(from_file)], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deployment.server.stop()
        statements = [(body["query"]["sql"], body["query"]["params"]) for body, _ in said.values()]
        read = subprocess.run([sys.executable, "-c", _ON_STORE, env["COHORT_CLICKHOUSE_DSN"], CLICKHOUSE_DATABASE],
                              input=json.dumps([*statements, (SUMMARIES_BY_TYPE, None)]), env=env,
                              capture_output=True, text=True, timeout=180)
        assert read.returncode == 0, read.stderr[-3000:]
        recomputed = subprocess.run([*cli, "--from", window()["from"], "--to", window()["to"], "--output",
                                     str(from_range)], env=env, capture_output=True, text=True, timeout=180)
        assert recomputed.returncode == 0, recomputed.stdout + recomputed.stderr
        output, _ = file_mode.communicate(timeout=120)
        assert file_mode.returncode == 0, output
    finally:
        if file_mode.poll() is None:
            file_mode.kill()
            file_mode.wait()
    *lineage_rows, summaries = json.loads(read.stdout.strip().splitlines()[-1])
    return SimpleNamespace(said=said, lineage_rows=dict(zip(said, lineage_rows)), by_file=by_type(from_file),
                           by_range=by_type(from_range), summaries={str(kind): int(n) for kind, n in summaries})


def test_a_metrics_lineage_statement_gives_its_figures_on_clickhouse(on_store):
    """The statement lineage names is the one the figures came from: run on the store as given, it gives them."""
    for key, rows in on_store.lineage_rows.items():
        body, figures = on_store.said[key]
        assert body["query"]["dialect"] == "clickhouse" and body["suppression"]["applies"] is False
        ran = {f"{datetime.fromtimestamp(int(bucket), UTC).date().isoformat()}T00:00:00Z": float(value)
               for bucket, group, value, _ in rows if float(value)}
        assert ran.keys() == figures.keys(), key
        assert all(ran[bucket] == pytest.approx(figures[bucket], abs=1e-6) for bucket in ran), key
        assert figures or key[0] == "qr_scans"


def test_the_refreshers_workflow_summaries_equal_cohort_summarise_over_the_same_events_as_a_file(on_store):
    """By type, the summaries the refresher left in ClickHouse = `cohort summarise --input` over the events sent,
    as one raw file (clear ids: file mode needs no vault) = `cohort summarise --from --to` recomputing the range."""
    assert on_store.by_file.get("app", 0) > 0 and on_store.by_file.get("content", 0) > 0
    assert on_store.summaries == on_store.by_file == on_store.by_range, on_store

