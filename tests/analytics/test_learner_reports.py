"""The learner reports (course_progress, at_risk_learners) give the learning world's known answers on DuckDB and
ClickHouse, read from the rollups or (for marked slices) from telemetry; every rule alone, changed thresholds,
scopes, and late data that moves a learner on or off the list."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, date, datetime, timedelta
from functools import cache

import orjson
import pytest

from cohort.analytics.learner_reports import REPORTS, AtRiskLearners, CourseProgress
from cohort.analytics.report_query import ReportQuery
from cohort.analytics.rollup_refresh import RollupRefresher
from cohort.core.errors import CohortError, ErrorCode
from cohort.core.log_record import LogRecord
from cohort.core.process_batch import process_batch
from cohort.security.identity import Scope
from cohort.state.mid_window import MidWindow
from cohort.store.clickhouse_store import ClickHouseStore
from cohort.store.duckdb_store import DuckDbStore
from cohort.synthetic_cohorts import CohortWorld, GroundTruth

# 50 days, two states: every content of the first state's courses is played by someone (the course's contents
# are known to telemetry only so), and its learners hold each at-risk reason alone
WORLD = {"seed": 13, "states": 2, "districts": 1, "schools": 2, "classes": 1, "learners": 5, "courses": 2, "days": 50}
HELD_BACK_DAYS = 20  # the late learner's device syncs its last 20 days only after the rest is stored

COURSE_PROGRESS, AT_RISK = CourseProgress(), AtRiskLearners()


@cache
def world() -> tuple[CohortWorld, GroundTruth, tuple[tuple[dict, ...], ...]]:
    cohort = CohortWorld(**WORLD)
    truth = GroundTruth(cohort)
    uploads = tuple(tuple(u.envelope["events"]) for u in cohort.uploads(batch_size=200, truth=truth))
    return cohort, truth, uploads


def day_of(event: dict) -> date:
    return datetime.fromtimestamp(event["ets"] / 1000, UTC).date()


@cache
def late_learner() -> str:
    """A learner of the second state, active in its last HELD_BACK_DAYS days and not inactive at the end, whose
    events of those days arrive late: without them they look inactive."""
    cohort, truth, _ = world()
    tenant = truth.tenants[1]
    cutoff = truth.end - timedelta(days=HELD_BACK_DAYS - 1)
    at_risk = {a.learner: a for a in truth.at_risk(tenant)}
    for learner in sorted(truth.learners_in(tenant)):
        earlier = truth.last_active(learner, cutoff - timedelta(days=1))
        if (earlier is not None and "inactive" not in getattr(at_risk.get(learner), "reasons", ())
                and truth.last_active(learner) >= cutoff):
            return learner
    raise AssertionError("the world has no learner to sync late")


def held_back(event: dict) -> bool:
    return event["actor"]["id"] == late_learner() and day_of(event) >= world()[1].end - timedelta(
        days=HELD_BACK_DAYS - 1)


@cache
def prepared() -> tuple:
    """The world's batches through the pipeline's core once (both stores write the same outcomes), the late
    learner's last days last."""
    _, _, uploads = world()
    now_ms = int(time.time() * 1000)
    groups = [[e for upload in uploads[at:at + 50] for e in upload if not held_back(e)]
              for at in range(0, len(uploads), 50)]
    late = [e for upload in uploads for e in upload if held_back(e)]
    return tuple(_outcome(events, n + 1, now_ms) for n, events in enumerate(groups)), \
        _outcome(late, len(groups) + 1, now_ms)


def _outcome(events: list[dict], offset: int, now_ms: int):
    body = orjson.dumps({"id": "api.sunbird.telemetry", "events": events})
    outcome = process_batch([LogRecord(payload=body, event_count=len(events), offset=offset, received_at_ms=now_ms)],
                            MidWindow(10**9), now_ms=now_ms, config_version="test")
    assert outcome.failed_count == 0 and outcome.duplicates == 0
    return outcome


@pytest.fixture(scope="module")
def opened(request, tmp_path_factory):
    """Stores loaded with the world (but the late learner's last days) once per module: per dialect, one never
    refreshed (every slice marked: read from telemetry) and one refreshed (read from the rollups)."""
    stores: dict[tuple[str, bool], object] = {}

    def get(kind: str, refreshed: bool):
        if (kind, refreshed) not in stores:
            if kind == "duckdb":
                store = DuckDbStore(tmp_path_factory.mktemp("learner-reports") / "store.duckdb")
            else:
                store = ClickHouseStore(request.getfixturevalue("clickhouse_dsn"),
                                        database=f"test_{uuid.uuid4().hex[:12]}")
            outcomes, _ = prepared()
            for n, outcome in enumerate(outcomes):
                store.write_batch(outcome, failed_at_ms=int(time.time() * 1000), token=f"w-{n}")
            if refreshed:
                assert RollupRefresher(store).refresh() > 0
            stores[(kind, refreshed)] = store
        return stores[(kind, refreshed)]

    yield get
    for store in stores.values():
        store.close()  # type: ignore[attr-defined]


