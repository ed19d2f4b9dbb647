"""One watchdog thread for every running query: its time limit and the process's memory.

DuckDB's memory_limit bounds its buffer pool, not the lists and strings functions and
aggregates build (`len(range(1e8))` took the server from 0.16 to 7.4 GB under a 512 MB
limit). So while queries run, the process's resident memory is sampled every few
milliseconds; when it has grown past the bound since the oldest running query started,
every running query is interrupted (memory cannot be attributed to one query, and the
bound protects the ingest path, which must keep acknowledging). The same thread
interrupts a query at its deadline.

DuckDB checks for an interrupt between vectors of rows, so a query stops within one
vector's worth of work (the guard refuses the functions that build huge single values).
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import psutil

SAMPLE_INTERVAL_S = 0.01


@dataclass(eq=False)
class WatchedQuery:
    cursor: Any
    deadline: float
    max_growth_bytes: int | None
    baseline_rss: int
    reason: str | None = None  # "timeout" or "memory" once interrupted
    peak_rss: int = field(default=0)


class QueryWatch:
    def __init__(self, interval_s: float = SAMPLE_INTERVAL_S):
        self.interval_s = interval_s
        self._process = psutil.Process()
        self._lock = threading.Condition()
        self._running: set[WatchedQuery] = set()
        self._thread: threading.Thread | None = None

    def rss(self) -> int:
        return self._process.memory_info().rss

    @contextlib.contextmanager
    def watch(self, cursor: Any, deadline: float, max_growth_bytes: int | None) -> Iterator[WatchedQuery]:
        """Watch `cursor` while the block runs: interrupted at `deadline` (time.monotonic) or when the process's
        memory grows by more than `max_growth_bytes` (None: no memory bound)."""
        query = WatchedQuery(cursor, deadline, max_growth_bytes, baseline_rss=self.rss())
        with self._lock:
            self._running.add(query)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="cohort-query-watch", daemon=True)
                self._thread.start()
            self._lock.notify()
        try:
            yield query
        finally:
            with self._lock:  # after this, the watchdog never touches the cursor again
                self._running.discard(query)

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._running:
                    self._lock.wait()
                self._check(time.monotonic(), self.rss())
            time.sleep(self.interval_s)

    def _check(self, now: float, rss: int) -> None:
        """Called with the lock held, so a query cannot finish (and close its cursor) mid-interrupt."""
        floor = min(q.baseline_rss for q in self._running)
        for query in self._running:
            query.peak_rss = max(query.peak_rss, rss)
            if query.reason is not None:  # again: a statement starting after an interrupt clears it
                self._interrupt(query, query.reason)
            elif now >= query.deadline:
                self._interrupt(query, "timeout")
            elif query.max_growth_bytes is not None and rss - floor > query.max_growth_bytes:
                self._interrupt(query, "memory")

    @staticmethod
    def _interrupt(query: WatchedQuery, reason: str) -> None:
        query.reason = reason
        with contextlib.suppress(Exception):
            query.cursor.interrupt()


_PROCESS_WATCH: QueryWatch | None = None
_CREATE = threading.Lock()


def process_watch() -> QueryWatch:
    """The watchdog of this process (memory is the process's, so there is one)."""
    global _PROCESS_WATCH
    with _CREATE:
        if _PROCESS_WATCH is None:
            _PROCESS_WATCH = QueryWatch()
        return _PROCESS_WATCH
