"""The Parquet lake: written from a real store, read back by DuckDB with Hive partitioning; counts per tenant and
day reconcile with the store, a day exported again is replaced (not doubled), and the CLI takes the data
directory's lock."""

from __future__ import annotations

import subprocess
import sys
from datetime import date

import duckdb
import pyarrow.parquet as pq
import pytest

from analytics.metric_events import TENANT_A, TENANT_B, all_events, event, write_events
from analytics.metric_events import D1 as DAY1
from cohort.analytics.exports import DATASETS
from cohort.analytics.lake import export_lake, partition_dir
from cohort.store.duckdb_store import DuckDbStore


def per_partition_in_store(store: DuckDbStore) -> dict[tuple[str, str], int]:
    rows = store.query("SELECT channel, CAST(CAST(ets AS DATE) AS VARCHAR), count(*) FROM telemetry GROUP BY ALL",
                       None, 10_000, 30).rows
    return {(tenant, day): n for tenant, day, n in rows}


def per_partition_in_lake(lake) -> dict[tuple[str, str], int]:
    con = duckdb.connect()
    try:
        rows = con.execute(f"SELECT tenant, CAST(day AS VARCHAR), count(*) FROM read_parquet("
                           f"'{lake}/telemetry/**/*.parquet', hive_partitioning = true) GROUP BY ALL").fetchall()
    finally:
        con.close()
    return {(tenant, day): n for tenant, day, n in rows}


@pytest.fixture
def store(tmp_path):
    store = DuckDbStore(tmp_path / "store.duckdb")
    write_events(store, all_events())
    yield store
    store.close()


def test_lake_reads_back_with_hive_partitioning_and_counts_reconcile(store, tmp_path):
    lake = tmp_path / "lake"
    report = export_lake(store, lake)
    expected = per_partition_in_store(store)
    assert len(expected) >= 3 and {t for t, _ in expected} == {TENANT_A, TENANT_B}
    assert per_partition_in_lake(lake) == expected == report.per_partition
    assert report.rows == sum(expected.values())
    part = partition_dir(lake / "telemetry", TENANT_A, DAY1.date()) / "part-0.parquet"
    file = pq.ParquetFile(part)
    assert file.schema_arrow.names == list(DATASETS["telemetry"].columns)
    assert file.metadata.row_group(0).column(0).compression == "ZSTD"
    assert not (lake / "_staging").exists()


def test_a_day_exported_again_is_replaced_not_doubled(store, tmp_path):
    lake = tmp_path / "lake"
    export_lake(store, lake)
    first = per_partition_in_lake(lake)
    export_lake(store, lake)
    assert per_partition_in_lake(lake) == first
    # more events of tenant B on day 1, then only that day exported again
    more = [event("INTERACT", TENANT_B, DAY1, 500 + i, f"late-{i}", f"d-late-{i}", f"s-late-{i}", "school-1",
                  {"type": "TOUCH", "id": "b"})
            for i in range(5)]
    write_events_more(store, more)
    export_lake(store, lake, start=DAY1.date(), end=date(2026, 3, 3))
    assert per_partition_in_lake(lake) == per_partition_in_store(store)
    assert per_partition_in_lake(lake)[(TENANT_B, "2026-03-02")] == first[(TENANT_B, "2026-03-02")] + 5


def write_events_more(store: DuckDbStore, events: list[dict]) -> None:
    import time

    import orjson

    from cohort.core.log_record import LogRecord
    from cohort.core.process_batch import process_batch
    from cohort.state.mid_window import MidWindow

    now_ms = int(time.time() * 1000)
    body = orjson.dumps({"id": "api.sunbird.telemetry", "events": events})
    outcome = process_batch([LogRecord(payload=body, event_count=len(events), offset=2, received_at_ms=now_ms)],
                            MidWindow(3600), now_ms=now_ms, config_version="test")
    assert outcome.stored == len(events)
    store.write_batch(outcome, failed_at_ms=now_ms, token="t-2")


def test_cli_lake_export_takes_the_lock_and_writes_the_lake(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    store = DuckDbStore(data_dir / "store.duckdb")
    write_events(store, all_events())
    expected = per_partition_in_store(store)
    store.close()
    lake = tmp_path / "lake"
    done = subprocess.run([sys.executable, "-m", "cohort.cli", "lake", "export", "--data-dir", str(data_dir),
                           "--output", str(lake)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert per_partition_in_lake(lake) == expected

    from cohort.pipeline.data_dir_lock import DataDirLock

    held = DataDirLock(data_dir)
    held.acquire()
    try:
        refused = subprocess.run([sys.executable, "-m", "cohort.cli", "lake", "export", "--data-dir", str(data_dir),
                                  "--output", str(tmp_path / "lake2")], capture_output=True, text=True, timeout=300)
    finally:
        held.release()
    assert refused.returncode == 2 and "in use" in refused.stderr, refused.stderr
    assert not (tmp_path / "lake2" / "telemetry").exists()
