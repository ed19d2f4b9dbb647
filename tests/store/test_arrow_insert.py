"""append_arrow: a columnar insert whose failure reports the insert's own error, even in an aborted transaction."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pytest

from cohort.store.arrow_insert import append_arrow


def test_rows_are_inserted_and_an_empty_table_is_a_no_op():
    con = duckdb.connect()
    con.execute("CREATE TABLE t (a INTEGER, b VARCHAR)")
    append_arrow(con, "t", pa.table({"a": [1, 2], "b": ["x", None]}))
    append_arrow(con, "t", pa.table({"a": pa.array([], pa.int32()), "b": pa.array([], pa.string())}))
    assert con.sql("SELECT * FROM t ORDER BY a").fetchall() == [(1, "x"), (2, None)]


def test_in_an_aborted_transaction_the_error_is_the_inserts_and_the_connection_recovers():
    con = duckdb.connect()
    con.execute("CREATE TABLE t (a INTEGER)")
    con.execute("BEGIN")
    with pytest.raises(duckdb.Error):
        con.execute("INSERT INTO t VALUES ('not a number')")
    with pytest.raises(duckdb.Error, match="(?i)abort"):
        append_arrow(con, "t", pa.table({"a": [1]}))
    con.execute("ROLLBACK")
    append_arrow(con, "t", pa.table({"a": [7]}))  # the view of the failed insert is not left behind
    assert con.sql("SELECT a FROM t").fetchall() == [(7,)]
