"""Transform: every configured learner and device id, and the device header, is stored as a pseudonym.

The resolver here records its calls and answers a hash of (tenant, kind, id); the real vault is
exercised by the pipeline tests (tests/pipeline/test_runner.py, test_scaleout_pipeline.py)."""

from __future__ import annotations

import copy
import hashlib

import orjson
import pytest
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st

from cohort.core.errors import CohortError, ErrorCode, TerminalFault, TransientFault
from cohort.core.log_record import LogRecord
from cohort.core.process_batch import prepare_batch, prepare_isolated, quarantine_record
from cohort.core.pseudonym_cache import PseudonymCache
from cohort.core.pseudonymised_fields import identifiers
from cohort.core.pseudonyms import DEVICE, LEARNER
from cohort.core.stages.transform import (IdentifierRefused, Pseudonymiser, PseudonymsUnavailable, pseudonymise,
                                          pseudonymised_fields)
from cohort.core.work_item import WorkItem
from cohort.settings import Settings

NOW_MS = 1_700_000_000_000
FIELDS = pseudonymised_fields(Settings().pseudonymise_fields)


class RecordingResolver:
    """Pseudonyms as a hash of (tenant, kind, id), so the same id of two tenants gets two pseudonyms."""

    def __init__(self):
        self.calls: list[tuple[str, str, frozenset[str]]] = []

    def pseudonyms(self, tenant, kind, clear_ids):
        self.calls.append((tenant, kind, frozenset(clear_ids)))
        return {clear: pseudonym(tenant, kind, clear) for clear in clear_ids}


def pseudonym(tenant: str, kind: str, clear: str) -> str:
    return ("u:" if kind == LEARNER else "d:") + hashlib.sha256(f"{tenant}\0{kind}\0{clear}".encode()).hexdigest()[:32]


class FailingResolver:
    def __init__(self, exc: BaseException):
        self.exc = exc

    def pseudonyms(self, tenant, kind, clear_ids):
        raise self.exc


def record(events, offset=1, headers=None) -> LogRecord:
    body = orjson.dumps({"id": "api.sunbird.telemetry", "ver": "3.0", "params": {"msgid": f"m-{offset}"},
                         "events": events})
    return LogRecord(payload=body, event_count=len(events), received_at_ms=NOW_MS, offset=offset,
                     headers={"x-channel-id": "test", **(headers or {})} if headers is not False else {})


def prepare(records, resolver=None, fields=FIELDS, max_id_chars=1024):
    resolver = resolver if resolver is not None else RecordingResolver()
    return prepare_batch(records, now_ms=NOW_MS, config_version="v",
                         pseudonyms=Pseudonymiser(resolver, fields, max_id_chars))


def clear_ids_of(events) -> set[str]:
    """Every value of a configured field in these events (the ids that must never be stored)."""
    ids = set()
    for event in events:
        ids |= {value for kind, places in _found(copy.deepcopy(event)).items() if kind != "drop"
                for _, _, value in places}
    return ids


def _found(event):
    return identifiers(event, FIELDS)


def found_count(event) -> int:
    return sum(len(places) for places in _found(event).values())


def stored_texts(prepared) -> list[str]:
    """Every string the store would receive for these rows and requests."""
    texts = []
    for table in (prepared.rows, prepared.requests):
        for column in table.columns:
            texts += [v for v in column.to_pylist() if isinstance(v, str)]
    return texts


