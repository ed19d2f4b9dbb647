"""ClickHouse query results rendered for JSON with the rules of cohort.store.query_results.

The same three renderings as the embedded store, chosen from each column's ClickHouse type before
the query runs (the statement is wrapped in a projection that converts inside the engine):

- Bool, integers up to 64 bits, Float32/64, String and NULL: as they come (NaN and ±Infinity
  become null when the row is encoded, as JSON has no such numbers);
- Int128/256, UInt128/256 and Decimal: exact JSON numbers, whatever their size (`toString`);
- Array, Tuple, Map, Nested, JSON, Variant, Dynamic and the geo types: JSON as ClickHouse's
  `toJSONString` writes it (64-bit integers and decimals unquoted, so numbers stay numbers);
- every other scalar (Date, DateTime64, UUID, IPv4/6, Enum, FixedString, Interval, …): a string,
  ClickHouse's own text for the value (`toString`), exact and pastable back into SQL.

Nullable and LowCardinality wrap a type without changing how it renders. Rows are read from a
stream, so the byte and row bounds of `fetch_bounded` stop the query early instead of after it.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from cohort.store.query_results import exact_number, json_text

_AS_IS = frozenset({"Bool", "UInt8", "UInt16", "UInt32", "UInt64", "Int8", "Int16", "Int32", "Int64", "Float32",
                    "Float64", "BFloat16", "String", "Nothing"})
_EXACT_NUMBERS = frozenset({"Int128", "Int256", "UInt128", "UInt256", "Decimal", "Decimal32", "Decimal64",
                            "Decimal128", "Decimal256"})
_NESTED = frozenset({"Array", "Tuple", "Map", "Nested", "JSON", "Object", "Variant", "Dynamic", "Point", "Ring",
                     "LineString", "MultiLineString", "Polygon", "MultiPolygon", "Geometry"})
_WRAPPERS = ("Nullable(", "LowCardinality(", "SimpleAggregateFunction(")

# Format settings the rendering relies on (toJSONString reads them).
RENDER_SETTINGS = {"output_format_json_quote_64bit_integers": 0, "output_format_json_quote_decimals": 0,
                   "output_format_json_quote_denormals": 0}


def base_type(type_name: str) -> str:
    """The type's family without the wrappers that do not change its values: `Nullable(Int128)` → `Int128`."""
    name = type_name.strip()
    while True:
        for wrapper in _WRAPPERS:
            if name.startswith(wrapper) and name.endswith(")"):
                inner = name[len(wrapper):-1]
                if wrapper == "SimpleAggregateFunction(":  # (function, type): the values are of the type
                    inner = inner.split(",", 1)[1] if "," in inner else inner
                name = inner.strip()
                break
        else:
            return name.split("(", 1)[0].strip()


def wrapped_sql(sql: str, columns: list[tuple[str, str]], row_limit: int) -> tuple[str, list[Callable | None]]:
    """The statement returning the rendered columns of `sql` (given as (name, ClickHouse type) pairs), at
    most row_limit + 1 rows, and the Python conversion each column still needs (None: none).

    The columns are read by position (`AS _q(c0, c1, …)`), not by the names DESCRIBE gave them: two
    columns may share a name, and an unnamed scalar subquery is `_subquery_N` with an N that changes once
    the statement is wrapped."""
    body = sql.strip().rstrip(";")
    select: list[str] = []
    converters: list[Callable | None] = []
    positions = [f"c{i}" for i in range(len(columns))]
    for position, (_name, type_name) in zip(positions, columns):
        family = base_type(type_name)
        column = f"_q.{position}"
        if family in _AS_IS:
            select.append(column)
            converters.append(None)
        elif family in _EXACT_NUMBERS:
            select.append(f"toString({column})")
            converters.append(exact_number)
        elif family in _NESTED:
            select.append(f"toJSONString({column})")
            converters.append(json_text)
        else:
            select.append(f"toString({column})")
            converters.append(None)
    source = f"(\n{body}\n) AS _q({', '.join(positions)})" if positions else f"(\n{body}\n) AS _q"
    return f"SELECT {', '.join(select) or '*'} FROM {source} LIMIT {row_limit + 1}", converters


class StreamCursor:
    """The `fetchmany` that fetch_bounded reads rows with, over a clickhouse-connect row stream."""

    def __init__(self, rows: Iterable[Any]):
        self._rows = iter(rows)

    def fetchmany(self, n: int) -> list[tuple[Any, ...]]:
        batch: list[tuple[Any, ...]] = []
        if n <= 0:
            return batch
        for row in self._rows:
            batch.append(tuple(row))
            if len(batch) >= n:
                break
        return batch
