"""SqlGuard's check, run in a child process of its own.

Checking SQL is pure Python (sqlglot): in the server's process each check holds the GIL for up
to ~0.1 s and every ack waits behind it. Measured with clients sending 15 KB statements while
another posts telemetry, ack p99 was 13 ms idle; with one such client 181 ms checked in a thread,
28 ms in this child; with four, 502 ms and 63 ms. Here the check also gets a hard time limit
(a check past it kills the child, which starts again on the next query), a memory limit of its
own, and a lower CPU priority than the API. Checks go one at a time; the child starts on the
first query and ends when the server does (its pipe closes).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from cohort.core.errors import CohortError, ErrorCode
from cohort.security.identity import Identity
from cohort.security.sql_guard_child import serve_checks
from cohort.security.sql_limits import SqlLimits
from cohort.store.base import QueryTimeout

CHECKER_MEMORY_BYTES = 1 << 30  # address space of the child: a 16 KiB statement needs a few MB
STARTUP_TIMEOUT_S = 30.0


class QueryChecker:
    def __init__(self, limits: SqlLimits, memory_bytes: int = CHECKER_MEMORY_BYTES, dialect: str = "duckdb"):
        self.limits = limits
        self.dialect = dialect
        self.memory_bytes = memory_bytes
        self._lock = threading.Lock()
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self._warmed = threading.Event()  # cleared while `warm` starts the child: a check waits for it uncounted
        self._warmed.set()

    def warm_in_background(self) -> threading.Thread:
        """`warm` on a thread of its own; a check that comes meanwhile waits for it, uncounted."""
        self._warmed.clear()
        thread = threading.Thread(target=self.warm, name="cohort-sql-check-warm", daemon=True)
        thread.start()
        return thread

    def warm(self) -> None:
        """Start the child now (the server does at start-up, `warm_in_background`), so the first query does
        not wait for it; a failure is left for the first query to meet and report."""
        try:
            with self._lock:
                with contextlib.suppress(Exception):
                    self._running()
        finally:
            self._warmed.set()

    def check(self, sql: str, params: dict[str, Any] | None, timeout_s: float, *, identity: Identity) -> str:
        """SqlGuard.check(sql, params, identity=identity), within `timeout_s` (waiting for another check included;
        starting the child is not the query's doing and is not counted)."""
        return self.check_timed(sql, params, timeout_s, identity=identity)[0]

    def check_timed(self, sql: str, params: dict[str, Any] | None, timeout_s: float, *,
                    identity: Identity) -> tuple[str, float]:
        """`check`, and the seconds spent starting the child for it (0 when it was running): not the query's
        doing, so the caller does not count them against the query's time limit either."""
        waited = time.monotonic()
        self._warmed.wait(STARTUP_TIMEOUT_S)  # the server's start-up is starting the child: not the query's time
        started = time.monotonic()
        warm_wait_s = started - waited
        startup_s = 0.0
        if not self._lock.acquire(timeout=max(0.0, timeout_s)):
            raise QueryTimeout(f"the statement could not be checked within {timeout_s:g} s")
        try:
            outcome: tuple = ()
            for attempt in (1, 2):  # a child that died since the last check is replaced, once
                conn, started_child_s = self._running()
                startup_s += started_child_s
                try:
                    conn.send((sql, params, identity))
                except (OSError, EOFError):
                    self._stop()
                    if attempt == 2:
                        raise
                    continue
                outcome = self._reply(conn, started + startup_s + timeout_s, timeout_s)
                break
        finally:
            self._lock.release()
        if outcome[0] == "ok":
            return outcome[1], warm_wait_s + startup_s
        raise CohortError(ErrorCode(outcome[1]), outcome[2])

    def _reply(self, conn: Connection, deadline: float, timeout_s: float) -> tuple:
        if not conn.poll(max(0.0, deadline - time.monotonic())):
            self._stop()  # the only way to stop a parse: the child goes, another starts on the next query
            raise QueryTimeout(f"checking the statement took longer than {timeout_s:g} s")
        try:
            return conn.recv()
        except (OSError, EOFError):
            self._stop()
            raise CohortError(ErrorCode.QUERY_TOO_COMPLEX,
                              "the statement could not be checked within the checker's memory") from None

    def _running(self) -> tuple[Connection, float]:
        """The child's pipe, starting the child if needed, and the seconds its start took."""
        if self._process is not None and self._process.is_alive() and self._conn is not None:
            return self._conn, 0.0
        self._stop()
        began = time.monotonic()
        context = multiprocessing.get_context("spawn")  # the server has threads: never fork it
        ours, theirs = context.Pipe()
        self._process = context.Process(target=serve_checks, args=(theirs, self.limits, self.memory_bytes, self.dialect),
                                        name="cohort-sql-check", daemon=True)
        self._process.start()
        theirs.close()
        self._conn = ours
        if not ours.poll(STARTUP_TIMEOUT_S):  # a machine so busy the child could not even import: retry later
            self._stop()
            raise CohortError(ErrorCode.CHECKER_UNAVAILABLE, f"the SQL checker did not start within "
                              f"{STARTUP_TIMEOUT_S:g} s (the server is very busy); retry shortly")
        if not _recv_ready(ours):
            self._stop()
            raise CohortError(ErrorCode.INTERNAL, "the SQL checker did not start; see the server's log")
        return ours, time.monotonic() - began

    def _stop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._process is not None:
            with contextlib.suppress(Exception):
                self._process.kill()
                self._process.join(5)
            self._process = None

    def close(self) -> None:
        with self._lock:
            self._stop()


def _recv_ready(conn: Connection) -> bool:
    try:
        return conn.recv() == ("ready",)
    except (OSError, EOFError):
        return False
