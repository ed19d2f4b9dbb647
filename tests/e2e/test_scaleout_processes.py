"""The scale-out footprint as processes: `cohort serve` + 2 `cohort worker`s on Kafka (Tansu), Redis
and ClickHouse (chdb), configured by COHORT_* settings only. What the embedded footprint promises
holds here too: every acked event stored once, quarantined once or counted duplicate once, through
a serve killed right after its acks (its clients' retries dropped whole) and a Redis restart. Workers
killed with SIGKILL under load, and serve killed again and again, are tests/e2e/test_crash_recovery.py's."""

from __future__ import annotations

import httpx
import pytest

from cohort.benchmark.server_process import RoleProcess, free_port, parse_metrics
from scaleout_deployment import QUICK_GROUPS, ScaleoutDeployment, scaleout  # noqa: F401 (fixture)
from support import envelope, wait_for

pytestmark = pytest.mark.e2e
CHANNEL = {"X-Channel-Id": "505c7c48ac6dc1edc9b08f21db5a571d"}


def sql(target, text: str) -> list[dict]:
    """`text` run by the query API of `target` (a deployment or a server), as its admin."""
    response = httpx.post(target.url + "/v1/query", json={"sql": text}, headers=target.headers, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["result"]


def post(target, events: list, msgid: str) -> None:
    response = httpx.post(target.url + "/v1/telemetry", content=envelope(events, msgid=msgid),
                          headers={**CHANNEL, **target.headers}, timeout=30)
    assert response.status_code == 200, response.text


def ledger(metrics: dict[str, float]) -> dict[str, float]:
    failed = sum(v for k, v in metrics.items() if k.startswith("cohort_events_failed_total"))
    return {"received": metrics["cohort_events_received_total"], "stored": metrics["cohort_events_stored_total"],
            "failed": failed, "duplicate": metrics["cohort_events_duplicate_total"],
            "in_flight": metrics["cohort_events_in_flight"], "unaccounted": metrics["cohort_events_unaccounted"]}


def test_serve_and_two_workers_store_the_sample_once_and_answer_queries(scaleout, sample_events):
    for i in range(0, 500, 50):
        post(scaleout, sample_events[i:i + 50], f"first-{i}")
    post(scaleout, sample_events[:10], "first-0")  # a retried request: dropped whole
    post(scaleout, [dict(sample_events[0], mid="bad-1", ets="never")], "bad")
    metrics = scaleout.wait_drained(60)
    assert ledger(metrics) == {"received": 511, "stored": 500, "failed": 1, "duplicate": 10, "in_flight": 0,
                               "unaccounted": 0}, scaleout.logs()
    assert metrics["cohort_requests_duplicate_total"] == 1
    assert sql(scaleout, "SELECT count() AS n, uniqExact(mid) AS m FROM telemetry") == [{"n": 500, "m": 500}]
    assert sql(scaleout, "SELECT mid, error_code FROM failed_events") == [{"mid": "bad-1",
                                                                               "error_code": "ERR_VALIDATION_SCHEMA"}]
    health = httpx.get(scaleout.url + "/health", timeout=10).json()
    assert health["footprint"] == "scaleout" and health["status"] == "ok"


def many_requests(sample_events, copies: int, per_request: int = 25, tag: str = "r") -> list[tuple[list, str]]:
    """`copies` × the sample, with fresh mids each copy, as requests of `per_request` events."""
    events = [dict(e, mid=f"{tag}{c}-{e['mid']}") for c in range(copies) for e in sample_events]
    return [(events[i:i + per_request], f"{tag}-{i}") for i in range(0, len(events), per_request)]


def test_serve_killed_right_after_acks_then_restarted_loses_and_doubles_nothing(scaleout, sample_events):
    requests = many_requests(sample_events, 2)
    for events, msgid in requests:
        post(scaleout, events, msgid)
    scaleout.server.kill()  # right after the last ack: its store writer and ledger reads die with it
    scaleout.server.start(timeout=90)
    for events, msgid in requests[:5]:  # a client that never heard its acks retries: dropped whole
        post(scaleout, events, msgid)
    metrics = scaleout.wait_drained(90)
    assert ledger(metrics) == {"received": 1125, "stored": 1000, "failed": 0, "duplicate": 125, "in_flight": 0,
                               "unaccounted": 0}, scaleout.logs()
    assert metrics["cohort_requests_duplicate_total"] == 5
    assert sql(scaleout, "SELECT count() AS n, uniqExact(mid) AS m FROM telemetry") == [{"n": 1000, "m": 1000}]


def test_a_redis_restart_mid_run_loses_and_doubles_nothing(scaleout, redis_server, sample_events):
    requests = many_requests(sample_events, 4)
    for index, (events, msgid) in enumerate(requests):
        if index == 30:
            assert wait_for(lambda: _stored(scaleout) >= 100, timeout=30), scaleout.logs()
            redis_server.restart(kill=True)  # AOF, appendfsync always: every acked key comes back
        for _ in range(50):  # while Redis loads, a request may be refused (503): the client retries it
            response = httpx.post(scaleout.url + "/v1/telemetry", content=envelope(events, msgid=msgid),
                                  headers={**CHANNEL, **scaleout.headers}, timeout=30)
            if response.status_code == 200:
                break
            assert response.status_code == 503, response.text
        else:
            raise AssertionError("never acknowledged after Redis came back: " + scaleout.logs())
    for events, msgid in requests[:4]:  # retries of requests stored before the restart: Redis still knows them
        post(scaleout, events, msgid)
    metrics = scaleout.wait_drained(90)
    assert ledger(metrics) == {"received": 2100, "stored": 2000, "failed": 0, "duplicate": 100, "in_flight": 0,
                               "unaccounted": 0}, scaleout.logs()
    assert metrics["cohort_requests_duplicate_total"] == 4
    assert sql(scaleout, "SELECT count() AS n, uniqExact(mid) AS m FROM telemetry") == [{"n": 2000, "m": 2000}]


def _stored(target) -> int:
    return int(sql(target, "SELECT count() AS n FROM telemetry")[0]["n"])


def test_a_worker_serves_its_own_metrics_and_leaves_cleanly_on_sigterm(tmp_path, kafka_bootstrap, redis_url,
                                                                        unique_topic, sample_events):
    deployment = ScaleoutDeployment(tmp_path / "scaleout", kafka_bootstrap, redis_url, unique_topic, workers=0,
                                    env=QUICK_GROUPS).start()
    try:
        port = free_port()
        env = {**deployment.env, "COHORT_METRICS_PORT": str(port)}
        worker = RoleProcess("worker", env, tmp_path / "worker-metrics.log").start()
        deployment.wait_assigned([worker])
        post(deployment, sample_events[:40], "m-1")
        metrics = deployment.wait_drained(60)
        assert metrics["cohort_events_stored_total"] == 40
        own = parse_metrics(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)
        assert own['cohort_role_running{role="worker"}'] == 1 and own['cohort_role_healthy{role="worker"}'] == 1
        assert own['cohort_role_events_total{role="worker"}'] == 40
        assert own['cohort_role_batches_total{role="worker"}'] >= 1
        assert worker.stop() == 0
    finally:
        deployment.stop()
