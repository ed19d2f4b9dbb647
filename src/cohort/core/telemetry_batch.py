"""The Sunbird telemetry batch envelope, as posted by learning apps.

The ingest API checks only the envelope: per-event validation happens in the
pipeline (as in Sunbird), so that one bad event never costs a client its batch.
What the API accepts here, the pipeline must be able to read: extract parses the
stored bytes again with orjson, so every rule below is one both sides keep.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import orjson
import simdjson

from cohort.core.errors import CohortError, ErrorCode
from cohort.core.json_text import without_bom

_OBJECT = (dict, simdjson.Object)
_ARRAY = (list, simdjson.Array)

# Envelope ids sent by Sunbird clients over the years.
ACCEPTED_IDS = frozenset({"api.sunbird.telemetry", "ekstep.telemetry", "api.telemetry"})
_ACCEPTED_IDS_TEXT = ", ".join(f"'{envelope_id}'" for envelope_id in sorted(ACCEPTED_IDS))

# The parsers' own nesting limits (not configurable): simdjson refuses a value inside more than 1,023
# arrays/objects, orjson more than 1,024 arrays/objects (so it reads a scalar simdjson refuses).
SIMDJSON_MAX_NESTING = 1023
ORJSON_MAX_CONTAINERS = 1024
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True, slots=True)
class TelemetryBatch:
    """A checked envelope: its msgid (if the client sent one), how many events it holds, and the
    bytes to store — the body as the pipeline will read it."""

    msgid: str | None
    event_count: int
    payload: bytes = field(default=b"", repr=False, compare=False)


def parse_telemetry_batch(body: bytes, max_events: int, *, max_depth: int, max_msgid_chars: int) -> TelemetryBatch:
    """Parse and check a request body once; raise CohortError with a stable code if it is not a batch."""
    payload = without_bom(body)
    doc = _load(payload, max_depth)
    if not isinstance(doc, _OBJECT):
        raise CohortError(ErrorCode.ENVELOPE, "request body must be a JSON object with an 'events' array")
    envelope_id = doc.get("id")
    if envelope_id is not None and (not isinstance(envelope_id, str) or envelope_id not in ACCEPTED_IDS):
        raise CohortError(ErrorCode.ENVELOPE, f"envelope id must be one of {_ACCEPTED_IDS_TEXT} (or left out), "
                                              f"got {envelope_id!r:.80}")
    params = doc.get("params")
    if params is not None and not isinstance(params, _OBJECT):
        raise CohortError(ErrorCode.ENVELOPE, "'params' must be an object")
    msgid = params.get("msgid") if params else None
    if msgid is not None and not isinstance(msgid, str):
        raise CohortError(ErrorCode.ENVELOPE, "'params.msgid' must be a string")
    if msgid is not None and len(msgid) > max_msgid_chars:
        raise CohortError(ErrorCode.FIELD_TOO_LONG, f"params.msgid is {len(msgid)} characters long; "
                                                    f"at most {max_msgid_chars} are accepted")
    events = doc.get("events")
    if events is None:
        raise CohortError(ErrorCode.ENVELOPE, "envelope has no 'events' array")
    if not isinstance(events, _ARRAY):
        raise CohortError(ErrorCode.ENVELOPE, "'events' must be an array of telemetry events")
    if not events:
        raise CohortError(ErrorCode.EMPTY_BATCH, "'events' is empty: nothing to ingest")
    if len(events) > max_events:
        raise CohortError(ErrorCode.BATCH_TOO_LARGE, f"batch holds {len(events)} events; the limit is {max_events}")
    return TelemetryBatch(msgid=msgid, event_count=len(events), payload=payload)


def _load(body: bytes, max_depth: int):
    """Validate the whole body, building as little as possible, within the nesting bound.

    simdjson checks the full document but materialises only what we touch (the envelope),
    about 6x cheaper than building every event with orjson (0.40 vs 2.4 µs per event,
    measured on 500-event batches). Where simdjson refuses a document (64-bit overflow and
    such), orjson — the parser of the pipeline — has the last word, so the API accepts
    exactly what the pipeline can read.

    The nesting bound: no value may sit inside more than `max_depth` arrays/objects. Neither
    parser takes a limit below its own, so the body is parsed once more inside enough extra
    arrays that the copy hits the parser's limit exactly when the body breaks the bound (a walk
    over the document in Python would cost more than the parse itself). The orjson path counts
    containers, so there an empty array or object inside `max_depth` others is refused too.
    """
    try:
        parser = simdjson.Parser()
        parser.parse(_deeper(body, SIMDJSON_MAX_NESTING - max_depth))  # for the depth only; dropped at once
        doc = parser.parse(body)
    except RuntimeError as exc:
        if str(exc).startswith("DEPTH_ERROR"):
            raise _too_deep(max_depth) from None
        return _load_with_orjson(body, max_depth)
    except ValueError:  # simdjson reports invalid UTF-8 and empty input as ValueError
        return _load_with_orjson(body, max_depth)
    if _repeats_envelope_keys(doc):
        return orjson.loads(body)  # valid and within the bound; orjson keeps the last repeated key, as extract does
    return doc


def _load_with_orjson(body: bytes, max_depth: int):
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _malformed(body, exc) from None
    try:
        orjson.loads(_deeper(body, ORJSON_MAX_CONTAINERS - max_depth))
    except orjson.JSONDecodeError:
        raise _too_deep(max_depth) from None
    return doc


def _deeper(body: bytes, extra_levels: int) -> bytes:
    opening, closing = _frame(extra_levels)
    return b"".join((opening, body, closing))


@lru_cache(maxsize=8)
def _frame(extra_levels: int) -> tuple[bytes, bytes]:
    return b"[" * extra_levels, b"]" * extra_levels


def _too_deep(max_depth: int) -> CohortError:
    return CohortError(ErrorCode.TOO_DEEP, f"request body nests JSON deeper than {max_depth} levels of arrays and "
                                           f"objects (the envelope and its 'events' array count as two)")


def _malformed(body: bytes, exc: Exception) -> CohortError:
    if body.startswith(_GZIP_MAGIC):
        return CohortError(ErrorCode.MALFORMED_JSON,
                           "request body is not JSON: it looks gzip-compressed; send it with Content-Encoding: gzip")
    return CohortError(ErrorCode.MALFORMED_JSON, f"request body is not valid JSON: {exc}")


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