@pytest.fixture(params=[("duckdb", False), ("duckdb", True), ("clickhouse", False), ("clickhouse", True)],
                ids=["duckdb-raw", "duckdb-rollups", "clickhouse-raw", "clickhouse-rollups"])
def store(request, opened):
    return opened(*request.param)


@pytest.fixture(params=["duckdb", "clickhouse"])
def rolled(request, opened):
    return opened(request.param, True)


@pytest.fixture
def duck(opened):
    """Options and thresholds change the SQL's constants only, not its dialect fragments: DuckDB alone."""
    return opened("duckdb", True)


def dialect(store) -> str:
    return store.capabilities.sql_dialect


def window() -> tuple[datetime, datetime]:
    _, truth, _ = world()
    start = datetime(truth.start.year, truth.start.month, truth.start.day, tzinfo=UTC)
    return start, start + timedelta(days=WORLD["days"])


def run(store, report, tenant: str | None, scope: Scope | None = None, **options) -> list[list]:
    start, end = window()
    checked = {option.name: option.default for option in report.options} | options
    statement = report.rows_sql(ReportQuery(start, end, tenant, scope, checked), dialect(store))
    rows = store.query(statement.sql, statement.params, 10_000, 60.0).rows
    return orjson.loads(orjson.dumps(rows))


def tenant0() -> str:
    return world()[1].tenants[0]


# -- the oracles: what the world's events say, by the reports' rules ------------------------------------------

def played_pairs(tenant: str, scope: str | None = None, as_of: date | None = None) -> set[tuple[str, str]]:
    """(learner, course) with a content-player START/END naming the course (object.rollup.l1) by `as_of`, in
    scope (`batch:ID`, `course:ID` or `rollup.lN:ID`)."""
    cohort, truth, uploads = world()
    as_of = as_of or truth.end
    found = set()
    for event in (e for upload in uploads for e in upload):
        course = ((event.get("object") or {}).get("rollup") or {}).get("l1")
        if (event["context"]["channel"] != tenant or event["eid"] not in ("START", "END") or course is None
                or event["context"]["env"] != "contentplayer" or day_of(event) > as_of):
            continue
        if scope is not None:
            kind, _, value = scope.partition(":")
            cdata = {(c["type"], c["id"]) for c in event["context"].get("cdata", [])}
            if kind == "batch" and ("Batch", value) not in cdata:
                continue
            if kind == "course" and course != value and ("Course", value) not in cdata:
                continue
            if kind.startswith("rollup.") and event["context"]["rollup"].get(kind[-2:]) != value:
                continue
        found.add((event["actor"]["id"], course))
    return found


def expected_at_risk(tenant: str, as_of: date | None = None, scope: str | None = None, **options) -> dict:
    _, truth, _ = world()
    as_of = as_of or truth.end
    kwargs = {k: v for k, v in options.items() if k in ("inactive_days", "recent_days", "min_assessments",
                                                           "stalled_days")}
    if "score_below" in options:
        kwargs["low_score"] = options["score_below"] / 100
    return {a.learner: a for a in truth.at_risk(tenant, as_of, scope, **kwargs)}


def assert_at_risk(rows: list[list], expected: dict, as_of: date) -> None:
    got = {row[0]: row for row in rows}
    assert set(got) == set(expected)
    for learner, risk in expected.items():
        _, reasons, last_active, days_inactive, n, score, stalled = got[learner]
        assert tuple(reasons) == risk.reasons, learner
        assert last_active == risk.last_active.isoformat() and days_inactive == (as_of - risk.last_active).days
        assert n == risk.recent_assessments
        assert (score is None) == (risk.recent_score is None)
        if score is not None:
            assert score == pytest.approx(100 * risk.recent_score, abs=1e-9)
        assert [(s["course"], s["progress_pct"], s["last_progress"]) for s in stalled] == [
            (course, pytest.approx(progress, abs=1e-9), day.isoformat())
            for course, progress, day in risk.stalled_courses]
    # most reasons first, then the longest silent
    keys = [(-len(row[1]), -row[3]) for row in rows]
    assert keys == sorted(keys)


