"""Embedded dedup state: the mids stored within the dedup period, in memory.

Two generations rotate every period, so a mid is remembered for at least one
period and at most two, with two set lookups per event. The store is the durable
truth: after a restart the window is reloaded from it, which is why this needs
no file of its own.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Iterable


class MidWindow:
    def __init__(self, period_s: float, clock: Callable[[], float] = time.time):
        self._period_s = period_s
        self._clock = clock
        self._current: set[str] = set()
        self._previous: set[str] = set()
        self._rotated_at = clock()
        self._lock = threading.Lock()

    def seen(self, mids: Iterable[str]) -> set[str]:
        self._maybe_rotate()
        current, previous = self._current, self._previous
        return {mid for mid in mids if mid in current or mid in previous}

    def add(self, mids: Iterable[str]) -> None:
        self._maybe_rotate()
        self._current.update(mids)

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
            elif elapsed >= self._period_s:
                self._previous, self._current = self._current, set()
                self._rotated_at += self._period_s
