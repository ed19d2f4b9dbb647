"""The incremental summariser as a pipeline stage: when summaries come out, what `flush(now)` ends, how
late events are put in order or counted, and that its counts reconcile."""

from __future__ import annotations

from typing import Any

from cohort.analytics.workflow_sessions import WorkflowSummariser, summarise_events

T0 = 1_700_000_000_000
S = 1000
MIN = 60 * S


def ev(eid: str, at_ms: int, etype: str | None = None, mode: str | None = None, did: str = "d1") -> dict[str, Any]:
    edata = {k: v for k, v in {"type": etype, "mode": mode}.items() if v is not None}
    return {"eid": eid, "ets": T0 + at_ms, "context": {"did": did, "channel": "c", "pdata": {"id": "a"}},
            "edata": edata}


def kinds(records: list[dict[str, Any]]) -> list[str]:
    return [r["dimensions"]["type"] for r in records]


def test_a_summary_comes_out_with_the_event_that_closes_it():
    summariser = WorkflowSummariser()
    assert summariser.add(ev("START", 0, "session")) == []
    assert summariser.add(ev("START", 1 * S, "player", "play")) == []
    assert summariser.add(ev("INTERACT", 3 * S, "touch")) == []
    assert kinds(summariser.add(ev("END", 4 * S, "player", "play"))) == ["player"]
    assert kinds(summariser.add(ev("END", 6 * S, "session"))) == ["session"]
    assert kinds(summariser.flush()) == ["app"]
    assert summariser.open_keys == 0


def test_flush_now_ends_only_devices_silent_for_longer_than_the_session_break():
    summariser = WorkflowSummariser()
    summariser.extend([ev("START", 0, "player", "play"), ev("INTERACT", 5 * S, "touch"),
                       ev("START", 20 * MIN, "player", "play", did="d2"),
                       ev("INTERACT", 21 * MIN, "touch", did="d2")])
    assert summariser.flush(T0 + 5 * S + 30 * MIN) == []  # d1 silent exactly 30 min: not yet
    ended = summariser.flush(T0 + 5 * S + 30 * MIN + 1)
    assert {r["dimensions"]["did"] for r in ended} == {"d1"} and kinds(ended) == ["player", "app"]
    assert summariser.open_keys == 1
    assert {r["dimensions"]["did"] for r in summariser.flush()} == {"d2"}


def test_events_within_the_lateness_are_put_in_order_and_later_ones_are_counted():
    in_order = [ev("START", 0, "player", "play"), ev("INTERACT", 2 * S, "touch"), ev("INTERACT", 4 * S, "touch"),
                ev("END", 9 * S, "player", "play")]
    arrival = [in_order[0], in_order[2], in_order[1], in_order[3]]
    summariser = WorkflowSummariser(lateness_ms=5 * S)
    records = summariser.extend(arrival) + summariser.flush()
    assert summariser.stats.late_events == 0
    assert records == summarise_events(in_order)

    strict = WorkflowSummariser(lateness_ms=0)
    records = strict.extend(arrival) + strict.flush()
    assert strict.stats.late_events == 1  # the INTERACT at 2 s came after the one at 4 s
    player = next(r for r in records if r["dimensions"]["type"] == "player")["edata"]["eks"]
    assert (player["time_spent"], player["interact_events_count"]) == (9.0, 2)  # measured at 4 s: no time lost


def test_max_pending_bounds_what_is_held():
    summariser = WorkflowSummariser(lateness_ms=None, max_pending=3)
    summariser.extend([ev("INTERACT", i * S, "touch") for i in range(10)])
    assert summariser.pending_events == 3
    records = summariser.flush()
    assert [r["edata"]["eks"]["time_spent"] for r in records] == [9.0]


def test_counts_reconcile():
    summariser = WorkflowSummariser()
    summariser.extend([ev("START", 0, "player", "play"), {"eid": "LOG", "context": {}}, "junk", {"ets": 1},
                       ev("END", 3 * S, "player", "play")])
    summariser.flush()
    stats = summariser.stats
    assert (stats.events_in, stats.events_used) == (5, 2)
    assert sum(stats.skipped.values()) == 3
    assert dict(stats.summaries) == {"player": 1, "app": 1}
