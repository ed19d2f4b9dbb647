"""The workflow-summary state machine of one (device, channel, app): nested summaries opened by START and
closed by END, broken after a long silence.

The rules are production's (Sunbird's workflow summariser), so summaries computed here compare with the ones
its consumers already have:

* Events of a key are taken in `ets` order. A gap of more than `session_break_s` (30 min) before an event
  whose `edata.type` is not `app` breaks the session: the whole open tree is closed and emitted, then its
  summaries are reset and stay open (the same app/session/player keep collecting what follows).
* A START opens a summary of `edata.type`/`edata.mode` (`dimensions.type` app, session, player, editor, …)
  nested in the current one; when nothing is open, a START of another type than `app` opens an `app`
  summary with it as its child. A START whose type and mode match an open ancestor closes that ancestor
  (a second START of the same thing ends the first) and opens a sibling.
* An END closes the nearest open summary of the same type and mode, with everything nested in it. An END
  without a matching START is ignored.
* Any other event is added to the current summary and every summary around it; when none is open it opens
  an `app` summary.
* Time spent is the sum of the gaps between consecutive events of a summary, each rounded to 0.01 s, a gap
  of more than `idle_time_s` (600 s) counting 0. A summary with no time spent is not emitted (nor, then,
  what closed inside it).
* At the end of the input the current summary and the root summary are closed.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

import orjson

from cohort.analytics.summary_record import (
    interactions_per_minute,
    record_bytes,
    round_half_up,
    summary_record,
    sync_ms,
)
from cohort.analytics.workflow_events import WorkflowEvent

IDLE_TIME_S = 600
SESSION_BREAK_S = 30 * 60
#: Deeper START nesting is counted as plain events of the innermost summary: it bounds the state of a key.
MAX_NESTING = 32
#: How many emitted summaries of a key are remembered (16-byte digests) to drop re-emissions of a record.
EMITTED_MEMORY = 256
INTERACT_TYPES = frozenset({
    "touch", "drag", "drop", "pinch", "zoom", "shake", "rotate", "speak", "listen", "write", "draw", "start",
    "end", "choose", "activate", "scroll", "click", "edit", "submit", "search", "dnd", "added", "removed",
    "selected",
})


def _same_text(a: str | None, b: str | None) -> bool:
    """Case-insensitive equality where two absent values are equal and one absent value is not."""
    if a is None or b is None:
        return a is None and b is None
    return a.lower() == b.lower()


def _centiseconds(gap_ms: int) -> int:
    """A gap in ms rounded half-up (away from zero) to hundredths of a second, as production rounds
    each gap in seconds to two places."""
    return (gap_ms + 5) // 10 if gap_ms >= 0 else -((5 - gap_ms) // 10)


def _is_interaction(event: WorkflowEvent) -> bool:
    return event.eid == "INTERACT" and (event.edata_type or "").lower() in INTERACT_TYPES


def _number(value: object, kind: type[int] | type[float]) -> int | float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return kind(value)
    except (OverflowError, ValueError):
        return None


def _answer_text(value: object) -> str:
    if isinstance(value, str):
        return value
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except (orjson.JSONEncodeError, TypeError):
        return repr(value)


def _item_response(event: WorkflowEvent) -> dict[str, Any]:
    """One answered question of an ASSESS event."""
    item = event.edata.get("item")
    item = item if isinstance(item, dict) else {}
    resvalues = event.edata.get("resvalues")
    values = [v for v in resvalues if isinstance(v, dict)] if isinstance(resvalues, list) else []
    res = [f"{k}:{_answer_text(v)}" for value in values for k, v in value.items()]
    response = {
        "itemId": item.get("id") if isinstance(item.get("id"), str) else None,
        "timeSpent": _number(event.edata.get("duration"), int),
        "res": res,
        "resValues": values,
        "mc": item.get("mc"),
        "mmc": item.get("mmc"),
        "score": _number(event.edata.get("score"), int) or 0,
        "time_stamp": event.ets,
        "maxScore": item.get("maxscore"),
        "pass": event.edata.get("pass") if isinstance(event.edata.get("pass"), str) else None,
        "qtitle": item.get("title") if isinstance(item.get("title"), str) else None,
        "qdesc": item.get("desc") if isinstance(item.get("desc"), str) else None,
    }
    return {k: v for k, v in response.items() if v is not None}


class _PageVisits:
    """Time and visits of one page (IMPRESSION `edata.pageid`) within a summary."""

    __slots__ = ("page_type", "env", "time_spent", "visits")

    def __init__(self, page_type: str | None, env: str | None) -> None:
        self.page_type = page_type
        self.env = env
        self.time_spent = 0.0
        self.visits = 0


class SummaryNode:
    """One summary being measured (an app, session, player or editor span)."""

    def __init__(self, first: WorkflowEvent, idle_time_s: float) -> None:
        self.first = first
        self.idle_ms = idle_time_s * 1000
        self.type = first.edata_type.lower() if first.edata_type is not None else "app"
        self.mode = first.edata_mode or ""
        self.start = first.ets
        self.end = 0
        self.prev_ets = first.ets
        self.spent_cs = 0  # time spent in hundredths of a second: exact sums of the rounded gaps
        self.interactions = 1 if _is_interaction(first) else 0
        self.events: dict[str, int] = {first.eid: 1}
        self.items: list[dict[str, Any]] = []
        self.pages: dict[str | None, _PageVisits] = {}
        self.page: str | None = None
        self.viewing = False
        self.last: WorkflowEvent | None = None
        self.parent: SummaryNode | None = None
        self.children: list[SummaryNode] = []
        self.closed = False
        self.out: list[dict[str, Any]] = []

    # -- measuring ------------------------------------------------------------------------------------
    def add(self, event: WorkflowEvent) -> None:
        """Count `event` here and in every summary around this one."""
        node: SummaryNode | None = self
        while node is not None:
            node._measure(event)
            node = node.parent

    def _measure(self, event: WorkflowEvent) -> None:
        if self.start == 0:
            self.start = event.ets
        gap_ms = event.ets - self.prev_ets
        self.prev_ets = event.ets
        if gap_ms <= self.idle_ms:
            self.spent_cs += _centiseconds(gap_ms)
        if _is_interaction(event):
            self.interactions += 1
        self.events[event.eid] = self.events.get(event.eid, 0) + 1
        if self.viewing:  # the time until the next event belongs to the page on screen
            self.pages[self.page].time_spent += gap_ms / 1000
        if event.eid == "IMPRESSION":
            page = event.edata.get("pageid")
            self.page = page if isinstance(page, str) else None
            visits = self.pages.get(self.page)
            if visits is None:
                visits = self.pages[self.page] = _PageVisits(event.edata_type, event.env)
            visits.visits += 1
            self.viewing = True
        self.last = event
        self.end = event.ets
        if event.eid == "ASSESS":
            self.items.append(_item_response(event))

    def attach(self, parent: SummaryNode) -> None:
        """Nest under `parent`, which counts this summary's first event too."""
        parent.children = [child for child in parent.children if not child.closed]
        parent.children.append(self)
        self.parent = parent
        parent.add(self.first)

    # -- matching -------------------------------------------------------------------------------------
    def depth(self) -> int:
        depth, node = 1, self.parent
        while node is not None:
            depth, node = depth + 1, node.parent
        return depth

    def top(self) -> SummaryNode:
        node = self
        while node.parent is not None:
            node = node.parent
        return node

    def is_like(self, other: SummaryNode) -> bool:
        """The same summary as production tells them apart: type, mode and start time."""
        return _same_text(self.type, other.type) and _same_text(self.mode, other.mode) and \
            self.start == other.start

    def _matches(self, event: WorkflowEvent) -> bool:
        """Same type (any case) and same mode (exact) as a START/END event."""
        return _same_text(self.type, event.edata_type) and self.mode == (event.edata_mode or "")

    def has_open_start_for(self, event: WorkflowEvent) -> bool:
        """Whether this summary or one around it was started like `event` (type and mode in any case)."""
        node: SummaryNode | None = self
        while node is not None:
            if _same_text(node.type, event.edata_type) and _same_text(node.mode, event.edata_mode or ""):
                return True
            node = node.parent
        return False

    def restarted_by(self, event: WorkflowEvent) -> SummaryNode | None:
        """The nearest summary (this one or around it) a START like `event` ends: closed and returned."""
        node: SummaryNode | None = self
        while node is not None:
            if node._matches(event):
                node.close()
                return node
            node = node.parent
        return None

    def ended_by(self, event: WorkflowEvent) -> SummaryNode:
        """The nearest summary an END like `event` matches, or the outermost one."""
        node = self
        while not node._matches(event) and node.parent is not None:
            node = node.parent
        return node

    def resumes_after_end(self, event: WorkflowEvent) -> SummaryNode:
        """Where measuring continues after an END like `event`: around the matched summary (or the outermost
        summary when nothing matched or the match has nothing around it)."""
        node = self.ended_by(event)
        if node._matches(event) and node.parent is not None:
            return node.parent
        return node

    # -- closing --------------------------------------------------------------------------------------
    def close(self) -> None:
        """Close with everything open inside; the records produced collect in `out` (none without time)."""
        inner: list[dict[str, Any]] = []
        for child in self.children:
            if not child.closed:
                child.close()
                inner.extend(child.out)
        if self.spent_cs > 0:
            self.out.extend(inner)
            self.out.append(self.record())
        self.closed = True

    def reset_tree(self) -> None:
        """After a session break: zero the measures of this summary and all inside it, and reopen them."""
        for child in self.children:
            child.reset_tree()
        self.reset()

    def reset(self) -> None:
        self.start = 0
        self.end = 0
        self.spent_cs = 0
        self.interactions = 0
        self.events = {}
        self.items = []
        self.pages = {}
        self.page = None
        self.viewing = False
        self.last = None
        self.out = []
        self.closed = False

    def record(self) -> dict[str, Any]:
        """This summary as an ME_WORKFLOW_SUMMARY event."""
        first = self.first
        time_spent = self.spent_cs / 100
        pages = [
            {k: v for k, v in {"id": page, "type": visits.page_type, "env": visits.env,
                               "time_spent": round_half_up(visits.time_spent, 2),
                               "visit_count": visits.visits}.items() if v is not None}
            for page, visits in self.pages.items()
        ]
        envs: dict[str | None, list[float]] = {}
        for visits in self.pages.values():  # per environment: the pages' time, the most visits of one page
            spent_count = envs.setdefault(visits.env, [0.0, 0])
            spent_count[0] += round_half_up(visits.time_spent, 2)
            spent_count[1] = max(spent_count[1], visits.visits)
        measures = {
            "start_time": self.start,
            "end_time": self.end,
            "time_diff": round_half_up((self.end - self.start) / 1000, 2),
            "time_spent": time_spent,
            "telemetry_version": first.ver,
            "item_responses": list(self.items),
            "interact_events_count": self.interactions,
            "interact_events_per_min": interactions_per_minute(self.interactions, time_spent),
            "env_summary": [{k: v for k, v in {"env": env, "time_spent": round_half_up(spent, 2),
                                               "count": int(count)}.items() if v is not None}
                            for env, (spent, count) in envs.items()],
            "events_summary": [{"id": eid, "count": count} for eid, count in self.events.items()],
            "page_summary": pages,
        }
        return summary_record(
            uid=first.uid, did=first.did, sid=first.sid, channel=first.channel, app_id=first.app_id,
            app_ver=first.app_ver, app_pid=first.app_pid, summary_type=self.type, mode=self.mode,
            start_ms=self.start, end_ms=self.end, syncts=sync_ms((self.last or first).timestamp),
            rollup=first.rollup, cdata=first.cdata, tags=first.tags, obj=first.obj,
            measures={k: v for k, v in measures.items() if v is not None})


