"""QueryChecker: SqlGuard's check in a child process, with a hard time limit, replaced when it dies."""

from __future__ import annotations

import os
import signal

import pytest

from cohort.api.query_checker import QueryChecker
from cohort.core.errors import CohortError, ErrorCode
from cohort.security.sql_limits import SqlLimits
from cohort.store.base import QueryTimeout
from cohort.security.identity import DEVELOPMENT_IDENTITY as ADMIN

UNBOUNDED = SqlLimits(max_bytes=10**7, max_tokens=10**7, max_nesting=10**4, max_selects=10**6, max_ctes=10**6,
                      max_nodes=10**8)


def chained_ctes(n: int) -> str:
    ctes = ["c0 AS (SELECT 1 AS x)"] + [f"c{i} AS (SELECT x FROM c{i - 1})" for i in range(1, n)]
    return "WITH " + ", ".join(ctes) + f" SELECT * FROM c{n - 1}"


@pytest.fixture
def checker():
    checker = QueryChecker(SqlLimits())
    yield checker
    checker.close()


def test_checks_and_refusals_come_back_as_in_process(checker):
    assert checker.check("select mid from TELEMETRY where eid = $e", {"e": "START"}, 10, identity=ADMIN) == \
        "SELECT mid FROM TELEMETRY WHERE eid = $e"
    with pytest.raises(CohortError) as info:
        checker.check("SELECT * FROM pipeline_state", None, 10, identity=ADMIN)
    assert info.value.code == ErrorCode.QUERY_FORBIDDEN and "unknown table" in info.value.message
    with pytest.raises(CohortError) as info:
        checker.check("SELECT " + "NOT " * 3000 + "true", None, 10, identity=ADMIN)
    assert info.value.code == ErrorCode.QUERY_TOO_COMPLEX


def test_a_check_past_its_time_limit_is_stopped_and_the_checker_recovers():
    checker = QueryChecker(UNBOUNDED)  # no bounds before the parse: 8,000 CTEs take seconds to check
    try:
        checker.check("SELECT 1", None, 10, identity=ADMIN)  # started
        with pytest.raises(QueryTimeout):
            checker.check(chained_ctes(8000), None, 0.2, identity=ADMIN)
        assert checker.check("SELECT 2", None, 10, identity=ADMIN) == "SELECT 2"
    finally:
        checker.close()


def test_a_child_that_died_is_replaced(checker):
    checker.check("SELECT 1", None, 10, identity=ADMIN)
    os.kill(checker._process.pid, signal.SIGKILL)
    checker._process.join(5)
    assert checker.check("SELECT 3", None, 10, identity=ADMIN) == "SELECT 3"


def test_the_child_cannot_take_unbounded_memory():
    checker = QueryChecker(UNBOUNDED, memory_bytes=400 * 1024 * 1024)
    try:
        with pytest.raises(CohortError) as info:
            checker.check(chained_ctes(8000), None, 120, identity=ADMIN)  # ≈ 2 GB to parse, as measured in the server
        assert info.value.code == ErrorCode.QUERY_TOO_COMPLEX
        assert checker.check("SELECT 4", None, 10, identity=ADMIN) == "SELECT 4"
    finally:
        checker.close()


def test_warm_starts_the_child_before_any_check(checker):
    assert checker._process is None
    checker.warm_in_background()
    # a check that comes while it starts waits for it, and says that wait is not the query's time
    checked, uncounted_s = checker.check_timed("SELECT 4", None, 10, identity=ADMIN)
    started = checker._process
    assert checked == "SELECT 4" and started is not None and started.is_alive() and uncounted_s > 0
    checker.check("SELECT 5", None, 10, identity=ADMIN)
    assert checker._process is started  # one child: the check used the one warming started


def test_a_child_too_slow_to_start_is_a_retryable_503(checker, monkeypatch):
    from cohort.api import query_checker
    from cohort.api.responses import status_for

    monkeypatch.setattr(query_checker, "STARTUP_TIMEOUT_S", 0.0)  # a machine starved of CPU, as the check sees it
    with pytest.raises(CohortError) as info:
        checker.check("SELECT 5", None, 10, identity=ADMIN)
    assert info.value.code == ErrorCode.CHECKER_UNAVAILABLE and status_for(info.value.code) == 503
    monkeypatch.setattr(query_checker, "STARTUP_TIMEOUT_S", 30.0)
    assert checker.check("SELECT 6", None, 10, identity=ADMIN) == "SELECT 6"  # and the next start succeeds


@pytest.mark.parametrize("at_start", [True, False])
def test_the_server_starts_the_checker_with_itself_unless_told_not_to(tmp_path, at_start):
    from cohort.settings import Settings
    from support import app_client, wait_for

    settings = Settings(data_dir=tmp_path / "data", pipeline_workers=0, sql_checker_at_start=at_start)
    with app_client(settings) as client:
        checker = client.app.state.queries.checker
        assert client.get("/health").status_code == 200
        if at_start:
            assert wait_for(lambda: checker._process is not None and checker._process.is_alive(), timeout=30)
        else:
            assert checker._process is None  # no query yet: no child
        response = client.post("/v1/query", json={"sql": "SELECT 4 AS n"})
        assert response.status_code == 200 and response.json()["result"] == [{"n": 4}]
        assert checker._process is not None and checker._process.is_alive()


def test_the_checker_process_loads_no_data_libraries():
    """It only parses SQL: what it imports (the guard and the table catalog) must not pull in pyarrow or numpy,
    about 55 MB of the server's memory for a process that never touches data."""
    import subprocess
    import sys

    probe = ("import sys; import cohort.security.sql_guard_child; "
             "print(sorted(m for m in ('pyarrow', 'numpy', 'duckdb', 'pandas') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"
