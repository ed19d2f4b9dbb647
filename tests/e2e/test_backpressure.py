"""Backpressure on a real server: a tight backlog bound gives 503 + Retry-After under load,
and clients that retry what was refused end with every event stored exactly once."""

from __future__ import annotations

import threading
import time

import httpx
import orjson
import pytest

from cohort.benchmark.crash import stored_mid_counts
from cohort.synthetic import TelemetryGenerator
from support import ServerProcess

pytestmark = pytest.mark.e2e


def test_tight_backlog_bound_refuses_with_retry_after_and_retries_lose_nothing(tmp_path):
    server = ServerProcess(tmp_path / "data", env={"COHORT_MAX_BACKLOG_EVENTS": "1000",
                                                   "COHORT_RETRY_AFTER_SECONDS": "1"}).start()
    batches = [orjson.dumps(b) for b in TelemetryGenerator(seed=9).batches(12_000, 500)]
    pending = list(batches)
    lock = threading.Lock()
    refused = []

    def send() -> None:
        with server.client(timeout=30) as client:
            while True:
                with lock:
                    if not pending:
                        return
                    body = pending.pop()
                response = client.post("/v1/telemetry", content=body)
                if response.status_code != 200:
                    with lock:
                        refused.append((response.status_code, response.headers.get("Retry-After"),
                                        response.json()["params"]["err"]))
                        pending.append(body)  # a real client re-sends later
                    time.sleep(0.05)  # and waits a little first: eight clients spinning on 503s starve the server

    try:
        threads = [threading.Thread(target=send) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        metrics = server.wait_drained()
    finally:
        server.stop()
    assert refused, "8 clients against a 1,000-event bound should meet backpressure"
    assert set(refused) == {(503, "1", "ERR_BACKPRESSURE")}
    assert metrics["cohort_events_unaccounted"] == 0
    counts = stored_mid_counts(tmp_path / "data")
    assert len(counts) == 12_000 and set(counts.values()) == {1}
