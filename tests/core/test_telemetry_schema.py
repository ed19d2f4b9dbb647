"""The shipped Sunbird telemetry v3 schemas, compiled."""

from __future__ import annotations

import os
import subprocess
import sys

import jsonschema_rs
import pytest

from cohort.core.telemetry_schema import (SchemaViolation, _resolve_resource, compile_all, event_types, load_schema,
                                          schema_version, validator_for)

SUNBIRD_EVENT_TYPES = {
    "START", "END", "IMPRESSION", "INTERACT", "ASSESS", "RESPONSE", "INTERRUPT", "FEEDBACK", "SHARE", "AUDIT",
    "ERROR", "HEARTBEAT", "LOG", "SEARCH", "EXDATA", "SUMMARY", "METRICS",
}


def test_event_types_are_the_sunbird_v3_set():
    assert event_types() == SUNBIRD_EVENT_TYPES


def test_event_types_match_the_official_union_schema():
    # event.json is Sunbird's own list of event schemas (oneOf $ref …/<type>.json)
    refs = {ref["$ref"].rsplit("/", 1)[1].removesuffix(".json").upper() for ref in load_schema("event")["oneOf"]}
    assert event_types() == refs


@pytest.mark.parametrize("building_block", ["actor", "context", "envelope", "object", "pdata", "common", "event"])
def test_building_blocks_are_not_event_types(building_block):
    assert building_block.upper() not in event_types()
    assert validator_for(building_block.upper()) is None


@pytest.mark.parametrize("eid", ["interact", "Interact", "UNKNOWN", "", "INTERACT ", "../event"])
def test_no_validator_for_unknown_or_miscased_eid(eid):
    assert validator_for(eid) is None


def test_every_sample_event_validates(sample_events):
    assert len(sample_events) == 500
    failures = {}
    for event in sample_events:
        try:
            validator_for(event["eid"])(event)
        except SchemaViolation as exc:
            failures[event["mid"]] = exc.message
    assert failures == {}


def test_sample_covers_many_event_types(sample_events):
    assert {e["eid"] for e in sample_events} >= {"INTERACT", "IMPRESSION", "START", "END", "SEARCH", "AUDIT"}


def test_validator_rejects_event_of_another_type(sample_events):
    impression = next(e for e in sample_events if e["eid"] == "IMPRESSION")
    with pytest.raises(SchemaViolation):
        validator_for("INTERACT")(impression)  # eid is an enum in each type's schema


def test_validators_are_compiled_once():
    compile_all()
    assert validator_for("INTERACT") is validator_for("INTERACT")


def test_schema_version_is_stable_within_a_process():
    version = schema_version()
    assert version == schema_version()
    prefix, _, digest = version.partition(":")
    assert prefix == "telemetry-3.0"
    assert len(digest) == 12 and int(digest, 16) >= 0


def test_schema_version_is_stable_across_processes():
    code = "from cohort.core.telemetry_schema import schema_version; print(schema_version())"
    seen = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={**os.environ, "PYTHONHASHSEED": seed}).stdout.strip()
        for seed in ("1", "2")
    }
    assert seen == {schema_version()}


@pytest.mark.parametrize("uri", ["http://api.ekstep.org/telemetry/actor.json", "resource:/schemas/telemetry/3.0/nope.json",
                                 "resource:/schemas/telemetry/3.0/../../../etc/passwd.json", "file:///etc/passwd",
                                 "resource:/schemas/telemetry/3.0/"])
def test_references_resolve_only_to_the_shipped_files(uri):
    with pytest.raises(ValueError, match="not shipped"):
        _resolve_resource(uri)


def test_a_schema_referring_outside_the_shipped_files_does_not_compile():
    schema = {"allOf": [{"$ref": "resource:/schemas/telemetry/3.0/common.json"},
                        {"$ref": "resource:/schemas/telemetry/3.0/missing.json"}]}
    with pytest.raises(Exception, match="missing.json"):
        jsonschema_rs.Draft7Validator(schema, retriever=_resolve_resource)


def test_every_event_type_compiles_from_the_package_files_with_its_references(sample_events):
    compile_all()
    interact = next(e for e in sample_events if e["eid"] == "INTERACT")
    # actor comes from actor.json through common.json: a reference that did not resolve would accept this
    with pytest.raises(SchemaViolation, match="actor must contain"):
        validator_for("INTERACT")({**interact, "actor": {}})
