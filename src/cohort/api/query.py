"""POST /v1/query: guarded, read-only SQL over the analytical store, within bounds, over the caller's tenant.

Everything that costs more than reading the body runs on the query executor, a few
threads of its own (COHORT_QUERY_MAX_CONCURRENT): checking the SQL (in a child process,
see query_checker), running it, and encoding the response. So a query never blocks the
event loop, never takes the threads /metrics and /health use, and the time limit covers
the check as well as the run. Admission (per caller and overall) answers 429 instead of
queueing.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from cohort.api.access import caller_identity
from cohort.api.query_admission import QueryAdmission, caller_key
from cohort.api.query_checker import QueryChecker
from cohort.api.request_body import read_body
from cohort.api.responses import failure, status_for, success
from cohort.core.errors import CohortError, ErrorCode
from cohort.security.audit_log import AuditLog, AuditLogUnavailable
from cohort.security.identity import Identity
from cohort.security.sql_limits import SqlLimits, check_size
from cohort.security.sql_scope import check_may_query
from cohort.settings import Settings
from cohort.store.base import QueryResult, QueryTimeout, Store
from cohort.store.query_results import encode_row
from cohort.store.thread_priority import lower_current_thread

API_ID = "api.query"
MAX_QUERY_BODY = 64 * 1024  # the statement (16 KiB) and its parameters


class QueryService:
    def __init__(self, settings: Settings, dialect: str = "duckdb"):
        """`dialect`: the store's SQL dialect (StoreCapabilities.sql_dialect), what users write and the guard parses."""
        self.settings = settings
        self.limits = SqlLimits(max_bytes=settings.query_max_sql_bytes)
        self.dialect = dialect
        self.checker = QueryChecker(self.limits, dialect=dialect)
        self.audit: AuditLog | None = None  # set by the app once open: every query is recorded in it
        self.admission = QueryAdmission(settings.query_max_concurrent, settings.query_max_per_caller)
        self._executor = ThreadPoolExecutor(max_workers=settings.query_max_concurrent,
                                            thread_name_prefix="cohort-query", initializer=lower_current_thread,
                                            initargs=(settings.query_niceness,))

    def submit(self, function, *args) -> Future:
        """Run `function(*args)` on the query executor: the few threads that may wait on the store (queries,
        metrics, lineage, re-identification), never the event loop's nor those /health and /metrics use."""
        return self._executor.submit(function, *args)

    async def answer(self, store: Store, caller: str, sql: str, params: dict | None, identity: Identity) -> Response:
        """The rows `sql` reads for `identity` (a tenant's: only its tenant's rows), as the API's response."""
        if store.capabilities.sql_dialect != self.dialect:  # a wiring fault, never the caller's
            raise RuntimeError(f"queries are checked as {self.dialect} SQL but the store speaks "
                               f"{store.capabilities.sql_dialect}")
        check_may_query(identity)  # checked again where the SQL is checked: defence in depth
        check_size(sql, self.limits)  # cheap, and refuses a huge statement before it takes a slot
        release = self.admission.admit(caller)
        try:
            job = self._executor.submit(self._answer, store, sql, params, identity, release)
        except BaseException:
            release()
            raise
        return await asyncio.wrap_future(job)  # if this request is cancelled, the job keeps its slot until it ends

    def _answer(self, store: Store, sql: str, params: dict | None, identity: Identity, release) -> Response:
        """On a query thread: check, run, encode and audit, within the overall time limit. The rows go out
        only once the audit log has the query: a query that cannot be audited is refused (503)."""
        started = time.monotonic()
        response = self._run(store, sql, params, identity, release)
        if self.audit is None:
            return response
        outcome = "ok" if response.status_code == 200 else "refused" if response.status_code < 500 else "error"
        detail: dict[str, Any] = {"sql_sha256": hashlib.sha256(sql.encode("utf-8", "replace")).hexdigest(),
                                  "ms": round((time.monotonic() - started) * 1000), "status": response.status_code}
        try:
            self.audit.append(identity, "query", "/v1/query", outcome, detail, tenant=identity.tenant)
        except AuditLogUnavailable as exc:
            return query_failure(ErrorCode.AUDIT_UNAVAILABLE, f"the query could not be audited, so its answer "
                                 f"is withheld: {exc}", self.settings)
        return response

    def _run(self, store: Store, sql: str, params: dict | None, identity: Identity, release) -> Response:
        try:
            settings = self.settings
            started = time.monotonic()
            checked, startup_s = self.checker.check_timed(sql, params, settings.query_timeout_seconds, identity=identity)
            # starting the checker's process (first query, or after a check that had to be killed) is not the
            # query's doing: it does not count against the query's time limit
            remaining = settings.query_timeout_seconds - (time.monotonic() - started - startup_s)
            if remaining <= 0:
                raise QueryTimeout(f"checking the SQL took longer than {settings.query_timeout_seconds:g} s")
            result = store.query(checked, params, settings.query_row_limit, remaining,
                                 max_result_bytes=settings.query_max_result_bytes,
                                 max_memory_bytes=settings.query_max_memory_mb * 1024 * 1024)
            return _rows_response(result, settings)
        except CohortError as exc:
            return query_failure(exc.code, exc.message, self.settings)
        except QueryTimeout as exc:
            return query_failure(ErrorCode.QUERY_TIMEOUT, str(exc), self.settings)
        finally:
            release()


