"""Reading raw events for the summariser: envelopes, nulls in place of objects, missing fields."""

from __future__ import annotations

import pytest

from cohort.analytics.workflow_events import (
    DEFAULT_APP_ID,
    SKIP_BAD_ETS,
    SKIP_NO_CONTEXT,
    SKIP_NO_EID,
    SKIP_NOT_OBJECT,
    SKIP_SERVER_EVENT,
    WorkflowEvent,
    normalise,
    unwrap,
)

EVENT = {"eid": "START", "ets": 1.515493350595E12, "actor": {"id": "580"},
         "context": {"did": "d1", "channel": "in.sunbird", "pdata": {"id": "app", "ver": "1.0", "pid": "p"},
                     "sid": "s1"},
         "edata": {"type": "player", "mode": "preview"}}


def test_envelopes_are_unwrapped():
    assert unwrap({"id": "api.sunbird.telemetry", "events": [EVENT, EVENT]}) == [EVENT, EVENT]
    assert unwrap({"event": EVENT}) == [EVENT]
    assert unwrap([EVENT, 3]) == [EVENT, 3]
    assert unwrap(EVENT) == [EVENT]
    assert unwrap("text") == ["text"]


def test_a_full_event_reads_its_key_and_float_ets_as_whole_ms():
    event = normalise(EVENT)
    assert isinstance(event, WorkflowEvent)
    assert event.ets == 1515493350595
    assert event.key == ("d1", "in.sunbird", "app")
    assert (event.uid, event.sid, event.edata_type, event.edata_mode) == ("580", "s1", "player", "preview")


@pytest.mark.parametrize(("raw", "reason"), [
    ("not an event", SKIP_NOT_OBJECT),
    ({"context": {"channel": "c"}, "message": "…"}, SKIP_NO_EID),
    ({"eid": None, "context": {}}, SKIP_NO_EID),
    ({"eid": "LOG", "context": {}}, SKIP_SERVER_EVENT),
    ({"eid": "SEARCH", "context": {}}, SKIP_SERVER_EVENT),
    ({"eid": "INTERACT", "context": None}, SKIP_NO_CONTEXT),
    ({"eid": "INTERACT", "context": {}, "ets": "soon"}, SKIP_BAD_ETS),
    ({"eid": "INTERACT", "context": {}, "ets": True}, SKIP_BAD_ETS),
    ({"eid": "INTERACT", "context": {}, "ets": float("nan")}, SKIP_BAD_ETS),
    ({"eid": "INTERACT", "context": {}, "ets": 10**30}, SKIP_BAD_ETS),
])
def test_unusable_events_carry_a_reason(raw, reason):
    assert normalise(raw) == reason


def test_nulls_and_missing_fields_take_defaults():
    event = normalise({"eid": "INTERACT", "context": {"pdata": None, "did": None, "channel": 5},
                       "edata": None, "actor": None, "object": "x", "tags": "t"})
    assert isinstance(event, WorkflowEvent)
    assert event.ets == 0  # no ets: the epoch, as the JVM reader leaves a missing number
    assert event.key == ("", "5", DEFAULT_APP_ID)
    assert (event.uid, event.edata, event.edata_type, event.obj, event.tags) == ("", {}, None, None, None)
    from_text = normalise({"eid": "INTERACT", "context": {}, "ets": "1515493350595"})
    assert isinstance(from_text, WorkflowEvent) and from_text.ets == 1515493350595
