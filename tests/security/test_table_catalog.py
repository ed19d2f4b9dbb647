"""The table catalog is what the stores hold: every exposed table, column and type, in both dialects."""

from __future__ import annotations

import uuid

import pytest

from cohort.security.identity import Identity, Role
from cohort.security.table_catalog import CATALOG, EXPOSED_TABLES, tables_for
from cohort.store.clickhouse_store import ClickHouseStore
from cohort.store.duckdb_store import DuckDbStore


def catalog_columns(dialect: str) -> dict[str, list[tuple[str, str]]]:
    return {name: [(c.name, c.type_in(dialect)) for c in table.columns_in(dialect)] for name, table in CATALOG.items()}


def test_the_catalog_describes_the_duckdb_store(tmp_path):
    store = DuckDbStore(tmp_path / "store.duckdb")
    try:
        described = {table: [(name, kind) for name, kind, *_ in store._con.execute(f"DESCRIBE {table}").fetchall()]
                     for table in EXPOSED_TABLES}
    finally:
        store.close()
    assert described == catalog_columns("duckdb")


def test_the_catalog_describes_the_clickhouse_store(clickhouse_dsn):
    store = ClickHouseStore(clickhouse_dsn, database=f"catalog_{uuid.uuid4().hex[:10]}")
    try:
        described = {table: [(row[0], row[1]) for row in store._writer.query(f"DESCRIBE TABLE {table}").result_rows]
                     for table in EXPOSED_TABLES}
    finally:
        store.close()
    assert described == catalog_columns("clickhouse")


def test_every_column_says_what_it_is():
    for table in CATALOG.values():
        assert table.description
        assert all(len(c.description) > 10 for c in table.columns), table.name
        if table.tenant_column:
            assert table.tenant_column in {c.name for c in table.columns}


ROLLUPS = ["learner_hours", "device_hours", "content_days", "item_days", "learner_days", "workflow_summaries", "rollup_dirty"]


@pytest.mark.parametrize("identity, tables", [
    (Identity("k", Role.ADMIN, None), ["telemetry", "failed_events", "ingest_batches", *ROLLUPS]),
    (Identity("k", Role.ANALYST, "tenant-a"), ["telemetry", "failed_events", *ROLLUPS]),
    (Identity("k", Role.TENANT_ADMIN, "tenant-a"), ["telemetry", "failed_events", *ROLLUPS]),
])
def test_tenants_see_only_tables_that_can_be_limited_to_them(identity, tables):
    assert [t.name for t in tables_for(identity)] == tables


def test_scoped_identities_see_only_tables_whose_rows_can_be_narrowed_to_their_scope():
    from cohort.security.identity import Scope

    scoped = Identity("k", Role.ANALYST, "tenant-a", scope=Scope.parse("rollup.l3:school-1"))
    assert [t.name for t in tables_for(scoped)] == ["telemetry"]
    for table in CATALOG.values():  # a scope is a condition over the parsed event, which a table must hold
        assert table.readable_by(scoped) == (table.scope_column is not None and table.tenant_column is not None)
        if table.scope_column is not None:
            assert table.scope_column in {c.name for c in table.columns}
