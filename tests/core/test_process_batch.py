"""One pass of the core over a batch: every event the API counted ends stored, failed or duplicate."""

from __future__ import annotations

import copy

from dataclasses import replace

import orjson
from hypothesis import HealthCheck, event as label, given, settings, strategies as st

from cohort.core.errors import ErrorCode
from cohort.core.log_record import LogRecord
from cohort.core.process_batch import process_batch
from cohort.core.telemetry_schema import event_types
from cohort.state.mid_window import MidWindow

NOW_MS = 1_700_000_000_000


def column(outcome, name: str) -> list:
    """A stored column as a list, whether the rows are an Arrow table or a dict of lists."""
    rows = outcome.rows
    return rows.column(name).to_pylist() if hasattr(rows, "column") else list(rows[name])


def run(records, seen=None):
    return process_batch(records, seen if seen is not None else MidWindow(3600), now_ms=NOW_MS,
                         config_version="test-config")


def assert_accounted(outcome):
    assert outcome.stored + outcome.failed_count + outcome.duplicates == outcome.events_in
    assert len(column(outcome, "mid")) == len(column(outcome, "event")) == outcome.stored


def test_clean_sample_batch_is_all_stored(sample_events, make_record):
    records = [make_record(sample_events[:200], offset=1), make_record(sample_events[200:], offset=2)]
    outcome = run(records)
    assert outcome.events_in == 500 and outcome.stored == 500
    assert outcome.failed == [] and outcome.duplicates == 0
    assert column(outcome, "mid") == [e["mid"] for e in sample_events]
    assert (outcome.first_offset, outcome.last_offset) == (1, 2)
    assert set(outcome.stage_micros) == {"extract", "validate", "batch_dedup", "dedup", "route"}


def test_trace_records_where_an_event_came_from(sample_events, make_record):
    record = replace(make_record(sample_events[:1], offset=17, received_at_ms=NOW_MS - 5),
                     headers={"x-channel-id": "ch", "msgid": "m-17"})
    outcome = run([record])
    trace = orjson.loads(column(outcome, "trace")[0])
    assert trace["log_offset"] == 17
    assert trace["ingested_at"] == NOW_MS - 5 and trace["processed_at"] == NOW_MS
    assert trace["source"] == "/v1/telemetry" and "headers" not in trace
    # the request's own data, once per request, reached from the trace by log_offset
    assert outcome.requests.to_pylist() == [{
        "log_offset": 17, "received_at": outcome.requests.column("received_at")[0].as_py(),
        "source": "/v1/telemetry", "msgid": "m-17", "headers": '{"x-channel-id":"ch"}', "event_count": 1}]
    assert trace["config_version"] == "test-config"
    assert {"extract", "validate", "dedup", "denorm", "transform"} <= set(trace["stages"])


def test_mixed_batch_accounting(sample_events, make_record):
    bad_schema = {k: v for k, v in sample_events[2].items() if k != "mid"}
    bad_time = {**sample_events[3], "ets": 12}
    events = [sample_events[0], sample_events[1], sample_events[0], 7, bad_schema, {"eid": "NOPE"}, bad_time]
    records = [make_record(events, offset=1), LogRecord(payload=b"{corrupt", event_count=3, offset=2)]
    outcome = run(records)
    assert outcome.events_in == 10
    assert outcome.stored == 2 and outcome.duplicates == 1 and outcome.failed_count == 7
    assert outcome.failed_by_stage == {"extract": 4, "validate": 2, "route": 1}
    assert sorted(str(f.code) for f in outcome.failed) == sorted(str(c) for c in [
        ErrorCode.EXTRACT_NOT_OBJECT, ErrorCode.EXTRACT_PAYLOAD, ErrorCode.VALIDATION_SCHEMA,
        ErrorCode.VALIDATION_UNKNOWN_EID, ErrorCode.ROUTE_TIMESTAMP])
    assert_accounted(outcome)


