"""The ME_WORKFLOW_SUMMARY record: its shape, its deterministic id and the rounding of its measures.

Shaped as the production summariser's derived event so that consumers of Sunbird's `wfs` dataset read it
unchanged. Two deliberate differences: `ets` is the summary's end time instead of the wall clock (the same
input gives the same record, byte for byte), and the record never carries nulls (absent fields are left out).
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

import orjson

SUMMARY_EID = "ME_WORKFLOW_SUMMARY"
SUMMARY_VERSION = "1.0"
GRANULARITY = "SESSION"
#: Channel used in the id when an event has none (the production default channel).
DEFAULT_CHANNEL = "in.ekstep"
PRODUCER = {"id": "AnalyticsDataPipeline", "ver": "1.0", "model": "WorkflowSummarizer"}


def round_half_up(value: float, places: int = 2) -> float:
    """Round as the JVM's BigDecimal(double).setScale(places, HALF_UP): on the double's shortest decimal text,
    so 0.125 → 0.13 (Python's round() would give 0.12)."""
    try:
        return float(Decimal(repr(float(value))).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP))
    except (InvalidOperation, ValueError, OverflowError):
        return 0.0


def interactions_per_minute(count: int, time_spent: float) -> float:
    """Interactions per minute; under a minute of use the count itself (a rate over less than a minute
    would overstate it), none when nothing was spent."""
    if count == 0 or time_spent == 0:
        return 0.0
    if time_spent < 60.0:
        return float(count)
    return round_half_up(count / (time_spent / 60.0), 2)


def summary_mid(uid: str, summary_type: str, mode: str, start_ms: int, end_ms: int, object_id: str | None,
                app_id: str, channel: str | None) -> str:
    """The summary's id: MD5 (upper-case hex) over the same parts, in the same order, as production's
    message id of a session summary — the learner, type and mode, the time range, the content (`NA` without
    an object), the app and the channel — so a re-run over the same events yields the same ids and a store
    can de-duplicate on them."""
    key = "|".join([SUMMARY_EID, f"{uid}{summary_type}{mode}", str(start_ms), str(end_ms), GRANULARITY,
                    object_id if object_id is not None else "NA", app_id,
                    channel if channel is not None else DEFAULT_CHANNEL])
    return hashlib.md5(key.encode("utf-8"), usedforsecurity=False).hexdigest().upper()


def sync_ms(timestamp: str | None) -> int:
    """`@timestamp` (when the platform received the event) as epoch ms; 0 when absent or unreadable."""
    if not timestamp:
        return 0
    text = timestamp.strip()
    for candidate in (text, text[:19]):
        try:
            parsed = datetime.fromisoformat(candidate.replace("Z", "+00:00"))
        except ValueError:
            continue
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        try:
            return int(parsed.timestamp() * 1000)
        except (OverflowError, OSError, ValueError):
            return 0
    return 0


def _without_none(mapping: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in mapping.items() if v is not None}


def summary_record(*, uid: str, did: str, sid: str, channel: str | None, app_id: str, app_ver: str | None,
                   app_pid: str | None, summary_type: str, mode: str, start_ms: int, end_ms: int,
                   syncts: int, rollup: dict[str, Any] | None, cdata: list[Any] | None, tags: list[Any] | None,
                   obj: dict[str, Any] | None, measures: dict[str, Any]) -> dict[str, Any]:
    """One ME_WORKFLOW_SUMMARY event."""
    object_id = None if obj is None else obj.get("id") if isinstance(obj.get("id"), str) else "null"
    return _without_none({
        "eid": SUMMARY_EID,
        "ets": end_ms,
        "syncts": syncts,
        "ver": SUMMARY_VERSION,
        "mid": summary_mid(uid, summary_type, mode, start_ms, end_ms, object_id, app_id, channel),
        "uid": uid,
        "context": _without_none({
            "pdata": dict(PRODUCER),
            "granularity": GRANULARITY,
            "date_range": {"from": start_ms, "to": end_ms},
            "rollup": rollup,
            "cdata": cdata,
        }),
        "dimensions": _without_none({
            "did": did,
            "pdata": _without_none({"id": app_id, "ver": app_ver or "1.0", "pid": app_pid}),
            "sid": sid,
            "channel": channel,
            "type": summary_type,
            "mode": mode,
        }),
        "edata": {"eks": measures},
        "tags": tags,
        "object": obj,
    })


def record_bytes(record: dict[str, Any], *, sort_keys: bool = False) -> bytes:
    """A record as one JSON text. Fields copied from the events (object, cdata, tags, item values) may hold
    what the fast encoder refuses (integers beyond 64 bits); those records take the standard encoder."""
    try:
        return orjson.dumps(record, option=orjson.OPT_SORT_KEYS if sort_keys else 0)
    except (orjson.JSONEncodeError, TypeError):
        return json.dumps(record, sort_keys=sort_keys, separators=(",", ":"), ensure_ascii=False,
                          default=repr).encode("utf-8", "replace")
