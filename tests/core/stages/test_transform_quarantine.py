"""Quarantined events hold no clear identifier: pseudonymised field by field when their payload parses and a
tenant can be named, sealed (and openable with the keys, to the exact bytes) otherwise, on every path that
quarantines; the counts still reconcile."""

from __future__ import annotations

import copy
import json
import re

import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings as hypothesis_settings, strategies as st

from cohort.core.errors import CohortError, ErrorCode
from cohort.core.log_record import LogRecord
from cohort.core.process_batch import prepare_batch, prepare_isolated, process_batch, quarantine_record
from cohort.core.pseudonym_cache import PseudonymCache
from cohort.core.pseudonymised_fields import identifiers
from cohort.core.pseudonyms import DEVICE, LEARNER
from cohort.core.stages.tenant import TENANT_HEADER
from cohort.core.stages.transform import Pseudonymiser, pseudonymised_fields
from cohort.security.sealed_payload import PayloadSealer, is_sealed, open_sealed, sealed_scope
from cohort.security.secrets import create_secrets
from cohort.settings import Settings

NOW_MS = 1_700_000_000_000
FIELDS = pseudonymised_fields(Settings().pseudonymise_fields)
SECRETS = create_secrets()
PSEUDONYM_SHAPE = r"^[ud]:[0-9a-f]{32}$"

from test_transform import RecordingResolver, pseudonym, record  # noqa: E402 (the stage's own test helpers)


class Seen:
    """Nothing stored yet."""

    def seen(self, keys) -> set[str]:
        return set()


def pseudonymiser(resolver=None, cache=None) -> Pseudonymiser:
    return Pseudonymiser(resolver or RecordingResolver(), FIELDS, 1024, cache=cache, sealer=PayloadSealer(SECRETS))


def prepare(records, pseudonyms=None):
    return prepare_batch(records, now_ms=NOW_MS, config_version="v", pseudonyms=pseudonyms or pseudonymiser())


def schema_invalid(event: dict, mid: str = "bad-1") -> dict:
    broken = copy.deepcopy(event)
    broken["edata"] = {"size": "big"}  # an INTERACT's edata needs type
    broken["mid"] = mid
    return broken


def assert_no_clear_field(payload: str, fields=FIELDS) -> None:
    """A quarantined payload either is sealed (and opens) or holds no configured field but pseudonyms."""
    if is_sealed(payload):
        open_sealed(payload, SECRETS)
        return
    doc = json.loads(payload)
    events = doc.get("events") if isinstance(doc, dict) and isinstance(doc.get("events"), list) else [doc]
    for event in events:
        found = identifiers(event, fields)
        for kind, places in found.items():
            for _, _, value in places:
                if kind == "drop":
                    pytest.fail(f"a field to drop kept {value!r}")
                assert _is_pseudonym(value), f"{kind} value {value!r} in clear"


def _is_pseudonym(value: str) -> bool:
    return re.match(PSEUDONYM_SHAPE, value) is not None


def test_a_schema_invalid_event_is_quarantined_with_pseudonyms_not_its_clear_ids(interact_event):
    broken = schema_invalid(interact_event)
    tenant = broken["context"]["channel"]
    prepared = prepare([record([broken, interact_event])])
    assert prepared.rows.num_rows == 1
    [failed] = prepared.failed
    assert (failed.code, failed.stage, failed.mid, failed.channel) == (ErrorCode.VALIDATION_SCHEMA, "validate",
                                                                       "bad-1", tenant)
    for clear in (broken["actor"]["id"], broken["context"]["did"]):
        assert clear not in failed.payload and clear not in failed.message
    kept = orjson.loads(failed.payload)
    assert kept["actor"]["id"] == pseudonym(tenant, LEARNER, broken["actor"]["id"])
    assert kept["context"]["did"] == pseudonym(tenant, DEVICE, broken["context"]["did"])
    # the same pseudonym as the stored event of the same learner: the quarantine joins the learner's history
    assert prepared.rows.column("actor_id").to_pylist() == [pseudonym(tenant, LEARNER, interact_event["actor"]["id"])]
    expected = copy.deepcopy(broken)
    for kind, places in identifiers(expected, FIELDS).items():
        for container, key, value in places:
            container[key] = None if kind == "drop" else pseudonym(tenant, kind, value)
    assert kept == expected  # nothing but the identifiers changed
    assert failed.payload == json.dumps(kept, ensure_ascii=False, separators=(",", ":"))  # compact


