"""Faults in the store and the log: no false acks, 503 + Retry-After, recovery, nothing lost,
and memory that stays bounded while the store falls behind (backpressure instead of growth)."""

from __future__ import annotations

import os
import time

import duckdb
import psutil
import pytest

from cohort.settings import Settings
from support import app_client, envelope, metric_values, wait_for


def drained(client) -> dict[str, float]:
    return wait_for(lambda: (m := metric_values(client))["cohort_events_in_flight"] == 0 and m, timeout=60)


@pytest.fixture
def make_client(tmp_path):
    def make(**overrides):
        settings = Settings(data_dir=tmp_path / "data", pipeline_idle_wait_seconds=0.005, **overrides)
        return app_client(settings)
    return make


def test_store_failure_keeps_acking_until_the_bound_then_503_then_recovers(make_client, sample_events,
                                                                           monkeypatch):
    with make_client(max_backlog_events=300, pipeline_workers=0) as client:
        store = client.app.state.node.store
        real_write = store.write_batch
        fault = {"on": True}

        def failing_write(outcome, **kwargs):
            if fault["on"]:
                raise duckdb.IOException("IO Error: No space left on device (injected)")
            return real_write(outcome, **kwargs)

        monkeypatch.setattr(store, "write_batch", failing_write)
        bodies = [envelope(sample_events[i:i + 50], msgid=f"b{i}") for i in range(0, 500, 50)]
        statuses = [client.post("/v1/telemetry", content=body) for body in bodies]
        codes = [r.status_code for r in statuses]
        assert codes[:6] == [200] * 6 and set(codes[6:]) == {503}
        refused = statuses[-1]
        assert refused.json()["params"]["err"] == "ERR_BACKPRESSURE" and refused.headers["Retry-After"]
        assert wait_for(lambda: client.get("/health").json()["status"] == "degraded")
        assert "No space left" in client.get("/health").json()["pipeline"]["last_error"]
        assert metric_values(client)["cohort_pipeline_healthy"] == 0
        assert metric_values(client)["cohort_events_stored_total"] == 0

        fault["on"] = False  # the disk has room again
        final = drained(client)
        assert final["cohort_events_stored_total"] == 300 and final["cohort_events_unaccounted"] == 0
        for body in bodies[6:]:  # clients re-send what was refused
            assert client.post("/v1/telemetry", content=body).status_code == 200
        final = drained(client)
        assert final["cohort_events_stored_total"] == 500 and final["cohort_events_received_total"] == 500
        assert wait_for(lambda: client.get("/health").json()["status"] == "ok")


def test_a_full_disk_under_the_log_gives_503_no_false_ack_and_recovers(make_client, sample_events):
    with make_client() as client:
        log = client.app.state.node.log
        assert client.post("/v1/telemetry", content=envelope(sample_events[:10])).status_code == 200
        pages = log._writer.execute("PRAGMA page_count").fetchone()[0]
        log._writer.execute(f"PRAGMA max_page_count = {pages}")  # SQLite now answers SQLITE_FULL
        response = client.post("/v1/telemetry", content=envelope(sample_events[10:400]))
        assert response.status_code == 503 and response.headers["Retry-After"]
        assert response.json()["params"]["err"] == "ERR_LOG_UNAVAILABLE"
        assert "full" in response.json()["params"]["errmsg"]
        assert log.stats().received_events == 10  # nothing of the refused batch was acknowledged

        log._writer.execute("PRAGMA max_page_count = 1073741823")  # space freed
        assert client.post("/v1/telemetry", content=envelope(sample_events[10:400])).status_code == 200
        final = drained(client)
        assert final["cohort_events_stored_total"] == 400 and final["cohort_events_unaccounted"] == 0


def test_memory_stays_bounded_when_the_store_is_ten_times_slower_than_the_load(make_client, sample_events,
                                                                               monkeypatch):
    with make_client(max_backlog_events=5_000, pipeline_batch_events=500, pipeline_workers=0) as client:
        store = client.app.state.node.store
        real_write = store.write_batch
        offered_started = time.monotonic()
        bodies = [envelope(sample_events[i % 10 * 50:i % 10 * 50 + 50], msgid=f"m{i}") for i in range(10)]
        # measure how fast the client offers load, then slow the store to a tenth of it
        for body in bodies:
            client.post("/v1/telemetry", content=body)
        per_event = (time.monotonic() - offered_started) / 500
        drained(client)

        def slow_write(outcome, **kwargs):
            time.sleep(per_event * 10 * outcome.events_in)
            return real_write(outcome, **kwargs)

        monkeypatch.setattr(store, "write_batch", slow_write)
        process = psutil.Process(os.getpid())
        rss_before = process.memory_info().rss
        peak = rss_before
        refused = 0
        accepted = 0
        for i in range(600):
            events = [dict(e, mid=f"{e['mid']}-{i}") for e in sample_events[i % 10 * 50:i % 10 * 50 + 50]]
            response = client.post("/v1/telemetry", content=envelope(events, msgid=f"load-{i}"))
            if response.status_code == 503:
                assert response.json()["params"]["err"] == "ERR_BACKPRESSURE"
                refused += 1
            else:
                assert response.status_code == 200
                accepted += 50
            peak = max(peak, process.memory_info().rss)
            node = client.app.state.node
            assert node.backlog_events <= 5_000
        assert refused > 0, "backpressure should have refused load the store could not keep up with"
        assert peak - rss_before < 150 * 2**20, f"RSS grew by {(peak - rss_before) / 2**20:.0f} MB"
        monkeypatch.setattr(store, "write_batch", real_write)
        final = drained(client)
        assert final["cohort_events_stored_total"] == 500 + accepted
        assert final["cohort_events_unaccounted"] == 0
