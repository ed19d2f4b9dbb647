"""Validate: check each event against the official telemetry v3 schema of its type."""

from __future__ import annotations

from cohort.core.errors import ErrorCode
from cohort.core.telemetry_schema import validator_for
from cohort.core.work_item import FailedEvent, WorkItem, describe_failure, failed_from_item

STAGE = "validate"


def validate(items: list[WorkItem]) -> tuple[list[WorkItem], list[FailedEvent]]:
    valid: list[WorkItem] = []
    failed: list[FailedEvent] = []
    for item in items:
        eid = item.event.get("eid")
        if not isinstance(eid, str) or not eid:
            failed.append(failed_from_item(item, ErrorCode.VALIDATION_MISSING_EID, STAGE,
                                           "event has no 'eid' (event type) string"))
            continue
        schema = validator_for(eid)
        if schema is None:
            failed.append(failed_from_item(item, ErrorCode.VALIDATION_UNKNOWN_EID, STAGE,
                                           f"no telemetry v3 schema for eid {eid!r:.60}"))
            continue
        try:
            matches = schema.is_valid(item.event)
        except Exception as exc:  # the validator itself failed on this input: isolate it, go on
            failed.append(failed_from_item(item, ErrorCode.PIPELINE_POISON, STAGE, describe_failure(exc)))
            continue
        if not matches:
            # Said the way a telemetry author reads it: 'edata must contain ['type'] properties'.
            failed.append(failed_from_item(item, ErrorCode.VALIDATION_SCHEMA, STAGE, schema.explain(item.event)))
            continue
        item.schema = eid.lower()
        valid.append(item)
    return valid, failed
