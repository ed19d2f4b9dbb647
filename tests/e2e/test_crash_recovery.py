"""SIGKILL the real server right after acks, restart it, and prove every acked event is stored exactly once."""

from __future__ import annotations

import time

import httpx
import psutil
import pytest

from cohort.benchmark.crash import pipeline_workers, run_crash_cycles
from cohort.benchmark.server_process import ServerProcess
from support import envelope

pytestmark = pytest.mark.e2e


def test_sigkill_under_load_loses_nothing_and_duplicates_nothing(tmp_path):
    report = run_crash_cycles(tmp_path, cycles=4, events=15_000, batch_size=100, senders=4, seed=3)
    assert report.send_failures > 0, "the kills should have interrupted requests in flight"
    assert report.acked_unprocessed_at_kill > 0, "some kills should hit events acked but not yet stored"
    assert report.events_acked == report.events_generated == 15_000
    assert report.lost_mids == [] and report.duplicated_mids == [] and report.unexpected_mids == []
    assert report.stored_rows == 15_000
    assert report.unaccounted == 0
    assert report.ok


def test_sigkill_of_pipeline_workers_loses_nothing_and_the_server_replaces_them(tmp_path):
    report = run_crash_cycles(tmp_path, cycles=3, events=15_000, batch_size=100, senders=4, seed=4,
                              target="worker")
    assert report.processes_killed == 3
    assert report.events_acked == report.events_generated == 15_000
    assert report.lost_mids == [] and report.duplicated_mids == [] and report.unexpected_mids == []
    assert report.stored_rows == 15_000 and report.unaccounted == 0
    assert report.ok


def test_a_killed_server_leaves_no_worker_processes_behind(tmp_path):
    server = ServerProcess(tmp_path / "data").start()
    httpx.post(server.url + "/v1/telemetry", content=envelope([{"eid": "X"}]))  # make the pool start
    deadline = time.monotonic() + 10
    while not (workers := pipeline_workers(server)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert workers, "the server should run pipeline worker processes"
    server.kill()
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, f"orphaned workers: {[p.pid for p in alive]}"
