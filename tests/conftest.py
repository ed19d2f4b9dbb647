"""Shared fixtures: settings on a temporary data dir, an in-process app, and a real server process."""

from __future__ import annotations

import orjson
import pytest

from cohort.settings import Settings
from clickhouse_engine import clickhouse_database, clickhouse_dsn  # noqa: F401 (fixtures)
from engines import kafka_bootstrap, kafka_broker, redis_server, redis_url, unique_topic  # noqa: F401 (fixtures)
from support import SAMPLE_FILE, ServerProcess, app_client


def pytest_collection_modifyitems(items):
    """End-to-end and browser test files first (kept in their order otherwise): they are the longest, and parallel
    workers given them last would leave the other worker idle at the end (about 40 s of the suite)."""
    items.sort(key=lambda item: 0 if item.nodeid.startswith(("tests/e2e/", "tests/web/")) else 1)


@pytest.fixture(scope="session")
def sample_lines() -> list[bytes]:
    return SAMPLE_FILE.read_bytes().splitlines()


@pytest.fixture
def sample_events(sample_lines) -> list[dict]:
    """The 500 real DIKSHA events, parsed afresh for each test so tests may mutate them."""
    return [orjson.loads(line) for line in sample_lines]


@pytest.fixture
def settings(tmp_path) -> Settings:
    """An in-process app's settings: the core runs inline (pipeline_workers=0, a supported mode) and the SQL
    checker starts on the first query (sql_checker_at_start=False), because two worker processes and a checker
    per test cost seconds of CPU; the pool and the checker's start with the server are tested by the pipeline
    and end-to-end tests, which run `cohort serve` as users do."""
    return Settings(data_dir=tmp_path / "data", pipeline_idle_wait_seconds=0.005, pipeline_workers=0,
                    sql_checker_at_start=False)


@pytest.fixture
def client(settings):
    with app_client(settings, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def shared_client(tmp_path_factory):
    """One app (same settings as `client`) for the tests of a module that only read or are refused.

    Each app starts two pipeline worker processes and, on its first query, a SQL checker child: a few
    CPU-seconds per test. Tests that count what was acked, stored or rejected need their own (`client`)."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("shared") / "data", pipeline_idle_wait_seconds=0.005,
                        pipeline_workers=0, sql_checker_at_start=False)
    with app_client(settings, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def server(tmp_path):
    process = ServerProcess(tmp_path / "data").start()
    yield process
    process.stop()

