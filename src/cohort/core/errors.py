"""Typed error codes shared by the API, the pipeline and the quarantine.

Codes are stable strings: clients, dashboards and replay tooling match on them,
so a code is never renamed once released; add a new one instead.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    # request level (ingest API)
    MALFORMED_JSON = "ERR_MALFORMED_JSON"
    BAD_GZIP = "ERR_BAD_GZIP"
    UNSUPPORTED_ENCODING = "ERR_UNSUPPORTED_ENCODING"
    ENVELOPE = "ERR_ENVELOPE"
    EMPTY_BATCH = "ERR_EMPTY_BATCH"
    BODY_TOO_LARGE = "ERR_BODY_TOO_LARGE"
    BATCH_TOO_LARGE = "ERR_BATCH_TOO_LARGE"
    BACKPRESSURE = "ERR_BACKPRESSURE"
    LOG_UNAVAILABLE = "ERR_LOG_UNAVAILABLE"
    NOT_FOUND = "ERR_NOT_FOUND"
    METHOD_NOT_ALLOWED = "ERR_METHOD_NOT_ALLOWED"
    INTERNAL = "ERR_INTERNAL"
    # pipeline level (quarantine)
    EXTRACT_PAYLOAD = "ERR_EXTRACT_PAYLOAD"
    EXTRACT_NOT_OBJECT = "ERR_EXTRACT_NOT_OBJECT"
    VALIDATION_MISSING_EID = "ERR_VALIDATION_MISSING_EID"
    VALIDATION_UNKNOWN_EID = "ERR_VALIDATION_UNKNOWN_EID"
    VALIDATION_SCHEMA = "ERR_VALIDATION_SCHEMA"
    ROUTE_TIMESTAMP = "ERR_ROUTE_TIMESTAMP"
    # query API
    QUERY_INVALID = "ERR_QUERY_INVALID"
    QUERY_FORBIDDEN = "ERR_QUERY_FORBIDDEN"
    QUERY_TIMEOUT = "ERR_QUERY_TIMEOUT"
    QUERY_FAILED = "ERR_QUERY_FAILED"


class CohortError(Exception):
    """An error with a stable code and a message meant for a human reader."""

    def __init__(self, code: ErrorCode, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
