"""Workflow summaries of small synthetic sessions, every expected figure worked out by hand from the rules
(session break after more than 30 min, gaps over 600 s count 0, each gap rounded half-up to 0.01 s)."""

from __future__ import annotations

import hashlib
import random
from typing import Any

from cohort.analytics.workflow_sessions import WorkflowSummariser, summarise_events

T0 = 1_700_000_000_000  # ms


def ev(eid: str, at_ms: int, etype: str | None = None, mode: str | None = None, *, did: str = "dev-1",
       channel: str = "chan-1", app: str = "app-1", uid: str = "u1", **extra: Any) -> dict[str, Any]:
    edata: dict[str, Any] = {}
    if etype is not None:
        edata["type"] = etype
    if mode is not None:
        edata["mode"] = mode
    edata.update(extra.pop("edata", {}))
    event = {"eid": eid, "ets": T0 + at_ms, "ver": "3.0", "actor": {"id": uid, "type": "User"},
             "context": {"did": did, "channel": channel, "pdata": {"id": app, "ver": "2.0", "pid": "p"},
                         "sid": "s1", "env": extra.pop("env", "home")},
             "edata": edata, "@timestamp": "2023-11-14T22:13:20.000Z"}
    event.update(extra)
    return event


def eks(record: dict[str, Any]) -> dict[str, Any]:
    measures: dict[str, Any] = record["edata"]["eks"]
    return measures


