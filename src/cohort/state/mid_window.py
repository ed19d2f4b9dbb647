"""An in-memory dedup state: the keys added within the period, in two rotating sets.

Not what a node runs (the embedded footprint keeps its keys on disk, `DiskDedupIndex`; the
scale-out one in Redis): it is the cheap, file-less state for the pure core's tests and the
reference the dedup benchmarks compare against. It forgets everything on restart.

Two generations rotate every period, so a key is remembered for at least one
period and at most two, with two set lookups per event.

Memory is bounded too (about 140 bytes a mid): when the current generation holds
half of `max_mids`, it rotates early. Under a high rate the window is then shorter
than the period; `window_seconds` says how far back it reaches, for /metrics.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Iterable, Sequence


class MidWindow:
    def __init__(self, period_s: float, clock: Callable[[], float] = time.time, max_mids: int = 2_500_000):
        self.period_s = period_s
        self._period_s = period_s
        self._clock = clock
        self._generation_cap = max(1, max_mids // 2)
        self._current: set[str] = set()
        self._previous: set[str] = set()
        self._rotated_at = clock()
        self._previous_since = self._rotated_at  # when the oldest remembered generation started
        self._lock = threading.Lock()
        self.early_rotations = 0

    def seen(self, keys: Sequence[str]) -> set[str]:
        self._maybe_rotate()
        current, previous = self._current, self._previous
        return {key for key in keys if key in current or key in previous}

    def add(self, mids: Iterable[str], at_ms: int | None = None) -> None:
        self._maybe_rotate()
        self._current.update(mids)
        if len(self._current) >= self._generation_cap:
            with self._lock:
                self._previous, self._current = self._current, set()
                self._previous_since, self._rotated_at = self._rotated_at, self._clock()
                self.early_rotations += 1

    @property
    def window_seconds(self) -> float:
        """How far back a mid is certainly remembered right now."""
        return min(self._period_s, self._clock() - self._previous_since)

    def reach_seconds(self) -> float:
        return self.window_seconds

    def close(self) -> None:
        pass

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)

    def _maybe_rotate(self) -> None:
        """Rotate on a fixed grid of periods; after two idle periods or more, forget everything."""
        now = self._clock()
        if now - self._rotated_at < self._period_s:
            return
        with self._lock:
            elapsed = now - self._rotated_at
            if elapsed >= 2 * self._period_s:
                self._previous, self._current = set(), set()
                self._rotated_at += (elapsed // self._period_s) * self._period_s
                self._previous_since = self._rotated_at
            elif elapsed >= self._period_s:
                self._previous, self._current = self._current, set()
                self._previous_since = self._rotated_at
                self._rotated_at += self._period_s
