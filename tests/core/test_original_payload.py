"""The quarantine keeps an event as the client sent it: exact numbers, whatever path produced the text."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cohort.core import original_payload
from cohort.core.log_record import LogRecord
from cohort.core.original_payload import events_in, original_event_text


def record_of(events: list) -> LogRecord:
    body = json.dumps({"id": "api.sunbird.telemetry", "events": events}, separators=(",", ":")).encode()
    return LogRecord(payload=body, event_count=len(events))


def quarantined(record: LogRecord) -> list:
    """What the pipeline would keep of each event: its text, read back exactly."""
    parsed = events_in(orjson.loads(record.payload)) or []
    return [json.loads(original_event_text(record, i, event)) for i, event in enumerate(parsed)]


numbers = st.integers(-(2**70), 2**70) | st.sampled_from([2**64, 2**64 - 1, -(2**63), -(2**63) - 1, -(10**19)])
values = st.recursive(
    st.none() | st.booleans() | numbers | st.text(alphabet="do_0123456789 :,[", max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(events=st.lists(st.dictionaries(st.text(max_size=4), values, max_size=4), min_size=1, max_size=4))
def test_every_number_is_kept_exactly(events):
    assert quarantined(record_of(events)) == events


@pytest.mark.parametrize("number", [2**64, 10**25, -(2**63) - 1, -(10**19)])
def test_an_integer_beyond_64_bits_takes_the_exact_path(number, monkeypatch):
    calls = []
    exact = original_payload._exact_texts
    monkeypatch.setattr(original_payload, "_exact_texts", lambda payload: calls.append(1) or exact(payload))
    events = [{"eid": "LOG", "edata": {"n": number}}]
    assert quarantined(record_of(events)) == events and calls


def test_digit_runs_inside_strings_do_not_cost_a_re_parse(monkeypatch):
    """Sunbird content ids hold 22 digits; a request full of them must not be parsed twice per bad event."""
    monkeypatch.setattr(original_payload, "_exact_texts", lambda payload: pytest.fail("re-parsed"))
    events = [{"eid": "IMPRESSION", "object": {"id": "do_3188627995846531595189"},
               "edata": {"visits": [{"objid": "do_3195516694369129162088", "index": 0}], "n": 2**63}}]
    assert quarantined(record_of(events)) == events
