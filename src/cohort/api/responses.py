"""Response bodies in the Sunbird API shape, serialised with orjson."""

from __future__ import annotations

import time
import uuid
from decimal import Decimal
from typing import Any

import orjson
from starlette.responses import Response

from cohort.core.errors import ErrorCode


def _default(value: Any) -> Any:
    """Types orjson does not know; query results arrive already rendered (cohort.store.query_results)."""
    if isinstance(value, Decimal):
        return orjson.Fragment(format(value, "f")) if value.is_finite() else None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    return str(value)


def json_response(body: dict, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body, default=_default, option=orjson.OPT_NON_STR_KEYS), status_code=status,
                    media_type="application/json", headers=headers)


def success(api_id: str, msgid: str | None = None, result: Any = None, ver: str = "3.0", **extra: Any) -> Response:
    body = {
        "id": api_id, "ver": ver, "ets": int(time.time() * 1000),
        "params": {"resmsgid": str(uuid.uuid4()), "msgid": msgid, "status": "successful"},
        "responseCode": "SUCCESS",
        "result": {} if result is None else result,
    }
    body.update(extra)
    return json_response(body)


def failure(api_id: str, code: ErrorCode | str, message: str, status: int, msgid: str | None = None,
            headers: dict[str, str] | None = None, ver: str = "3.0") -> Response:
    body = {
        "id": api_id, "ver": ver, "ets": int(time.time() * 1000),
        "params": {"resmsgid": str(uuid.uuid4()), "msgid": msgid, "status": "failed",
                   "err": str(code), "errmsg": message},
        "responseCode": "CLIENT_ERROR" if status < 500 else "SERVER_ERROR",
        "result": {},
    }
    if code in _UNREAD_BODY:
        # The rest of the body is not read: closing the connection stops the client from sending it,
        # instead of the server receiving (and discarding) megabytes it has already refused.
        headers = {**(headers or {}), "Connection": "close"}
    return json_response(body, status=status, headers=headers)


_UNREAD_BODY = frozenset({ErrorCode.BODY_TOO_LARGE})


_STATUS = {
    ErrorCode.BODY_TOO_LARGE: 413,
    ErrorCode.BATCH_TOO_LARGE: 413,
    ErrorCode.UNSUPPORTED_ENCODING: 415,
    ErrorCode.BACKPRESSURE: 503,
    ErrorCode.LOG_UNAVAILABLE: 503,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.INTERNAL: 500,
    ErrorCode.AUTH_REQUIRED: 401,
    ErrorCode.AUTH_INVALID: 401,
    ErrorCode.AUTH_FORBIDDEN: 403,
    ErrorCode.QUERY_FORBIDDEN: 403,
    ErrorCode.QUERY_TIMEOUT: 408,
    ErrorCode.QUERY_TOO_LARGE: 413,
    ErrorCode.TOO_MANY_QUERIES: 429,
    ErrorCode.CHECKER_UNAVAILABLE: 503,
    ErrorCode.AUDIT_UNAVAILABLE: 503,
}


def status_for(code: ErrorCode) -> int:
    """The HTTP status a coded error is answered with (400 unless listed)."""
    return _STATUS.get(code, 400)
