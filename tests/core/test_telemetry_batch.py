"""The batch envelope check the ingest API runs once per request."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from cohort.core.errors import CohortError, ErrorCode
from cohort.core.telemetry_batch import ACCEPTED_IDS, TelemetryBatch, parse_telemetry_batch

EVENT = {"eid": "INTERACT", "mid": "m1"}  # the envelope check does not look inside events
MAX_DEPTH = 16
MAX_MSGID = 40


def body(**fields) -> bytes:
    return orjson.dumps(fields)


def parse(raw: bytes, max_events: int = 100) -> TelemetryBatch:
    return parse_telemetry_batch(raw, max_events, max_depth=MAX_DEPTH, max_msgid_chars=MAX_MSGID)


def rejected(raw: bytes, max_events: int = 100) -> CohortError:
    with pytest.raises(CohortError) as info:
        parse(raw, max_events)
    assert info.value.message and str(info.value.code) in str(info.value)
    return info.value


@pytest.mark.parametrize("raw", [
    b"",
    b"{",
    b"not json",
    b'{"events": [1,]}',
    b"\xff\xfe{}",  # not UTF-8
    b'{"events":[1]} \xef\xbb\xbf',  # a BOM anywhere but at the start
])
def test_malformed_json(raw):
    error = rejected(raw)
    assert error.code == ErrorCode.MALFORMED_JSON
    assert "JSON" in error.message


@pytest.mark.parametrize("raw", [b"[]", b"[{}]", b'"events"', b"42", b"null", b"true"])
def test_body_not_an_object(raw):
    error = rejected(raw)
    assert error.code == ErrorCode.ENVELOPE
    assert "object" in error.message


@pytest.mark.parametrize("envelope_id", ["api.other", "", "API.SUNBIRD.TELEMETRY", 3, [], {}, ["api.telemetry"]])
def test_wrong_envelope_id(envelope_id):
    error = rejected(body(id=envelope_id, events=[EVENT]))
    assert error.code == ErrorCode.ENVELOPE
    assert "id" in error.message


@pytest.mark.parametrize("params", [[], "msgid", 5, True])
def test_params_not_an_object(params):
    error = rejected(body(params=params, events=[EVENT]))
    assert error.code == ErrorCode.ENVELOPE
    assert "params" in error.message


@pytest.mark.parametrize("msgid", [5, 1.5, True, ["m"], {"id": "m"}])
def test_msgid_not_a_string(msgid):
    error = rejected(body(params={"msgid": msgid}, events=[EVENT]))
    assert error.code == ErrorCode.ENVELOPE
    assert "msgid" in error.message


@pytest.mark.parametrize("raw", [body(id="api.sunbird.telemetry"), body(events=None), body(data=[EVENT])])
def test_no_events(raw):
    error = rejected(raw)
    assert error.code == ErrorCode.ENVELOPE
    assert "events" in error.message


@pytest.mark.parametrize("events", [{"eid": "INTERACT"}, "[]", 3, True])
def test_events_not_a_list(events):
    error = rejected(body(events=events))
    assert error.code == ErrorCode.ENVELOPE
    assert "events" in error.message


def test_empty_events():
    error = rejected(body(id="api.sunbird.telemetry", params={"msgid": "m"}, events=[]))
    assert error.code == ErrorCode.EMPTY_BATCH
    assert "empty" in error.message


def test_too_many_events():
    error = rejected(body(events=[EVENT] * 11), max_events=10)
    assert error.code == ErrorCode.BATCH_TOO_LARGE
    assert "11" in error.message and "10" in error.message


def test_exactly_max_events_is_accepted():
    assert parse(body(events=[EVENT] * 10), 10) == TelemetryBatch(msgid=None, event_count=10)


def test_check_order_envelope_before_size():
    # a wrong id is reported as such even when the batch is also too large
    assert rejected(body(id="nope", events=[EVENT] * 5), max_events=1).code == ErrorCode.ENVELOPE


@pytest.mark.parametrize("envelope_id", sorted(ACCEPTED_IDS))
def test_valid_batch_with_msgid(envelope_id):
    raw = body(id=envelope_id, ver="3.0", ets=1_700_000_000_000, params={"msgid": "abc-123"},
               events=[EVENT, {"anything": 1}, 5])
    assert parse(raw) == TelemetryBatch(msgid="abc-123", event_count=3)


@pytest.mark.parametrize("raw", [
    body(events=[EVENT]),  # no id, no params
    body(id="api.sunbird.telemetry", params={}, events=[EVENT]),
    body(id="api.sunbird.telemetry", params={"msgid": None}, events=[EVENT]),
    body(id=None, params=None, events=[EVENT]),
])
def test_valid_batch_without_msgid(raw):
    assert parse(raw) == TelemetryBatch(msgid=None, event_count=1)


def test_real_sample_batch(sample_events):
    raw = body(id="api.sunbird.telemetry", ver="3.0", params={"msgid": "sample"}, events=sample_events)
    assert parse(raw, 1000) == TelemetryBatch(msgid="sample", event_count=500)


def nested(depth: int) -> list:
    value: list = [1]
    for _ in range(depth - 1):
        value = [value]
    return value


def test_nesting_is_bounded_with_its_own_code():
    # a value may sit inside MAX_DEPTH arrays/objects: the envelope, 'events', and 14 more
    assert parse(body(events=[nested(MAX_DEPTH - 2)])).event_count == 1
    error = rejected(body(events=[nested(MAX_DEPTH - 1)]))
    assert error.code == ErrorCode.TOO_DEEP and str(MAX_DEPTH) in error.message
    assert rejected(body(params={"msgid": "m", "x": nested(MAX_DEPTH)}, events=[1])).code == ErrorCode.TOO_DEEP


def test_nesting_past_the_parsers_own_limits_is_refused_too():
    error = rejected(b'{"events":' + b"[" * 2000 + b"]" * 2000 + b"}")
    assert error.code == ErrorCode.TOO_DEEP


def test_msgid_length_is_bounded():
    assert parse(body(params={"msgid": "m" * MAX_MSGID}, events=[EVENT])).msgid == "m" * MAX_MSGID
    error = rejected(body(params={"msgid": "m" * (MAX_MSGID + 1)}, events=[EVENT]))
    assert error.code == ErrorCode.FIELD_TOO_LONG
    assert "params.msgid" in error.message and str(MAX_MSGID) in error.message and str(MAX_MSGID + 1) in error.message


def test_a_leading_bom_is_ignored_and_not_kept():
    raw = body(events=[EVENT])
    batch = parse(b"\xef\xbb\xbf" + raw)
    assert batch.event_count == 1 and batch.payload == raw


def test_the_payload_is_the_body_itself_when_there_is_no_bom():
    raw = body(events=[EVENT])
    assert parse(raw).payload is raw  # no copy on the hot path


def test_a_gzip_body_without_its_header_gets_a_hint():
    import gzip

    error = rejected(gzip.compress(body(events=[EVENT])))
    assert error.code == ErrorCode.MALFORMED_JSON and "Content-Encoding: gzip" in error.message


def test_the_wrong_id_message_names_every_accepted_id():
    message = rejected(body(id="api.other", events=[EVENT])).message
    assert all(f"'{accepted}'" in message for accepted in ACCEPTED_IDS)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
envelopes = st.fixed_dictionaries({}, optional={
    "id": st.sampled_from(sorted(ACCEPTED_IDS)) | json_values,
    "params": st.fixed_dictionaries({}, optional={"msgid": json_values}) | json_values,
    "events": st.lists(json_values, max_size=6) | json_values,
}).map(orjson.dumps)


# Text the two parsers may read differently: repeated keys, big or odd numbers, escapes, whitespace.
tricky_bodies = st.lists(st.sampled_from([
    '{"events":[1,2],"events":[3]}', '{"params":{"msgid":1},"params":{"msgid":"x"},"events":[1]}',
    '{"events":[123456789012345678901234567890]}', '{"events":[1e400]}', '{"events":[-0.0,1E2,1e-7]}',
    '{"events":["\\ud800"]}', '{"events":["\\u00e9"]}', ' \n{"events":[{}]}\t', '{"events":[{}]}{}',
    '{"events":[{"a":{"b":[[[[]]]]}}]}', '{"id":"api.sunbird.telemetry","events":[{},{}],"id":"x"}',
]), min_size=1, max_size=1).map(lambda parts: parts[0].encode())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.binary(max_size=200) | envelopes | tricky_bodies)
def test_any_body_is_a_batch_or_a_coded_error(raw):
    try:
        batch = parse(raw, 5)
    except CohortError as error:
        assert error.code in {ErrorCode.MALFORMED_JSON, ErrorCode.ENVELOPE, ErrorCode.EMPTY_BATCH,
                              ErrorCode.BATCH_TOO_LARGE, ErrorCode.TOO_DEEP, ErrorCode.FIELD_TOO_LONG}
    else:
        doc = orjson.loads(raw)
        assert batch.event_count == len(doc["events"]) and 1 <= batch.event_count <= 5
        assert batch.msgid is None or isinstance(batch.msgid, str)