def test_one_resolver_call_per_tenant_and_kind_for_the_whole_batch(sample_events):
    resolver = RecordingResolver()
    records = [record(sample_events[i:i + 100], offset=1 + i // 100, headers={"x-device-id": f"dev-{i}"})
               for i in range(0, 500, 100)]
    prepared = prepare(records, resolver)
    assert prepared.rows.num_rows == 500 and prepared.failed == []
    pairs = [(tenant, kind) for tenant, kind, _ in resolver.calls]
    assert len(pairs) == len(set(pairs))
    tenants = {e["context"]["channel"] for e in sample_events}
    assert {t for t, _ in pairs} == tenants | {"test"}  # "test": the records' X-Channel-Id, for the header
    asked = {(t, k): ids for t, k, ids in resolver.calls}
    for event in sample_events:
        assert event["actor"]["id"] in asked[(event["context"]["channel"], LEARNER)]


def test_no_clear_id_reaches_the_columns_the_stored_event_or_the_request_headers(sample_events):
    channels = {e["context"]["channel"] for e in sample_events}  # an org's own actor id may be its channel
    clear = (clear_ids_of(sample_events) | {"dev-secret-1"}) - channels
    assert len(clear) > 30
    prepared = prepare([record(sample_events, headers={"x-device-id": "dev-secret-1"})])
    assert prepared.rows.num_rows == 500
    texts = stored_texts(prepared)
    leaks = {c for c in clear if len(c) >= 8 and any(c in text for text in texts)}
    assert leaks == set()
    rows = prepared.rows.to_pylist()
    for event, row in zip(sample_events, rows):
        tenant = event["context"]["channel"]
        assert row["actor_id"] == pseudonym(tenant, LEARNER, event["actor"]["id"])
        stored = orjson.loads(row["event"])
        assert stored["actor"]["id"] == row["actor_id"]
        if event["context"].get("did"):
            assert row["did"] == stored["context"]["did"] == pseudonym(tenant, DEVICE, event["context"]["did"])
    headers = orjson.loads(prepared.requests.column("headers")[0].as_py())
    assert headers["x-device-id"] == pseudonym("test", DEVICE, "dev-secret-1")


def test_every_configured_field_is_replaced(interact_event):
    event = copy.deepcopy(interact_event)
    event["context"]["uid"] = "uid-1"
    event["edata"]["dspec"] = {"id": "dspec-1", "os": "Android"}
    event["devicedata"] = {"devicespec": {"id": "spec-1"}}
    event["edata"]["items"] = [{"origin": {"id": "origin-d", "type": "Device"}},
                               {"origin": {"id": "origin-u", "type": "User"}},
                               {"origin": {"id": "origin-x", "type": "Content"}}, "not an object"]
    event["object"] = {"id": "user-7", "type": "User"}
    resolver = RecordingResolver()
    items = [WorkItem(event=event, record=record([event]))]
    transformed = pseudonymise(items, [items[0].record], Pseudonymiser(resolver, FIELDS))
    tenant = event["context"]["channel"]
    asked = {(t, k): ids for t, k, ids in resolver.calls}
    assert asked[(tenant, LEARNER)] == {interact_event["actor"]["id"], "uid-1", "origin-u", "user-7"}
    assert asked[(tenant, DEVICE)] == {interact_event["context"]["did"], "dspec-1", "spec-1", "origin-d"}
    assert event["edata"]["items"][2]["origin"]["id"] == "origin-x"  # content, not a person
    assert event["object"]["id"] == pseudonym(tenant, LEARNER, "user-7")
    assert event["devicedata"]["devicespec"]["id"] == pseudonym(tenant, DEVICE, "spec-1")
    assert transformed.pseudonymised == {1: 8}


def test_other_tenants_ids_are_never_mixed(interact_event):
    first, second = copy.deepcopy(interact_event), copy.deepcopy(interact_event)
    second["context"]["channel"] = "other-state"
    second["mid"] = "other-mid"
    resolver = RecordingResolver()
    prepared = prepare([record([first, second])], resolver)
    actor_ids = prepared.rows.column("actor_id").to_pylist()
    assert actor_ids[0] != actor_ids[1]  # the same learner id in two tenants: two pseudonyms
    assert {(t, k) for t, k, _ in resolver.calls} == {
        (interact_event["context"]["channel"], LEARNER), (interact_event["context"]["channel"], DEVICE),
        ("other-state", LEARNER), ("other-state", DEVICE)}
    # "test" (the header's tenant) is asked nothing: the record has no device header


def test_missing_empty_and_non_string_fields_are_left_alone(interact_event):
    event = copy.deepcopy(interact_event)
    del event["context"]["did"]
    event["actor"]["id"] = ""
    event["edata"]["dspec"] = {"id": 42}
    event["devicedata"] = ["not", "an", "object"]
    event["object"] = {"id": None, "type": "User"}
    before = copy.deepcopy(event)
    resolver = RecordingResolver()
    transformed = pseudonymise([WorkItem(event=event, record=record([event]))], [record([event])],
                               Pseudonymiser(resolver, FIELDS))
    assert event == before and resolver.calls == [] and transformed.pseudonymised == {}


def test_the_trace_says_what_transform_did(sample_events):
    prepared = prepare([record(sample_events[:10], offset=1, headers={"x-device-id": "d"}),
                        record(sample_events[10:20], offset=2)])
    traces = [orjson.loads(t) for t in prepared.rows.column("trace").to_pylist()]
    first, second = traces[0]["stages"]["transform"], traces[-1]["stages"]["transform"]
    assert first["ok"] is True and first["pseudonymised"] == sum(found_count(e) for e in sample_events[:10]) + 1
    assert second["pseudonymised"] == sum(found_count(e) for e in sample_events[10:20])
    without = prepare_batch([record(sample_events[:1])], now_ms=NOW_MS, config_version="v")
    assert orjson.loads(without.rows.column("trace")[0].as_py())["stages"]["transform"]["ok"] is False


def test_the_device_header_takes_the_events_tenant_when_the_record_names_none(interact_event):
    resolver = RecordingResolver()
    prepared = prepare([record([interact_event], headers=False) .__class__(
        payload=record([interact_event]).payload, event_count=1, offset=1, headers={"x-device-id": "dev-9"})], resolver)
    headers = orjson.loads(prepared.requests.column("headers")[0].as_py())
    assert headers == {"x-device-id": pseudonym(interact_event["context"]["channel"], DEVICE, "dev-9")}


def test_a_device_header_no_tenant_can_be_named_for_is_dropped_not_stored():
    bad = LogRecord(payload=b'{"events":[{"eid":"NOPE"}]}', event_count=1, offset=1,
                    headers={"x-device-id": "dev-9", "x-channel-id": "not a channel!", "msgid": "m"})
    prepared = prepare([bad])
    assert orjson.loads(prepared.requests.column("headers")[0].as_py()) == {"x-channel-id": "not a channel!"}
    quarantined = quarantine_record(bad, ErrorCode.PIPELINE_POISON, "core", "why",
                                    Pseudonymiser(RecordingResolver(), FIELDS))
    assert "dev-9" not in quarantined.requests.column("headers")[0].as_py()


def test_an_event_whose_channel_names_no_tenant_is_quarantined_and_never_sent_to_the_resolver(interact_event):
    event = copy.deepcopy(interact_event)
    event["context"]["channel"] = "a channel with spaces"
    resolver = RecordingResolver()
    prepared = prepare([record([event, interact_event])], resolver)
    assert prepared.rows.num_rows == 1
    [failed] = prepared.failed
    assert (failed.code, failed.stage) == (ErrorCode.AUTH_INVALID_TENANT, "transform")
    assert all(t == interact_event["context"]["channel"] for t, _, _ in resolver.calls)


def test_an_id_longer_than_the_resolver_takes_quarantines_its_event_alone(interact_event):
    event = copy.deepcopy(interact_event)
    event["actor"]["id"] = "x" * 1025
    event["mid"] = "long"
    prepared = prepare([record([event, interact_event])])
    assert prepared.rows.num_rows == 1
    assert [(f.code, f.stage, f.mid) for f in prepared.failed] == [(ErrorCode.VAULT_INPUT, "transform", "long")]


@pytest.mark.parametrize("exc", [OSError("disk"), RuntimeError("bug"), TransientFault("redis away"),
                                 CohortError(ErrorCode.VAULT_UNAVAILABLE, "locked")])
def test_a_resolver_failure_is_a_fault_the_batch_waits_on(sample_events, exc):
    with pytest.raises(PseudonymsUnavailable):
        prepare([record(sample_events[:5])], FailingResolver(exc))


def test_a_terminal_fault_of_the_resolver_stops_as_terminal(sample_events):
    with pytest.raises(TerminalFault):
        prepare([record(sample_events[:5])], FailingResolver(TerminalFault("wrong key")))


def test_an_input_the_resolver_refuses_is_the_inputs_fault(sample_events):
    with pytest.raises(IdentifierRefused):
        prepare([record(sample_events[:5])], FailingResolver(CohortError(ErrorCode.VAULT_INPUT, "bad id")))


def test_a_partial_answer_is_never_used(sample_events):
    class Partial(RecordingResolver):
        def pseudonyms(self, tenant, kind, clear_ids):
            return dict(list(super().pseudonyms(tenant, kind, clear_ids).items())[1:])

    with pytest.raises(PseudonymsUnavailable):
        prepare([record(sample_events[:50])], Partial())


def test_isolation_never_blames_an_event_for_a_resolver_fault(sample_events):
    pseudonyms = Pseudonymiser(FailingResolver(TransientFault("vault away")), FIELDS)
    with pytest.raises(PseudonymsUnavailable):
        prepare_isolated(record(sample_events[:3]), now_ms=NOW_MS, config_version="v", pseudonyms=pseudonyms)


def test_isolation_pseudonymises_each_event_and_the_header(sample_events):
    prepared = prepare_isolated(record(sample_events[:3], headers={"x-device-id": "dev-1"}), now_ms=NOW_MS,
                                config_version="v", pseudonyms=Pseudonymiser(RecordingResolver(), FIELDS))
    assert prepared.rows.column("actor_id").to_pylist() == [
        pseudonym(e["context"]["channel"], LEARNER, e["actor"]["id"]) for e in sample_events[:3]]
    assert orjson.loads(prepared.requests.column("headers")[0].as_py())["x-device-id"] == pseudonym("test", DEVICE,
                                                                                                     "dev-1")


@pytest.mark.parametrize("entry", ["", "a..b", "a:robot", "a?x", "a.b[", "a.b[]", ".a", "a b"])
def test_a_malformed_field_setting_is_a_configuration_error(entry):
    with pytest.raises(CohortError) as refused:
        pseudonymised_fields([entry])
    assert refused.value.code is ErrorCode.CONFIG_INVALID


def test_field_settings_name_their_kind():
    parsed = pseudonymised_fields(["actor.id", "context.did", "x.y:device", "a[].b:learner?type=User"])
    assert [(f.keys, f.kind, f.when) for f in parsed] == [
        (("actor", "id"), LEARNER, None), (("context", "did"), DEVICE, None), (("x", "y"), DEVICE, None),
        (("a", "[]", "b"), LEARNER, ("type", "User"))]
    with pytest.raises(CohortError):
        pseudonymised_fields(["actor.id", "actor.id"])


ids = st.text(st.characters(codec="utf-8"), min_size=1, max_size=12)
tenants = st.sampled_from(["state-a", "state-b", "in.ekstep"])


@hypothesis_settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.lists(st.tuples(tenants, ids, st.one_of(st.none(), ids), st.one_of(st.none(), ids, st.integers(-2**63, 2**63 - 1))),
                     min_size=1, max_size=20),
       device_header=st.one_of(st.none(), ids))
