"""Shared fixtures: settings on a temporary data dir, an in-process app, and a real server process."""

from __future__ import annotations

import os
import sys

# Bytecode caches (the gitignored __pycache__ folders) are written for the test session even where
# PYTHONDONTWRITEBYTECODE is set, as in some containers: without them each xdist worker assertion-rewrites every
# test file anew (measured: 20 s of CPU to collect the suite, 7 s with the caches), and each of the hundreds of
# Python processes the tests start (servers, their spawned pipeline workers and SQL checkers, CLI runs) compiles
# cohort's modules again (~0.5 s of CPU each). Set before the imports below, so that they are cached too.
sys.dont_write_bytecode = False
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

import orjson  # noqa: E402
import pytest  # noqa: E402

from cohort.settings import Settings  # noqa: E402
from clickhouse_engine import clickhouse_database, clickhouse_dsn  # noqa: F401 (fixtures)
from engines import kafka_bootstrap, kafka_broker, redis_server, redis_url, unique_topic  # noqa: F401 (fixtures)
from support import SAMPLE_FILE, ServerProcess, app_client, app_settings


def pytest_configure(config):
    """pytest-xdist hands out test files in the order collected below (--no-loadscope-reorder, xdist 3.8+), not
    re-sorted by how many tests each holds, its default: that put the files of one long test (end-to-end runs)
    last, to one worker, while the other had nothing left to do."""
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(items):
    """End-to-end and browser test files, and any file with a test that starts real servers (marked e2e), first
    (kept in their order otherwise): they are the longest, and parallel workers given them last would leave the
    other worker idle at the end (about 40 s of the suite)."""
    long_files = {item.path for item in items if item.get_closest_marker("e2e")
                  or item.nodeid.startswith(("tests/e2e/", "tests/web/"))}
    items.sort(key=lambda item: 0 if item.path in long_files else 1)


@pytest.fixture(scope="session")
def sample_lines() -> list[bytes]:
    return SAMPLE_FILE.read_bytes().splitlines()


@pytest.fixture
def sample_events(sample_lines) -> list[dict]:
    """The 500 real DIKSHA events, parsed afresh for each test so tests may mutate them."""
    return [orjson.loads(line) for line in sample_lines]


@pytest.fixture
def settings(tmp_path) -> Settings:
    return app_settings(tmp_path / "data")


@pytest.fixture
def client(settings):
    with app_client(settings, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def shared_client(tmp_path_factory):
    """One app (same settings as `client`) for the tests of a module that only read or are refused.

    Each app starts two pipeline worker processes and, on its first query, a SQL checker child: a few
    CPU-seconds per test. Tests that count what was acked, stored or rejected need their own (`client`)."""
    settings = app_settings(tmp_path_factory.mktemp("shared") / "data")
    with app_client(settings, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def server(tmp_path):
    process = ServerProcess(tmp_path / "data").start()
    yield process
    process.stop()

