"""SIGKILL the real server right after acks, restart it, and prove every acked event is stored exactly once."""

from __future__ import annotations

import pytest

from cohort.benchmark.crash import run_crash_cycles

pytestmark = pytest.mark.e2e


def test_sigkill_under_load_loses_nothing_and_duplicates_nothing(tmp_path):
    report = run_crash_cycles(tmp_path, cycles=4, events=15_000, batch_size=100, senders=4, seed=3)
    assert report.send_failures > 0, "the kills should have interrupted requests in flight"
    assert report.acked_unprocessed_at_kill > 0, "some kills should hit events acked but not yet stored"
    assert report.events_acked == report.events_generated == 15_000
    assert report.lost_mids == [] and report.duplicated_mids == [] and report.unexpected_mids == []
    assert report.stored_rows == 15_000
    assert report.unaccounted == 0
    assert report.ok
