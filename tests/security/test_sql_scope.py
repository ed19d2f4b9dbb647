"""Tenant scoping of checked SQL (sql_scope): what the rewritten tree reads, for each kind of caller.

These tests look at the SQL the guard hands the engine; tests/security/test_sql_tenant_attacks.py runs
attacks on real stores holding two tenants' rows.
"""

from __future__ import annotations

import dataclasses

import pytest
import sqlglot
from hypothesis import given, settings, strategies as st
from sqlglot import exp

from cohort.core.errors import CohortError, ErrorCode
from cohort.security.identity import Identity, Role, Scope
from cohort.security.sql_guard import SqlGuard
from cohort.security.table_catalog import CATALOG, EXPOSED_TABLES
from cohort.store.duckdb_store import DuckDbStore

ANALYST = Identity("key-1", Role.ANALYST, "tenant-a")
ADMIN = Identity("key-0", Role.ADMIN, None)
DIALECTS = ("duckdb", "clickhouse")
GUARDS = {dialect: SqlGuard(dialect=dialect) for dialect in DIALECTS}


def scoped(sql: str, dialect: str = "duckdb", identity: Identity = ANALYST) -> exp.Query:
    return sqlglot.parse_one(GUARDS[dialect].check(sql, identity=identity), read=dialect)


def base_reads(tree: exp.Expr) -> list[tuple[exp.Table, str | None]]:
    """Every table the tree names that is not one of its CTEs, and the tenant its enclosing SELECT filters
    it to (None when it is not the sole source of a SELECT filtered on its tenant column)."""
    ctes = {cte.alias_or_name for cte in tree.find_all(exp.CTE)}
    reads = []
    for table in tree.find_all(exp.Table):
        select = table.find_ancestor(exp.Select)
        condition = None
        if select is not None and not select.args.get("joins"):
            clause = select.args.get("prewhere") or select.args.get("where")
            condition = clause.this if clause is not None else None
        tenant = None
        if isinstance(condition, exp.EQ) and isinstance(condition.this, exp.Column) \
                and table.name in CATALOG and condition.this.name == CATALOG[table.name].tenant_column \
                and condition.expression.is_string:
            tenant = condition.expression.this
        if table.name not in ctes or tenant is not None:
            reads.append((table, tenant))
    return reads


CONSTRUCTS = [
    "SELECT * FROM telemetry",
    "SELECT t.mid FROM telemetry t JOIN failed_events f ON t.mid = f.mid",
    "SELECT a.mid FROM telemetry a, telemetry b WHERE a.mid = b.mid",
    "SELECT mid FROM telemetry UNION ALL SELECT mid FROM failed_events UNION SELECT mid FROM telemetry",
    "SELECT (SELECT count(*) FROM telemetry) AS n",
    "SELECT mid FROM telemetry WHERE mid IN (SELECT mid FROM failed_events)",
    "SELECT mid FROM telemetry t WHERE EXISTS (SELECT 1 FROM failed_events f WHERE f.mid = t.mid)",
    "SELECT eid FROM telemetry GROUP BY eid HAVING count(*) > (SELECT count(*) FROM failed_events)",
    "WITH c AS (SELECT * FROM telemetry) SELECT * FROM c JOIN failed_events USING (mid)",
    "WITH telemetry AS (SELECT * FROM telemetry) SELECT * FROM telemetry",
    "WITH a AS (SELECT * FROM telemetry), b AS (SELECT * FROM a UNION ALL SELECT * FROM telemetry) SELECT * FROM b",
    "SELECT * FROM (SELECT * FROM (SELECT mid FROM telemetry) AS x) AS y",
    "SELECT mid FROM telemetry ORDER BY (SELECT max(ets) FROM failed_events) LIMIT 3",
    "SELECT count(*) FILTER (WHERE mid IN (SELECT mid FROM failed_events)) AS n FROM telemetry",
]


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("sql", CONSTRUCTS)
def test_every_table_read_is_filtered_to_the_tenant(sql, dialect):
    try:
        tree = scoped(sql, dialect)
    except CohortError as exc:  # a construct the dialect does not have (ClickHouse: a bare UNION)
        assert exc.code == ErrorCode.QUERY_INVALID and "parse" in exc.message, exc
        return
    before = list(sqlglot.parse_one(sql, read=dialect).find_all(exp.Table))
    reads = base_reads(tree)
    assert reads and all(tenant == "tenant-a" for _, tenant in reads), tree.sql(dialect)
    ctes = {cte.alias_or_name for cte in sqlglot.parse_one(sql, read=dialect).find_all(exp.CTE)}
    assert len(reads) == len([t for t in before if t.name not in ctes or _reads_itself(t)]), tree.sql(dialect)


