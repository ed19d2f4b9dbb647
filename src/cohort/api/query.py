"""POST /v1/query: guarded, read-only SQL over the analytical store."""

from __future__ import annotations

import duckdb
import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from cohort.api.request_body import read_body
from cohort.api.responses import failure, status_for, success
from cohort.core.errors import CohortError, ErrorCode
from cohort.store.base import QueryTimeout

API_ID = "api.query"
MAX_QUERY_BODY = 256 * 1024


async def run_query(request: Request) -> Response:
    node = request.app.state.node
    settings = node.settings
    try:
        body = await read_body(request, MAX_QUERY_BODY)
        sql, params = _parse(body)
        checked = request.app.state.sql_guard.check(sql)
        result = await run_in_threadpool(node.store.query, checked, params, settings.query_row_limit,
                                         settings.query_timeout_seconds)
    except CohortError as exc:
        return failure(API_ID, exc.code, exc.message, status_for(exc.code), ver="1.0")
    except QueryTimeout as exc:
        return failure(API_ID, ErrorCode.QUERY_TIMEOUT, str(exc), status_for(ErrorCode.QUERY_TIMEOUT), ver="1.0")
    except (duckdb.Error, TypeError, ValueError, OverflowError) as exc:
        message = str(exc).splitlines()[0][:500] if str(exc) else type(exc).__name__
        return failure(API_ID, ErrorCode.QUERY_FAILED, message, 400, ver="1.0")
    rows = [dict(zip(result.columns, row)) for row in result.rows]
    return success(API_ID, result=rows, ver="1.0",
                   meta={"columns": result.columns, "row_count": len(rows), "truncated": result.truncated,
                         "row_limit": settings.query_row_limit})


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