def test_an_event_of_another_tenant_is_pseudonymised_under_its_own_channel(interact_event):
    event = copy.deepcopy(interact_event)
    event["context"]["channel"] = "tenant-b"
    mine = record([event], headers={TENANT_HEADER: "tenant-a"})
    [failed] = prepare([mine]).failed
    assert failed.code is ErrorCode.TENANT_MISMATCH
    assert orjson.loads(failed.payload)["actor"]["id"] == pseudonym("tenant-b", LEARNER, event["actor"]["id"])


def test_an_event_naming_no_tenant_takes_the_senders_tenant_else_is_sealed(interact_event):
    event = copy.deepcopy(interact_event)
    event["context"]["channel"] = "not a channel!"
    [failed] = prepare([record([event], headers={TENANT_HEADER: "tenant-a"})]).failed
    assert failed.code is ErrorCode.TENANT_MISMATCH  # sent with tenant-a's key
    assert orjson.loads(failed.payload)["actor"]["id"] == pseudonym("tenant-a", LEARNER, event["actor"]["id"])

    original = record([event])  # no key's tenant either: nobody's pseudonyms apply
    [sealed] = prepare([original]).failed
    assert is_sealed(sealed.payload) and sealed_scope(sealed.payload) == "_platform"
    assert event["actor"]["id"] not in sealed.payload
    assert orjson.loads(open_sealed(sealed.payload, SECRETS)) == event


def test_an_id_longer_than_the_vault_takes_is_sealed_as_sent(interact_event):
    event = copy.deepcopy(interact_event)
    event["context"]["uid"] = "x" * 1025
    for cache in (None, PseudonymCache()):
        pseudonyms = pseudonymiser(cache=cache)
        prepare([record([interact_event])], pseudonyms)  # the learner's id is known to the cache now
        [failed] = prepare([record([event], offset=2)], pseudonyms).failed
        assert failed.code is ErrorCode.VAULT_INPUT and is_sealed(failed.payload)
        assert sealed_scope(failed.payload) == event["context"]["channel"]
        assert orjson.loads(open_sealed(failed.payload, SECRETS)) == event  # as sent, not half replaced


@pytest.mark.parametrize("body", [b'{"events":[{"actor":{"id":"child-1234"},"context":{"did":"tab-99"', b"\xff\xfe{}",
                                  b'\xef\xbb\xbf{"events":[{"actor":{"id":"child-1234"}}]} trailing'])
def test_a_corrupt_request_is_sealed_and_opens_to_its_exact_bytes_with_its_tenants_key_only(body):
    corrupt = LogRecord(payload=body, event_count=3, received_at_ms=NOW_MS, offset=7,
                        headers={TENANT_HEADER: "tenant-a", "x-device-id": "tab-99"})
    outcome = process_batch([corrupt], Seen(), now_ms=NOW_MS, config_version="v", pseudonyms=pseudonymiser())
    [failed] = outcome.failed
    assert (failed.code, failed.event_count) == (ErrorCode.EXTRACT_PAYLOAD, 3)
    assert outcome.stored + outcome.failed_count + outcome.duplicates == outcome.events_in == 3
    assert is_sealed(failed.payload) and b"child-1234" not in failed.payload.encode()
    assert sealed_scope(failed.payload) == "tenant-a"
    assert open_sealed(failed.payload, SECRETS) == body
    moved = failed.payload.replace(":tenant-a:", ":tenant-b:")
    with pytest.raises(CohortError) as refused:
        open_sealed(moved, SECRETS)  # another tenant's key (and scope) does not open it
    assert refused.value.code is ErrorCode.VAULT_INTEGRITY
    with pytest.raises(CohortError):
        open_sealed(failed.payload, create_secrets())  # nor another deployment's keys


