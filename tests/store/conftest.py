"""The embedded ClickHouse engine for the store tests: started once per test process.

chdb hosts one engine per process, at one path, and starting it costs most of a second, so the
session keeps one client open on one path and each test makes a database of its own on it
(`clickhouse_database`) instead of an engine of its own.
"""

from __future__ import annotations

import uuid

import pytest


@pytest.fixture(scope="session")
def clickhouse_dsn(tmp_path_factory) -> str:
    clickhouse_connect = pytest.importorskip("clickhouse_connect")
    pytest.importorskip("chdb")
    dsn = f"chdb://{tmp_path_factory.mktemp('clickhouse')}/engine"
    keeper = clickhouse_connect.get_client(dsn=dsn)  # keeps the engine up between the tests' stores
    yield dsn
    keeper.close()


@pytest.fixture
def clickhouse_database() -> str:
    """A database name no other test uses."""
    return f"test_{uuid.uuid4().hex[:12]}"
