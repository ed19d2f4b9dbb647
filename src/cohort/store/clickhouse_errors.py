"""What a ClickHouse error means to Cohort: retry it, stop for it, blame the batch, or tell the query's author.

clickhouse-connect raises one family of exceptions for everything (a lost connection, a server
that is merging too slowly, a typo in a query); what tells them apart is the server's numeric
error code (`exc.code`, also in the message as "Code: N."). Classified here once, so the store's
write path and query path agree:

- transient (the pipeline backs off and retries, never blaming the input): no connection, the
  server overloaded or short of memory, disk or parts ("too many parts": merges are behind), a
  replica or Keeper away, an insert whose outcome is unknown (its replay is harmless: tokens);
- misconfigured (the pipeline stops loudly, a TerminalFault): the store cannot be written as
  configured (unknown database, table or column, a read-only or unauthorised user);
- anything else a write raises is left as it is: it may be the batch's fault (a value the table
  refuses, a batch spanning more partitions than one insert may write) and the writer isolates it —
  unless an earlier insert of the same batch landed: then the store raises ClickHousePartlyRefused
  (terminal), as isolating a batch that is partly in would store that part twice.

Query errors become CohortError with the query codes: a time limit ERR_QUERY_TIMEOUT, memory
ERR_QUERY_MEMORY, a statement the engine refuses to analyse ERR_QUERY_INVALID, a write or a file
read ERR_QUERY_FORBIDDEN, and whatever fails while running ERR_QUERY_FAILED.
"""

from __future__ import annotations

import re

from clickhouse_connect.driver.exceptions import ClickHouseError, DatabaseError, OperationalError

from cohort.core.errors import CohortError, ErrorCode, TerminalFault, TransientFault, first_line


class ClickHouseUnavailable(TransientFault):
    """ClickHouse cannot take the write now (unreachable, overloaded, out of memory or parts): retry."""


class ClickHouseMisconfigured(TerminalFault):
    """ClickHouse refuses the store's own statements (a missing table or column, a user without rights):
    no retry can fix that; the ingest log keeps every acknowledged event until it is fixed."""


class ClickHousePartlyRefused(TerminalFault):
    """ClickHouse took part of a batch (its first inserts) and refused the rest for a reason no retry
    changes. Writing the batch record by record, or quarantining what was refused, would store the part
    it took a second time; so the writer stops and says which table refused what. Once that table takes
    it again, the same token writes the rest once."""


# Server error codes (ClickHouse src/Common/ErrorCodes.cpp).
TRANSIENT_CODES = frozenset({
    3,    # UNEXPECTED_END_OF_FILE (connection cut mid-response)
    32,   # ATTEMPT_TO_READ_AFTER_EOF
    159,  # TIMEOUT_EXCEEDED
    173,  # CANNOT_ALLOCATE_MEMORY
    201,  # QUOTA_EXCEEDED
    202,  # TOO_MANY_SIMULTANEOUS_QUERIES
    203,  # NO_FREE_CONNECTION
    209,  # SOCKET_TIMEOUT
    210,  # NETWORK_ERROR
    225,  # NO_ZOOKEEPER
    236,  # ABORTED
    241,  # MEMORY_LIMIT_EXCEEDED
    242,  # TABLE_IS_READ_ONLY (a replica lost Keeper)
    243,  # NOT_ENOUGH_SPACE
    252,  # TOO_MANY_PARTS (merges behind) — but see _BATCH_TOO_SCATTERED
    279,  # ALL_CONNECTION_TRIES_FAILED
    285,  # TOO_FEW_LIVE_REPLICAS
    319,  # UNKNOWN_STATUS_OF_INSERT
    394,  # QUERY_WAS_CANCELLED (server shutting down)
    425,  # SYSTEM_ERROR
    439,  # CANNOT_SCHEDULE_TASK
    999,  # KEEPER_EXCEPTION
    1000,  # POCO_EXCEPTION (network layer)
})
MISCONFIGURED_CODES = frozenset({
    10,   # NOT_FOUND_COLUMN_IN_BLOCK
    16,   # NO_SUCH_COLUMN_IN_TABLE
    60,   # UNKNOWN_TABLE
    81,   # UNKNOWN_DATABASE
    115,  # UNKNOWN_SETTING
    164,  # READONLY
    192,  # UNKNOWN_USER
    194,  # REQUIRED_PASSWORD
    497,  # ACCESS_DENIED
    516,  # AUTHENTICATION_FAILED
})
QUERY_INVALID_CODES = frozenset({
    36,   # BAD_ARGUMENTS
    42,   # NUMBER_OF_ARGUMENTS_DOESNT_MATCH
    43,   # ILLEGAL_TYPE_OF_ARGUMENT
    46,   # UNKNOWN_FUNCTION
    47,   # UNKNOWN_IDENTIFIER
    53,   # TYPE_MISMATCH
    60,   # UNKNOWN_TABLE
    62,   # SYNTAX_ERROR
    63,   # UNKNOWN_AGGREGATE_FUNCTION
    81,   # UNKNOWN_DATABASE
    179,  # MULTIPLE_EXPRESSIONS_FOR_ALIAS
    184,  # ILLEGAL_AGGREGATION
    215,  # NOT_AN_AGGREGATE
    352,  # AMBIGUOUS_COLUMN_NAME
    386,  # NO_COMMON_TYPE
    456,  # UNKNOWN_QUERY_PARAMETER
    457,  # BAD_QUERY_PARAMETER
})
QUERY_FORBIDDEN_CODES = frozenset({164, 497})  # READONLY, ACCESS_DENIED
QUERY_MEMORY_CODES = frozenset({173, 241})
QUERY_TIMEOUT_CODES = frozenset({159})