def assert_progress(rows: list[list], tenant: str, scope: str | None = None) -> None:
    cohort, truth, _ = world()
    assert {(row[0], row[1]) for row in rows} == played_pairs(tenant, scope)
    for learner, course, done, contents, pct, last_progress, last_active in rows:
        assert contents == len(cohort.courses[course].contents)  # every content of the state's courses was played
        assert pct == 100 * done / contents == truth.course_progress(learner, course)
        moved = truth.last_progress(learner, course)
        assert last_progress == (None if moved is None else moved.isoformat())
        assert last_active == truth.last_active(learner).isoformat()
        assert learner in truth.progress_by_learner(course)  # enrolled in a batch of it
    # every learner who completed anything in the tenant's courses is listed
    listed = {(row[0], row[1]) for row in rows}
    if scope is None:
        for course in (c for c in cohort.courses.values() if c.tenant == tenant):
            for learner, progress in truth.progress_by_learner(course.id).items():
                assert progress == 0 or (learner, course.id) in listed
    ordered = [(row[1], row[4], row[0]) for row in rows]
    assert ordered == sorted(ordered)


# -- known answers ------------------------------------------------------------------------------------------

def test_course_progress_is_the_worlds(store):
    rows = run(store, COURSE_PROGRESS, tenant0())
    assert len(rows) > 10 and any(0 < row[4] < 100 for row in rows)
    assert_progress(rows, tenant0())
    assert {row[0] for row in rows}.isdisjoint(world()[1].learners_in(world()[1].tenants[1]))  # other tenant's


def test_course_progress_of_one_course_and_a_limit(duck):
    rows = run(duck, COURSE_PROGRESS, tenant0())
    course = rows[-1][1]
    one = run(duck, COURSE_PROGRESS, tenant0(), course=course)
    assert one == [row for row in rows if row[1] == course] and one
    assert run(duck, COURSE_PROGRESS, tenant0(), limit=3) == rows[:3]
    assert run(duck, COURSE_PROGRESS, tenant0(), course="do_no_such_course") == []
    # the operator's admin, naming no tenant, reads every tenant's (the first's rows among them)
    everyone = run(duck, COURSE_PROGRESS, None, limit=5000)
    assert len(everyone) > len(rows) and all(row in everyone for row in rows)
    risky = run(duck, AT_RISK, tenant0())
    assert all(row in run(duck, AT_RISK, None) for row in risky)


def test_course_progress_as_of_an_earlier_day(duck):
    cohort, truth, _ = world()
    as_of = truth.end - timedelta(days=15)
    rows = run(duck, COURSE_PROGRESS, tenant0(), as_of=as_of.isoformat())
    assert {(row[0], row[1]) for row in rows} == played_pairs(tenant0(), as_of=as_of)
    for learner, course, done, contents, pct, last_progress, last_active in rows:
        assert pct == truth.course_progress(learner, course, as_of) and contents == len(cohort.courses[course].contents)
        moved = truth.last_progress(learner, course, as_of)
        assert last_progress == (None if moved is None else moved.isoformat())
        assert last_active == truth.last_active(learner, as_of).isoformat()
    assert rows != run(duck, COURSE_PROGRESS, tenant0())


def test_at_risk_learners_are_the_worlds(store):
    rows = run(store, AT_RISK, tenant0())
    expected = expected_at_risk(tenant0())
    assert {r for risk in expected.values() for r in risk.reasons} == {"inactive", "low_scores", "stalled"}
    assert_at_risk(rows, expected, world()[1].end)


@pytest.mark.parametrize("reason, options", [
    ("inactive", {"min_assessments": 100_000, "stalled_days": 365}),
    ("low_scores", {"inactive_days": 365, "stalled_days": 365}),
    ("stalled", {"inactive_days": 365, "min_assessments": 100_000}),
])
def test_each_reason_alone(duck, reason, options):
    rows = run(duck, AT_RISK, tenant0(), lookback_days=WORLD["days"], **options)
    expected = expected_at_risk(tenant0(), **options)
    assert expected and all(risk.reasons == (reason,) for risk in expected.values())
    assert_at_risk(rows, expected, world()[1].end)


@pytest.mark.parametrize("options", [
    {"inactive_days": 5, "stalled_days": 10},
    {"score_below": 75.0, "recent_days": 30, "min_assessments": 3},
    {"score_below": 0.0, "inactive_days": 40},
    {"as_of": "offset:-12", "stalled_days": 7},
])
def test_changed_thresholds_and_an_earlier_day(duck, options):
    _, truth, _ = world()
    as_of = truth.end
    if "as_of" in options:
        as_of = truth.end + timedelta(days=int(options["as_of"].removeprefix("offset:")))
        options = {**options, "as_of": as_of.isoformat()}
    rows = run(duck, AT_RISK, tenant0(), lookback_days=WORLD["days"], **options)
    expected = expected_at_risk(tenant0(), as_of, **{k: v for k, v in options.items() if k != "as_of"})
    assert_at_risk(rows, expected, as_of)
    assert expected != expected_at_risk(tenant0())  # the change changes the answer


