"""A prepared batch cut by log record: each part holds exactly its records' rows, failures and requests,
the parts add up to the batch, and a part the store refused is quarantined event by event, still
accounted for."""

from __future__ import annotations

import orjson
import pytest

from cohort.core.errors import ErrorCode
from cohort.core.log_record import LogRecord
from cohort.core.prepared_split import halves, rejected_by_store, through_offset
from cohort.core.process_batch import finish_batch, prepare_batch
from cohort.core.stages import STORE_STAGE
from cohort.state.mid_window import MidWindow


def prepared_of(sample_events, count: int = 4):
    records = [LogRecord(payload=orjson.dumps({"events": [*sample_events[i * 5:i * 5 + 5], "bad"]}), event_count=6,
                         offset=40 + i, partition=3, source=f"/v1/source-{i}",
                         headers={"msgid": f"m{i}", "x-channel-id": "c"}) for i in range(count)]
    return prepare_batch(records, now_ms=1, config_version="v")


def test_halves_hold_each_record_once_and_add_up(sample_events):
    prepared = prepared_of(sample_events, count=5)
    first, second = halves(prepared)
    assert [(p.first_offset, p.last_offset, p.events_in, p.partition) for p in (first, second)] == [
        (40, 41, 12, 3), (42, 44, 18, 3)]
    for part, offsets in ((first, {40, 41}), (second, {42, 43, 44})):
        assert set(part.rows.column("log_offset").to_pylist()) == offsets and part.rows.num_rows == 5 * len(offsets)
        assert {f.log_offset for f in part.failed} == offsets
        assert set(part.requests.column("log_offset").to_pylist()) == offsets
        assert {r.key for r in part.request_keys} == {f"c/m{o - 40}" for o in offsets}
    assert first.events_in + second.events_in == prepared.events_in
    one, other = halves(first)
    assert (one.first_offset, one.last_offset, other.first_offset, other.last_offset) == (40, 40, 41, 41)
    with pytest.raises(ValueError):
        halves(one)


def test_through_offset_is_the_other_side_of_after_offset(sample_events):
    prepared = prepared_of(sample_events)
    assert through_offset(prepared, 39) is None
    assert through_offset(prepared, 43) is prepared and through_offset(prepared, 99) is prepared
    head = through_offset(prepared, 41)
    assert (head.first_offset, head.last_offset, head.events_in) == (40, 41, 12)
    assert set(head.rows.column("log_offset").to_pylist()) == {40, 41}
    assert [r.offset for r in head.request_keys] == [40, 41]


def test_a_refused_part_is_quarantined_event_by_event_and_still_reconciles(sample_events):
    part = halves(halves(prepared_of(sample_events))[0])[1]  # the record at offset 41
    seen = MidWindow(60)
    seen.add([sample_events[5]["mid"]], 1)  # one event of the record is a duplicate of a stored one
    outcome = finish_batch(part, seen)
    assert (outcome.stored, outcome.duplicates, outcome.failed_count) == (4, 1, 1)

    rejected = rejected_by_store(outcome, "every attempt to process this request failed: ValueError: no")
    assert rejected.stored == 0 and rejected.duplicates == 1 and rejected.failed_count == 5
    assert rejected.stored + rejected.failed_count + rejected.duplicates == rejected.events_in == 6
    by_store = [f for f in rejected.failed if f.code == ErrorCode.STORE_REJECTED]
    assert [f.mid for f in by_store] == [e["mid"] for e in sample_events[6:10]]
    for failed, event in zip(by_store, sample_events[6:10]):
        assert failed.stage == STORE_STAGE and failed.log_offset == 41 and failed.source == "/v1/source-1"
        assert (failed.eid, failed.channel) == (event["eid"], event["context"]["channel"])
        assert orjson.loads(failed.payload) == event and "ValueError: no" in failed.message
    assert [f.code for f in rejected.failed if f.code != ErrorCode.STORE_REJECTED] == [ErrorCode.EXTRACT_NOT_OBJECT]
    assert rejected.new_request_keys == outcome.new_request_keys == ["c/m1"]
    assert rejected.requests.num_rows == 1