def test_duplicates_within_batch_and_against_state_are_counted_not_stored(sample_events, make_record):
    seen = MidWindow(3600)
    seen.add([sample_events[5]["mid"], sample_events[6]["mid"]])
    events = sample_events[:10] + sample_events[:3] + [copy.deepcopy(sample_events[5])]
    outcome = run([make_record(events[:7], offset=1), make_record(events[7:], offset=2)], seen)
    stored = column(outcome, "mid")
    assert len(stored) == len(set(stored)) == 8
    assert sample_events[5]["mid"] not in stored and sample_events[6]["mid"] not in stored
    assert outcome.duplicates == 2 + 3 + 1
    assert outcome.failed == []
    assert_accounted(outcome)


def test_process_batch_does_not_record_mids(sample_events, make_record):
    seen = MidWindow(3600)
    run([make_record(sample_events[:5])], seen)
    assert len(seen) == 0  # recording happens only after the store committed


def test_a_record_that_lies_about_its_count_is_quarantined_whole_as_counted(sample_events):
    """The pipeline must neither stall on such a record nor guess which count is right."""
    body = orjson.dumps({"events": sample_events[:2]})
    outcome = run([LogRecord(payload=body, event_count=3, offset=4)])
    assert outcome.stored == 0 and outcome.failed_count == 3 and outcome.events_in == 3
    assert outcome.failed[0].code == ErrorCode.EXTRACT_PAYLOAD


# -- property: whatever arrives, process_batch never raises and accounts for every event -----------------

json_scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
                | st.floats(allow_nan=False, allow_infinity=False)
                | st.text(st.characters(exclude_categories=("Cs",)), max_size=12))
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(st.characters(exclude_categories=("Cs",)), max_size=8), children, max_size=4),
    max_leaves=12,
)
event_like = st.fixed_dictionaries({}, optional={
    "eid": st.sampled_from(sorted(event_types())) | json_values,
    "mid": st.sampled_from(["m-1", "m-2", ""]) | json_values,
    "ets": st.sampled_from([NOW_MS, 0, 1e300, -5]) | json_values,
    "ver": st.sampled_from(["3.0", "3.1"]) | json_values,
    "actor": st.just({"id": "a", "type": "User"}) | json_values,
    "context": st.just({"channel": "c", "env": "e", "pdata": {"id": "p"}}) | json_values,
    "object": json_values,
    "edata": json_values,
})

sample_index = st.integers(0, 499)
path_seed = st.lists(st.integers(0, 1000), min_size=1, max_size=4)
event_spec = st.one_of(
    st.tuples(st.just("sample"), sample_index),
    st.tuples(st.just("delete"), sample_index, path_seed),
    st.tuples(st.just("retype"), sample_index, path_seed, json_values),
    st.tuples(st.just("dup"), st.integers(0, 10_000)),
    st.tuples(st.just("raw"), json_values),
    st.tuples(st.just("event_like"), event_like),
)
record_spec = st.one_of(
    st.lists(event_spec, min_size=0, max_size=12),
    st.tuples(st.just("corrupt"), st.binary(max_size=40), st.integers(1, 5)),
)


def _walk(event, seeds):
    """Resolve a random path inside an event: the container and the key to change."""
    container = event
    for depth, seed in enumerate(seeds):
        keys = list(container) if isinstance(container, dict) else list(range(len(container)))
        if not keys:
            return None, None
        key = keys[seed % len(keys)]
        child = container[key]
        if depth == len(seeds) - 1 or not isinstance(child, (dict, list)) or not child:
            return container, key
        container = child
    return None, None


