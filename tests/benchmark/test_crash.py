"""The crash harness's own checks: they read the store itself and see a lost, doubled or unreconciled event."""

from __future__ import annotations

import subprocess
import sys

import pytest
import redis

from cohort.benchmark.crash import CrashReport, _require_unused_redis, clickhouse_stored_mid_counts

_WRITE_CHDB = """
import sys
import clickhouse_connect
client = clickhouse_connect.get_client(dsn="chdb://" + sys.argv[1])
client.command("CREATE DATABASE IF NOT EXISTS cohort")
client.command("CREATE TABLE cohort.telemetry (mid String) ENGINE = MergeTree ORDER BY mid")
client.command("CREATE TABLE cohort.failed_events (mid Nullable(String)) ENGINE = MergeTree ORDER BY tuple()")
client.command("INSERT INTO cohort.telemetry VALUES ('a'), ('a'), ('b')")
client.command("INSERT INTO cohort.failed_events VALUES ('c')")
"""


def report(**changes) -> CrashReport:
    fields = {"cycles": 1, "events_generated": 2, "events_acked": 2, "send_failures": 1, "stored_rows": 2,
              "ledger": {"received": 2, "stored": 2, "failed": 0, "duplicate": 0, "in_flight": 0, "unaccounted": 0}}
    return CrashReport(**{**fields, **changes})


def test_the_clickhouse_store_is_read_directly_and_a_doubled_row_shows(tmp_path):
    path = tmp_path / "clickhouse"
    subprocess.run([sys.executable, "-c", _WRITE_CHDB, str(path)], check=True, timeout=120)
    assert clickhouse_stored_mid_counts(path, "cohort") == ({"a": 2, "b": 1}, 1)
    assert clickhouse_stored_mid_counts(tmp_path / "never-written", "cohort") == ({}, 0)


def test_a_report_is_ok_only_when_the_store_and_the_ledger_both_reconcile():
    assert report().ok
    assert not report(duplicated_mids=["a"]).ok
    assert not report(lost_mids=["a"]).ok
    assert not report(stored_rows=1).ok
    assert not report(quarantined_rows=1).ok
    assert not report(unaccounted=1.0).ok
    assert not report(ledger={"stored": 2, "in_flight": 1}).ok  # not drained
    assert not report(ledger={"stored": 3, "in_flight": 0}).ok  # the server claims more than the store holds
    assert not report(ledger={}).ok  # no ledger read: nothing proven


def test_a_redis_database_a_deployment_uses_is_refused(redis_url):
    _require_unused_redis(redis_url)
    client = redis.Redis.from_url(redis_url)
    client.set("cohort:intake:0", "x")
    with pytest.raises(ValueError, match="holds Cohort keys"):
        _require_unused_redis(redis_url)
    client.close()
