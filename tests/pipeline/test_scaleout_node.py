"""`cohort serve`'s node on the scale-out footprint, in process: what /health, /metrics and backpressure
say when nothing moves the pipeline (no worker), and that acks go on while Redis is away."""

from __future__ import annotations

import time

import pytest

from cohort.pipeline.scaleout_roles import RoleThread, build_worker
from scaleout_deployment import scaleout_settings  # noqa: F401 (fixture)
from support import app_client, envelope, metric_values, wait_for


def test_without_workers_health_degrades_then_stalls_and_the_ledger_shows_what_waits(scaleout_settings):
    assert scaleout_settings.pipeline_degraded_seconds == 10  # the default the API docs state
    # degraded after 1 s of waiting, stalled after 4 s (10 s and 60 s by default): the same states, sooner
    settings = scaleout_settings.model_copy(update={"pipeline_degraded_seconds": 1.0, "pipeline_stall_seconds": 4.0})
    with app_client(settings, raise_server_exceptions=False) as client:
        assert client.get("/health").json()["status"] == "ok"
        assert client.post("/v1/telemetry", content=envelope([{"eid": "X", "mid": "m1"}] * 3)).status_code == 200
        metrics = metric_values(client)
        assert (metrics["cohort_events_received_total"], metrics["cohort_events_in_flight"],
                metrics["cohort_events_unaccounted"]) == (3, 3, 0)
        assert wait_for(lambda: client.get("/health").json()["status"] == "degraded", timeout=20)
        stalled = wait_for(lambda: (r := client.get("/health")).status_code == 503 and r, timeout=20)
        assert stalled and stalled.json()["status"] == "stalled"
        assert metric_values(client)["cohort_pipeline_stalled"] == 1

        worker = RoleThread(build_worker(settings), "worker")  # a worker comes: the backlog drains
        worker.start()
        try:
            assert wait_for(lambda: metric_values(client)["cohort_events_in_flight"] == 0, timeout=60)
            metrics = metric_values(client)
            assert (metrics["cohort_events_failed_total{stage=\"validate\"}"], metrics["cohort_events_unaccounted"]) \
                == (3, 0)
            assert client.get("/health").json()["status"] == "ok"
        finally:
            worker.stop()


def test_backpressure_counts_what_waits_across_processes(scaleout_settings):
    settings = scaleout_settings.model_copy(update={"max_backlog_events": 10})
    with app_client(settings, raise_server_exceptions=False) as client:
        assert client.post("/v1/telemetry", content=envelope([{"eid": "X"}] * 8)).status_code == 200
        refused = client.post("/v1/telemetry", content=envelope([{"eid": "X"}] * 5))
        assert refused.status_code == 503 and refused.json()["params"]["err"] == "ERR_BACKPRESSURE"
        assert refused.headers["retry-after"] == "1"
        time.sleep(1.5)  # the backlog is read again from the ledger, not only counted up: it stays 8
        assert client.post("/v1/telemetry", content=envelope([{"eid": "X"}] * 2)).status_code == 200
        assert client.post("/v1/telemetry", content=envelope([{"eid": "X"}])).status_code == 503


def test_acks_go_on_while_redis_is_away_and_the_worker_registers_them(scaleout_settings, redis_server):
    with app_client(scaleout_settings, raise_server_exceptions=False) as client:
        assert client.get("/v1/tables").status_code == 200  # a client the server has seen: its key is known
        redis_server.stop()
        try:  # the key store is in Redis too: a key verified within the grace keeps working while it is away
            response = client.post("/v1/telemetry", content=envelope([{"eid": "X", "mid": "away"}] * 4))
            assert response.status_code == 200, response.text  # durable in Kafka: acknowledged
            assert metric_values(client)["cohort_store_readable"] == 0  # the ledger cannot be read: said so
        finally:
            redis_server.start()
        worker = RoleThread(build_worker(scaleout_settings), "worker")
        worker.start()
        try:
            assert wait_for(lambda: _settled(client), timeout=60)
            metrics = metric_values(client)
            assert (metrics["cohort_events_received_total"], metrics["cohort_events_unaccounted"]) == (4, 0)
        finally:
            worker.stop()


def _settled(client) -> bool:
    metrics = metric_values(client)
    return metrics.get("cohort_events_received_total") == 4 and metrics.get("cohort_events_in_flight") == 0