async def run_query(request: Request) -> Response:
    service: QueryService = request.app.state.queries
    try:
        identity = caller_identity(request)
        body = await read_body(request, MAX_QUERY_BODY)
        sql, params = _parse(body)
        return await service.answer(request.app.state.node.store, admission_key(request, identity), sql, params,
                                    identity)
    except CohortError as exc:
        return query_failure(exc.code, exc.message, service.settings)


def admission_key(request: Request, identity: Identity) -> str:
    """Queries are counted per key or token subject; with authentication switched off, per client address."""
    return caller_key(request) if identity.via == "development" else f"{identity.via}:{identity.subject}"


def query_failure(code: ErrorCode, message: str, settings: Settings) -> Response:
    retry = code in (ErrorCode.TOO_MANY_QUERIES, ErrorCode.CHECKER_UNAVAILABLE)
    headers = {"Retry-After": str(settings.retry_after_seconds)} if retry else None
    return failure(API_ID, code, message, status_for(code), headers=headers, ver="1.0")


# Where a cut result tells its caller to go: a client that meets the limit learns how to get the rest.
MORE_ROWS = {
    "message": "the result was cut at the limit; page through it or export the rows",
    "page": "add ORDER BY on a unique key and LIMIT n OFFSET m (or WHERE key > last) to read the next rows",
    "export": "/v1/exhaust/telemetry?from=&to=&format=parquet (any range, streamed; also csv)",
}


def _rows_response(result: QueryResult, settings: Settings) -> Response:
    """Rows are encoded one by one (short calls, so the event loop's thread gets the GIL in between) and
    embedded in the envelope as they are."""
    encoded = [encode_row(result.columns, row) for row in result.rows]
    rows = orjson.Fragment(b"[" + b",".join(encoded) + b"]")
    meta: dict[str, Any] = {"columns": result.columns, "row_count": len(encoded), "truncated": result.truncated,
                            "truncated_by": result.truncated_by, "row_limit": settings.query_row_limit,
                            "byte_limit": settings.query_max_result_bytes}
    if result.truncated:
        meta["more"] = MORE_ROWS
    return success(API_ID, result=rows, ver="1.0", meta=meta)


def _parse(body: bytes) -> tuple[str, dict | None]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise CohortError(ErrorCode.MALFORMED_JSON, f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("sql"), str):
        raise CohortError(ErrorCode.QUERY_INVALID, 'body must be {"sql": "SELECT ...", "params": {...}}')
    params = doc.get("params")
    if params is not None and not isinstance(params, dict):
        raise CohortError(ErrorCode.QUERY_INVALID, "'params' must be an object of named parameters")
    return doc["sql"], params or None


_admission_key = admission_key  # the name a module still being built imports
