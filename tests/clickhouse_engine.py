"""The embedded ClickHouse engine (chdb) for the tests: one per test process, shared by every test.

chdb hosts one engine per process, at one path, and starting it costs most of a second. So the
engine lives at one path per pytest session (under the session's base temp directory: every
conftest or module that imports these fixtures gets the same path, and clients on one path share
one engine), one client keeps it up, and each test makes a database of its own on it
(`clickhouse_database`) instead of an engine of its own.

The fixtures are registered for every test in tests/conftest.py.
"""

from __future__ import annotations

import uuid

import pytest


@pytest.fixture(scope="session")
def clickhouse_dsn(tmp_path_factory) -> str:
    clickhouse_connect = pytest.importorskip("clickhouse_connect")
    pytest.importorskip("chdb")
    path = tmp_path_factory.getbasetemp() / "clickhouse-engine"
    path.mkdir(parents=True, exist_ok=True)
    dsn = f"chdb://{path}"
    keeper = clickhouse_connect.get_client(dsn=dsn)  # keeps the engine up between the tests' stores
    yield dsn
    keeper.close()


@pytest.fixture
def clickhouse_database() -> str:
    """A database name no other test uses."""
    return f"test_{uuid.uuid4().hex[:12]}"