# Code 252 also names a batch whose rows fall into more partitions than one insert may write: the
# same batch would fail on every retry, so it is the batch's fault, not the server's.
_BATCH_TOO_SCATTERED = re.compile(r"too many partitions", re.IGNORECASE)
_CODE_IN_MESSAGE = re.compile(r"\bCode:\s*(\d+)")
_MESSAGE_PREFIX = re.compile(r"^(?:.*?Code:\s*\d+\.\s*)?(?:DB::Exception:\s*)?")
_VERSION_TRAILER = re.compile(r"\s*\(version\s+[^()]*(?:\([^()]*\))?[^()]*\)\s*\.?\s*$")


def error_code(exc: BaseException) -> int | None:
    """The server's error code of a clickhouse-connect exception (None for a transport error)."""
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return code
    match = _CODE_IN_MESSAGE.search(str(exc))
    return int(match.group(1)) if match else None


def is_transient(exc: BaseException) -> bool:
    """Whether the failure may pass by itself: connection and server-capacity faults, not SQL errors."""
    if isinstance(exc, (TransientFault, ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, TerminalFault):
        return False
    if isinstance(exc, ClickHouseError):
        code = error_code(exc)
        if code is None:  # no server answer at all: the transport failed (clickhouse-connect's OperationalError)
            return isinstance(exc, OperationalError)
        if code == 252 and _BATCH_TOO_SCATTERED.search(str(exc)):
            return False
        return code in TRANSIENT_CODES
    return isinstance(exc, OSError)


def store_fault(exc: BaseException, doing: str) -> BaseException:
    """The exception a store operation raises for `exc`: ClickHouseUnavailable (retry),
    ClickHouseMisconfigured (stop), or `exc` itself (the batch's or the caller's fault)."""
    if isinstance(exc, (TransientFault, TerminalFault)):
        return exc
    if is_transient(exc):
        return ClickHouseUnavailable(f"ClickHouse unavailable while {doing}: {message_of(exc)}")
    if isinstance(exc, DatabaseError) and error_code(exc) in MISCONFIGURED_CODES:
        return ClickHouseMisconfigured(f"ClickHouse refused {doing} as configured: {message_of(exc)}")
    return exc


def query_error(exc: BaseException, timeout_s: float, max_memory_bytes: int | None) -> CohortError:
    """The coded error a failed query answers with; never the engine's own exception."""
    code = error_code(exc) if isinstance(exc, ClickHouseError) else None
    text = message_of(exc)
    if code in QUERY_TIMEOUT_CODES:
        return CohortError(ErrorCode.QUERY_TIMEOUT, f"query ran longer than {timeout_s:g} s")
    if code in QUERY_MEMORY_CODES:
        bound = f" ({(max_memory_bytes or 0) // (1024 * 1024)} MB)" if max_memory_bytes else ""
        return CohortError(ErrorCode.QUERY_MEMORY, f"query needs more memory than a query may take{bound}; "
                           f"narrow it (filter, aggregate, select fewer columns): {text}")
    if code in QUERY_FORBIDDEN_CODES:
        return CohortError(ErrorCode.QUERY_FORBIDDEN, f"queries are read-only: {text}")
    if code in QUERY_INVALID_CODES:
        return CohortError(ErrorCode.QUERY_INVALID, text)
    if code is None and is_transient(exc):
        return CohortError(ErrorCode.QUERY_FAILED, f"the analytical store is unreachable: {text}")
    return CohortError(ErrorCode.QUERY_FAILED, text)


def message_of(exc: BaseException) -> str:
    """The part of an engine message meant for people: no "Code: N. DB::Exception:" prefix, no
    server version trailer, first line only, bounded."""
    text = first_line(exc)
    stripped = _VERSION_TRAILER.sub("", _MESSAGE_PREFIX.sub("", text, count=1)).strip()
    return stripped or text
