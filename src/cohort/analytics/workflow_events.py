"""Raw telemetry → the few fields the workflow summariser reads, whatever the envelope.

The summariser runs over the raw lake, not only over validated events (older serialiser-made events carry
nulls where objects belong, floats for `ets`, lines without `eid`), so reading never raises: a line is
either a usable `WorkflowEvent` or a skip reason that the caller counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

#: Server-side events describe the platform, not a learner's session; the production summariser drops them.
SERVER_EIDS = frozenset({"LOG", "AUDIT", "SEARCH"})
#: App id of events without `context.pdata` (the production default consumption app id).
DEFAULT_APP_ID = "no_value"

# Skip reasons, stable strings: the CLI prints counts by reason.
SKIP_NOT_OBJECT = "not a JSON object"
SKIP_NO_EID = "no eid"
SKIP_SERVER_EVENT = "server event (LOG/AUDIT/SEARCH)"
SKIP_NO_CONTEXT = "no context object"
SKIP_BAD_ETS = "ets not a number"

#: The key the summariser groups by: (device id, channel, app id).
WorkflowKey = tuple[str, str | None, str]


@dataclass(frozen=True, slots=True)
class WorkflowEvent:
    """One event as the summariser sees it. `raw_edata` keeps edata for item responses and page visits."""

    eid: str
    ets: int
    did: str
    channel: str | None
    app_id: str
    app_ver: str | None
    app_pid: str | None
    sid: str
    uid: str
    env: str | None
    edata_type: str | None
    edata_mode: str | None
    edata: dict[str, Any]
    obj: dict[str, Any] | None
    rollup: dict[str, Any] | None
    cdata: list[Any] | None
    tags: list[Any] | None
    ver: str | None
    timestamp: str | None

    @property
    def key(self) -> WorkflowKey:
        return (self.did, self.channel, self.app_id)


def unwrap(line_value: object) -> list[object]:
    """The events inside one parsed line: a Sunbird batch `{"events": [...]}`, a `{"event": {...}}` wrapper,
    a JSON array of events, or one event."""
    if isinstance(line_value, dict):
        events = line_value.get("events")
        if isinstance(events, list):
            return list(events)
        inner = line_value.get("event")
        if isinstance(inner, dict):
            return [inner]
        return [line_value]
    if isinstance(line_value, list):
        return list(line_value)
    return [line_value]


def _text(value: object) -> str | None:
    """A string field as the JVM reader coerces it: scalars become their text, objects become absent."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    return None


#: Larger `ets` values are not times (and would not survive a JSON encoder's 64-bit integers).
_MAX_ETS = 2**53


def _epoch_ms(value: object) -> int | None:
    """`ets` as whole milliseconds (floats such as 1.515493350595E12 are truncated); absent → 0."""
    ets = _ets_value(value)
    return ets if ets is not None and -_MAX_ETS <= ets <= _MAX_ETS else None


def _ets_value(value: object) -> int | None:
    if value is None:
        return 0
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
        return int(number) if math.isfinite(number) else None
    return None


def _dict(value: object) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


def normalise(raw: object, default_app_id: str = DEFAULT_APP_ID) -> WorkflowEvent | str:
    """A `WorkflowEvent`, or the reason the event is not summarised."""
    if not isinstance(raw, dict):
        return SKIP_NOT_OBJECT
    eid = _text(raw.get("eid"))
    if eid is None:
        return SKIP_NO_EID
    if eid in SERVER_EIDS:
        return SKIP_SERVER_EVENT
    context = _dict(raw.get("context"))
    if context is None:
        return SKIP_NO_CONTEXT
    ets = _epoch_ms(raw.get("ets"))
    if ets is None:
        return SKIP_BAD_ETS
    pdata = _dict(context.get("pdata"))
    app_id = _text(pdata.get("id")) if pdata is not None else None
    edata = _dict(raw.get("edata")) or {}
    actor = _dict(raw.get("actor"))
    cdata = context.get("cdata")
    tags = raw.get("tags")
    return WorkflowEvent(
        eid=eid,
        ets=ets,
        did=_text(context.get("did")) or "",
        channel=_text(context.get("channel")),
        app_id=app_id if app_id is not None else default_app_id,
        app_ver=(_text(pdata.get("ver")) if pdata is not None else "1.0"),
        app_pid=_text(pdata.get("pid")) if pdata is not None else None,
        sid=_text(context.get("sid")) or "",
        uid=(_text(actor.get("id")) or "") if actor is not None else "",
        env=_text(context.get("env")),
        edata_type=_text(edata.get("type")),
        edata_mode=_text(edata.get("mode")),
        edata=edata,
        obj=_dict(raw.get("object")),
        rollup=_dict(context.get("rollup")),
        cdata=cdata if isinstance(cdata, list) else None,
        tags=tags if isinstance(tags, list) else None,
        ver=_text(raw.get("ver")),
        timestamp=_text(raw.get("@timestamp")),
    )
