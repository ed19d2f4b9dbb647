"""Validate: each event against the official v3 schema of its eid; failures are quarantined with a
stable code, the stage, a message naming the field, and the original event."""

from __future__ import annotations

import copy
import gc
import tracemalloc

import orjson
import pytest

from cohort.core.errors import ErrorCode
from cohort.core.log_record import LogRecord
from cohort.core.stages.extract import extract
from cohort.core.stages.validate import validate
from cohort.core.telemetry_schema import compile_all
from cohort.core.work_item import WorkItem


def run_one(event: dict, make_record):
    record = make_record([event], offset=42)
    [item] = [WorkItem(event=event, record=record)]
    valid, failed = validate([item])
    return valid, failed


def without(event: dict, *path: str) -> dict:
    event = copy.deepcopy(event)
    target = event
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return event


def assert_quarantined(event, failed, code, *names_in_message):
    [f] = failed
    assert f.code == code
    assert f.stage == "validate"
    for name in names_in_message:
        assert name in f.message, f"message {f.message!r} should name {name!r}"
    assert not f.message.startswith("data")  # a validator's internal variable name is not for humans
    assert orjson.loads(f.payload) == event  # the original event, complete
    assert f.log_offset == 42 and f.source == "/v1/telemetry" and f.event_count == 1
    return f


def test_all_sample_events_are_valid_and_get_their_schema(sample_events, make_record):
    record = make_record(sample_events)
    valid, failed = validate([WorkItem(event=e, record=record) for e in sample_events])
    assert failed == []
    assert len(valid) == 500
    assert all(item.schema == item.event["eid"].lower() for item in valid)


def test_missing_mid(interact_event, make_record):
    event = without(interact_event, "mid")
    valid, failed = run_one(event, make_record)
    assert valid == []
    f = assert_quarantined(event, failed, ErrorCode.VALIDATION_SCHEMA, "mid")
    assert f.mid is None and f.eid == "INTERACT" and f.channel == event["context"]["channel"]


def test_unknown_eid(interact_event, make_record):
    event = {**interact_event, "eid": "CLICKED"}
    valid, failed = run_one(event, make_record)
    assert valid == []
    f = assert_quarantined(event, failed, ErrorCode.VALIDATION_UNKNOWN_EID, "CLICKED", "eid")
    assert f.eid == "CLICKED" and f.mid == interact_event["mid"]


def test_lowercase_eid_is_unknown(interact_event, make_record):
    event = {**interact_event, "eid": "interact"}
    assert_quarantined(event, run_one(event, make_record)[1], ErrorCode.VALIDATION_UNKNOWN_EID, "interact")


@pytest.mark.parametrize("ets", ["1566242904796", None, [1566242904796], {"ms": 1}, True])
def test_ets_not_a_number(interact_event, make_record, ets):
    event = {**interact_event, "ets": ets}
    valid, failed = run_one(event, make_record)
    assert valid == []
    assert_quarantined(event, failed, ErrorCode.VALIDATION_SCHEMA, "ets")


def test_interact_without_edata_type(interact_event, make_record):
    event = without(interact_event, "edata", "type")
    valid, failed = run_one(event, make_record)
    assert valid == []
    assert_quarantined(event, failed, ErrorCode.VALIDATION_SCHEMA, "edata", "type")


def test_edata_required_fields_depend_on_eid(sample_events, make_record):
    # IMPRESSION requires edata.pageid; INTERACT does not know pageid is required
    impression = next(e for e in sample_events if e["eid"] == "IMPRESSION")
    event = without(impression, "edata", "pageid")
    assert_quarantined(event, run_one(event, make_record)[1], ErrorCode.VALIDATION_SCHEMA, "edata", "pageid")


@pytest.mark.parametrize("path", [("actor",), ("context",), ("edata",), ("ver",), ("context", "channel"),
                                  ("actor", "id"), ("context", "pdata", "id")])
def test_missing_required_field(interact_event, make_record, path):
    event = without(interact_event, *path)
    assert_quarantined(event, run_one(event, make_record)[1], ErrorCode.VALIDATION_SCHEMA, path[-1])


@pytest.mark.parametrize("mutation", [
    {"mid": ""}, {"mid": 5}, {"ver": "2.0"}, {"actor": "someone"}, {"object": "do_1"}, {"object": {"rollup": []}},
    {"tags": [1]}, {"context": {"channel": "c", "env": "e", "pdata": "app"}},
])
def test_wrong_types_are_schema_errors(interact_event, make_record, mutation):
    event = {**interact_event, **mutation}
    assert_quarantined(event, run_one(event, make_record)[1], ErrorCode.VALIDATION_SCHEMA)


