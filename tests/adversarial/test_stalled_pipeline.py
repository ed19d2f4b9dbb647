"""A stalled pipeline is visible: /health answers 503 and /metrics carries what an alert needs."""

from __future__ import annotations

import duckdb

from cohort.settings import Settings
from support import ExplodingValidator, app_client, envelope, metric_values, wait_for


def test_a_pipeline_that_keeps_failing_turns_health_red_and_recovers(tmp_path, sample_events, monkeypatch):
    settings = Settings(data_dir=tmp_path / "data", pipeline_idle_wait_seconds=0.005, pipeline_workers=0,
                        pipeline_stall_seconds=0.5)
    with app_client(settings) as client:
        store = client.app.state.node.store
        real_write = store.write_batch
        fault = {"on": True}

        def write_batch(outcome, **kwargs):
            if fault["on"]:
                raise duckdb.IOException("IO Error: No space left on device (injected)")
            return real_write(outcome, **kwargs)

        monkeypatch.setattr(store, "write_batch", write_batch)
        assert client.post("/v1/telemetry", content=envelope(sample_events[:20])).status_code == 200
        assert wait_for(lambda: client.get("/health").status_code == 503, timeout=10)
        body = client.get("/health").json()
        assert body["status"] == "stalled"
        assert "No space left" in body["pipeline"]["last_error"]
        assert body["pipeline"]["oldest_unprocessed_age_seconds"] > 0
        metrics = metric_values(client)
        assert metrics["cohort_pipeline_stalled"] == 1
        assert metrics["cohort_pipeline_oldest_unprocessed_age_seconds"] > 0
        assert metrics["cohort_pipeline_consecutive_failures"] >= 1
        assert metrics["cohort_events_unaccounted"] == 0

        fault["on"] = False
        assert wait_for(lambda: client.get("/health").json()["status"] == "ok", timeout=15)
        metrics = metric_values(client)
        assert metrics["cohort_pipeline_stalled"] == 0 and metrics["cohort_events_stored_total"] == 20
        assert metrics["cohort_pipeline_oldest_unprocessed_age_seconds"] == 0


def test_isolated_poison_shows_in_metrics_and_health_stays_ok(tmp_path, sample_events, monkeypatch):
    import cohort.core.stages.validate as validate_stage

    real = validate_stage.validator_for
    poison_mid = sample_events[5]["mid"]

    def validator_for(eid):
        return ExplodingValidator.around(real(eid), lambda event: event.get("mid") == poison_mid,
                                 RecursionError("maximum recursion depth exceeded"))

    monkeypatch.setattr(validate_stage, "validator_for", validator_for)
    settings = Settings(data_dir=tmp_path / "data", pipeline_idle_wait_seconds=0.005, pipeline_workers=0)
    with app_client(settings) as client:
        assert client.post("/v1/telemetry", content=envelope(sample_events[:20])).status_code == 200
        metrics = wait_for(lambda: (m := metric_values(client))["cohort_events_in_flight"] == 0 and m)
        assert metrics["cohort_events_stored_total"] == 19
        assert metrics['cohort_events_failed_total{stage="validate"}'] == 1
        assert metrics["cohort_events_unaccounted"] == 0
        assert client.get("/health").json()["status"] == "ok"


def test_metrics_answer_when_the_store_cannot_be_read(tmp_path, monkeypatch):
    """Hostile queries can hold all of the engine's memory; a scrape then says so instead of a 500."""
    settings = Settings(data_dir=tmp_path / "data", pipeline_idle_wait_seconds=0.005, pipeline_workers=0)
    with app_client(settings) as client:
        store = client.app.state.node.store

        def out_of_memory():
            raise duckdb.OutOfMemoryException("Out of Memory Error: failed to allocate (injected)")

        monkeypatch.setattr(store, "counts", out_of_memory)
        response = client.get("/metrics")
        assert response.status_code == 200
        metrics = metric_values(client)
        assert metrics["cohort_store_readable"] == 0 and "cohort_events_unaccounted" not in metrics
        assert "cohort_ingest_batches_acked_total" in metrics  # the process's own figures are still there
        monkeypatch.undo()
        assert metric_values(client)["cohort_store_readable"] == 1
