"""Batch dedup: a request retried with the same msgid adds nothing the second time, and the ledger
stays exact (its events are counted as duplicates, the request once as a duplicate request)."""

from __future__ import annotations

from dataclasses import replace

import orjson
from hypothesis import HealthCheck, given, settings, strategies as st

from cohort.core.log_record import LogRecord
from cohort.core.process_batch import process_batch
from cohort.core.stages.batch_dedup import batch_key, duplicate_requests, request_keys
from cohort.state.mid_window import MidWindow

NOW_MS = 1_700_000_000_000


def request(events: list, offset: int, msgid: str | None, channel: str = "tenant-a") -> LogRecord:
    headers = {"x-channel-id": channel}
    if msgid is not None:
        headers["msgid"] = msgid  # as the ingest API keeps it
    body = orjson.dumps({"id": "api.sunbird.telemetry", "params": {"msgid": msgid}, "events": events})
    return LogRecord(payload=body, event_count=len(events), received_at_ms=NOW_MS, headers=headers, offset=offset)


def run(records, mids=None, requests=None):
    return process_batch(records, mids or MidWindow(3600), seen_requests=requests or MidWindow(3600),
                         now_ms=NOW_MS, config_version="test")


def mixed(sample_events) -> list:
    """Valid events, one repeated (an event duplicate) and two invalid ones: what a real retried batch holds."""
    bad = dict(sample_events[3], ets="not a number")
    return [*sample_events[:3], sample_events[0], bad, "not an object"]


def test_a_retried_request_adds_nothing_and_is_counted_once(sample_events):
    mids, requests = MidWindow(3600), MidWindow(3600)
    first = run([request(mixed(sample_events), 1, "b-1")], mids, requests)
    assert (first.stored, first.failed_count, first.duplicates, first.duplicate_requests) == (3, 2, 1, 0)
    mids.add(first.stored_mids, NOW_MS)
    requests.add(first.new_request_keys, NOW_MS)

    again = run([request(mixed(sample_events), 2, "b-1")], mids, requests)
    assert again.stored == 0 and again.failed == [] and again.rows.num_rows == 0
    assert (again.duplicates, again.duplicate_requests, again.new_request_keys) == (6, 1, [])
    assert again.requests.num_rows == 1  # the request itself was received: it stays on record


def test_a_retry_within_the_same_batch_is_dropped_and_the_first_kept(sample_events):
    outcome = run([request(mixed(sample_events), 1, "b-1"), request(mixed(sample_events), 2, "b-1"),
                   request(sample_events[10:12], 3, "b-2")])
    assert (outcome.stored, outcome.failed_count, outcome.duplicates) == (5, 2, 1 + 6)
    assert outcome.duplicate_requests == 1
    assert sorted(outcome.new_request_keys) == ["tenant-a/b-1", "tenant-a/b-2"]
    assert set(outcome.rows.column("log_offset").to_pylist()) == {1, 3}


def test_one_tenants_msgid_never_drops_another_tenants_request(sample_events):
    requests = MidWindow(3600)
    requests.add([batch_key(request([], 1, "b-1", channel="tenant-a"))], NOW_MS)
    outcome = run([request(sample_events[:5], 2, "b-1", channel="tenant-b")], requests=requests)
    assert outcome.stored == 5 and outcome.duplicate_requests == 0


def test_requests_without_a_msgid_are_left_to_event_dedup(sample_events):
    outcome = run([request(sample_events[:5], 1, None), request(sample_events[:5], 2, None)])
    assert (outcome.stored, outcome.duplicates, outcome.duplicate_requests) == (5, 5, 0)
    assert outcome.new_request_keys == []
    assert duplicate_requests(request_keys([request([], 1, None)]), None) == []


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])  # read only
@given(plan=st.lists(st.tuples(st.sampled_from(["b-1", "b-2", "b-3", None]), st.integers(0, 5),
                               st.sampled_from(["tenant-a", "tenant-b"])), min_size=1, max_size=8),
       committed=st.sets(st.sampled_from(["tenant-a/b-1", "tenant-b/b-2"])))
def test_any_mix_of_retries_is_accounted_for(sample_events, plan, committed):
    records = [request(mixed(sample_events)[:size], offset, msgid, channel)
               for offset, (msgid, size, channel) in enumerate(plan, start=1)]
    requests = MidWindow(3600)
    requests.add(sorted(committed), NOW_MS)
    outcome = run(records, requests=requests)
    assert outcome.stored + outcome.failed_count + outcome.duplicates == outcome.events_in
    kept = {r.offset for r in records} - {r.offset for r in duplicate_requests(request_keys(records), requests)}
    assert set(outcome.rows.column("log_offset").to_pylist()) <= kept
    assert {f.log_offset for f in outcome.failed} <= kept
    keys = [batch_key(r) for r in records if batch_key(r) is not None]
    assert len(outcome.new_request_keys) == len(set(keys) - committed)
    assert outcome.duplicate_requests == len(keys) - len(outcome.new_request_keys)


def test_a_record_without_headers_has_no_key():
    assert batch_key(replace(request([], 1, "x"), headers={})) is None
