"""Validate: check each event against the official telemetry v3 schema of its type."""

from __future__ import annotations

from fastjsonschema import JsonSchemaException

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
        check = validator_for(eid)
        if check is None:
            failed.append(failed_from_item(item, ErrorCode.VALIDATION_UNKNOWN_EID, STAGE,
                                           f"no telemetry v3 schema for eid {eid!r:.60}"))
            continue
        try:
            check(item.event)
        except JsonSchemaException as exc:
            failed.append(failed_from_item(item, ErrorCode.VALIDATION_SCHEMA, STAGE, _describe(exc)))
            continue
        except Exception as exc:  # the validator itself failed on this input: isolate it, go on
            failed.append(failed_from_item(item, ErrorCode.PIPELINE_POISON, STAGE, describe_failure(exc)))
            continue
        item.schema = eid.lower()
        valid.append(item)
    return valid, failed


def _describe(exc: JsonSchemaException) -> str:
    """fastjsonschema names the path as 'data.edata.type'; say it the way a telemetry author reads it."""
    message = str(getattr(exc, "message", exc))
    if message.startswith("data."):
        return message[len("data."):]
    if message.startswith("data "):
        return "event " + message[len("data "):]
    return message
