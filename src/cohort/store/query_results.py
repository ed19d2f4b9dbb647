"""Query results as JSON-ready rows, fetched within a row and a byte bound.

Every DuckDB type gets one rendering, chosen from the column's type before the query runs
(the query is wrapped in a projection that does the conversion inside DuckDB):

- BOOLEAN, integers up to 64 bits, FLOAT/DOUBLE, VARCHAR and JSON (as text): as they come
  (NaN and ±Infinity become null, as JSON has no such numbers);
- HUGEINT, UHUGEINT, BIGNUM and DECIMAL: exact JSON numbers, whatever their size (JSON numbers
  have no size limit; a client that needs them exact parses them as big numbers or decimals);
- every other scalar (DATE, TIME, TIMESTAMP in all precisions and zones, INTERVAL, UUID, BIT,
  BLOB, ENUM, GEOMETRY, …): a string, DuckDB's own text for the value (what CAST(x AS VARCHAR)
  gives), which is exact (±infinity, BC dates, months in intervals) and can be pasted back into SQL;
- LIST, ARRAY, STRUCT, MAP, UNION: JSON as DuckDB's to_json writes it (map keys become text).

The user's statement is wrapped as `SELECT … FROM (<sql>) LIMIT row_limit + 1`, so DuckDB stops
producing rows early, and rows are fetched in small batches, encoded as they come, and no more
are fetched once the response would pass its byte bound.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

import orjson

from cohort.core.errors import CohortError, ErrorCode

_AS_IS = frozenset({"boolean", "tinyint", "smallint", "integer", "bigint", "utinyint", "usmallint", "uinteger",
                    "ubigint", "float", "double", "varchar", "null"})
_EXACT_NUMBERS = frozenset({"hugeint", "uhugeint", "bignum", "varint", "decimal"})
_NESTED = frozenset({"list", "array", "struct", "map", "union", "tuple"})
_NUMBERS = _AS_IS - {"varchar"}  # values of a bounded size: no check of their length


def kind_of(column_type: Any) -> str:
    return str(getattr(column_type, "id", str(column_type))).lower()

TARGET_FETCH_BYTES = 1 << 20  # about this much JSON per fetch, so one fetch of huge rows stays small
MAX_FETCH_ROWS = 2048


@dataclass(frozen=True, slots=True)
class FetchedRows:
    columns: list[str]
    rows: list[tuple[Any, ...]]
    truncated_by: str | None  # "rows", "bytes" or None
    json_bytes: int


VALUE_TOO_LARGE = "cohort: a value is larger than a response may be"  # the engine's error, told apart by this


def wrapped_sql(sql: str, column_types: list[Any], row_limit: int,
                max_value_bytes: int | None = None) -> tuple[str, list[Callable | None]]:
    """The statement that returns the rendered columns of `sql`, at most row_limit + 1 rows, and the
    Python conversion each column still needs (None: none). With `max_value_bytes`, a text value longer than
    that fails the statement in the engine (VALUE_TOO_LARGE): such a value could never be sent, and fetched it
    would be copied into the server's memory first (a `string_agg` over the events: hundreds of MB, twice)."""
    names = [f"c{i}" for i in range(len(column_types))]
    select: list[str] = []
    converters: list[Callable | None] = []
    for name, column_type in zip(names, column_types):
        kind = kind_of(column_type)
        column = f'_q."{name}"'
        if kind in _AS_IS:
            select.append(column)
            converters.append(None)
        elif kind in _EXACT_NUMBERS:
            select.append(f"CAST({column} AS VARCHAR)")
            converters.append(exact_number)
        elif kind in _NESTED:
            select.append(f"CAST(to_json({column}) AS VARCHAR)")
            converters.append(json_text)
        else:
            select.append(f"CAST({column} AS VARCHAR)")
            converters.append(None)
    if max_value_bytes is not None:
        select = [f"CASE WHEN strlen({expr}) > {int(max_value_bytes)} THEN error('{VALUE_TOO_LARGE}') ELSE {expr} END"
                  if kind_of(column_type) not in _NUMBERS else expr for expr, column_type in zip(select, column_types)]
    body = sql.strip().rstrip(";")
    wrapped = (f"SELECT {', '.join(select) or '*'} FROM (\n{body}\n) AS _q({', '.join(names)}) LIMIT {row_limit + 1}"
               if names else f"SELECT * FROM (\n{body}\n) AS _q LIMIT {row_limit + 1}")
    return wrapped, converters


def exact_number(text: str | None) -> Any:
    """A number DuckDB printed exactly: a Python int when it fits 64 bits, otherwise the digits, embedded
    in the JSON as they are."""
    if text is None:
        return None
    if len(text) < 19 and text.lstrip("-").isdigit():
        return int(text)
    return orjson.Fragment(text)


_JSON_STRING_OR_NON_NUMBER = re.compile(r'"(?:[^"\\]|\\.)*"|[-+]?(?:inf(?:inity)?|nan)\b', re.IGNORECASE)


def json_text(text: str | None) -> Any:
    """JSON DuckDB wrote, embedded as it is, except NaN and ±Infinity (not JSON, but DuckDB writes them:
    `inf`, `NaN`, `-Infinity`) become null. Whatever still is not strict JSON is sent as a string."""
    if text is None:
        return None
    try:
        orjson.loads(text)
        return orjson.Fragment(text)
    except orjson.JSONDecodeError:
        pass
    repaired = _JSON_STRING_OR_NON_NUMBER.sub(lambda m: m.group() if m.group().startswith('"') else "null", text)
    try:
        orjson.loads(repaired)
        return orjson.Fragment(repaired)
    except orjson.JSONDecodeError:
        return text


def encode_row(columns: list[str], row: tuple[Any, ...]) -> bytes:
    """One row as a JSON object (what the API returns)."""
    return orjson.dumps(dict(zip(columns, row)), default=str)


def fetch_bounded(cursor: Any, columns: list[str], converters: list[Callable | None], row_limit: int,
                  max_bytes: int | None) -> FetchedRows:
    """Fetch at most `row_limit` rows and at most `max_bytes` of their JSON (as objects in an array)."""
    key_bytes = sum(len(orjson.dumps(name)) + 1 for name in columns)  # `"name":` per value
    convert = any(converters)
    rows: list[tuple[Any, ...]] = []
    total = 2  # the array's brackets
    batch = 16
    while True:
        fetched = cursor.fetchmany(min(batch, row_limit + 1 - len(rows)))
        if not fetched:
            return FetchedRows(columns, rows, None, total)
        for raw in fetched:
            if len(rows) == row_limit:
                return FetchedRows(columns, rows, "rows", total)
            row = tuple(c(v) if c else v for c, v in zip(converters, raw)) if convert else raw
            size = len(orjson.dumps(row, default=str)) + key_bytes + (1 if rows else 0)
            if max_bytes is not None and total + size > max_bytes:
                if not rows:
                    raise CohortError(ErrorCode.QUERY_RESULT_TOO_LARGE,
                                      f"the first row alone is {size} bytes of JSON, over the {max_bytes}-byte "
                                      "limit of a response; select fewer or shorter columns (substr, ->>)")
                return FetchedRows(columns, rows, "bytes", total)
            rows.append(row)
            total += size
        average = max(1, (total - 2) // len(rows))
        batch = max(1, min(MAX_FETCH_ROWS, TARGET_FETCH_BYTES // average))