# The wording operators and telemetry authors have seen since the first release: the field's path as
# written in the event, then the rule it breaks. Changing the validator must not change these.
@pytest.mark.parametrize("change, message", [
    ({"mid": ""}, "mid must be longer than or equal to 1 characters"),
    ({"mid": 5}, "mid must be string"),
    ({"ets": "1566242904796"}, "ets must be number"),
    ({"ets": True}, "ets must be number"),
    ({"ver": "2.0"}, "ver must be one of ['3.0', '3.1']"),
    ({"actor": "someone"}, "actor must be object"),
    ({"object": {"rollup": []}}, "object.rollup must be object"),
    ({"tags": ["a", 1]}, "tags[1] must be string"),
    ({"context": {"channel": "c", "env": "e", "pdata": "app"}}, "context.pdata must be object"),
    ({"edata": {"type": "TOUCH", "id": "x", "surprise": 1}}, "edata must not contain {'surprise'} properties"),
    ({"edata": {"id": "x"}}, "edata must contain ['type'] properties"),
])
def test_messages_name_the_field_and_the_rule(interact_event, make_record, change, message):
    event = {**interact_event, **change}
    [failed] = run_one(event, make_record)[1]
    assert (failed.code, failed.message) == (ErrorCode.VALIDATION_SCHEMA, message)


def test_every_missing_required_field_of_an_object_is_named_at_once(interact_event, make_record):
    event = without(without(interact_event, "mid"), "ets")
    [failed] = run_one(event, make_record)[1]
    assert failed.message == "event must contain ['ets', 'mid'] properties"


def test_unexpected_property_names_are_quoted_within_bounds(interact_event, make_record):
    # property names are the client's: a message quotes a few of them, shortened
    names = {f"{n:04d}" + "k" * 10_000: n for n in range(1000)}
    event = {**interact_event, "edata": {**interact_event["edata"], **names}}
    [failed] = run_one(event, make_record)[1]
    assert failed.code == ErrorCode.VALIDATION_SCHEMA
    assert failed.message.startswith("edata must not contain {'0000kkk") and len(failed.message) < 500


def deep_item(event: dict, depth: int) -> WorkItem:
    """`event` with its "DEEP" value replaced by objects nested `depth` deep, read from a request body as
    the pipeline reads it (deeper than orjson writes; the ack path allows it with COHORT_MAX_JSON_DEPTH)."""
    nested = '{"x":' * depth + "{}" + "}" * depth
    text = orjson.dumps(event).decode().replace('"DEEP"', nested, 1)
    body = ('{"id":"api.sunbird.telemetry","events":[' + text + "]}").encode()
    [item], _ = extract([LogRecord(payload=body, event_count=1, offset=1)])
    return item


def test_a_violation_too_deep_to_describe_is_still_a_schema_error(interact_event):
    item = deep_item({**interact_event, "tags": ["DEEP"]}, 600)  # tags must be a list of strings
    valid, [failed] = validate([item])
    assert valid == []
    assert failed.code == ErrorCode.VALIDATION_SCHEMA and failed.stage == "validate"
    assert "INTERACT" in failed.message


def test_values_deeper_than_the_schema_looks_are_valid(interact_event):
    item = deep_item({**interact_event, "edata": {**interact_event["edata"], "extra": "DEEP"}}, 600)
    valid, failed = validate([item])
    assert failed == [] and valid == [item]


@pytest.mark.parametrize("eid", [None, "", 5, ["INTERACT"], {"type": "INTERACT"}])
def test_missing_or_non_string_eid(interact_event, make_record, eid):
    event = {**interact_event, "eid": eid} if eid is not None else without(interact_event, "eid")
    valid, failed = run_one(event, make_record)
    assert valid == []
    assert_quarantined(event, failed, ErrorCode.VALIDATION_MISSING_EID, "eid")


def test_good_and_bad_events_are_split_in_order(sample_events, make_record):
    bad = without(sample_events[1], "mid")
    events = [sample_events[0], bad, sample_events[2], {"eid": "NOPE"}, sample_events[3]]
    record = make_record(events)
    valid, failed = validate([WorkItem(event=e, record=record) for e in events])
    assert [i.event for i in valid] == [sample_events[0], sample_events[2], sample_events[3]]
    assert [f.code for f in failed] == [ErrorCode.VALIDATION_SCHEMA, ErrorCode.VALIDATION_UNKNOWN_EID]


def test_unknown_eids_do_not_accumulate_in_memory(interact_event, make_record):
    compile_all()  # the legitimate, bounded cache: one validator per event type
    record = make_record([interact_event])
    tracemalloc.start()
    try:
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for chunk in range(4):
            events = [{**interact_event, "eid": f"X{chunk}-{n}-" + "e" * 500} for n in range(1000)]
            _, failed = validate([WorkItem(event=e, record=record) for e in events])
            assert len(failed) == 1000
            del events, failed
        gc.collect()
        retained = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert retained < 512 * 1024, f"{retained} bytes retained after validating 4000 events with unknown eids"


def test_quarantined_payload_keeps_numbers_exactly(interact_event):
    event = without(interact_event, "mid")
    body = orjson.dumps({"id": "api.sunbird.telemetry", "events": [event]})
    body = body.replace(b'"ver":"3.0"', b'"ver":"3.0","seq":123456789012345678901234567890', 1)
    items, _ = extract([LogRecord(payload=body, event_count=1, offset=1)])
    _, [failed] = validate(items)
    assert "123456789012345678901234567890" in failed.payload
