"""Extract: log records (raw envelopes) → events; a record that is not a batch is quarantined whole."""

from __future__ import annotations

import orjson

from cohort.core.errors import ErrorCode
from cohort.core.log_record import LogRecord
from cohort.core.stages.extract import extract


def test_events_come_out_in_order_with_their_record(make_record, sample_events):
    first, second = make_record(sample_events[:3], offset=7), make_record(sample_events[3:5], offset=8)
    items, failed = extract([first, second])
    assert failed == []
    assert [item.event for item in items] == sample_events[:5]
    assert [item.record.offset for item in items] == [7, 7, 7, 8, 8]
    assert all(item.schema is None for item in items)


def test_non_object_events_are_quarantined_one_by_one(make_record, sample_events):
    record = make_record([sample_events[0], 5, "text", None, [1, 2], sample_events[1], True], offset=3)
    items, failed = extract([record])
    assert [item.event["mid"] for item in items] == [sample_events[0]["mid"], sample_events[1]["mid"]]
    assert [f.code for f in failed] == [ErrorCode.EXTRACT_NOT_OBJECT] * 5
    assert {f.stage for f in failed} == {"extract"}
    assert [orjson.loads(f.payload) for f in failed] == [5, "text", None, [1, 2], True]
    assert [f.event_count for f in failed] == [1] * 5
    assert all(f.log_offset == 3 and f.source == record.source for f in failed)
    assert "int" in failed[0].message and "object" in failed[0].message
    assert len(items) + sum(f.event_count for f in failed) == record.event_count


def test_corrupt_record_is_quarantined_whole_with_its_event_count():
    record = LogRecord(payload=b'{"events": [{"eid": "INTERACT"}, {"ei', event_count=2, offset=11,
                       source="/v1/telemetry")
    items, failed = extract([record])
    assert items == []
    [whole] = failed
    assert whole.code == ErrorCode.EXTRACT_PAYLOAD and whole.stage == "extract"
    assert whole.event_count == 2  # every event the API acked is accounted for
    assert whole.payload == record.payload.decode()  # verbatim
    assert whole.log_offset == 11
    assert "corrupt" in whole.message


def test_record_that_is_json_but_not_a_batch_is_quarantined():
    records = [LogRecord(payload=p, event_count=1, offset=i) for i, p in
               enumerate([b"[1, 2]", b'{"events": "x"}', b'"events"', b"{}"], start=1)]
    items, failed = extract(records)
    assert items == []
    assert [f.code for f in failed] == [ErrorCode.EXTRACT_PAYLOAD] * 4
    assert [f.log_offset for f in failed] == [1, 2, 3, 4]


def test_invalid_utf8_payload_is_kept_readable():
    record = LogRecord(payload=b"\xff\xfe garbage", event_count=1, offset=1)
    _, [failed] = extract([record])
    assert failed.code == ErrorCode.EXTRACT_PAYLOAD
    assert "garbage" in failed.payload


def test_generic_dataset_ingest_object_and_list(sample_events):
    one = LogRecord(payload=orjson.dumps({"data": sample_events[0]}), event_count=1, source="/v2/data/in/x", offset=1)
    many = LogRecord(payload=orjson.dumps({"data": sample_events[1:4]}), event_count=3, source="/v2/data/in/x",
                     offset=2)
    items, failed = extract([one, many])
    assert failed == []
    assert [item.event for item in items] == sample_events[:4]


def test_good_records_survive_a_corrupt_neighbour(make_record, sample_events):
    records = [make_record(sample_events[:2], offset=1), LogRecord(payload=b"\x00", event_count=4, offset=2),
               make_record(sample_events[2:3], offset=3)]
    items, failed = extract(records)
    assert len(items) == 3 and [f.log_offset for f in failed] == [2]


def test_extract_does_not_touch_the_records(make_record, sample_events):
    record = make_record(sample_events[:2])
    before = record.payload
    extract([record])
    assert record.payload is before


def test_a_record_whose_count_differs_from_the_ack_is_quarantined_whole_not_stalled():
    body = orjson.dumps({"events": [{"eid": "START"}, {"eid": "END"}]})
    record = LogRecord(payload=body, event_count=3, offset=9)
    items, failed = extract([record])
    assert items == []
    assert len(failed) == 1 and failed[0].code == ErrorCode.EXTRACT_PAYLOAD
    assert failed[0].event_count == 3 and "2 events, 3 were acknowledged" in failed[0].message
    assert failed[0].payload == body.decode()


def test_a_record_with_a_leading_bom_is_read_like_the_api_read_it(sample_events):
    # the API stores bodies without their BOM; records acked before it did still hold one
    body = orjson.dumps({"events": sample_events[:2]})
    items, failed = extract([LogRecord(payload=b"\xef\xbb\xbf" + body, event_count=2, offset=1)])
    assert failed == [] and [item.event for item in items] == sample_events[:2]


def test_a_bom_after_whitespace_is_still_corrupt():
    record = LogRecord(payload=b' \xef\xbb\xbf{"events": [{}]}', event_count=1, offset=1)
    _, [failed] = extract([record])
    assert failed.code == ErrorCode.EXTRACT_PAYLOAD
