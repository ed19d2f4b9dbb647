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
    FIELD_TOO_LONG = "ERR_FIELD_TOO_LONG"  # an id or header value over its length bound
    TOO_DEEP = "ERR_TOO_DEEP"  # JSON nested deeper than the ack path accepts
    REQUEST_TIMEOUT = "ERR_REQUEST_TIMEOUT"  # the client sent its request too slowly
    CLIENT_DISCONNECTED = "ERR_CLIENT_DISCONNECTED"  # the client went away mid-request
    BAD_HTTP = "ERR_BAD_HTTP"  # ambiguous or malformed HTTP framing (smuggling risk)
    HEADERS_TOO_LARGE = "ERR_HEADERS_TOO_LARGE"
    # access (every endpoint but /health)
    AUTH_REQUIRED = "ERR_AUTH_REQUIRED"  # 401: no credentials, or not a Bearer token
    AUTH_INVALID = "ERR_AUTH_INVALID"  # 401: unknown, revoked or expired key; a JWT that does not verify
    AUTH_FORBIDDEN = "ERR_AUTH_FORBIDDEN"  # 403: the identity's role or tenant does not allow this
    AUTH_INVALID_TENANT = "ERR_AUTH_INVALID_TENANT"  # a tenant id that is not a channel id, or unknown
    AUTH_INVALID_SCOPE = "ERR_AUTH_INVALID_SCOPE"  # a scope that is not kind:value[,value…]
    AUTH_INVALID_ROLE = "ERR_AUTH_INVALID_ROLE"
    AUTH_UNAVAILABLE = "ERR_AUTH_UNAVAILABLE"  # 503: the key store cannot answer now (the key may be valid)
    AUTH_INVALID_EXPIRY = "ERR_AUTH_INVALID_EXPIRY"  # a key expiry that is not a duration or date in the future
    # pipeline level (quarantine)
    EXTRACT_PAYLOAD = "ERR_EXTRACT_PAYLOAD"
    EXTRACT_NOT_OBJECT = "ERR_EXTRACT_NOT_OBJECT"
    VALIDATION_MISSING_EID = "ERR_VALIDATION_MISSING_EID"
    VALIDATION_UNKNOWN_EID = "ERR_VALIDATION_UNKNOWN_EID"
    VALIDATION_SCHEMA = "ERR_VALIDATION_SCHEMA"
    ROUTE_TIMESTAMP = "ERR_ROUTE_TIMESTAMP"
    EVENT_TOO_DEEP = "ERR_EVENT_TOO_DEEP"  # nested deeper than the store can hold
    PIPELINE_POISON = "ERR_PIPELINE_POISON"  # the core failed on this input every time: isolated
    STORE_REJECTED = "ERR_STORE_REJECTED"  # the store refused this input every time: isolated
    TENANT_MISMATCH = "ERR_TENANT_MISMATCH"  # an ingestor sent an event of another tenant (context.channel)
    # query API
    QUERY_INVALID = "ERR_QUERY_INVALID"
    QUERY_FORBIDDEN = "ERR_QUERY_FORBIDDEN"
    QUERY_TIMEOUT = "ERR_QUERY_TIMEOUT"
    QUERY_FAILED = "ERR_QUERY_FAILED"
    QUERY_TOO_LARGE = "ERR_QUERY_TOO_LARGE"  # statement text over its size bound
    QUERY_TOO_COMPLEX = "ERR_QUERY_TOO_COMPLEX"  # too many tokens, nesting levels or CTEs
    QUERY_MEMORY = "ERR_QUERY_MEMORY"  # the query needed more memory than a query may take
    QUERY_RESULT_TOO_LARGE = "ERR_QUERY_RESULT_TOO_LARGE"  # one value or row over the response byte bound
    TOO_MANY_QUERIES = "ERR_TOO_MANY_QUERIES"  # concurrent query bound reached (429 + Retry-After)
    # state
    DEDUP_INDEX = "ERR_DEDUP_INDEX"  # the dedup index cannot be opened (corrupt, foreign, held) or written
    VAULT_INPUT = "ERR_VAULT_INPUT"  # an id given to the identity vault is not a str, too long, or of no known kind
    VAULT_INTEGRITY = "ERR_VAULT_INTEGRITY"  # a vault entry fails authentication (tampered or corrupt)
    VAULT_UNAVAILABLE = "ERR_VAULT_UNAVAILABLE"  # the identity vault cannot be read or written now (disk, Redis)
    AUDIT_UNAVAILABLE = "ERR_AUDIT_UNAVAILABLE"  # 503: the audit log cannot be written, so the action is refused
    AUDIT_INPUT = "ERR_AUDIT_INPUT"  # an audit entry's action, outcome or target that is not short plain text
    CONFIG_INVALID = "ERR_CONFIG_INVALID"  # a setting is missing or contradicts another (the process does not start)
    # right to be forgotten (POST /v1/forget, cohort forget)
    FORGET_INPUT = "ERR_FORGET_INPUT"  # a forget request that is not {"tenant": …, "learner": …} with valid ids
    FORGET_TIMEOUT = "ERR_FORGET_TIMEOUT"  # 503: events acknowledged before the request are not processed yet
    FORGET_UNAVAILABLE = "ERR_FORGET_UNAVAILABLE"  # 503: the store, dedup state or vault failed mid-forget; retry
    # learning metrics (GET /v1/metrics/{name})
    METRIC_UNKNOWN = "ERR_METRIC_UNKNOWN"  # 404: no metric of that name
    METRIC_PARAM = "ERR_METRIC_PARAM"  # a metric parameter (from, to, granularity, by, tenant) that is not valid
    METRIC_TOO_LARGE = "ERR_METRIC_TOO_LARGE"  # 413: more cells than a response may hold; narrow the request
    # re-identification of learners (POST /v1/learners/reidentify)
    REIDENTIFY_INPUT = "ERR_REIDENTIFY_INPUT"  # not {"pseudonyms": [up to 100 learner pseudonyms u:<32 hex>]}
    # lineage (GET /v1/lineage/event/{mid}, GET /v1/lineage/metric/{name})
    LINEAGE_MID = "ERR_LINEAGE_MID"  # a mid that is not 1..128 letters, digits and _.:-
    LINEAGE_NOT_FOUND = "ERR_LINEAGE_NOT_FOUND"  # 404: no event of that mid the caller may see (absent or not its)
    LINEAGE_PARAM = "ERR_LINEAGE_PARAM"  # an event-lineage query parameter that is not valid (only `tenant` is)
    # exports (GET /v1/exhaust/{dataset}, cohort export)
    EXPORT_UNKNOWN = "ERR_EXPORT_UNKNOWN"  # 404: no dataset of that name to export
    EXPORT_PARAM = "ERR_EXPORT_PARAM"  # an export parameter (from, to, format, tenant) that is not valid
    TOO_MANY_EXPORTS = "ERR_TOO_MANY_EXPORTS"  # 429 + Retry-After: export slots (overall or yours) are taken
    EXPORT_FAILED = "ERR_EXPORT_FAILED"  # the store could not start the export (before any byte was sent)
    # keys and the ledger (GET /v1/keys, GET /v1/ledger)
    KEYS_PARAM = "ERR_KEYS_PARAM"  # a key-list parameter that is not valid (only `tenant` and `revoked` are)
    LEDGER_PARAM = "ERR_LEDGER_PARAM"  # the ledger takes no parameter
    LEDGER_UNAVAILABLE = "ERR_LEDGER_UNAVAILABLE"  # 503: the store's counters cannot be read right now
    CHECKER_UNAVAILABLE = "ERR_CHECKER_UNAVAILABLE"  # 503 + Retry-After: the SQL checker did not start in time (load)


class TransientFault(Exception):
    """An infrastructure fault that may pass (a disk, memory, a broker or server away): the pipeline
    retries it with backoff for as long as it lasts and never blames the input for it."""


class TerminalFault(Exception):
    """A fault no retry can fix (a broken invariant of Cohort itself, a store it cannot write to as
    configured): the pipeline stops loudly (health red, the reason logged and shown) instead of
    retrying for ever. The ingest log keeps every acknowledged event for when it is fixed."""


class CohortError(Exception):
    """An error with a stable code and a message meant for a human reader."""

    def __init__(self, code: ErrorCode, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def first_line(exc: BaseException, limit: int = 500) -> str:
    """What a message may quote of an exception: its first line, bounded (its type when it has no text)."""
    text = str(exc)
    return text.splitlines()[0][:limit] if text else type(exc).__name__
