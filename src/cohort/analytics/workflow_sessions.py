"""Workflow summaries of many devices: the incremental `WorkflowSummariser` and the batch `summarise_events`.

The summariser is a pipeline stage: events go in as they arrive, summaries come out as soon as they close
(an END, a START that ends an open one, a session break seen in a device's next event, or `flush`). It
holds, per (device, channel, app), only its open summaries and a reorder buffer bounded by
`lateness_ms` and `max_pending`; `flush(now)` ends devices silent for longer than the session break, so
the number of keys held follows the number of devices active in the last half hour.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cohort.analytics.workflow_events import DEFAULT_APP_ID, WorkflowEvent, WorkflowKey, normalise
from cohort.analytics.workflow_summary import IDLE_TIME_S, SESSION_BREAK_S, WorkflowSession


@dataclass
class SummariserStats:
    """What went in and what came out, so a run's counts reconcile: events_in = used + sum(skipped)."""

    events_in: int = 0
    events_used: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    late_events: int = 0
    summaries: Counter[str] = field(default_factory=Counter)


@dataclass
class _KeyState:
    session: WorkflowSession
    pending: list[tuple[int, int, WorkflowEvent]] = field(default_factory=list)
    newest_ets: int | None = None


class WorkflowSummariser:
    """Incremental workflow summariser.

    `lateness_ms` is how far behind the newest event of its device an event may arrive and still be put in
    order (events are held that long); `None` holds every event until `flush` (batch). An event later than
    that is counted in `stats.late_events` and measured at the time of the device's last event, so time
    never runs backwards. `max_pending` caps the held events of one device (the oldest go on first).

    State per device (channel, app): its open summaries — a chain at most `MAX_NESTING` (32) deep plus a
    separate root, each holding its first event, counters, one tally per distinct event type and page, and
    the item responses of its ASSESS events (those are the output) — the digests of its last 256 records,
    and at most `max_pending` held events. Devices stay until `flush`: call `flush(now)` now and then.
    """

    def __init__(self, *, idle_time_s: float = IDLE_TIME_S, session_break_s: float = SESSION_BREAK_S,
                 lateness_ms: int | None = 0, max_pending: int | None = 10_000,
                 default_app_id: str = DEFAULT_APP_ID) -> None:
        self.idle_time_s = idle_time_s
        self.session_break_s = session_break_s
        self.lateness_ms = lateness_ms
        self.max_pending = max_pending
        self.default_app_id = default_app_id
        self.stats = SummariserStats()
        self._keys: dict[WorkflowKey, _KeyState] = {}
        self._seq = itertools.count()

    @property
    def open_keys(self) -> int:
        return len(self._keys)

    @property
    def pending_events(self) -> int:
        return sum(len(state.pending) for state in self._keys.values())

    def add(self, raw: object) -> list[dict[str, Any]]:
        """Feed one raw event (any shape); the summaries it closed."""
        self.stats.events_in += 1
        event = normalise(raw, self.default_app_id)
        if isinstance(event, str):
            self.stats.skipped[event] += 1
            return []
        return self.add_event(event)

    def extend(self, raws: Iterable[object]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for raw in raws:
            out.extend(self.add(raw))
        return out

    def add_event(self, event: WorkflowEvent) -> list[dict[str, Any]]:
        """Feed one already-read event."""
        self.stats.events_used += 1
        state = self._keys.get(event.key)
        if state is None:
            state = self._keys[event.key] = _KeyState(WorkflowSession(self.idle_time_s, self.session_break_s))
        heapq.heappush(state.pending, (event.ets, next(self._seq), event))
        state.newest_ets = event.ets if state.newest_ets is None else max(state.newest_ets, event.ets)
        if self.lateness_ms is None:
            return self._release(state, None) if self.max_pending is not None else []
        return self._release(state, state.newest_ets - self.lateness_ms)

    def _release(self, state: _KeyState, up_to: int | None) -> list[dict[str, Any]]:
        """Feed the held events up to `up_to` (and beyond it while more than `max_pending` are held)."""
        out: list[dict[str, Any]] = []
        pending = state.pending
        while pending and ((up_to is not None and pending[0][0] <= up_to)
                           or (self.max_pending is not None and len(pending) > self.max_pending)):
            _, _, event = heapq.heappop(pending)
            last = state.session.last_ets
            if last is not None and event.ets < last:
                self.stats.late_events += 1
                event = dataclasses.replace(event, ets=last)
            out.extend(state.session.add(event))
        return self._counted(out)

    def _counted(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for record in records:
            self.stats.summaries[str(record.get("dimensions", {}).get("type"))] += 1
        return records

    def flush(self, now_ms: int | None = None) -> list[dict[str, Any]]:
        """End devices: all of them (`now_ms` None: end of input), or those whose newest event is more than
        the session break before `now_ms` (their summaries close as at the end of input, their state goes)."""
        out: list[dict[str, Any]] = []
        break_ms = self.session_break_s * 1000
        for key in list(self._keys):
            state = self._keys[key]
            if now_ms is not None and (state.newest_ets is None or now_ms - state.newest_ets <= break_ms):
                if self.lateness_ms is not None:
                    out.extend(self._release(state, now_ms - self.lateness_ms))
                continue
            out.extend(self._release(state, max(ets for ets, _, _ in state.pending) if state.pending else None))
            out.extend(self._counted(state.session.finish()))
            del self._keys[key]
        return out


def summarise_events(events: Iterable[object], *, idle_time_s: float = IDLE_TIME_S,
                     session_break_s: float = SESSION_BREAK_S,
                     default_app_id: str = DEFAULT_APP_ID) -> list[dict[str, Any]]:
    """All workflow summaries of a finite list of raw events: the summariser holding everything until the
    end, so each device's events are taken in `ets` order whatever their order in the list."""
    summariser = WorkflowSummariser(idle_time_s=idle_time_s, session_break_s=session_break_s, lateness_ms=None,
                                    max_pending=None, default_app_id=default_app_id)
    out = summariser.extend(events)
    out.extend(summariser.flush())
    return out