def test_any_ids_of_any_tenants_are_all_replaced_and_nothing_else_changes(interact_event, data, device_header):
    events, expected = [], []
    for n, (tenant, actor, did, uid) in enumerate(data):
        event = copy.deepcopy(interact_event)
        event["mid"] = f"mid-{n}"
        event["context"]["channel"] = tenant
        event["actor"]["id"] = actor
        event["context"].pop("did")
        if did is not None:
            event["context"]["did"] = did
        if uid is not None:
            event["context"]["uid"] = uid
        want = copy.deepcopy(event)
        want["actor"]["id"] = pseudonym(tenant, LEARNER, actor)
        if did:
            want["context"]["did"] = pseudonym(tenant, DEVICE, did)
        if isinstance(uid, str) and uid:
            want["context"]["uid"] = pseudonym(tenant, LEARNER, uid)
        events.append(event)
        expected.append(want)
    headers = {"x-device-id": device_header} if device_header is not None else {}
    resolver = RecordingResolver()
    fields = pseudonymised_fields(["actor.id", "context.did", "context.uid"])
    prepared = prepare([record(events, headers=headers)], resolver, fields)
    assert [orjson.loads(text) for text in prepared.rows.column("event").to_pylist()] == expected
    pairs = [(t, k) for t, k, _ in resolver.calls]
    assert len(pairs) == len(set(pairs))
    stored_headers = orjson.loads(prepared.requests.column("headers")[0].as_py())
    if device_header:
        assert stored_headers["x-device-id"] == pseudonym("test", DEVICE, device_header)