def _reads_itself(table: exp.Table) -> bool:
    """A table named like the CTE whose body it is in reads the real table (CTEs here are not recursive)."""
    cte = table.find_ancestor(exp.CTE)
    return cte is not None and cte.alias_or_name == table.name


@pytest.mark.parametrize("dialect", DIALECTS)
def test_aliases_and_names_are_kept_so_the_rest_of_the_query_reads_the_same(dialect):
    tree = scoped("SELECT t.mid, failed_events.stage FROM telemetry AS t JOIN failed_events ON t.mid = failed_events.mid",
                  dialect)
    aliases = [s.alias for s in tree.find_all(exp.Subquery)]
    assert aliases == ["t", "failed_events"]
    assert tree.selects[0].sql() == "t.mid" and tree.selects[1].sql() == "failed_events.stage"


def test_a_quoted_name_stays_the_alias_it_was():
    sql = GUARDS["duckdb"].check('SELECT "TELEMETRY".mid FROM "TELEMETRY"', identity=ANALYST)
    assert sql == """SELECT "TELEMETRY".mid FROM (SELECT * FROM telemetry WHERE channel = 'tenant-a') AS "TELEMETRY\""""


def test_clickhouse_filters_in_prewhere_before_anything_the_query_adds():
    sql = GUARDS["clickhouse"].check("SELECT mid FROM telemetry WHERE toInt32(mid) > 0", identity=ANALYST)
    assert sql == "SELECT mid FROM (SELECT * FROM telemetry PREWHERE channel = 'tenant-a') AS telemetry " \
                  "WHERE toInt32(mid) > 0"


def test_a_cte_named_like_a_table_is_the_users_and_its_body_is_filtered():
    sql = GUARDS["duckdb"].check("WITH telemetry AS (SELECT mid FROM telemetry) SELECT mid FROM telemetry",
                                 identity=ANALYST)
    assert sql == ("WITH telemetry AS (SELECT mid FROM (SELECT * FROM telemetry WHERE channel = 'tenant-a') "
                   "AS telemetry) SELECT mid FROM telemetry")


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_cte_whose_name_differs_in_case_is_not_trusted_to_shadow(dialect):
    """sqlglot compares CTE names as written; whichever the engine binds, the reference reads the tenant's rows."""
    tree = scoped('WITH "Telemetry" AS (SELECT 1 AS x) SELECT * FROM telemetry', dialect)
    assert [tenant for _, tenant in base_reads(tree)] == ["tenant-a"]


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("identity", [ANALYST, ADMIN])
def test_a_with_that_sqlglot_would_drop_is_refused_not_run_without_it(dialect, identity):
    """sqlglot writes `… UNION ALL WITH t AS (…) SELECT … UNION ALL …` back without its WITH: the names it
    defined would then read tables (another tenant's rows, or tables no one may query)."""
    for sql in ["SELECT mid FROM telemetry UNION ALL WITH telemetry AS (SELECT mid FROM telemetry) "
                "SELECT mid FROM telemetry UNION ALL SELECT mid FROM telemetry",
                "SELECT 1 AS x UNION ALL WITH pipeline_state AS (SELECT 1 AS x) SELECT x FROM pipeline_state "
                "UNION ALL SELECT 2"]:
        with pytest.raises(CohortError) as info:
            GUARDS[dialect].check(sql, identity=identity)
        assert info.value.code in (ErrorCode.QUERY_INVALID, ErrorCode.QUERY_FORBIDDEN), info.value


def test_admins_read_everything_unchanged():
    for dialect in DIALECTS:
        assert GUARDS[dialect].check("SELECT * FROM ingest_batches", identity=ADMIN) == "SELECT * FROM ingest_batches"
        assert "channel" not in GUARDS[dialect].check("SELECT mid FROM telemetry", identity=ADMIN)


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("sql", ["SELECT * FROM ingest_batches",
                                 "SELECT t.mid FROM telemetry t JOIN ingest_batches b USING (log_offset)",
                                 "WITH b AS (SELECT * FROM ingest_batches) SELECT 1 AS one"])
