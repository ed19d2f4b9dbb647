"""The original text of one event of a log record, for the quarantine.

The hot path parses with orjson, which reads integers beyond 64 bits as floats;
re-serialising that would quarantine a different number than the client sent. So an event
holding a float of 64-bit magnitude or more (what such an integer becomes, or a float the
client sent) has its record parsed again with the standard library (exact integers), once
per record; any other event is re-serialised as parsed, which is exact and about 500 times
cheaper than re-parsing a 500-event request (measured with py-spy on `cohort worker`: 22–27
ms of CPU per request that held one bad event). The check reads the parsed event, not the
bytes: a scan of the request for long digit runs took 4–6 ms on a 500-event Sunbird request,
whose content ids (`do_3188627995846531595189`) are full of them.
"""

from __future__ import annotations

import json
from functools import lru_cache

import orjson

from cohort.core.log_record import LogRecord

_HUGE = float(2**63)  # orjson reads an integer exactly down to -2**63 and up to 2**64 - 1


def events_in(doc: object) -> list | None:
    """The events of a parsed request body: a Sunbird batch, or an Obsrv-style `data` payload."""
    if isinstance(doc, dict) and isinstance(doc.get("events"), list):
        return doc["events"]
    if isinstance(doc, dict) and "data" in doc:
        data = doc["data"]
        return data if isinstance(data, list) else [data]
    return None


def original_event_text(record: LogRecord, index: int, event: object = None) -> str:
    """The event's text as the client sent it; never raises, because it is what a quarantine keeps
    of an event the pipeline could not handle (nested too deep for the parsers' recursion, say)."""
    if event is not None and not _may_hold_a_huge_integer(event):
        try:
            return orjson.dumps(event).decode()
        except (TypeError, orjson.JSONEncodeError):
            pass
    texts = _exact_texts(record.payload)
    if 0 <= index < len(texts):
        return texts[index]
    try:
        return orjson.dumps(event).decode()
    except (TypeError, orjson.JSONEncodeError):
        return dumps_without_recursion(event)


def _may_hold_a_huge_integer(value: object) -> bool:
    """Whether a parsed value holds a float as large as an integer orjson could not read exactly;
    an explicit stack, as the value may be nested as deep as the parsers allow."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if not -_HUGE < item < _HUGE:
                return True
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def dumps_without_recursion(value: object) -> str:
    """JSON text of any parsed JSON value, however deep: an explicit stack instead of recursion."""
    out: list[str] = []
    stack: list[object] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, _Raw):
            out.append(item.text)
        elif isinstance(item, dict):
            parts: list[object] = [_Raw("{")]
            for n, (key, member) in enumerate(item.items()):
                parts += [_Raw(("," if n else "") + json.dumps(str(key), ensure_ascii=False) + ":"), member]
            parts.append(_Raw("}"))
            stack.extend(reversed(parts))
        elif isinstance(item, list):
            parts = [_Raw("[")]
            for n, member in enumerate(item):
                parts += [_Raw(","), member] if n else [member]
            parts.append(_Raw("]"))
            stack.extend(reversed(parts))
        else:
            out.append(json.dumps(item, ensure_ascii=False))
    return "".join(out)


class _Raw:
    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text


@lru_cache(maxsize=16)
def _exact_texts(payload: bytes) -> tuple[str, ...]:
    try:
        events = events_in(json.loads(payload))
    except (ValueError, RecursionError):
        return ()
    return tuple(json.dumps(event, ensure_ascii=False, separators=(",", ":")) for event in events or ())