def by_type(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        out.setdefault(record["dimensions"]["type"], []).append(record)
    return out


def events_summary(record: dict[str, Any]) -> dict[str, int]:
    return {entry["id"]: entry["count"] for entry in eks(record)["events_summary"]}


S = 1000  # ms in a second
MIN = 60 * S


# -- session break -------------------------------------------------------------------------------------
def _break_case(gap_ms: int) -> list[dict[str, Any]]:
    return summarise_events([
        ev("START", 0, "session"),
        ev("INTERACT", 10 * S, "touch"),
        ev("INTERACT", 10 * S + gap_ms, "touch"),
        ev("INTERACT", 15 * S + gap_ms, "touch"),
    ])


def test_a_gap_of_exactly_thirty_minutes_does_not_break_the_session():
    records = by_type(_break_case(30 * MIN))
    assert [len(records["session"]), len(records["app"])] == [1, 1]
    session = eks(records["session"][0])
    # 10 s, then a 1800 s gap (idle: counts 0), then 5 s
    assert session["time_spent"] == 15.0
    assert session["interact_events_count"] == 3
    assert session["end_time"] == T0 + 15 * S + 30 * MIN


def test_a_gap_just_over_thirty_minutes_breaks_the_session_and_the_same_spans_go_on():
    records = by_type(_break_case(30 * MIN + 1))
    assert [len(records["session"]), len(records["app"])] == [2, 2]
    before, after = sorted(records["session"], key=lambda r: eks(r)["start_time"])
    assert (eks(before)["time_spent"], eks(before)["end_time"]) == (10.0, T0 + 10 * S)
    assert events_summary(before) == {"START": 1, "INTERACT": 1}
    # after the break the session keeps its type and first event but measures anew
    assert (eks(after)["start_time"], eks(after)["time_spent"]) == (T0 + 10 * S + 30 * MIN + 1, 5.0)
    assert events_summary(after) == {"INTERACT": 2}
    assert after["object"] == before["object"] if "object" in before else "object" not in after


def test_an_app_typed_event_after_a_long_gap_does_not_break_the_session():
    records = summarise_events([
        ev("START", 0, "session"), ev("INTERACT", 10 * S, "touch"),
        ev("INTERACT", 10 * S + 31 * MIN, "app"), ev("INTERACT", 15 * S + 31 * MIN, "touch"),
    ])
    assert [r["dimensions"]["type"] for r in records] == ["session", "app"]
    assert eks(records[0])["time_spent"] == 15.0


# -- idle time ---------------------------------------------------------------------------------------
def test_gaps_up_to_600_s_count_and_longer_gaps_count_nothing():
    records = by_type(summarise_events([
        ev("START", 0, "player", "play"),
        ev("INTERACT", 600 * S, "touch"),  # 600.000 s: counted
        ev("INTERACT", 600 * S + 600 * S + 1, "touch"),  # 600.001 s: idle, 0
        ev("END", 600 * S + 600 * S + 1 + 250, "player", "play"),  # 0.25 s
    ]))
    player = eks(records["player"][0])
    assert player["time_spent"] == 600.25
    assert player["time_diff"] == 1200.25  # wall time includes the idle gap
    assert player["interact_events_count"] == 2


def test_each_gap_is_rounded_half_up_to_a_hundredth():
    records = by_type(summarise_events([
        ev("START", 0, "player", "play"), ev("INTERACT", 125, "touch"), ev("INTERACT", 250, "touch"),
    ]))
    # 0.125 → 0.13 twice (round-half-even would give 0.12)
    assert eks(records["player"][0])["time_spent"] == 0.26


# -- nesting -----------------------------------------------------------------------------------------
def test_player_inside_session_inside_app():
    records = summarise_events([
        ev("START", 0, "app"),
        ev("START", 1 * S, "session"),
        ev("START", 2 * S, "player", "play", object={"id": "do_1", "ver": "2", "type": "Content",
                                                    "rollup": {"l1": "do_course"}}),
        ev("INTERACT", 5 * S, "touch"),
        ev("END", 8 * S, "player", "play"),
        ev("END", 10 * S, "session"),
        ev("END", 12 * S, "app"),
    ])
    assert [r["dimensions"]["type"] for r in records] == ["player", "session", "app"]
    player, session, app = (eks(r) for r in records)
    assert (player["time_spent"], player["start_time"], player["end_time"]) == (6.0, T0 + 2 * S, T0 + 8 * S)
    assert (session["time_spent"], session["start_time"], session["end_time"]) == (9.0, T0 + S, T0 + 10 * S)
    assert (app["time_spent"], app["start_time"], app["end_time"]) == (12.0, T0, T0 + 12 * S)
    assert [p["interact_events_count"] for p in (player, session, app)] == [1, 1, 1]
    assert events_summary(records[0]) == {"START": 1, "INTERACT": 1, "END": 1}
    assert events_summary(records[2]) == {"START": 3, "INTERACT": 1, "END": 3}
    assert records[0]["object"] == {"id": "do_1", "ver": "2", "type": "Content", "rollup": {"l1": "do_course"}}
    assert records[0]["dimensions"]["mode"] == "play"
    assert records[1]["dimensions"]["mode"] == ""


def test_a_start_of_another_type_with_nothing_open_opens_an_app_around_it():
    records = summarise_events([ev("START", 0, "editor", "content"), ev("INTERACT", 4 * S, "click"),
                                ev("END", 6 * S, "editor", "content")])
    assert [r["dimensions"]["type"] for r in records] == ["editor", "app"]
    editor, app = (eks(r) for r in records)
    assert (editor["time_spent"], app["time_spent"]) == (6.0, 6.0)
    assert events_summary(records[1]) == {"START": 2, "INTERACT": 1, "END": 1}  # production counts it twice


def test_a_second_start_of_the_same_kind_ends_the_first():
    records = summarise_events([
        ev("START", 0, "session"),
        ev("START", 1 * S, "player", "play"), ev("INTERACT", 3 * S, "touch"),
        ev("START", 5 * S, "player", "play"), ev("INTERACT", 9 * S, "touch"),
        ev("END", 10 * S, "player", "play"),
    ])
    players = by_type(records)["player"]
    assert [(eks(p)["start_time"], eks(p)["time_spent"]) for p in players] == [(T0 + S, 2.0), (T0 + 5 * S, 5.0)]


def test_end_without_start_closes_nothing_and_is_not_counted():
    records = summarise_events([ev("INTERACT", 0, "touch"), ev("END", 5 * S, "player", "play"),
                                ev("INTERACT", 10 * S, "touch")])
    assert [r["dimensions"]["type"] for r in records] == ["app"]
    assert eks(records[0])["time_spent"] == 10.0
    assert events_summary(records[0]) == {"INTERACT": 2}


def test_start_without_end_is_closed_at_the_end_of_input_and_at_a_break():
    at_end = summarise_events([ev("START", 0, "player", "play"), ev("INTERACT", 30 * S, "touch")])
    assert [(r["dimensions"]["type"], eks(r)["time_spent"]) for r in at_end] == [("player", 30.0), ("app", 30.0)]
    summariser = WorkflowSummariser()
    assert summariser.extend([ev("START", 0, "player", "play"), ev("INTERACT", 30 * S, "touch")]) == []
    at_break = summariser.extend([ev("INTERACT", 30 * S + 31 * MIN, "touch")])
    assert [(r["dimensions"]["type"], eks(r)["end_time"]) for r in at_break] == [
        ("player", T0 + 30 * S), ("app", T0 + 30 * S)]


def test_a_span_without_time_spent_is_not_emitted():
    assert summarise_events([ev("START", 0, "player", "play"), ev("END", 0, "player", "play")]) == []
    assert summarise_events([ev("INTERACT", 0, "touch")]) == []


# -- measures ----------------------------------------------------------------------------------------
def test_interactions_per_minute():
    under_a_minute = by_type(summarise_events([
        ev("START", 0, "session"), ev("INTERACT", 10 * S, "touch"), ev("INTERACT", 20 * S, "click"),
        ev("INTERACT", 30 * S, "OTHER"), ev("END", 40 * S, "session")]))
    assert eks(under_a_minute["session"][0])["interact_events_count"] == 2  # OTHER is not an interaction
    assert eks(under_a_minute["session"][0])["interact_events_per_min"] == 2.0  # < 60 s: the count
    minutes = by_type(summarise_events([
        ev("START", 0, "session"), ev("INTERACT", 30 * S, "touch"), ev("INTERACT", 60 * S, "touch"),
        ev("INTERACT", 90 * S, "touch"), ev("END", 120 * S, "session")]))
    assert eks(minutes["session"][0])["interact_events_per_min"] == 1.5  # 3 in 2 min
    seven = by_type(summarise_events([ev("START", 0, "session")] + [
        ev("INTERACT", (i + 1) * 30 * S, "touch") for i in range(7)] + [ev("END", 270 * S, "session")]))
    assert eks(seven["session"][0])["interact_events_per_min"] == 1.56  # 7 / 4.5 min = 1.555… half-up


def test_page_summary_credits_the_time_until_the_next_event_to_the_page_on_screen():
    records = by_type(summarise_events([
        ev("START", 0, "session"),
        ev("IMPRESSION", 2 * S, "view", env="library", edata={"pageid": "library"}),
        ev("INTERACT", 5 * S, "touch"),
        ev("IMPRESSION", 9 * S, "view", env="library", edata={"pageid": "library"}),
        ev("IMPRESSION", 10 * S, "detail", env="content", edata={"pageid": "content-detail"}),
        ev("END", 14 * S, "session"),
    ]))
    session = eks(records["session"][0])
    pages = {p["id"]: p for p in session["page_summary"]}
    assert pages["library"] == {"id": "library", "type": "view", "env": "library", "time_spent": 8.0,
                                "visit_count": 2}
    assert pages["content-detail"]["time_spent"] == 4.0
    envs = {e["env"]: e for e in session["env_summary"]}
    assert envs["library"] == {"env": "library", "time_spent": 8.0, "count": 2}
    assert envs["content"] == {"env": "content", "time_spent": 4.0, "count": 1}


def test_assess_events_become_item_responses():
    records = by_type(summarise_events([
        ev("START", 0, "player", "play"),
        ev("ASSESS", 21 * S, edata={"item": {"id": "q1", "maxscore": 1, "mc": [], "mmc": [], "title": "Two?",
                                             "desc": ""},
                                    "resvalues": [{"3": {"text": "24"}}], "duration": 21, "score": 1,
                                    "pass": "Yes"}),
        ev("END", 30 * S, "player", "play"),
    ]))
    items = eks(records["player"][0])["item_responses"]
    assert items == [{"itemId": "q1", "timeSpent": 21, "res": ['3:{"text":"24"}'],
                      "resValues": [{"3": {"text": "24"}}], "mc": [], "mmc": [], "score": 1,
                      "time_stamp": T0 + 21 * S, "maxScore": 1, "pass": "Yes", "qtitle": "Two?", "qdesc": ""}]


# -- identity and order --------------------------------------------------------------------------------
def test_mid_is_md5_of_the_summary_parts_and_stable():
    events = [ev("START", 0, "player", "play", object={"id": "do_9"}), ev("END", 4 * S, "player", "play")]
    first, second = summarise_events(events), summarise_events(events)
    assert first == second
    player = first[0]
    key = f"ME_WORKFLOW_SUMMARY|u1playerplay|{T0}|{T0 + 4 * S}|SESSION|do_9|app-1|chan-1"
    assert player["mid"] == hashlib.md5(key.encode()).hexdigest().upper()
    app_key = f"ME_WORKFLOW_SUMMARY|u1app|{T0}|{T0 + 4 * S}|SESSION|do_9|app-1|chan-1"
    assert first[1]["mid"] == hashlib.md5(app_key.encode()).hexdigest().upper()
    later = summarise_events([dict(e, ets=e["ets"] + 1) for e in events])
    assert later[0]["mid"] != player["mid"]


def test_record_shape():
    record = summarise_events([ev("START", 0, "player", "play", object={"id": "do_9"}, tags=["t"]),
                               ev("END", 4 * S, "player", "play")])[0]
    assert record["eid"] == "ME_WORKFLOW_SUMMARY"
    assert record["context"]["granularity"] == "SESSION"
    assert record["context"]["date_range"] == {"from": T0, "to": T0 + 4 * S}
    assert record["context"]["pdata"]["id"] == "AnalyticsDataPipeline"
    assert record["dimensions"] == {"did": "dev-1", "pdata": {"id": "app-1", "ver": "2.0", "pid": "p"},
                                    "sid": "s1", "channel": "chan-1", "type": "player", "mode": "play"}
    assert record["uid"] == "u1" and record["tags"] == ["t"] and record["syncts"] == 1_700_000_000_000
    assert set(eks(record)) == {"start_time", "end_time", "time_diff", "time_spent", "telemetry_version",
                                "item_responses", "interact_events_count", "interact_events_per_min",
                                "env_summary", "events_summary", "page_summary"}


def test_events_out_of_order_give_the_same_summaries():
    events = [
        ev("START", 0, "session"), ev("START", 1 * S, "player", "play"), ev("INTERACT", 3 * S, "touch"),
        ev("END", 7 * S, "player", "play"), ev("INTERACT", 9 * S, "touch"), ev("END", 11 * S, "session"),
        ev("START", 0, "editor", "content", did="dev-2"), ev("INTERACT", 2 * S, "click", did="dev-2"),
    ]
    expected = summarise_events(events)
    assert len(expected) == 5
    rng = random.Random(7)
    for _ in range(20):
        shuffled = events[:]
        rng.shuffle(shuffled)
        assert sorted(summarise_events(shuffled), key=lambda r: r["mid"]) == sorted(expected, key=lambda r: r["mid"])


def test_devices_channels_and_apps_are_summarised_apart():
    records = summarise_events([
        ev("START", 0, "player", "play"), ev("START", 0, "player", "play", did="dev-2"),
        ev("INTERACT", 3 * S, "touch", channel="chan-2"), ev("END", 5 * S, "player", "play"),
        ev("END", 8 * S, "player", "play", did="dev-2"), ev("INTERACT", 9 * S, "touch", channel="chan-2"),
    ])
    spans = sorted((r["dimensions"]["did"], r["dimensions"]["channel"], r["dimensions"]["type"],
                    eks(r)["time_spent"]) for r in records)
    assert spans == [("dev-1", "chan-1", "app", 5.0), ("dev-1", "chan-1", "player", 5.0),
                     ("dev-1", "chan-2", "app", 6.0), ("dev-2", "chan-1", "app", 8.0),
                     ("dev-2", "chan-1", "player", 8.0)]
