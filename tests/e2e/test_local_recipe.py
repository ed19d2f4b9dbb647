"""docs/OPERATIONS.md's local scale-out recipe, step by step as a person runs it: `cohort engines`, then
`cohort serve` and two `cohort worker`s with the settings it wrote, post the Sunbird sample, query it back."""

from __future__ import annotations

import signal
import subprocess
import sys

import httpx
import pytest

from cohort.benchmark.server_process import RoleProcess, ServerProcess, free_port
from support import envelope, wait_for

pytestmark = pytest.mark.e2e


def test_engines_then_serve_and_two_workers_store_and_answer(tmp_path, sample_events):
    directory = tmp_path / "engines"
    engines = subprocess.Popen([sys.executable, "-m", "cohort.cli", "engines", "--dir", str(directory),
                                "--redis-port", "0", "--kafka-port", "0"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    env_file = directory / "cohort.env"
    processes: list = []
    try:
        assert wait_for(env_file.exists, timeout=30), engines.stdout.read() if engines.poll() is not None else ""
        env = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
        assert env["COHORT_FOOTPRINT"] == "scaleout"
        server = ServerProcess(tmp_path / "serve", port=free_port(), env=env, log_path=tmp_path / "serve.log")
        processes.append(server.start(timeout=90))
        workers = [RoleProcess("worker", env, tmp_path / f"worker-{i}.log").start() for i in range(2)]
        processes += workers
        with server.client(timeout=30) as client:
            for i in range(0, 500, 100):
                response = client.post("/v1/telemetry", content=envelope(sample_events[i:i + 100], msgid=f"s-{i}"),
                                       headers={"X-Channel-Id": "505c7c48ac6dc1edc9b08f21db5a571d"})
                assert response.status_code == 200, response.text
            metrics = server.wait_drained(90)
            assert metrics["cohort_events_stored_total"] == 500 and metrics["cohort_events_unaccounted"] == 0
            rows = client.post("/v1/query", json={"sql": "SELECT eid, count() AS n FROM telemetry GROUP BY eid "
                                                         "ORDER BY n DESC LIMIT 2"}).json()["result"]
            assert rows == [{"eid": "INTERACT", "n": 280}, {"eid": "SEARCH", "n": 67}]
        assert all(worker.running for worker in workers)
        assert [worker.stop() for worker in workers] == [0, 0]  # SIGTERM: they leave the group and exit cleanly
    finally:
        for process in reversed(processes):
            process.stop()
        engines.send_signal(signal.SIGINT)
        try:
            engines.wait(20)
        except subprocess.TimeoutExpired:
            engines.kill()
    assert engines.returncode == 0
