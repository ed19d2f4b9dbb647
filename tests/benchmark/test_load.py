"""The load benchmark reports figures that reconcile with the server's own accounting."""

from __future__ import annotations

import orjson
import pytest

from cohort.benchmark.load import BodyPool, LoadConfig, histogram_quantile, parse_only_rate, run_against_own_server

pytestmark = pytest.mark.e2e


def test_body_pool_makes_every_round_unique():
    pool = BodyPool(LoadConfig(batch_size=10, pool_batches=3))
    bodies = [pool.take()[0] for _ in range(7)]  # two full rounds and a bit
    assert len(set(bodies)) == 7
    assert bodies[3].replace(b'"mid":"r1.', b'"mid":"').replace(b'"msgid":"r1.', b'"msgid":"') == bodies[0]
    msgids = [orjson.loads(body)["params"]["msgid"] for body in bodies]
    assert len(set(msgids)) == 7  # a body sent again with its msgid would be a retry, dropped whole
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


def test_a_quantile_of_what_the_server_histogram_observed_between_two_scrapes():
    name = "cohort_ingest_ack_seconds"
    key = lambda le: f'{name}_bucket{{le="{le}"}}'  # noqa: E731
    before = {key("0.01"): 5.0, key("0.05"): 10.0, key("0.1"): 10.0, key("+Inf"): 10.0}
    # 100 more: 50 under 10 ms, 40 within 10–50 ms, 9 within 50–100 ms, 1 beyond
    after = {key("0.01"): 55.0, key("0.05"): 100.0, key("0.1"): 109.0, key("+Inf"): 110.0}
    assert histogram_quantile(0.5, name, before, after) == 10.0
    assert histogram_quantile(0.7, name, before, after) == 30.0  # 20 of the 40 in 10–50 ms
    assert histogram_quantile(0.99, name, before, after) == 100.0  # the 99th of 100 is the last in 50–100 ms
    assert histogram_quantile(1.0, name, before, after) == 100.0  # beyond the last bound: that bound, a floor
    assert histogram_quantile(0.99, name, after, after) is None  # nothing observed in between
