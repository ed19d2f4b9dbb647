"""Sunbird telemetry with known learning metrics: two tenants, schools (context.rollup.l3), two days.

The events are shaped like the real sample's (tests/fixtures/sunbird): content-player START/END pairs,
INTERACTs, DIAL-code SEARCHes, a System actor's event. `EXPECTED` holds what each metric must be, worked
out by hand from the plan below, not computed by the code under test.

Tenant A (TENANT_A), per day (D1 = Monday 2026-03-02, D2 = Tuesday 2026-03-03):
  D1 school-1: learners a1..a12, each one play (START + END of 60 s + an INTERACT), own device and session
  D1 school-2: learners b1..b3, each one play of 30 s                       (a small cell: 3 learners)
  D1 school-3: learners c1..c20, each one play of 10 s
  D1 no rollup: one System actor's INTERACT on device sys-1, session sys-s (no learner behind it)
  D2 school-1: learners a1..a12 again, each one play of 60 s, new sessions, same devices
  D2 school-2: learner b1 scans a QR code (SEARCH with dialcodes) in a new session; plus a SEARCH with an
               empty dialcodes list and one without any (not scans), and an END with duration -5 (a clock
               fault, not counted), all by b1 in that session
Tenant B (TENANT_B): D1 school-1 (same name as A's): learners w1..w11, each one play of 45 s.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import orjson

from cohort.core.log_record import LogRecord
from cohort.core.process_batch import process_batch
from cohort.state.mid_window import MidWindow

TENANT_A = "tenant-a"
TENANT_B = "tenant-b"
D1 = datetime(2026, 3, 2, tzinfo=UTC)
D2 = datetime(2026, 3, 3, tzinfo=UTC)
D3 = datetime(2026, 3, 4, tzinfo=UTC)
D1_S = int(D1.timestamp())
D2_S = int(D2.timestamp())


def _ms(day: datetime, minute: int) -> int:
    return int(day.timestamp() * 1000) + minute * 60_000


def event(eid: str, tenant: str, day: datetime, minute: int, actor: str, did: str, sid: str,
          school: str | None, edata: dict, env: str = "contentplayer", actor_type: str = "User",
          object_id: str = "do_content_1", object_type: str = "Content") -> dict:
    context: dict = {"channel": tenant, "pdata": {"id": "prod.diksha.app", "pid": "sunbird.app.contentplayer",
                                                  "ver": "2.2.123"},
                     "env": env, "did": did, "sid": sid, "cdata": []}
    if school is not None:
        context["rollup"] = {"l1": "state-1", "l2": "district-1", "l3": school}
    return {"eid": eid, "ets": _ms(day, minute), "ver": "3.0", "mid": f"{eid}:{uuid.uuid4().hex}",
            "actor": {"id": actor, "type": actor_type}, "context": context,
            "object": {"id": object_id, "type": object_type, "ver": "2", "rollup": {"l1": "do_course_1"}},
            "edata": edata}


def play(tenant: str, day: datetime, minute: int, actor: str, did: str, sid: str, school: str | None,
         seconds: float) -> list[dict]:
    return [event("START", tenant, day, minute, actor, did, sid, school, {"type": "content", "mode": "play",
                                                                          "pageid": ""}),
            event("INTERACT", tenant, day, minute, actor, did, sid, school, {"type": "TOUCH", "id": "next",
                                                                             "pageid": "p1"}),
            event("END", tenant, day, minute + 1, actor, did, sid, school, {"type": "content", "mode": "play",
                                                                            "duration": seconds, "pageid": ""})]


def search(tenant: str, day: datetime, minute: int, actor: str, did: str, sid: str, school: str | None,
           filters: dict) -> dict:
    return event("SEARCH", tenant, day, minute, actor, did, sid, school,
                 {"type": "content", "query": "", "size": 1, "filters": filters, "sort": {}, "topn": []}, env="home",
                 object_id="DBQZL4", object_type="DialCode")


def all_events() -> list[dict]:
    events: list[dict] = []
    for i in range(1, 13):
        events += play(TENANT_A, D1, i, f"a{i}", f"dev-a{i}", f"s-a{i}-1", "school-1", 60)
        events += play(TENANT_A, D2, i, f"a{i}", f"dev-a{i}", f"s-a{i}-2", "school-1", 60)
    for i in range(1, 4):
        events += play(TENANT_A, D1, 20 + i, f"b{i}", f"dev-b{i}", f"s-b{i}-1", "school-2", 30)
    for i in range(1, 21):
        events += play(TENANT_A, D1, 30 + i, f"c{i}", f"dev-c{i}", f"s-c{i}-1", "school-3", 10)
    events.append(event("INTERACT", TENANT_A, D1, 100, "org.sunbird.service", "sys-1", "sys-s", None,
                        {"type": "OTHER", "id": "sync"}, env="sdk", actor_type="System"))
    b1 = dict(tenant=TENANT_A, day=D2, actor="b1", did="dev-b1", sid="s-b1-2", school="school-2")
    events.append(search(minute=200, filters={"dialcodes": "DBQZL4", "objectType": ["Content"]}, **b1))
    events.append(search(minute=201, filters={"dialcodes": []}, **b1))
    events.append(search(minute=202, filters={"objectType": ["Content"]}, **b1))
    events.append(event("END", edata={"type": "content", "duration": -5}, minute=203, **b1))
    for i in range(1, 12):
        events += play(TENANT_B, D1, i, f"w{i}", f"dev-w{i}", f"s-w{i}-1", "school-1", 45)
    return events


# metric -> {(bucket epoch s, group): (value, learners)} for tenant A, granularity day, by rollup.l3
EXPECTED_A_BY_SCHOOL: dict[str, dict[tuple[int, str | None], tuple[float, int]]] = {
    "active_learners": {(D1_S, "school-1"): (12, 12), (D1_S, "school-2"): (3, 3), (D1_S, "school-3"): (20, 20),
                        (D1_S, None): (0, 0), (D2_S, "school-1"): (12, 12), (D2_S, "school-2"): (1, 1)},
    "active_devices": {(D1_S, "school-1"): (12, 12), (D1_S, "school-2"): (3, 3), (D1_S, "school-3"): (20, 20),
                       (D1_S, None): (1, 0), (D2_S, "school-1"): (12, 12), (D2_S, "school-2"): (1, 1)},
    "sessions": {(D1_S, "school-1"): (12, 12), (D1_S, "school-2"): (3, 3), (D1_S, "school-3"): (20, 20),
                 (D1_S, None): (1, 0), (D2_S, "school-1"): (12, 12), (D2_S, "school-2"): (1, 1)},
    "time_spent": {(D1_S, "school-1"): (720, 12), (D1_S, "school-2"): (90, 3), (D1_S, "school-3"): (200, 20),
                   (D2_S, "school-1"): (720, 12)},
    "content_plays": {(D1_S, "school-1"): (12, 12), (D1_S, "school-2"): (3, 3), (D1_S, "school-3"): (20, 20),
                      (D2_S, "school-1"): (12, 12)},
    "qr_scans": {(D2_S, "school-2"): (1, 1)},
}

# metric -> {day bucket: value} for tenant A, by none
EXPECTED_A_DAILY: dict[str, dict[int, float]] = {
    "active_learners": {D1_S: 35, D2_S: 13},
    "active_devices": {D1_S: 36, D2_S: 13},
    "sessions": {D1_S: 36, D2_S: 13},
    "time_spent": {D1_S: 1010, D2_S: 720},
    "content_plays": {D1_S: 35, D2_S: 12},
    "qr_scans": {D2_S: 1},
}

# tenant B, by none, day
EXPECTED_B_DAILY: dict[str, dict[int, float]] = {
    "active_learners": {D1_S: 11}, "active_devices": {D1_S: 11}, "sessions": {D1_S: 11},
    "time_spent": {D1_S: 495}, "content_plays": {D1_S: 11}, "qr_scans": {},
}


def write_events(store, events: list[dict], offset: int = 1) -> int:
    """`events` through the pipeline's core into `store` (as the runner writes a batch); the time acknowledged."""
    now_ms = int(time.time() * 1000)
    body = orjson.dumps({"id": "api.sunbird.telemetry", "events": events})
    outcome = process_batch([LogRecord(payload=body, event_count=len(events), offset=offset, received_at_ms=now_ms)],
                            MidWindow(3600), now_ms=now_ms, config_version="test")
    store.write_batch(outcome, failed_at_ms=now_ms, token=f"t-{offset}")
    stored = store.query("SELECT count(*) FROM telemetry", None, 1, 10.0).rows[0][0]
    assert stored == len(events), "every event is stored (none quarantined)"
    return now_ms
