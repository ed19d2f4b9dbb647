"""Fault 3: one query took a server from 0.16 to 7.4 GB (`len(range(1e8))`), and `repeat` × rows returned 1 GB.

Against a real server holding the 500 sample events, every hostile query gets a coded refusal or a
bounded answer, the server's resident memory stays within a bound while they run, and afterwards
the server still acknowledges telemetry and answers /health.
"""

from __future__ import annotations

import threading
import time

import httpx
import orjson
import psutil
import pytest

from support import ServerProcess, envelope

pytestmark = pytest.mark.e2e

RSS_BOUND = 600 * 1024 * 1024
MAX_RESULT_BYTES = 16 * 1024 * 1024
CROSS = "FROM telemetry a, telemetry b"  # 250,000 rows of ≈ 2 KB events

# (statement, codes it may be refused with; 200 means a bounded answer is fine too)
HOSTILE = [
    ("SELECT len(range(30000000)) AS n", {"ERR_QUERY_FORBIDDEN"}),
    (f"SELECT repeat('x', 100000) AS v {CROSS}", {"ERR_QUERY_FORBIDDEN"}),
    ("SELECT lpad('x', 1000000000, 'y') AS v", {"ERR_QUERY_FORBIDDEN"}),
    ("SELECT replace(event, '\"', '" + "x" * 4000 + "') AS v FROM telemetry", {"ERR_QUERY_TOO_COMPLEX"}),
    (f"SELECT string_agg(a.event, ',') AS s {CROSS}", {200, "ERR_QUERY_MEMORY", "ERR_QUERY_RESULT_TOO_LARGE"}),
    (f"SELECT list(a.event) AS l {CROSS}", {200, "ERR_QUERY_MEMORY", "ERR_QUERY_RESULT_TOO_LARGE"}),
    (f"SELECT json_group_array(a.edata) AS l {CROSS} GROUP BY b.eid",
     {200, "ERR_QUERY_MEMORY", "ERR_QUERY_RESULT_TOO_LARGE"}),
    ("SELECT a.event, b.event, c.event FROM telemetry a, telemetry b, telemetry c", {200}),
    (f"SELECT t.event || s.a AS v FROM telemetry t, (SELECT string_agg(event, ',') AS a FROM telemetry) s",
     {"ERR_QUERY_TOO_COMPLEX"}),
    ("SELECT string_agg(event, ',') OVER (ORDER BY ets) AS v FROM telemetry", {"ERR_QUERY_TOO_COMPLEX"}),
    ("WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r) SELECT count(*) FROM r",
     {"ERR_QUERY_FORBIDDEN"}),
    ("SELECT " + "(" * 200 + "1" + ")" * 200, {"ERR_QUERY_TOO_COMPLEX"}),
    (f"SELECT a.event || b.event AS x {CROSS} ORDER BY x", {200, "ERR_QUERY_MEMORY", "ERR_QUERY_TIMEOUT"}),
]


class PeakRss:
    """Samples a process's resident memory every few milliseconds."""

    def __init__(self, pid: int):
        self.process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.003)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


@pytest.fixture(scope="module")
def loaded_server(tmp_path_factory, sample_lines):
    # DuckDB's own buffers may take COHORT_STORE_MEMORY_LIMIT and stay cached between queries; a query may grow
    # the process by COHORT_QUERY_MAX_MEMORY_MB more: both set so their sum leaves room under the bound.
    server = ServerProcess(tmp_path_factory.mktemp("query-memory") / "data",
                           env={"COHORT_STORE_MEMORY_LIMIT": "256MB", "COHORT_QUERY_MAX_MEMORY_MB": "256"}).start()
    try:  # a failed load must not leave the server running after the tests
        events = [orjson.loads(line) for line in sample_lines]
        assert httpx.post(server.url + "/v1/telemetry", content=envelope(events), timeout=30, headers=server.headers).status_code == 200
        assert server.wait_drained(timeout=30)["cohort_events_stored_total"] == 500
        yield server
    finally:
        server.stop()


def test_hostile_queries_get_a_code_or_a_bounded_answer_within_a_memory_bound(loaded_server, sample_lines):
    server = loaded_server
    start = psutil.Process(server.pid).memory_info().rss
    answers = []
    with server.client(timeout=120) as client, PeakRss(server.pid) as rss:
        for sql, allowed in HOSTILE:
            answers.append((sql, allowed, client.post("/v1/query", json={"sql": sql})))
        grown = rss.peak - start
        # the server still does its job
        ack = client.post("/v1/telemetry", content=envelope([orjson.loads(sample_lines[0])], msgid="after"))
        health = client.get("/health")
    outcomes = [(sql[:40], r.status_code, r.json()["params"].get("err") or r.json()["meta"].get("truncated_by"))
                for sql, _, r in answers]
    print(f"peak growth {grown / 2**20:.0f} MB over {len(HOSTILE)} hostile queries: {outcomes}")
    assert grown < RSS_BOUND, f"server RSS grew by {grown / 2**20:.0f} MB: {outcomes}"
    assert ack.status_code == 200 and health.status_code == 200
    for sql, allowed, response in answers:
        assert response.status_code < 500, (sql[:80], response.text[:300])
        body = response.json()
        assert len(response.content) <= MAX_RESULT_BYTES + 64 * 1024, sql[:80]
        if response.status_code == 200:
            assert 200 in allowed, (sql[:80], "answered although it must be refused")
            assert body["meta"]["row_count"] == len(body["result"])
        else:
            assert body["params"]["err"] in allowed and body["params"]["errmsg"], (sql[:80], body["params"])


def test_a_cross_join_of_whole_events_is_cut_by_bytes_not_sent_whole(loaded_server):
    response = httpx.post(loaded_server.url + "/v1/query", timeout=60, headers=loaded_server.headers,
                          json={"sql": f"SELECT a.event, b.event AS e2 {CROSS}"})
    body = response.json()
    assert response.status_code == 200
    assert body["meta"]["truncated"] is True and body["meta"]["truncated_by"] == "bytes"
    assert 0 < body["meta"]["row_count"] < body["meta"]["row_limit"]
    assert len(response.content) <= MAX_RESULT_BYTES + 64 * 1024
