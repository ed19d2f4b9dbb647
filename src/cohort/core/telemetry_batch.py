"""The Sunbird telemetry batch envelope, as posted by learning apps.

The ingest API checks only the envelope: per-event validation happens in the
pipeline (as in Sunbird), so that one bad event never costs a client its batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from cohort.core.errors import CohortError, ErrorCode

# Envelope ids sent by Sunbird clients over the years.
ACCEPTED_IDS = frozenset({"api.sunbird.telemetry", "ekstep.telemetry", "api.telemetry"})


@dataclass(frozen=True, slots=True)
class TelemetryBatch:
    """A checked envelope: its msgid (if the client sent one) and how many events it holds."""

    msgid: str | None
    event_count: int


def parse_telemetry_batch(body: bytes, max_events: int) -> TelemetryBatch:
    """Parse and check a request body once; raise CohortError with a stable code if it is not a batch."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise CohortError(ErrorCode.MALFORMED_JSON, f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise CohortError(ErrorCode.ENVELOPE, "request body must be a JSON object with an 'events' array")
    envelope_id = doc.get("id")
    if envelope_id is not None and (not isinstance(envelope_id, str) or envelope_id not in ACCEPTED_IDS):
        raise CohortError(ErrorCode.ENVELOPE, f"envelope id must be 'api.sunbird.telemetry', got {envelope_id!r:.80}")
    params = doc.get("params")
    if params is not None and not isinstance(params, dict):
        raise CohortError(ErrorCode.ENVELOPE, "'params' must be an object")
    msgid = params.get("msgid") if params else None
    if msgid is not None and not isinstance(msgid, str):
        raise CohortError(ErrorCode.ENVELOPE, "'params.msgid' must be a string")
    events = doc.get("events")
    if events is None:
        raise CohortError(ErrorCode.ENVELOPE, "envelope has no 'events' array")
    if not isinstance(events, list):
        raise CohortError(ErrorCode.ENVELOPE, "'events' must be an array of telemetry events")
    if not events:
        raise CohortError(ErrorCode.EMPTY_BATCH, "'events' is empty: nothing to ingest")
    if len(events) > max_events:
        raise CohortError(ErrorCode.BATCH_TOO_LARGE, f"batch holds {len(events)} events; the limit is {max_events}")
    return TelemetryBatch(msgid=msgid, event_count=len(events))
