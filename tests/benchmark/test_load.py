"""The load benchmark reports figures that reconcile with the server's own accounting."""

from __future__ import annotations

import pytest

from cohort.benchmark.load import BodyPool, LoadConfig, parse_only_rate, run_against_own_server

pytestmark = pytest.mark.e2e


def test_body_pool_makes_every_round_unique():
    pool = BodyPool(LoadConfig(batch_size=10, pool_batches=3))
    bodies = [pool.take()[0] for _ in range(7)]  # two full rounds and a bit
    assert len(set(bodies)) == 7
    assert bodies[3].replace(b'"mid":"r1.', b'"mid":"') == bodies[0]
    assert parse_only_rate(pool, min_seconds=0.05) > 0


def test_a_short_run_reports_consistent_figures(tmp_path):
    config = LoadConfig(duration_s=2.0, batch_size=100, concurrency=2, pool_batches=20, rate=2000)
    result = run_against_own_server(tmp_path, config)
    assert result.events_acked > 0 and result.requests_refused == {}
    assert result.stored == result.events_acked and result.failed == 0 and result.duplicate == 0
    assert result.unaccounted == 0
    assert 0 < result.acked_per_s <= 2000 * 1.2  # the offered rate is respected
    assert result.stored_per_s > 0 and result.parse_only_per_s > result.stored_per_s
    assert set(result.ack_latency_ms) == {"p50", "p95", "p99", "max"}
    assert result.server_peak_rss_mb > result.main_process_peak_rss_mb > 10 and result.server_cpu_percent > 0
    assert 0 < result.ratio_end_to_end_to_parse_only < 1