class WorkflowSession:
    """All open summaries of one key, fed its events in `ets` order; each call returns the records that
    closed. State: the open summaries (at most `MAX_NESTING` deep, each with its page and item tallies) and
    digests of the last `EMITTED_MEMORY` records."""

    def __init__(self, idle_time_s: float = IDLE_TIME_S, session_break_s: float = SESSION_BREAK_S) -> None:
        self.idle_time_s = idle_time_s
        self.session_break_s = session_break_s
        self.root: SummaryNode | None = None
        self.current: SummaryNode | None = None
        self.prev_ets: int | None = None
        self.last_ets: int | None = None
        self._emitted: OrderedDict[bytes, None] = OrderedDict()
        self._out: list[dict[str, Any]] = []

    def _new(self, event: WorkflowEvent) -> SummaryNode:
        return SummaryNode(event, self.idle_time_s)

    def add(self, event: WorkflowEvent) -> list[dict[str, Any]]:
        """Feed the next event (in `ets` order); the summaries it closed."""
        gap = 0.0 if self.prev_ets is None else (event.ets - self.prev_ets) / 1000
        self.prev_ets = event.ets
        self.last_ets = event.ets
        current = self.current
        if gap > self.session_break_s and not _same_text("app", event.edata_type) and current is not None \
                and not current.closed:
            top = current.top()
            top.close()
            self._out.extend(top.out)
            top.reset_tree()
            self.root = top
            current.reset()
        if event.eid == "START":
            self._start(event)
        elif event.eid == "END":
            self._end(event)
        elif self.current is not None and not self.current.closed:
            self.current.add(event)
        else:
            node = self._new(event)
            node.type = "app"
            self.current = node
            if self.root is None or self.root.closed:
                self.root = node
        return self._drain()

    def _start(self, event: WorkflowEvent) -> None:
        root, current = self.root, self.current
        if root is None or root.closed or current is None:
            if not _same_text("app", event.edata_type):
                root = self.root = self._new(event)
                root.type, root.mode = "app", ""
                child = self.current = self._new(event)
                child.attach(root)
            else:
                self.root = self.current = self._new(event)
            return
        ended = current.restarted_by(event)
        if ended is None:
            if current.depth() >= MAX_NESTING:
                if not current.closed:
                    current.add(event)
                return
            node = self._new(event)
            if not current.closed:
                node.attach(current)
            self.current = node
        elif ended.parent is not None:
            self._out.extend(ended.out)
            node = self.current = self._new(event)
            node.attach(ended.parent)
        else:
            self._out.extend(current.parent.out if current.parent is not None else current.out)
            self.current = self._new(event)
            if root.closed:
                self._out.extend(root.out)
                self.root = self.current

    def _end(self, event: WorkflowEvent) -> None:
        current, root = self.current, self.root
        if current is None or not current.has_open_start_for(event):
            return  # an END without a matching START closes nothing
        resume = current.resumes_after_end(event)
        if current.parent is not None and resume.is_like(current.parent):
            if not current.closed:
                current.add(event)
                current.close()
                self._out.extend(current.out)
                self.current = resume
        elif root is not None and resume.is_like(root):
            matched = current.ended_by(event)
            if matched.is_like(root):
                root.add(event)
                root.close()
                self._out.extend(root.out)
                self.current = root
            elif not matched.closed:
                matched.add(event)
                matched.close()
                self._out.extend(matched.out)
                self.current = resume
        else:
            if not current.closed:
                current.add(event)
                current.close()
                self._out.extend(current.out)
            self.current = resume

    def finish(self) -> list[dict[str, Any]]:
        """End of input for this key: close the current and the root summary."""
        current, root = self.current, self.root
        if current is not None and not current.closed:
            current.close()
            self._out.extend(current.out)
            if root is not None and not current.is_like(root) and not root.closed:
                root.close()
                self._out.extend(root.out)
        self.current = self.root = None
        return self._drain()

    def _drain(self) -> list[dict[str, Any]]:
        """The records produced since the last call, each record once (a summary closed again unchanged, or
        re-collected through its parent, is the same record)."""
        fresh: list[dict[str, Any]] = []
        for record in self._out:
            fingerprint = hashlib.blake2b(record_bytes(record, sort_keys=True), digest_size=16).digest()
            if fingerprint in self._emitted:
                continue
            self._emitted[fingerprint] = None
            if len(self._emitted) > EMITTED_MEMORY:
                self._emitted.popitem(last=False)
            fresh.append(record)
        self._out = []
        return fresh
