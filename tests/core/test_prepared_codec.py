"""A prepared batch survives the trip from a worker to the store writer exactly, and anything else
on the processed topic is refused with a clear error."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings, strategies as st

from cohort.core.log_record import LogRecord
from cohort.core.prepared_codec import CorruptPreparedBatch, decode_prepared, encode_prepared
from cohort.core.process_batch import prepare_batch, prepare_isolated, quarantine_record
from cohort.core.errors import ErrorCode

NOW_MS = 1_700_000_000_000


def records(events_per_record: list[list], partition: int = 3) -> list[LogRecord]:
    return [LogRecord(payload=orjson.dumps({"id": "api.sunbird.telemetry", "params": {"msgid": f"m{i}"},
                                            "events": events}),
                      event_count=len(events), received_at_ms=NOW_MS + i, offset=100 + i, partition=partition,
                      headers={"x-channel-id": "tenant-a", "msgid": f"m{i}"})
            for i, events in enumerate(events_per_record)]


def assert_same(a, b):
    assert a.rows.equals(b.rows) and a.requests.equals(b.requests)
    assert (a.failed, a.events_in, a.first_offset, a.last_offset, a.partition, a.request_keys, a.stage_micros) == \
           (b.failed, b.events_in, b.first_offset, b.last_offset, b.partition, b.request_keys, b.stage_micros)


def test_a_real_batch_with_stored_failed_and_retried_events_round_trips(sample_events):
    bad = dict(sample_events[1], ets="never")
    batch = prepare_batch(records([sample_events[:200], [bad, "x", *sample_events[200:210]], sample_events[:3]]),
                          now_ms=NOW_MS, config_version="v")
    assert batch.failed and batch.rows.num_rows == 213
    assert_same(decode_prepared(encode_prepared(batch)), batch)


def test_isolated_and_quarantined_records_round_trip(sample_events):
    [record] = records([sample_events[:5]])
    for batch in (prepare_isolated(record, now_ms=NOW_MS, config_version="v"),
                  quarantine_record(record, ErrorCode.PIPELINE_POISON, "core", "every attempt failed")):
        assert_same(decode_prepared(encode_prepared(batch)), batch)


@pytest.mark.parametrize("data", [b"", b"CPB1", b"XXXX" + b"\0" * 20, b"CPB1\0\0\0\x05{}", b"CPB1\0\0\0\x02{}",
                                  b"CPB1\xff\xff\xff\xff"])
def test_bytes_that_are_not_a_prepared_batch_are_refused_clearly(data):
    with pytest.raises(CorruptPreparedBatch):
        decode_prepared(data)


@settings(max_examples=50, deadline=None)
@given(cut=st.integers(min_value=0))
def test_a_batch_cut_short_anywhere_is_refused(cut):
    batch = prepare_batch(records([[{"eid": "INTERACT"}], []]), now_ms=NOW_MS, config_version="v")
    data = bytearray(encode_prepared(batch))
    damaged = bytes(data[:cut % len(data)])
    with pytest.raises(CorruptPreparedBatch):
        decode_prepared(damaged)
