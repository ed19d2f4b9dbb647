"""The original text of one event of a log record, for the quarantine.

The hot path parses with orjson, which reads integers beyond 64 bits as floats;
re-serialising that would quarantine a different number than the client sent.
Failures are rare, so for them the record is parsed again with the standard
library (exact integers), once per record.
"""

from __future__ import annotations

import json
from functools import lru_cache

from cohort.core.log_record import LogRecord


def events_in(doc: object) -> list | None:
    """The events of a parsed request body: a Sunbird batch, or an Obsrv-style `data` payload."""
    if isinstance(doc, dict) and isinstance(doc.get("events"), list):
        return doc["events"]
    if isinstance(doc, dict) and "data" in doc:
        data = doc["data"]
        return data if isinstance(data, list) else [data]
    return None


def original_event_text(record: LogRecord, index: int) -> str:
    texts = _exact_texts(record.payload)
    return texts[index] if 0 <= index < len(texts) else ""


@lru_cache(maxsize=16)
def _exact_texts(payload: bytes) -> tuple[str, ...]:
    try:
        events = events_in(json.loads(payload))
    except (ValueError, RecursionError):
        return ()
    return tuple(json.dumps(event, ensure_ascii=False, separators=(",", ":")) for event in events or ())
