"""The child process side of cohort.api.query_checker: SqlGuard's check, one request at a time.

It imports only the guard (not the store, the API or the engine), so it starts in ≈ 0.25 s and
holds little memory; it lowers its CPU priority and bounds its own address space.
"""

from __future__ import annotations

import contextlib
import os
import resource
from multiprocessing.connection import Connection

from cohort.core.errors import CohortError, ErrorCode
from cohort.security.sql_guard import SqlGuard
from cohort.security.sql_limits import SqlLimits

CHECKER_NICENESS = 5  # acks first when the CPU is contended


def serve_checks(conn: Connection, limits: SqlLimits, memory_bytes: int, dialect: str = "duckdb") -> None:
    """The child: answer ("ok", sql) or ("error", code, message) for each (sql, params, identity), until the pipe
    closes; the SQL it answers reads only what `identity` may read. `dialect`: the store's
    (StoreCapabilities.sql_dialect), what users write their SQL in."""
    with contextlib.suppress(OSError, ValueError):
        os.nice(CHECKER_NICENESS)
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    guard = SqlGuard(limits=limits, dialect=dialect)
    conn.send(("ready",))  # the parent does not count the start against the first query's time limit
    while True:
        try:
            sql, params, identity = conn.recv()
        except (EOFError, OSError):
            return  # the server is gone
        try:
            reply: tuple = ("ok", guard.check(sql, params, identity=identity))
        except CohortError as exc:
            reply = ("error", str(exc.code), exc.message)
        except MemoryError:
            reply = ("error", str(ErrorCode.QUERY_TOO_COMPLEX), "the statement needs too much memory to check")
        except Exception as exc:  # noqa: BLE001 - whatever sqlglot raises on odd input is the input's fault
            reply = ("error", str(ErrorCode.QUERY_INVALID), f"SQL cannot be checked: {type(exc).__name__}")
        try:
            conn.send(reply)
        except OSError:
            return  # the server is gone