def _materialise(spec, samples, produced):
    kind = spec[0]
    if kind == "sample":
        return copy.deepcopy(samples[spec[1]]), True
    if kind in ("delete", "retype"):
        event = copy.deepcopy(samples[spec[1]])
        container, key = _walk(event, spec[2])
        if container is not None:
            if kind == "delete":
                del container[key]
            else:
                container[key] = spec[3]
        return event, False
    if kind == "dup":
        if not produced:
            return copy.deepcopy(samples[spec[1] % 500]), True
        value, pristine = produced[spec[1] % len(produced)]
        return copy.deepcopy(value), pristine
    return spec[1], False


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(record_specs=st.lists(record_spec, min_size=1, max_size=5), seen_indexes=st.sets(sample_index, max_size=20))
def test_any_batch_is_fully_accounted_for(sample_pool, record_specs, seen_indexes):
    samples = sample_pool.fresh()
    seen = MidWindow(3600)
    seen_mids = {samples[i]["mid"] for i in seen_indexes}
    seen.add(seen_mids)

    records, produced = [], []  # produced: (event, is a pristine sample event) in arrival order
    for offset, spec in enumerate(record_specs, start=1):
        if isinstance(spec, tuple) and spec[0] == "corrupt":
            records.append(LogRecord(payload=b"\x00" + spec[1], event_count=spec[2], offset=offset))
            continue
        events = []
        for event_spec_ in spec:
            value, pristine = _materialise(event_spec_, samples, produced)
            produced.append((value, pristine))
            events.append(value)
        body = orjson.dumps({"id": "api.sunbird.telemetry", "params": {"msgid": str(offset)}, "events": events})
        records.append(LogRecord(payload=body, event_count=len(events), offset=offset, received_at_ms=NOW_MS))

    outcome = run(records, seen)  # must not raise

    assert outcome.events_in == sum(r.event_count for r in records)
    assert_accounted(outcome)
    stored = column(outcome, "mid")
    assert len(stored) == len(set(stored)), "a mid was stored twice"
    assert not set(stored) & seen_mids, "an already-seen mid was stored"
    for mid, event in zip(stored, column(outcome, "event")):
        assert orjson.loads(event)["mid"] == mid
    for failed in outcome.failed:
        assert failed.code in set(ErrorCode) and failed.stage in {"extract", "validate", "route"}
        assert failed.event_count >= 1 and failed.message
        if failed.code != ErrorCode.EXTRACT_PAYLOAD:
            orjson.loads(failed.payload)  # the quarantined event is kept as JSON
    assert len(seen) == len(seen_mids)  # processing only asks the state

    # pristine sample events are valid: each is a duplicate (seen, or repeated) or ends in the store
    # (or, if dedup ran before route and a mutated copy with the same mid but an impossible ets came
    # first, that copy is quarantined at route and the pristine one counts as its duplicate)
    pristine_repeats, earlier = 0, set()
    route_failed = {f.mid for f in outcome.failed if f.stage == "route"}
    for value, pristine in produced:
        if not pristine:
            continue
        mid = value["mid"]
        if mid in seen_mids or mid in earlier:
            pristine_repeats += 1
        else:
            assert mid in stored or mid in route_failed
        earlier.add(mid)
    assert outcome.duplicates >= pristine_repeats
    label(f"stored>0: {outcome.stored > 0}")
    label(f"duplicates>0: {outcome.duplicates > 0}")
    for stage in ("extract", "validate", "route"):
        label(f"failed at {stage}: {stage in outcome.failed_by_stage}")


def _untimed(trace: str) -> dict:
    out = orjson.loads(trace)
    for stage in out["stages"].values():
        stage.pop("batch_us", None)
    return out


def test_a_batch_prepared_in_parts_is_the_batch_prepared_whole(sample_events, make_record, monkeypatch):
    """prepare_batch parses a batch a part at a time (a worker's memory): the rows, quarantined events, requests
    and keys are those of the whole batch, in the same order."""
    from cohort.core import process_batch as core

    broken = [dict(e) for e in sample_events[:30]]
    for event in broken[::3]:
        del event["eid"]
    records = [make_record(sample_events[i:i + 40], offset=1 + i // 40) for i in range(0, 400, 40)]
    records.insert(3, make_record(broken, offset=100))
    records = [replace(r, offset=n + 1) for n, r in enumerate(records)]

    def prepared(part_events):
        monkeypatch.setattr(core, "PART_EVENTS", part_events)
        return core.prepare_batch(records, now_ms=NOW_MS, config_version="test-config")

    whole, parts = prepared(100_000), prepared(50)
    assert len(core._parts(records, 50)) == len(records)  # at most one 40-event record per part
    untimed = [name for name in whole.rows.column_names if name != "trace"]  # a trace holds its stages' timings
    assert parts.rows.select(untimed).equals(whole.rows.select(untimed)) and parts.requests.equals(whole.requests)
    assert [_untimed(t) for t in column(parts, "trace")] == [_untimed(t) for t in column(whole, "trace")]
    assert parts.failed == whole.failed and len(whole.failed) == 10
    assert parts.request_keys == whole.request_keys
    assert (parts.events_in, parts.first_offset, parts.last_offset) == (430, 1, len(records))
    assert set(parts.stage_micros) == set(whole.stage_micros)