def test_with_a_cache_ids_seen_lately_are_not_asked_again_and_get_the_same_pseudonyms(sample_events):
    resolver = RecordingResolver()
    pseudonymiser = Pseudonymiser(resolver, FIELDS, 1024, cache=PseudonymCache())
    first = prepare_batch([record(sample_events[:250], headers={"x-device-id": "dev-1"})], now_ms=NOW_MS,
                          config_version="v", pseudonyms=pseudonymiser)
    asked = len(resolver.calls)
    assert asked > 0
    second = prepare_batch([record(sample_events[:250], offset=2, headers={"x-device-id": "dev-1"})], now_ms=NOW_MS,
                           config_version="v", pseudonyms=pseudonymiser)
    assert len(resolver.calls) == asked  # every id, the header's too, came from the cache
    for column in ("actor_id", "did", "event"):
        assert second.rows.column(column).to_pylist() == first.rows.column(column).to_pylist()
    assert second.requests.column("headers").to_pylist() == first.requests.column("headers").to_pylist()
    uncached = prepare([record(sample_events[:250])])
    assert uncached.rows.column("event").to_pylist() == first.rows.column("event").to_pylist()


def test_with_a_cache_a_forgotten_id_is_asked_again_and_a_new_one_joins_the_known(interact_event):
    resolver = RecordingResolver()
    cache = PseudonymCache()
    pseudonymiser = Pseudonymiser(resolver, FIELDS, 1024, cache=cache)
    tenant = interact_event["context"]["channel"]
    other = copy.deepcopy(interact_event)
    other["actor"]["id"], other["mid"] = "someone-new", "m2"
    prepare_batch([record([interact_event])], now_ms=NOW_MS, config_version="v", pseudonyms=pseudonymiser)
    resolver.calls.clear()
    cache.forget_id(tenant, LEARNER, interact_event["actor"]["id"])
    prepare_batch([record([interact_event, other], offset=2)], now_ms=NOW_MS, config_version="v",
                  pseudonyms=pseudonymiser)
    assert resolver.calls == [(tenant, LEARNER, frozenset({interact_event["actor"]["id"], "someone-new"}))]


def test_with_a_cache_an_id_too_long_quarantines_its_event_alone(interact_event):
    pseudonymiser = Pseudonymiser(RecordingResolver(), FIELDS, 1024, cache=PseudonymCache())
    prepare_batch([record([interact_event])], now_ms=NOW_MS, config_version="v", pseudonyms=pseudonymiser)
    event = copy.deepcopy(interact_event)
    event["context"]["uid"], event["mid"] = "x" * 1025, "long"
    prepared = prepare_batch([record([event, interact_event], offset=2)], now_ms=NOW_MS, config_version="v",
                             pseudonyms=pseudonymiser)
    assert prepared.rows.num_rows == 1
    assert [(f.code, f.stage, f.mid) for f in prepared.failed] == [(ErrorCode.VAULT_INPUT, "transform", "long")]
    assert interact_event["actor"]["id"] not in prepared.failed[0].payload  # known ids were replaced on the way
