"""The query watchdog (deadline and memory) and the store's bounded query path."""

from __future__ import annotations

import threading
import time

import pytest

from cohort.core.errors import CohortError, ErrorCode
from cohort.store.base import QueryTimeout
from cohort.store.duckdb_store import DuckDbStore
from cohort.store.query_watch import QueryWatch


class RecordingCursor:
    def __init__(self):
        self.interrupts = 0

    def interrupt(self):
        self.interrupts += 1


class ScriptedWatch(QueryWatch):
    """Fault injection: the process's memory reads as the test says."""

    def __init__(self, rss: int):
        super().__init__(interval_s=0.002)
        self.value = rss

    def rss(self) -> int:
        return self.value


def wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.005)
    return predicate()


def test_deadline_interrupts_and_says_why():
    watch = ScriptedWatch(rss=100)
    cursor = RecordingCursor()
    with watch.watch(cursor, time.monotonic() + 0.05, max_growth_bytes=None) as query:
        assert wait_until(lambda: cursor.interrupts > 0)
    assert query.reason == "timeout"


def test_memory_growth_past_the_bound_interrupts_every_running_query():
    watch = ScriptedWatch(rss=1000)
    first, second = RecordingCursor(), RecordingCursor()
    far = time.monotonic() + 60
    with watch.watch(first, far, max_growth_bytes=500) as q1:
        watch.value = 1200
        with watch.watch(second, far, max_growth_bytes=500) as q2:
            time.sleep(0.05)
            assert first.interrupts == 0 and second.interrupts == 0  # +200 since the oldest query began
            watch.value = 1600  # +600 over the oldest query's start, +400 over the newest's
            assert wait_until(lambda: first.interrupts and second.interrupts)
    assert q1.reason == q2.reason == "memory"


def test_interrupts_repeat_until_the_query_ends():
    """A statement that starts after an interrupt clears it, so the watchdog keeps interrupting."""
    watch = ScriptedWatch(rss=0)
    cursor = RecordingCursor()
    with watch.watch(cursor, time.monotonic(), max_growth_bytes=None):
        assert wait_until(lambda: cursor.interrupts >= 3)


def test_a_finished_query_is_never_interrupted():
    watch = ScriptedWatch(rss=0)
    cursor = RecordingCursor()
    with watch.watch(cursor, time.monotonic() + 0.05, max_growth_bytes=None):
        pass
    time.sleep(0.1)
    assert cursor.interrupts == 0


@pytest.fixture
def store(tmp_path):
    store = DuckDbStore(tmp_path / "store.duckdb", memory_limit="2GB")
    yield store
    store.close()


def test_store_query_past_its_memory_bound_is_stopped_with_a_code(store):
    """Lists built by a function are outside DuckDB's memory limit: the watchdog stops the query."""
    with pytest.raises(CohortError) as info:  # ≈ 160 MB of lists per vector of rows, uncounted by DuckDB
        store.query("SELECT sum(len(l)) FROM (SELECT range(i, i + 10000) AS l FROM range(100000) t(i))",
                    None, 10, 60.0, max_memory_bytes=64 * 1024 * 1024)
    assert info.value.code == ErrorCode.QUERY_MEMORY and "64 MB" in info.value.message
    assert store.query("SELECT 42", None, 10, 5.0).rows == [(42,)]  # usable afterwards


def test_store_query_timeout_still_raises_query_timeout(store):
    with pytest.raises(QueryTimeout):
        store.query("SELECT count(*) FROM range(100000000) a, range(100000000) b WHERE a.range + b.range = -1",
                    None, 10, 0.2)


def test_store_query_bounds_rows_and_bytes(store):
    rows = store.query("SELECT i FROM range(1000) t(i)", None, 10, 5.0)
    assert len(rows.rows) == 10 and rows.truncated and rows.truncated_by == "rows"
    wide = store.query("SELECT repeat('x', 10000) AS v FROM range(1000)", None, 1000, 5.0, max_result_bytes=100_000)
    assert wide.truncated_by == "bytes" and 0 < len(wide.rows) < 10 and wide.json_bytes <= 100_000
    with pytest.raises(CohortError) as info:
        store.query("SELECT repeat('x', 200000) AS v", None, 10, 5.0, max_result_bytes=100_000)
    assert info.value.code == ErrorCode.QUERY_RESULT_TOO_LARGE


def test_concurrent_store_queries_are_watched_independently(store):
    results: dict[str, object] = {}

    def run(name, sql, timeout):
        try:
            results[name] = store.query(sql, None, 10, timeout).rows
        except Exception as exc:  # noqa: BLE001 - recorded for the assertion
            results[name] = exc

    slow = "SELECT count(*) FROM range(100000000) a, range(100000000) b WHERE a.range + b.range = -1"
    threads = [threading.Thread(target=run, args=("slow", slow, 0.3)),
               threading.Thread(target=run, args=("fast", "SELECT 7", 5.0))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert isinstance(results["slow"], QueryTimeout) and results["fast"] == [(7,)]
