"""Query threads run below the threads that acknowledge: their niceness is raised, others' are not."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

from cohort.store.thread_priority import lower_current_thread, lower_threads_started_within


def niceness(thread_id: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, thread_id)


def test_a_lowered_thread_gets_the_niceness_and_the_caller_keeps_its_own():
    own = niceness(threading.get_native_id())
    seen = {}

    def run():
        lower_current_thread(7)
        seen["nice"] = niceness(threading.get_native_id())

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert seen["nice"] == max(own, 7)
    assert niceness(threading.get_native_id()) == own


_ENGINE_WORKERS = """
import os, sys, threading
from cohort.store.duckdb_store import DuckDbStore
def niceness(t): return os.getpriority(os.PRIO_PROCESS, t)
own = niceness(threading.get_native_id())
before = {int(t) for t in os.listdir("/proc/self/task")}
store = DuckDbStore(sys.argv[1], engine_niceness=9)
started = {int(t) for t in os.listdir("/proc/self/task")} - before
assert started, "the engine starts worker threads when it opens"
seen = {niceness(t) for t in started if os.path.exists(f"/proc/self/task/{t}")}
assert seen == {max(own, 9)}, seen
assert niceness(threading.get_native_id()) == own  # the opening thread (the pipeline's) is untouched
store.close()
"""


def test_the_store_engine_workers_run_lowered(tmp_path):
    # in a process of its own: a test process may have threads of other tests starting meanwhile
    result = subprocess.run([sys.executable, "-c", _ENGINE_WORKERS, str(tmp_path / "store.duckdb")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_lowering_only_touches_threads_started_inside_the_block():
    keeper = threading.Event()
    old = threading.Thread(target=keeper.wait)
    old.start()
    try:
        own = niceness(old.native_id)
        with lower_threads_started_within(5):
            new = threading.Thread(target=keeper.wait)
            new.start()
        assert niceness(new.native_id) == max(own, 5) and niceness(old.native_id) == own
    finally:
        keeper.set()
        old.join()
        new.join()
