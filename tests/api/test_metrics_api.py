"""GET /metrics: the accounting identity holds at every moment, not only at rest."""

from __future__ import annotations

import random
import threading

from support import app_client, envelope, metric_values, wait_for


def failed_total(metrics: dict[str, float]) -> float:
    return sum(v for k, v in metrics.items() if k.startswith("cohort_events_failed_total{"))


def test_received_equals_stored_failed_duplicate_in_flight_throughout(client, sample_events):
    rng = random.Random(7)
    bodies = []
    expected_invalid = 0
    for i in range(0, 500, 25):
        events = [dict(e) for e in sample_events[i:i + 25]]
        for event in rng.sample(events, 3):
            event["ets"] = "not a number"
        expected_invalid += 3
        bodies.append(envelope(events, msgid=f"b{i}"))
    bodies += bodies[:6]  # client retries (same msgid): whole duplicates, their invalid events not quarantined again

    snapshots = []
    stop = threading.Event()

    def scrape():
        while not stop.is_set():
            snapshots.append(metric_values(client))

    scraper = threading.Thread(target=scrape)
    scraper.start()
    try:
        for body in bodies:
            assert client.post("/v1/telemetry", content=body).status_code == 200
        final = wait_for(lambda: (m := metric_values(client))["cohort_events_in_flight"] == 0 and m)
    finally:
        stop.set()
        scraper.join()

    assert len(snapshots) > 3
    for m in snapshots + [final]:
        assert m["cohort_events_unaccounted"] == 0
        assert m["cohort_events_received_total"] == (m["cohort_events_stored_total"] + failed_total(m)
                                                      + m["cohort_events_duplicate_total"] + m["cohort_events_in_flight"])
    assert final["cohort_events_received_total"] == 26 * 25
    assert final["cohort_events_stored_total"] == 500 - 20 * 3
    assert final["cohort_events_failed_total{stage=\"validate\"}"] == expected_invalid
    assert final["cohort_events_duplicate_total"] == 6 * 25
    assert final["cohort_requests_duplicate_total"] == 6
    assert final["cohort_pipeline_healthy"] == 1


def test_counts_survive_a_restart(settings, sample_events):
    with app_client(settings) as client:
        assert client.post("/v1/telemetry", content=envelope(sample_events[:100])).status_code == 200
        wait_for(lambda: metric_values(client)["cohort_events_stored_total"] == 100)
    with app_client(settings) as client:
        assert client.post("/v1/telemetry", content=envelope(sample_events[:100])).status_code == 200
        m = wait_for(lambda: (m := metric_values(client))["cohort_events_in_flight"] == 0 and m)
        assert m["cohort_events_received_total"] == 200
        assert m["cohort_events_stored_total"] == 100
        assert m["cohort_events_duplicate_total"] == 100
