"""Who may start a query now: a bound on queries in flight, overall and per caller.

Queries run on their own small executor (cohort.api.query), so they never take the
threads /metrics and /health use; this bound keeps that executor from queueing without
limit and keeps one caller from holding every slot. Beyond either bound the answer is
429 with Retry-After rather than a wait. A slot is taken on the event loop and given
back by the thread that ran the query, when its work has really ended.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Callable

from starlette.requests import Request

from cohort.core.errors import CohortError, ErrorCode


def caller_key(request: Request) -> str:
    """The identity queries are counted against: the client's address today; an API key's subject once
    requests carry one (behind a proxy every client shares the proxy's address)."""
    return request.client.host if request.client else "unknown"


class QueryAdmission:
    def __init__(self, max_total: int, max_per_caller: int):
        self.max_total = max_total
        self.max_per_caller = max_per_caller
        self._running: Counter[str] = Counter()
        self._lock = threading.Lock()

    @property
    def in_flight(self) -> int:
        with self._lock:
            return sum(self._running.values())

    def admit(self, caller: str) -> Callable[[], None]:
        """Take a slot for `caller` and return the function that gives it back, or raise ERR_TOO_MANY_QUERIES."""
        with self._lock:
            if self._running[caller] >= self.max_per_caller:
                raise CohortError(ErrorCode.TOO_MANY_QUERIES,
                                  f"{self._running[caller]} of your queries are running (at most "
                                  f"{self.max_per_caller} at a time); retry when one has finished")
            if sum(self._running.values()) >= self.max_total:
                raise CohortError(ErrorCode.TOO_MANY_QUERIES,
                                  f"the server is running its maximum of {self.max_total} queries; retry shortly")
            self._running[caller] += 1
        released = False

        def release() -> None:
            nonlocal released
            with self._lock:
                if released:
                    return
                released = True
                self._running[caller] -= 1
                if not self._running[caller]:
                    del self._running[caller]

        return release
