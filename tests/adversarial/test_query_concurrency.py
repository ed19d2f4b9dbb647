"""Fault 8 (queries): 60 concurrent slow queries exhausted the shared thread pool and stalled /metrics.

Queries run on their own bounded executor; a caller may run a few at once and the server a few more,
beyond which the answer is 429 + Retry-After, never a queue; /metrics and /health never wait for them."""

from __future__ import annotations

import threading
import time
from collections import Counter

import httpx
import pytest

from support import ServerProcess

pytestmark = pytest.mark.e2e

TABLES = ", ".join(f"v t{i}" for i in range(9))
TOTAL = " + ".join(f"t{i}.x" for i in range(9))
# a billion-row cross join: CPU-bound until the time limit (no data, no memory)
SLOW = (f"WITH v(x) AS (VALUES (1),(2),(3),(4),(5),(6),(7),(8),(9),(10)) "
        f"SELECT count(*) FROM {TABLES} WHERE {TOTAL} = -1")
CALLERS = [f"127.0.0.{i}" for i in range(2, 8)]  # six clients, each from its own loopback address


@pytest.fixture
def server(tmp_path):
    server = ServerProcess(tmp_path / "data", env={"COHORT_QUERY_TIMEOUT_SECONDS": "2",
                                                   "COHORT_QUERY_MAX_CONCURRENT": "4",
                                                   "COHORT_QUERY_MAX_PER_CALLER": "2"}).start()
    yield server
    server.stop()


def post_query(url: str, caller: str, sql: str) -> httpx.Response:
    transport = httpx.HTTPTransport(local_address=caller)
    with httpx.Client(base_url=url, transport=transport, timeout=60) as client:
        return client.post("/v1/query", json={"sql": sql})


def test_sixty_concurrent_slow_queries_get_429s_and_metrics_still_answer(server):
    responses: list[httpx.Response] = []
    lock = threading.Lock()

    def send(caller):
        response = post_query(server.url, caller, SLOW)
        with lock:
            responses.append(response)

    threads = [threading.Thread(target=send, args=(CALLERS[i % len(CALLERS)],)) for i in range(60)]
    for thread in threads:
        thread.start()
    metrics_s, health_s = [], []
    with httpx.Client(base_url=server.url, timeout=30) as client:
        while any(t.is_alive() for t in threads):
            started = time.monotonic()
            assert client.get("/metrics").status_code == 200
            metrics_s.append(time.monotonic() - started)
            started = time.monotonic()
            assert client.get("/health").status_code == 200
            health_s.append(time.monotonic() - started)
            time.sleep(0.05)
    for thread in threads:
        thread.join()

    statuses = Counter(r.status_code for r in responses)
    print(f"{statuses}; /metrics max {max(metrics_s) * 1000:.0f} ms, /health max {max(health_s) * 1000:.0f} ms")
    assert max(metrics_s) < 1.0 and max(health_s) < 1.0, (max(metrics_s), max(health_s))
    assert set(statuses) <= {408, 429}, statuses
    assert 1 <= statuses[408] <= 20 and statuses[429] >= 40, statuses
    for response in responses:
        if response.status_code == 429:
            assert response.json()["params"]["err"] == "ERR_TOO_MANY_QUERIES"
            assert response.headers["Retry-After"] == "1"
        else:
            assert response.json()["params"]["err"] == "ERR_QUERY_TIMEOUT"
    # every slot was given back: a new query runs
    assert post_query(server.url, CALLERS[0], "SELECT 1 AS one").json()["result"] == [{"one": 1}]


def test_one_caller_cannot_hold_more_than_its_share(server):
    results: list[httpx.Response] = []
    lock = threading.Lock()

    def send(caller):
        response = post_query(server.url, caller, SLOW)
        with lock:
            results.append(response)

    mine = [threading.Thread(target=send, args=(CALLERS[0],)) for _ in range(5)]
    for thread in mine:
        thread.start()
    time.sleep(0.5)  # the first two are running
    other = post_query(server.url, CALLERS[1], "SELECT 1 AS one")
    for thread in mine:
        thread.join()
    statuses = Counter(r.status_code for r in results)
    assert statuses == {408: 2, 429: 3}, statuses
    assert "2 at a time" in next(r for r in results if r.status_code == 429).json()["params"]["errmsg"]
    assert other.status_code == 200  # another caller still has room
