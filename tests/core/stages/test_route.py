"""Route: valid, unique events become `telemetry` columns; impossible timestamps are quarantined."""

from __future__ import annotations

import orjson
import pytest

from cohort.core.errors import ErrorCode
from cohort.core.stages.route import MAX_ETS_MS, MIN_ETS_MS, TELEMETRY_COLUMNS, route
from cohort.core.work_item import WorkItem


def trace(item: WorkItem) -> str:
    return orjson.dumps({"offset": item.record.offset, "mid": item.event["mid"]}).decode()


def test_columns_from_a_real_event(interact_event, make_record):
    record = make_record([interact_event], offset=9, received_at_ms=1_700_000_000_123)
    columns, failed = route([WorkItem(event=interact_event, record=record, schema="interact")], trace)
    assert failed == []
    assert tuple(columns) == TELEMETRY_COLUMNS
    row = {name: values[0] for name, values in columns.items()}
    assert all(len(values) == 1 for values in columns.values())
    assert row["eid"] == "INTERACT"
    assert row["ets"] == 1566242904796 and type(row["ets"]) is int  # sent as 1566242904796.0
    assert row["mid"] == "INTERACT:54a90de8646416c1cf8b21b8d4c3128a"
    assert row["actor_id"] == "e181b4b0-158a-4d5a-8a00-5dc1cd81095f" and row["actor_type"] == "User"
    assert row["channel"] == "505c7c48ac6dc1edc9b08f21db5a571d"
    assert (row["pdata_id"], row["pdata_pid"], row["pdata_ver"]) == (
        "prod.diksha.app", "sunbird.app.contentplayer", "2.2.123")
    assert row["env"] == "contentplayer"
    assert row["sid"] == "7a85516b-1281-4e33-a465-4e0db2f14c7a"
    assert row["did"] == "dcded6cc52fa6916a381a234949706ebdc40ade2"
    assert (row["object_id"], row["object_type"], row["object_ver"]) == ("do_31250273196059852811667", "Content", "2")
    assert orjson.loads(row["rollup"]) == {"l1": "do_312526581578375168240435", "l2": "do_312526581583970304142748"}
    assert orjson.loads(row["edata"]) == interact_event["edata"]
    assert orjson.loads(row["event"]) == interact_event  # the whole event, nothing dropped
    assert orjson.loads(row["trace"]) == {"offset": 9, "mid": interact_event["mid"]}
    assert row["ingested_at"] == 1_700_000_000_123
    assert row["log_offset"] == 9


def test_optional_parts_become_nulls(interact_event, make_record):
    event = {k: v for k, v in interact_event.items() if k != "object"}
    event["context"] = {k: v for k, v in event["context"].items() if k not in ("sid", "did")}
    columns, failed = route([WorkItem(event=event, record=make_record([event]))], trace)
    assert failed == []
    for name in ("object_id", "object_type", "object_ver", "rollup", "sid", "did"):
        assert columns[name] == [None], name


def test_all_sample_events_route(sample_events, make_record):
    record = make_record(sample_events)
    columns, failed = route([WorkItem(event=e, record=record) for e in sample_events], trace)
    assert failed == []
    assert columns["mid"] == [e["mid"] for e in sample_events]
    assert {len(values) for values in columns.values()} == {500}


@pytest.mark.parametrize("ets", [0, -1, 1_566_242_904, MIN_ETS_MS - 1, MAX_ETS_MS, 1e300, 1.7e18, True])
def test_ets_out_of_range_is_quarantined(interact_event, make_record, ets):
    event = {**interact_event, "ets": ets}
    record = make_record([event], offset=5)
    columns, failed = route([WorkItem(event=event, record=record)], trace)
    assert columns["mid"] == [] and all(values == [] for values in columns.values())
    [f] = failed
    assert f.code == ErrorCode.ROUTE_TIMESTAMP and f.stage == "route"
    assert "ets" in f.message and repr(ets) in f.message
    assert orjson.loads(f.payload) == event
    assert f.mid == event["mid"] and f.log_offset == 5 and f.event_count == 1


@pytest.mark.parametrize("ets", [MIN_ETS_MS, MAX_ETS_MS - 1, 1_700_000_000_000.75])
def test_ets_range_bounds_are_accepted(interact_event, make_record, ets):
    event = {**interact_event, "ets": ets}
    columns, failed = route([WorkItem(event=event, record=make_record([event]))], trace)
    assert failed == [] and columns["ets"] == [int(ets)]


def test_bad_timestamp_does_not_disturb_neighbours(sample_events, make_record):
    events = [sample_events[0], {**sample_events[1], "ets": 5}, sample_events[2]]
    record = make_record(events)
    columns, failed = route([WorkItem(event=e, record=record) for e in events], trace)
    assert columns["mid"] == [sample_events[0]["mid"], sample_events[2]["mid"]]
    assert [f.mid for f in failed] == [sample_events[1]["mid"]]
    # columns stay aligned: each column has one value per stored row
    assert {len(v) for v in columns.values()} == {2}
