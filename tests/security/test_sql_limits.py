"""Statement size and shape bounds: refused before the parse, with a code and a reason."""

from __future__ import annotations

import pytest

from cohort.core.errors import CohortError, ErrorCode
from cohort.security.sql_guard import SqlGuard
from cohort.security.sql_limits import SqlLimits
from cohort.security.identity import DEVELOPMENT_IDENTITY as ADMIN


def refused(sql: str, guard: SqlGuard | None = None) -> CohortError:
    with pytest.raises(CohortError) as info:
        (guard or SqlGuard()).check(sql, identity=ADMIN)
    return info.value


def chained_ctes(n: int) -> str:
    ctes = ["c0 AS (SELECT 1 AS x)"] + [f"c{i} AS (SELECT x FROM c{i - 1})" for i in range(1, n)]
    return "WITH " + ", ".join(ctes) + f" SELECT * FROM c{n - 1}"


def test_the_measured_statement_of_8000_chained_ctes_is_refused_by_size():
    sql = chained_ctes(8000)
    assert len(sql) > 200_000
    error = refused(sql)
    assert error.code == ErrorCode.QUERY_TOO_LARGE and "16384" in error.message


def test_size_counts_utf8_bytes():
    guard = SqlGuard(limits=SqlLimits(max_bytes=100))
    guard.check("SELECT '" + "é" * 40 + "'", identity=ADMIN)  # 80 bytes + 10
    assert refused("SELECT '" + "é" * 50 + "'", guard).code == ErrorCode.QUERY_TOO_LARGE


def test_too_many_tokens():
    guard = SqlGuard(limits=SqlLimits(max_tokens=50))
    guard.check("SELECT " + ", ".join(["1"] * 20), identity=ADMIN)
    error = refused("SELECT " + ", ".join(["1"] * 30), guard)
    assert error.code == ErrorCode.QUERY_TOO_COMPLEX and "tokens" in error.message


@pytest.mark.parametrize("opening, closing", [("(", ")"), ("[", "]")])
def test_brackets_nested_too_deep(opening, closing):
    SqlGuard().check("SELECT " + opening * 30 + "1" + closing * 30, identity=ADMIN)
    error = refused("SELECT " + opening * 40 + "1" + closing * 40)
    assert error.code == ErrorCode.QUERY_TOO_COMPLEX and "nested 40 deep" in error.message


def test_nesting_without_brackets_is_refused_as_too_complex_not_a_crash():
    error = refused("SELECT " + "NOT " * 2000 + "true")
    assert error.code == ErrorCode.QUERY_TOO_COMPLEX


def test_too_many_ctes():
    SqlGuard().check(chained_ctes(32), identity=ADMIN)
    error = refused(chained_ctes(33))
    assert error.code == ErrorCode.QUERY_TOO_COMPLEX and "common table expressions" in error.message


def test_too_many_selects():
    sql = "SELECT 1 AS x"
    for i in range(70):
        sql = f"SELECT x FROM ({sql}) t{i}" if i % 2 else f"SELECT * FROM ({sql}) t{i}"
    error = refused(sql, SqlGuard(limits=SqlLimits(max_nesting=100)))
    assert error.code == ErrorCode.QUERY_TOO_COMPLEX and "SELECTs" in error.message


def test_from_first_queries_are_counted_on_the_tree():
    """FROM-first subqueries have no SELECT token: the exact count after the parse catches them."""
    guard = SqlGuard(limits=SqlLimits(max_selects=3, max_nesting=100))
    sql = "FROM telemetry"
    for _ in range(4):
        sql = f"FROM ({sql})"
    assert refused(sql, guard).code == ErrorCode.QUERY_TOO_COMPLEX


def test_too_many_syntax_nodes():
    guard = SqlGuard(limits=SqlLimits(max_nodes=100))
    error = refused("SELECT " + " + ".join(["eid"] * 60) + " FROM telemetry", guard)
    assert error.code == ErrorCode.QUERY_TOO_COMPLEX and "syntax nodes" in error.message


def test_an_unterminated_string_is_invalid_not_an_error():
    assert refused("SELECT 'abc").code == ErrorCode.QUERY_INVALID
