"""SIGKILL real processes right after acks, under load from concurrent clients, on both footprints, and prove
every acked event is stored exactly once (read from the store itself) and the ledger reconciles.

Embedded: `cohort serve` (restarted) or one of its pipeline workers (the server replaces it).
Scale-out: `cohort serve` (restarted; its store writer dies with it) or one of two `cohort worker`s (a new one
is started), on the session's Kafka-protocol broker and Redis, with a chdb store of the run's own."""

from __future__ import annotations

import time

import httpx
import psutil
import pytest

from cohort.benchmark import scaleout_deployment
from cohort.benchmark.crash import pipeline_workers, run_crash_cycles
from cohort.benchmark.server_process import ServerProcess
from scaleout_deployment import QUICK_GROUPS
from support import envelope

pytestmark = pytest.mark.e2e

# Small enough to keep each scale-out case to tens of seconds: its restarts wait for consumer groups.
SIZES = {"embedded": {"cycles": 3, "events": 10_000}, "scaleout": {"cycles": 3, "events": 5_000}}


def engines(footprint: str, request) -> dict:
    """The session's engines for a scale-out run (topics and groups of the test's own, a fresh Redis database),
    and groups that move a killed member's partitions quickly (each kill waits for that)."""
    if footprint == "embedded":
        return {}
    request.getfixturevalue("monkeypatch").setattr(scaleout_deployment, "FAST_GROUPS", QUICK_GROUPS)
    return {"kafka_bootstrap": request.getfixturevalue("kafka_bootstrap"),
            "redis_url": request.getfixturevalue("redis_url"), "name": request.getfixturevalue("unique_topic")}


def assert_exactly_once(report, events: int) -> None:
    assert report.events_acked == report.events_generated == events
    assert report.lost_mids == [] and report.duplicated_mids == [] and report.unexpected_mids == []
    assert report.stored_rows == events and report.quarantined_rows == 0
    assert report.unaccounted == 0
    ledger = report.ledger  # the server's own figures agree with what the store holds
    assert ledger["in_flight"] == 0 and ledger["stored"] == events and ledger["failed"] == 0
    assert ledger["received"] == ledger["stored"] + ledger["duplicate"]
    assert report.ok


@pytest.mark.parametrize("footprint", ["embedded", "scaleout"])
def test_sigkill_under_load_loses_nothing_and_duplicates_nothing(tmp_path, footprint, request):
    size = SIZES[footprint]
    report = run_crash_cycles(tmp_path, **size, batch_size=100, senders=4, seed=3, footprint=footprint,
                              **engines(footprint, request))
    assert report.footprint == footprint and report.processes_killed == size["cycles"]
    assert report.send_failures > 0, "the kills should have interrupted requests in flight"
    assert report.acked_unprocessed_at_kill > 0, "some kills should hit events acked but not yet stored"
    if footprint == "scaleout":  # a restarted serve stores before it is killed again: kills hit its store writer
        assert report.at_kills[-1]["stored"] > 0, report.at_kills
    assert_exactly_once(report, size["events"])


def test_sigkill_of_pipeline_workers_loses_nothing_and_the_server_replaces_them(tmp_path):
    report = run_crash_cycles(tmp_path, cycles=3, events=10_000, batch_size=100, senders=4, seed=4,
                              target="worker")
    assert report.processes_killed == 3
    assert_exactly_once(report, 10_000)


def test_sigkill_of_scaleout_workers_under_load_loses_nothing_and_a_new_worker_takes_over(tmp_path, request):
    report = run_crash_cycles(tmp_path, cycles=3, events=5_000, batch_size=100, senders=4, seed=4,
                              target="worker", footprint="scaleout", **engines("scaleout", request))
    assert report.processes_killed == 3 and report.workers == 2
    assert report.acked_unprocessed_at_kill > 0, "some kills should hit events acked but not yet stored"
    assert report.at_kills[-1]["stored"] > 0, "the pipeline moves between kills: they hit workers at work"
    assert_exactly_once(report, 5_000)
    assert report.ledger["duplicate"] == 0, "serve lived on: no request was acked twice"


def test_a_killed_server_leaves_no_worker_processes_behind(tmp_path):
    server = ServerProcess(tmp_path / "data").start()
    httpx.post(server.url + "/v1/telemetry", content=envelope([{"eid": "X"}]), headers=server.headers)  # make the pool start
    deadline = time.monotonic() + 10
    while not (workers := pipeline_workers(server)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert workers, "the server should run pipeline worker processes"
    server.kill()
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, f"orphaned workers: {[p.pid for p in alive]}"
