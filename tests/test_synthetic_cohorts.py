"""The learning world is the answer key of the learning metrics: its events must be valid, reproducible and
streamed in upload order, and its ground truth must agree with what the events say when read back by the
documented rules (here recomputed from the emitted events, independently of the generator's tallies, and
for scopes by the platform's own scope filter in DuckDB)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections import Counter, defaultdict
from datetime import UTC, date, datetime, timedelta
from functools import cache

import duckdb
import orjson
import pyarrow as pa
import pytest

from cohort.core.telemetry_schema import validator_for
from cohort.security.identity import Scope
from cohort.security.scope_filter import scope_condition_sql
from cohort.synthetic_cohorts import (INACTIVE_DAYS, LOW_SCORE, MIN_RECENT_ASSESSMENTS, RECENT_DAYS, STALLED_DAYS,
                                      CohortWorld, GroundTruth, _Run)

SMALL = {"seed": 5, "districts": 1, "schools": 2, "classes": 2, "learners": 10, "courses": 3, "days": 60}


@cache
def world() -> CohortWorld:
    return CohortWorld(**SMALL)


@cache
def generated() -> tuple[tuple, GroundTruth]:
    """(uploads, the truth filled while they were generated), shared: generating once keeps the suite fast."""
    truth = GroundTruth(world())
    return tuple(world().uploads(batch_size=100, truth=truth)), truth


def all_events() -> list[dict]:
    return [e for upload in generated()[0] for e in upload.envelope["events"]]


def day_of(event: dict) -> date:
    return datetime.fromtimestamp(event["ets"] / 1000, UTC).date()


def cdata(event: dict, kind: str) -> str | None:
    return next((c["id"] for c in event["context"]["cdata"] if c["type"] == kind), None)


def scope_keys(event: dict) -> set[str]:
    """The scopes an event is in, read the way the scope filter reads them."""
    keys = {""} | {f"rollup.{level}:{v}" for level, v in event["context"]["rollup"].items()}
    if (batch := cdata(event, "Batch")) is not None:
        keys.add(f"batch:{batch}")
    course = event.get("object", {}).get("rollup", {}).get("l1") or cdata(event, "Course")
    if course is not None:
        keys.add(f"course:{course}")
    return keys


def is_player(event: dict, eid: str) -> bool:
    return event["eid"] == eid and event["context"]["env"] == "contentplayer"


def digest(uploads) -> str:
    h = hashlib.sha256()
    for upload in uploads:
        h.update(orjson.dumps([upload.envelope, upload.headers]) + b"\n")
    return h.hexdigest()


# --- events -------------------------------------------------------------------------------------

def test_every_event_validates_against_its_official_schema_and_mids_are_unique():
    events = all_events()
    assert len(events) > 20_000
    for event in events:
        validator_for(event["eid"])(event)  # raises SchemaViolation when invalid
    assert len({e["mid"] for e in events}) == len(events)
    assert {"START", "END", "IMPRESSION", "INTERACT", "ASSESS", "SEARCH"} <= {e["eid"] for e in events}


def test_actors_are_the_worlds_learners_in_clear_and_rollup_says_where_they_sit():
    learners = {learner.id: learner for learner in world().learners}
    for event in all_events():
        learner = learners[event["actor"]["id"]]
        assert event["actor"]["type"] == "User" and event["context"]["channel"] == learner.tenant
        assert event["context"]["rollup"] == world().classes[learner.class_id].rollup


def test_same_seed_same_bytes_other_seed_differs_and_batch_size_only_splits():
    short = {**SMALL, "days": 14}
    assert digest(CohortWorld(**short).uploads(100)) == digest(CohortWorld(**short).uploads(100))
    assert digest(CohortWorld(**{**short, "seed": 6}).uploads(100)) != digest(CohortWorld(**short).uploads(100))
    assert [e["mid"] for e in CohortWorld(**short).events()] == [
        e["mid"] for u in CohortWorld(**short).uploads(7) for e in u.envelope["events"]]


def test_uploads_come_in_upload_order_one_device_each_with_late_ones_from_offline_devices():
    uploads = generated()[0]
    assert [u.synced_ms for u in uploads] == sorted(u.synced_ms for u in uploads)
    late = 0
    for upload in uploads:
        events = upload.envelope["events"]
        assert 1 <= len(events) <= 100 and upload.envelope["ets"] == upload.synced_ms
        assert {e["context"]["did"] for e in events} == {upload.headers["X-Device-Id"]}
        assert {e["context"]["channel"] for e in events} == {upload.headers["X-Channel-Id"]}
        assert max(e["ets"] for e in events) < upload.synced_ms
        late += upload.late
        assert upload.late == (day_of(events[0]) < datetime.fromtimestamp(upload.synced_ms / 1000, UTC).date())
    assert 0 < late < len(uploads)
    truth = generated()[1]
    assert truth.events == len(all_events()) and truth.late_uploads > 0 and truth.max_sync_delay_ms > 86_400_000


def test_sessions_lie_within_one_day_inside_the_range():
    days_of_session = defaultdict(set)
    for event in all_events():
        days_of_session[event["context"]["sid"]].add(day_of(event))
    assert all(len(days) == 1 for days in days_of_session.values())
    seen = {d for days in days_of_session.values() for d in days}
    assert min(seen) >= world().start and max(seen) <= world().end


def test_the_stream_is_lazy_a_day_at_a_time(monkeypatch):
    days = []
    simulate = _Run._simulate_day
    monkeypatch.setattr(_Run, "_simulate_day", lambda self, i, day: days.append(i) or simulate(self, i, day))
    first = next(CohortWorld(**SMALL).uploads(100))
    assert days == [0] and day_of(first.envelope["events"][0]) == world().start


# --- the world ----------------------------------------------------------------------------------

def test_the_world_has_shared_devices_switchers_and_silent_learners():
    w = CohortWorld(seed=42)  # the demo's shape: two states
    assert len(w.tenants) == 2 and len({c.tenant for c in w.classes.values()}) == 2
    per_class = Counter(b.class_id for b in w.batches.values())
    assert set(per_class) == set(w.classes) and set(per_class.values()) <= {1, 2, 3}
    assert any(len(d.users) == 2 for d in w.devices)
    assert any(len(learner.devices) == 2 for learner in w.learners)
    assert {learner.persona for learner in w.learners} == {
        "steady", "weekend", "declining", "struggling", "stalled", "never"}
    assert w.end == date(2026, 6, 30) and (w.end - w.start).days == 89
    assert all(any(c.kind == "practice" and c.items for c in course.contents) for course in w.courses.values())


def test_switchers_and_sharers_appear_on_each_of_their_devices():
    devices_of = defaultdict(set)
    users_of = defaultdict(set)
    for event in all_events():
        devices_of[event["actor"]["id"]].add(event["context"]["did"])
        users_of[event["context"]["did"]].add(event["actor"]["id"])
    assert any(len(d) == 2 for d in devices_of.values())
    assert any(len(u) == 2 for u in users_of.values())
    never = {learner.id for learner in world().learners if learner.persona == "never"}
    assert never and not never & set(devices_of)
    truth = generated()[1]
    assert set().union(*(truth.never_active(t) for t in truth.tenants)) == never


# --- ground truth against the events ------------------------------------------------------------

def recomputed():
    """Per (tenant, day, scope key): learners, devices, sessions, plays, qr scans, play seconds, content plays."""
    cells: dict = defaultdict(lambda: {"learners": set(), "devices": set(), "sessions": set(), "plays": 0,
                                       "qr": 0, "tenths": 0, "content": Counter()})
    for event in all_events():
        tenant, day = event["context"]["channel"], day_of(event)
        for key in scope_keys(event):
            cell = cells[(tenant, day, key)]
            cell["learners"].add(event["actor"]["id"])
            cell["devices"].add(event["context"]["did"])
            cell["sessions"].add(event["context"]["sid"])
            if is_player(event, "START"):
                cell["plays"] += 1
                cell["content"][event["object"]["id"]] += 1
            if is_player(event, "END"):
                cell["tenths"] += round(event["edata"]["duration"] * 10)
            if event["eid"] == "SEARCH" and event["edata"]["filters"].get("dialcodes"):
                cell["qr"] += 1
    return cells


def test_activity_figures_match_the_events_in_every_scope_and_day():
    truth = generated()[1]
    cells = recomputed()
    assert {k for k in cells if k[2].startswith("batch:")} and {k for k in cells if k[2].startswith("rollup.l3:")}
    for (tenant, day, key), cell in cells.items():
        scope = key or None
        assert truth.active_learners(tenant, day, scope) == len(cell["learners"]), (tenant, day, key)
        assert truth.active_devices(tenant, day, scope) == len(cell["devices"])
        assert truth.sessions(tenant, day, scope) == len(cell["sessions"])
        assert truth.content_plays(tenant, day, scope) == cell["plays"]
        assert truth.plays_by_content(tenant, day, scope) == cell["content"]
        assert truth.qr_scans(tenant, day, scope) == cell["qr"]
        assert truth.time_spent(tenant, day, scope) == cell["tenths"] / 10
    tenant = truth.tenants[0]
    assert sum(truth.qr_scans(tenant, d) for d in truth.days()) > 0
    assert sum(cell["plays"] for (t, _, k), cell in cells.items() if k == "") == sum(
        truth.content_plays(t, d) for t in truth.tenants for d in truth.days())


def test_distinct_counts_over_weeks_and_several_scope_values_are_unions():
    truth = generated()[1]
    tenant = truth.tenants[0]
    monday = truth.start + timedelta(days=(7 - truth.start.weekday()) % 7)
    week = [e for e in all_events() if e["context"]["channel"] == tenant and monday <= day_of(e) <= monday
            + timedelta(days=6)]
    assert truth.active_learners(tenant, monday, until=monday + timedelta(days=6)) == len(
        {e["actor"]["id"] for e in week}) > 0
    batches = [b.id for b in world().batches_of(tenant)][:2]
    in_batches = {e["actor"]["id"] for e in week if cdata(e, "Batch") in batches}
    assert truth.active_learners(tenant, monday, f"batch:{','.join(batches)}", monday + timedelta(days=6)) == len(
        in_batches)
    assert truth.active_learners(tenant, monday, Scope("batch", tuple(batches)), monday + timedelta(days=6)) == len(
        in_batches)


@cache
def events_in_duckdb() -> duckdb.DuckDBPyConnection:
    events = all_events()
    rows = pa.table({"channel": [e["context"]["channel"] for e in events], "day": [day_of(e) for e in events],
                     "actor": [e["actor"]["id"] for e in events], "event": [orjson.dumps(e).decode() for e in events]})
    db = duckdb.connect()
    db.register("rows", rows)
    db.execute("CREATE TABLE telemetry AS SELECT channel, day, actor, CAST(event AS JSON) AS event FROM rows")
    return db


@pytest.mark.parametrize("kind", ["batch", "course", "rollup.l3", "rollup.l4"])
def test_scoped_daily_learners_match_the_platforms_scope_filter(kind):
    """The ground truth's idea of a scope is the scope filter's: the same SQL the API runs picks the events."""
    truth = generated()[1]
    tenant = truth.tenants[1]
    w = world()
    value = {"batch": lambda: w.batches_of(tenant)[0].id, "course": lambda: w.batches_of(tenant)[0].course,
             "rollup.l3": lambda: w.tenant_of(tenant).schools[0][0],
             "rollup.l4": lambda: next(c.id for c in w.classes.values() if c.tenant == tenant)}[kind]()
    db = events_in_duckdb()
    condition = scope_condition_sql(Scope(kind, (value,)), "duckdb")
    rows = db.execute(f"SELECT day, count(DISTINCT actor) FROM telemetry WHERE channel = ? AND {condition} "
                      "GROUP BY day", [tenant]).fetchall()
    assert rows
    for day, learners in rows:
        assert truth.active_learners(tenant, day, f"{kind}:{value}") == learners
    assert sum(truth.active_learners(tenant, d, f"{kind}:{value}") for d in truth.days()) == sum(n for _, n in rows)


def test_item_statistics_match_the_assess_events():
    truth = generated()[1]
    tenant = truth.tenants[0]
    batch = world().batches_of(tenant)[0].id
    for scope in (None, f"batch:{batch}"):
        attempts = defaultdict(list)
        for event in sorted(all_events(), key=lambda e: e["ets"]):
            if event["eid"] == "ASSESS" and event["context"]["channel"] == tenant and (
                    scope is None or cdata(event, "Batch") == batch):
                attempts[event["edata"]["item"]["id"]].append(event)
        stats = truth.item_stats(tenant, scope)
        assert set(stats) == set(attempts) and stats
        for item, events in attempts.items():
            first = {}
            for e in events:
                first.setdefault(e["actor"]["id"], e)
            got = stats[item]
            assert (got.attempts, got.learners) == (len(events), len(first))
            assert got.first_attempt_correct == sum(e["edata"]["pass"] == "Yes" for e in first.values())
            assert got.avg_score == pytest.approx(sum(e["edata"]["score"] for e in events) / len(events))
            assert got.avg_seconds == pytest.approx(sum(e["edata"]["duration"] for e in events) / len(events))
            assert all((e["edata"]["pass"] == "Yes") == (e["edata"]["score"] == e["edata"]["item"]["maxscore"])
                       for e in events)


def completions() -> dict[tuple[str, str], dict[str, date]]:
    """(learner, course) -> content -> first day completed, by the documented rule."""
    done: dict = defaultdict(dict)
    for event in sorted(all_events(), key=lambda e: e["ets"]):
        if is_player(event, "END") and cdata(event, "Batch") and {"progress": 100} in event["edata"]["summary"]:
            done[(event["actor"]["id"], event["object"]["rollup"]["l1"])].setdefault(event["object"]["id"],
                                                                                    day_of(event))
    return done


def test_course_progress_matches_completed_content_in_the_batch():
    truth = generated()[1]
    done = completions()
    middle = truth.start + timedelta(days=30)
    checked = 0
    for course_id, course in world().courses.items():
        for learner, progress in truth.progress_by_learner(course_id).items():
            finished = done.get((learner, course_id), {})
            assert progress == pytest.approx(100 * len(finished) / len(course.contents))
            assert truth.course_progress(learner, course_id, middle) == pytest.approx(
                100 * sum(d <= middle for d in finished.values()) / len(course.contents))
            checked += progress > 0
    assert checked > 10


def test_at_risk_list_follows_the_rules_from_the_events():
    truth = generated()[1]
    done = completions()
    for tenant in truth.tenants:
        as_of = truth.end
        events = [e for e in all_events() if e["context"]["channel"] == tenant]
        last = {}
        recent = defaultdict(list)
        for e in events:
            learner = e["actor"]["id"]
            last[learner] = max(last.get(learner, date.min), day_of(e))
            if e["eid"] == "ASSESS" and as_of - timedelta(days=RECENT_DAYS) < day_of(e):
                recent[learner].append((e["edata"]["score"], e["edata"]["item"]["maxscore"]))
        expected = {}
        for learner, seen in last.items():
            reasons = []
            inactive = (as_of - seen).days >= INACTIVE_DAYS
            if inactive:
                reasons.append("inactive")
            scores = recent[learner]
            ratio = sum(s for s, _ in scores) / sum(m for _, m in scores) if scores else 1
            if len(scores) >= MIN_RECENT_ASSESSMENTS and ratio < LOW_SCORE:
                reasons.append("low_scores")
            stalled = [course for (who, course), finished in done.items() if who == learner and not inactive
                       and len(finished) < len(world().courses[course].contents)
                       and (as_of - max(finished.values())).days >= STALLED_DAYS]
            if stalled:
                reasons.append("stalled")
            if reasons:
                expected[learner] = tuple(reasons)
        got = {a.learner: a.reasons for a in truth.at_risk(tenant)}
        assert got == expected and got
        assert all(a.last_active == last[a.learner] for a in truth.at_risk(tenant))


def test_personas_are_found_by_the_rules():
    """What each persona was meant to be is what the at-risk rules find (the default 90-day world)."""
    w = CohortWorld(seed=42, districts=1, schools=2, learners=12)
    truth = w.ground_truth()
    flagged = {a.learner: a for t in truth.tenants for a in truth.at_risk(t)}
    by_persona = defaultdict(list)
    for learner in w.learners:
        if truth.last_active(learner.id) is not None:
            by_persona[learner.persona].append(flagged.get(learner.id))
    assert all(a is not None and "inactive" in a.reasons for a in by_persona["declining"])
    judged = [learner for learner in w.learners if learner.persona == "struggling"
              and len([1 for t in truth.tenants for a in truth.at_risk(t, low_score=2) if a.learner == learner.id
                       and a.recent_score is not None])]  # with enough recent assessments to be judged at all
    struggling = [flagged.get(learner.id) for learner in judged]
    assert judged and sum(a is not None and "low_scores" in a.reasons for a in struggling) >= 0.8 * len(judged)
    stalled = [a for a in by_persona["stalled"] if a is not None and "stalled" in a.reasons]
    assert len(stalled) >= 0.7 * len(by_persona["stalled"])
    assert sum(a is not None for a in by_persona["steady"]) <= 0.3 * len(by_persona["steady"])


def test_at_risk_is_scoped_to_the_learners_seen_in_the_scope():
    truth = generated()[1]
    tenant = truth.tenants[0]
    school = world().tenant_of(tenant).schools[0][0]
    in_school = {learner.id for learner in world().learners if world().classes[learner.class_id].school == school}
    scoped = truth.at_risk(tenant, scope=f"rollup.l3:{school}")
    assert scoped and {a.learner for a in scoped} <= in_school
    assert {a.learner for a in scoped} == {a.learner for a in truth.at_risk(tenant) if a.learner in in_school}


def test_rejects_empty_worlds_and_bad_batch_size():
    with pytest.raises(ValueError):
        CohortWorld(learners=0)
    with pytest.raises(ValueError):
        next(CohortWorld(days=1).uploads(0))


def test_tiny_worlds_and_a_chosen_start_work():
    w = CohortWorld(seed=1, states=2, districts=1, schools=1, classes=1, learners=5, days=3, start=date(2026, 1, 5))
    truth = w.ground_truth()
    assert (w.start, w.end) == (date(2026, 1, 5), date(2026, 1, 7)) and truth.days()[-1] == w.end
    assert truth.events == sum(len(u.envelope["events"]) for u in w.uploads(50))


def test_output_does_not_depend_on_the_process_string_hash_seed():
    """Worlds are compared across sessions: nothing may follow the iteration order of a set of strings."""
    code = ("import hashlib, orjson; from cohort.synthetic_cohorts import CohortWorld; h = hashlib.sha256()\n"
            "for u in CohortWorld(seed=3, districts=1, schools=1, days=10).uploads(100): "
            "h.update(orjson.dumps([u.envelope, u.headers]))\nprint(h.hexdigest())")
    digests = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")}
    assert len(digests) == 1 and len(digests.pop()) == 65
