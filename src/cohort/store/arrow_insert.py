"""One columnar insert of an Arrow table into a DuckDB table: what the store's batch writes and the refresh's
sketch writes share.

Why its own module: the analytics package writes its sketches inside the store's transaction and cannot import
duckdb_store (which imports it). Why the care on failure: in an aborted transaction the view's unregister fails
too, and must not hide the insert's own error (an out-of-memory, say) behind its own.
"""

from __future__ import annotations

import contextlib

import duckdb
import pyarrow as pa


def append_arrow(con: duckdb.DuckDBPyConnection, table: str, rows: pa.Table) -> None:
    """Columnar insert of `rows` into `table` (whose columns they match, in order)."""
    if not rows.num_rows:
        return
    view = f"incoming_{table}"
    con.register(view, rows)
    try:
        con.execute(f"INSERT INTO {table} SELECT * FROM {view}")
    except BaseException:
        with contextlib.suppress(duckdb.Error):  # in an aborted transaction this fails too: keep the first error
            con.unregister(view)
        raise
    con.unregister(view)
