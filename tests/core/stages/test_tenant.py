"""An ingestor's key writes its own tenant's events; another tenant's are quarantined with their own code."""

from __future__ import annotations

from dataclasses import replace

from cohort.core.errors import ErrorCode
from cohort.core.stages.tenant import TENANT_HEADER, check_tenant
from cohort.core.work_item import WorkItem


def items_of(events, record):
    return [WorkItem(event=e, record=record, index=i) for i, e in enumerate(events)]


def test_events_of_the_senders_tenant_pass_and_others_are_quarantined(sample_events, make_record):
    events = sample_events[:20]
    own = events[0]["context"]["channel"]
    events[3]["context"]["channel"] = "another-state"
    record = make_record(events)
    record = replace(record, headers={**record.headers, TENANT_HEADER: own})
    kept, failed = check_tenant(items_of(events, record))
    assert len(kept) + len(failed) == 20
    [f] = [f for f in failed if f.mid == events[3]["mid"]]
    assert f.code == ErrorCode.TENANT_MISMATCH and f.stage == "tenant" and "another-state" in f.message
    assert all(e.event["context"]["channel"] == own for e in kept)
    assert {f.mid for f in failed} == {e["mid"] for e in events if e["context"]["channel"] != own}


def test_without_a_tenant_header_nothing_is_checked(sample_events, make_record):
    """An admin's request (or authentication off) carries no tenant: every channel is accepted."""
    events = sample_events[:5]
    events[0]["context"]["channel"] = "another-state"
    kept, failed = check_tenant(items_of(events, make_record(events)))
    assert len(kept) == 5 and not failed


def test_an_event_without_a_channel_is_not_the_senders(sample_events, make_record):
    events = sample_events[:2]
    del events[0]["context"]["channel"]
    events[1]["context"] = "not an object"
    record = replace(make_record(events), headers={TENANT_HEADER: "dikshacustodian"})
    kept, failed = check_tenant(items_of(events, record))
    assert not kept and [f.code for f in failed] == [ErrorCode.TENANT_MISMATCH] * 2