@pytest.mark.parametrize("kinds", [("batch",), ("course", "rollup.l3")], ids=["batch", "course-school"])
def test_scopes_give_only_learners_in_scope(rolled, kinds):
    store = rolled
    if dialect(store) == "clickhouse" and kinds != ("batch",):
        pytest.skip("the scope's condition over rollup columns is one fragment per kind: DuckDB covers the rest")
    cohort, truth, _ = world()
    tenant = tenant0()
    batch = min((b for b in cohort.batches.values() if b.tenant == tenant), key=lambda b: b.id)
    course = batch.course
    school = min(c.rollup["l3"] for c in cohort.classes.values() if c.tenant == tenant)
    everyone = truth.learners_in(tenant)
    texts = {"batch": f"batch:{batch.id}", "course": f"course:{course}", "rollup.l3": f"rollup.l3:{school}"}
    for text in (texts[kind] for kind in kinds):
        scope = Scope.parse(text)
        in_scope = truth.learners_in(tenant, text)
        assert 0 < len(in_scope) <= len(everyone)
        assert text.startswith("course") or len(in_scope) < len(everyone)
        progress = run(store, COURSE_PROGRESS, tenant, scope)
        assert_progress(progress, tenant, text)
        assert {row[0] for row in progress} <= in_scope
        risky = run(store, AT_RISK, tenant, scope)
        assert_at_risk(risky, expected_at_risk(tenant, scope=text), truth.end)
    if "batch" in kinds:
        assert {row[1] for row in run(store, COURSE_PROGRESS, tenant, Scope.parse(f"batch:{batch.id}"))} == {course}


def test_an_as_of_outside_the_window_is_a_coded_error():
    start, end = window()
    for text in ("2026-13-01", "yesterday", (end.date() + timedelta(days=1)).isoformat(),
                 (start.date() - timedelta(days=1)).isoformat()):
        query = ReportQuery(start, end, tenant0(), None, {o.name: o.default for o in AT_RISK.options} | {"as_of": text})
        with pytest.raises(CohortError) as raised:
            AT_RISK.rows_sql(query, "duckdb")
        assert raised.value.code == ErrorCode.METRIC_PARAM


def test_reports_are_registered_and_individual():
    assert [report.name for report in REPORTS] == ["course_progress", "at_risk_learners"]
    for report in REPORTS:
        assert report.individual and "telemetry" in report.sources
        assert len({column.name for column in report.columns}) == len(report.columns)


# -- late data (the second state only: the tests above read the first) -----------------------------------------

def test_a_late_sync_moves_learners_off_and_onto_the_list(rolled):
    store = rolled
    _, truth, uploads = world()
    tenant, learner = truth.tenants[1], late_learner()
    before = {row[0]: row for row in run(store, AT_RISK, tenant)}
    assert "inactive" in before[learner][1]  # their last days are still on the device
    _, late = prepared()
    store.write_batch(late, failed_at_ms=int(time.time() * 1000), token=f"late-{uuid.uuid4().hex}")
    for refreshed in (False, True):  # read from telemetry while marked, then from the rollups
        if refreshed:
            assert RollupRefresher(store).refresh() > 0
        after = run(store, AT_RISK, tenant)
        assert_at_risk(after, expected_at_risk(tenant), truth.end)
        assert learner not in after or "inactive" not in dict((r[0], r[1]) for r in after)[learner]

    # a learner not scoring low is sent forty failed attempts of the last days: on the list at once
    scorer = next(a for a in sorted(truth.learners_in(tenant)) if a not in expected_at_risk(tenant)
                  and truth.last_active(a) >= truth.end - timedelta(days=7))
    template = next(e for upload in uploads for e in upload if e["eid"] == "ASSESS" and e["actor"]["id"] == scorer)
    base = int(datetime(truth.end.year, truth.end.month, truth.end.day, 9, tzinfo=UTC).timestamp() * 1000)
    failed = [{**template, "mid": f"late-fail-{uuid.uuid4().hex}", "ets": base + n * 60_000,
               "edata": {**template["edata"], "score": 0, "pass": "No"}} for n in range(40)]
    store.write_batch(_outcome(failed, 10_000, int(time.time() * 1000)), failed_at_ms=int(time.time() * 1000),
                      token=f"fail-{uuid.uuid4().hex}")
    for refreshed in (False, True):
        if refreshed:
            assert RollupRefresher(store).refresh() > 0
        row = {r[0]: r for r in run(store, AT_RISK, tenant)}[scorer]
        assert "low_scores" in row[1] and row[4] >= 10 and row[5] < 50