def test_a_request_quarantined_whole_has_its_events_pseudonymised_and_reconciles(sample_events):
    events = sample_events[:20]
    whole = record(events, offset=3, headers={"x-device-id": "tab-1"})
    prepared = quarantine_record(whole, ErrorCode.PIPELINE_POISON, "core", "every attempt failed", pseudonymiser())
    [failed] = prepared.failed
    assert failed.event_count == 20 == prepared.events_in
    doc = orjson.loads(failed.payload)
    assert doc["params"] == {"msgid": "m-3"} and len(doc["events"]) == 20
    for sent, kept in zip(events, doc["events"]):
        assert kept["actor"]["id"] == pseudonym(sent["context"]["channel"], LEARNER, sent["actor"]["id"])
        assert kept["mid"] == sent["mid"]
    assert_no_clear_field(failed.payload)


def test_events_isolated_as_poison_are_pseudonymised(sample_events):
    def prepare_failing_on_one(records, **kwargs):
        if b'"mid":"' + sample_events[1]["mid"].encode() in records[0].payload:
            raise ValueError("this event breaks a stage")
        return prepare_batch(records, **kwargs)

    whole = record(sample_events[:3])
    prepared = prepare_isolated(whole, now_ms=NOW_MS, config_version="v", prepare=prepare_failing_on_one,
                                pseudonyms=pseudonymiser())
    assert prepared.rows.num_rows == 2
    [poison] = prepared.failed
    assert (poison.code, poison.mid) == (ErrorCode.PIPELINE_POISON, sample_events[1]["mid"])
    assert sample_events[1]["actor"]["id"] not in poison.payload
    assert_no_clear_field(poison.payload)


def test_a_vault_away_fails_the_batch_rather_than_keep_a_clear_id(interact_event):
    from test_transform import FailingResolver
    from cohort.core.errors import TransientFault
    from cohort.core.stages.transform import PseudonymsUnavailable
    with pytest.raises(PseudonymsUnavailable):
        prepare([record([schema_invalid(interact_event)])], pseudonymiser(FailingResolver(TransientFault("away"))))


def test_without_a_sealer_what_cannot_be_pseudonymised_is_withheld(interact_event):
    event = copy.deepcopy(interact_event)
    event["context"]["channel"] = "no tenant"
    [failed] = prepare([record([event])], Pseudonymiser(RecordingResolver(), FIELDS, 1024)).failed
    assert failed.payload.startswith("cohort-withheld:v1:") and event["actor"]["id"] not in failed.payload


json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
                      st.text(max_size=8), st.sampled_from(["child-1", "tab-2", "User", "Device", "in.ekstep"]))
json_values = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.sampled_from(["actor", "id", "context", "did", "uid", "channel", "edata", "items", "origin", "type",
                     "object", "filters", "createdBy", "dspec", "eid", "mid", "events"]), inner, max_size=5),
    max_leaves=30)


@hypothesis_settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                             HealthCheck.too_slow])
@given(events=st.lists(json_values, min_size=1, max_size=4), tenant=st.sampled_from([None, "tenant-a", "bad tenant"]),
       garble=st.one_of(st.none(), st.integers(0, 400)))
def test_any_quarantined_payload_keeps_no_configured_field_in_clear(interact_event, events, tenant, garble):
    """Random JSON as events (sometimes beside a valid one, sometimes the request's bytes cut short): the batch
    is prepared without raising, reconciles, and every quarantined payload is sealed or holds pseudonyms only."""
    body = json.dumps({"id": "api.sunbird.telemetry", "params": {"msgid": "h"}, "events": [interact_event, *events]},
                      ensure_ascii=False).encode()
    if garble is not None:
        body = body[:garble]
    headers = {TENANT_HEADER: tenant} if tenant else {}
    sent = LogRecord(payload=body, event_count=1 + len(events), received_at_ms=NOW_MS, offset=1, headers=headers)
    outcome = process_batch([sent], Seen(), now_ms=NOW_MS, config_version="v",
                            pseudonyms=pseudonymiser(cache=PseudonymCache()))
    assert outcome.stored + outcome.failed_count + outcome.duplicates == outcome.events_in
    for failed in outcome.failed:
        event("sealed" if is_sealed(failed.payload) else "pseudonymised")
        assert_no_clear_field(failed.payload)
        if is_sealed(failed.payload) and failed.event_count > 1:
            assert open_sealed(failed.payload, SECRETS) == body