def test_tables_without_a_tenant_column_are_refused_to_tenants_by_name(sql, dialect):
    with pytest.raises(CohortError) as info:
        GUARDS[dialect].check(sql, identity=ANALYST)
    assert info.value.code == ErrorCode.QUERY_FORBIDDEN and "ingest_batches" in info.value.message


@pytest.mark.parametrize("identity", [Identity("k", Role.INGESTOR, "tenant-a"), Identity("k", Role.EDUCATOR, "tenant-a"),
                                      Identity("k", Role.EDUCATOR, "tenant-a", scope=Scope.parse("batch:b1"))])
def test_callers_who_may_not_run_sql_over_the_tenant_are_forbidden(identity):
    for dialect in DIALECTS:
        with pytest.raises(CohortError) as info:
            GUARDS[dialect].check("SELECT 1 AS one", identity=identity)
        assert info.value.code == ErrorCode.AUTH_FORBIDDEN


def test_a_check_without_an_identity_is_a_programming_error():
    with pytest.raises(TypeError):
        GUARDS["duckdb"].check("SELECT 1", identity=None)  # type: ignore[arg-type]


def test_clickhouse_in_a_table_name_is_refused_to_tenants():
    with pytest.raises(CohortError) as info:
        GUARDS["clickhouse"].check("SELECT mid FROM telemetry WHERE mid IN failed_events", identity=ANALYST)
    assert info.value.code == ErrorCode.QUERY_FORBIDDEN and "failed_events" in info.value.message
    assert "IN failed_events" in GUARDS["clickhouse"].check("SELECT mid FROM telemetry WHERE mid IN failed_events",
                                                            identity=ADMIN)


def test_the_tenant_is_a_literal_sqlglot_quotes_whatever_it_holds(tmp_path):
    """Tenant ids cannot hold quotes (identity.check_tenant_id), but the rewrite does not rely on it."""
    hostile = Identity("k", Role.ANALYST, "tenant-a")
    object.__setattr__(hostile, "tenant", "x' OR '1'='1")  # past the id grammar, as a bug elsewhere could
    sql = GUARDS["duckdb"].check("SELECT count(*) AS n FROM telemetry", identity=hostile)
    assert "'x'' OR ''1''=''1'" in sql
    store = DuckDbStore(tmp_path / "store.duckdb")
    try:
        store._con.execute("INSERT INTO telemetry (mid, channel) VALUES ('m1', 'tenant-b')")
        assert store.query(sql, None, 10, 5.0).rows == [(0,)]
    finally:
        store.close()


def test_the_guard_reads_its_tables_from_the_catalog():
    assert EXPOSED_TABLES == frozenset(CATALOG) == GUARDS["duckdb"].tables


# -- random statements: whatever passes the guard reads only the tenant's rows ------------------------------------

NAMES = st.sampled_from(["telemetry", "failed_events", "c", "TELEMETRY", '"telemetry"'])


@st.composite
def statements(draw, depth: int = 0) -> str:
    source = draw(NAMES)
    if depth < 2 and draw(st.booleans()):
        source = f"({draw(statements(depth + 1))}) AS {draw(NAMES)}"
    sql = f"SELECT mid FROM {source}"
    if depth < 2 and draw(st.booleans()):
        sql += f" WHERE mid IN ({draw(statements(depth + 1))})"
    if depth < 2 and draw(st.booleans()):
        sql += f" UNION ALL {draw(statements(depth + 1))}"
    if depth < 2 and draw(st.booleans()):
        sql = f"WITH {draw(NAMES)} AS ({draw(statements(depth + 1))}) {sql}"
    return sql


@settings(max_examples=300, deadline=None)
@given(sql=statements(), dialect=st.sampled_from(DIALECTS))
def test_whatever_passes_reads_only_the_tenants_rows(sql, dialect):
    try:
        tree = scoped(sql, dialect)
    except CohortError as exc:
        assert exc.code in (ErrorCode.QUERY_FORBIDDEN, ErrorCode.QUERY_INVALID), exc
        return
    for table, tenant in base_reads(tree):
        assert tenant == "tenant-a", (sql, tree.sql(dialect), table.sql(dialect))


def test_identity_dataclass_is_what_the_checker_pickles():
    """The identity crosses a process boundary to the checker: it must survive pickling unchanged."""
    import pickle

    identity = dataclasses.replace(ANALYST, scope=None)
    assert pickle.loads(pickle.dumps(identity)) == identity
