"""Properties of the workflow summariser over arbitrary event-ish input: it never raises, time never runs
backwards, and the incremental and batch forms agree however the input is chunked."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cohort.analytics.summary_record import record_bytes
from cohort.analytics.workflow_events import WorkflowEvent, normalise
from cohort.analytics.workflow_sessions import WorkflowSummariser, summarise_events

BASE = 1_600_000_000_000
junk = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=4),
                 st.lists(st.integers(), max_size=2))
ets = st.one_of(
    st.integers(0, 4 * 3600 * 1000).map(lambda ms: BASE + ms),
    st.sampled_from([0, 600_000, 600_001, 1_800_000, 1_800_001]).map(lambda ms: BASE + ms),
    st.floats(BASE, BASE + 1e7), st.integers(0, 10**7).map(str), junk)
etype = st.one_of(st.sampled_from(["app", "APP", "session", "player", "editor", "touch", "click", "view",
                                   "other"]), junk)
edata = st.one_of(junk, st.fixed_dictionaries({}, optional={
    "type": etype, "mode": st.one_of(st.sampled_from(["play", "", "preview"]), junk),
    "pageid": st.one_of(st.sampled_from(["p1", "p2"]), junk),
    "item": st.one_of(junk, st.fixed_dictionaries({}, optional={"id": junk, "maxscore": junk, "title": junk})),
    "resvalues": st.one_of(junk, st.lists(st.one_of(junk, st.dictionaries(st.text(max_size=2), junk,
                                                                          max_size=2)), max_size=2)),
    "duration": junk, "score": junk, "pass": junk}))
context = st.one_of(junk, st.fixed_dictionaries({}, optional={
    "did": st.one_of(st.sampled_from(["d1", "d2"]), junk), "channel": st.one_of(st.just("c1"), junk),
    "pdata": st.one_of(junk, st.fixed_dictionaries({"id": st.sampled_from(["a1", "a2"])})),
    "sid": junk, "env": junk, "rollup": st.one_of(junk, st.just({"l1": "x"})), "cdata": junk}))
event = st.fixed_dictionaries({}, optional={
    "eid": st.one_of(st.sampled_from(["START", "END", "INTERACT", "IMPRESSION", "ASSESS", "ERROR", "LOG"]), junk),
    "ets": ets, "context": context, "edata": edata, "actor": st.one_of(junk, st.just({"id": "u"})),
    "object": st.one_of(junk, st.just({"id": "do_1", "rollup": {"l1": "do_0"}})), "tags": junk,
    "@timestamp": st.one_of(junk, st.just("2020-09-13T12:26:40.000Z"))})
plausible = st.fixed_dictionaries({
    "eid": st.sampled_from(["START", "END", "INTERACT", "IMPRESSION", "ASSESS", "ERROR"]),
    "ets": st.one_of(st.integers(0, 5 * 60 * 1000), st.integers(0, 5 * 60 * 1000),
                     st.integers(0, 3 * 3600 * 1000)).map(lambda ms: BASE + ms),
    "context": st.fixed_dictionaries({"did": st.sampled_from(["d1", "d1", "d1", "d2"]), "channel": st.just("c1"),
                                      "pdata": st.fixed_dictionaries({"id": st.just("a1")})}),
    "edata": st.fixed_dictionaries({"type": st.sampled_from(["app", "session", "player", "editor", "touch",
                                                             "view"])},
                                   optional={"mode": st.sampled_from(["play", ""]),
                                             "pageid": st.sampled_from(["p1", "p2"])}),
}, optional={"object": st.just({"id": "do_1"}), "actor": st.just({"id": "u"})})
event_lists = st.one_of(st.lists(plausible, min_size=2, max_size=40),
                        st.lists(st.one_of(plausible, plausible, plausible, event, junk), max_size=40))
chunk_sizes = st.lists(st.integers(1, 8), min_size=1, max_size=10)
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def fingerprints(records: list[dict[str, Any]]) -> list[bytes]:
    return sorted(record_bytes(r, sort_keys=True) for r in records)


def chunked(items: list[object], sizes: list[int]) -> list[list[object]]:
    chunks, start, i = [], 0, 0
    while start < len(items):
        size = sizes[i % len(sizes)]
        chunks.append(items[start:start + size])
        start, i = start + size, i + 1
    return chunks


def time_order(events: list[object]) -> list[object]:
    """Unusable events first, then the rest stably by ets: each device's events in the batch's order."""
    read = [(normalise(e), e) for e in events]
    bad = [e for n, e in read if not isinstance(n, WorkflowEvent)]
    good = [(n.ets, i, e) for i, (n, e) in enumerate(read) if isinstance(n, WorkflowEvent)]
    return bad + [e for _, _, e in sorted(good, key=lambda t: (t[0], t[1]))]


def check_measures(records: list[dict[str, Any]]) -> None:
    for record in records:
        measures = record["edata"]["eks"]
        assert measures["time_spent"] > 0  # spans without time spent are not emitted
        assert measures["time_diff"] >= 0
        assert measures["interact_events_count"] >= 0
        assert measures["end_time"] >= measures["start_time"]
        assert all(page["time_spent"] >= 0 for page in measures["page_summary"])
        record_bytes(record)


@SETTINGS
@given(event_lists)
def test_batch_never_raises_and_time_spent_is_positive(events):
    check_measures(summarise_events(events))


@SETTINGS
@given(event_lists, chunk_sizes)
def test_incremental_in_any_chunking_equals_batch(events, sizes):
    summariser = WorkflowSummariser()
    records = []
    for chunk in chunked(time_order(events), sizes):
        records.extend(summariser.extend(chunk))
    records.extend(summariser.flush())
    assert summariser.stats.late_events == 0
    assert fingerprints(records) == fingerprints(summarise_events(events))
    assert summariser.open_keys == 0


@SETTINGS
@given(event_lists, chunk_sizes, st.one_of(st.none(), st.integers(0, 3_600_000)))
def test_arrival_order_with_any_lateness_never_raises_and_time_never_runs_backwards(events, sizes, lateness):
    summariser = WorkflowSummariser(lateness_ms=lateness, max_pending=5)
    records = []
    for chunk in chunked(events, sizes):
        records.extend(summariser.extend(chunk))
        records.extend(summariser.flush(BASE + 2 * 3600 * 1000))
        assert summariser.pending_events <= 5 * max(summariser.open_keys, 1)
    records.extend(summariser.flush())
    check_measures(records)
    stats = summariser.stats
    assert stats.events_in == stats.events_used + sum(stats.skipped.values()) == sum(1 for _ in events)
    assert sum(stats.summaries.values()) == len(records)


@SETTINGS
@given(event_lists, chunk_sizes)
def test_holding_every_event_until_the_end_equals_batch_whatever_the_order(events, sizes):
    summariser = WorkflowSummariser(lateness_ms=None, max_pending=None)
    records = []
    for chunk in chunked(events, sizes):
        assert summariser.extend(chunk) == []
    records.extend(summariser.flush())
    assert fingerprints(records) == fingerprints(summarise_events(events))
