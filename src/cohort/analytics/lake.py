"""The Parquet lake: the store's telemetry as Hive-partitioned Parquet, one directory per tenant and day.

Layout: `<lake>/telemetry/tenant=<channel>/day=<YYYY-MM-DD>/part-<n>.parquet` (by event time, `ets`, UTC),
so DuckDB (`read_parquet('<lake>/telemetry/**/*.parquet', hive_partitioning = true)`), Spark and Superset
read it as one table with `tenant` and `day` columns, and a reader of one tenant or day opens only its
files. The rows are the store's, so identifiers are the pseudonyms it holds (nothing joins the vault);
columns and types are the export's (cohort.analytics.exports).

Idempotent per day: a day is written whole into a staging directory beside the tree (`<lake>/_staging`,
outside `telemetry/`, so no reader globbing the tree sees it), synced, then put in place of the day's old
directory (the old one renamed away first, then removed): exporting a day again replaces it; a crash leaves
the old day or the new one, plus leftovers in `_staging` that the next run removes. Tenant ids are channel
ids (letters, digits, `_.:-`); `:` is written `%3A`, as Hive escapes it.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq

from cohort.analytics.exports import DATASETS, PARQUET_COMPRESSION, arrow_schema, conform
from cohort.owner_only_files import sync_path
from cohort.store.duckdb_store import DuckDbStore

DATASET = DATASETS["telemetry"]
ROWS_PER_FILE = 1_000_000
BATCH_ROWS = 65_536
TIMEOUT_S = 6 * 3600.0  # one day's rows, offline
STAGING = "_staging"


@dataclass
class LakeReport:
    days: int = 0
    files: int = 0
    rows: int = 0
    bytes: int = 0
    per_partition: dict[tuple[str, str], int] = field(default_factory=dict)  # (tenant, day) → rows


def export_lake(store: DuckDbStore, output: Path, start: date | None = None, end: date | None = None,
                progress: Callable[[str, str, int], None] | None = None) -> LakeReport:
    """Write every (tenant, day) of the store's telemetry with start <= day < end (None: unbounded) into the
    lake at `output`, each day replaced whole. `progress(tenant, day, rows)` after each partition."""
    output = Path(output)
    tree = output / DATASET.name
    staging = output / STAGING
    shutil.rmtree(staging, ignore_errors=True)  # what a crashed run left
    staging.mkdir(parents=True, exist_ok=True)
    tree.mkdir(parents=True, exist_ok=True)
    report = LakeReport()
    for tenant, day in _partitions(store, start, end):
        rows, files, size = _write_partition(store, tree, staging, tenant, day)
        report.days += 1
        report.files += files
        report.rows += rows
        report.bytes += size
        report.per_partition[(tenant, day.isoformat())] = rows
        if progress is not None:
            progress(tenant, day.isoformat(), rows)
    shutil.rmtree(staging, ignore_errors=True)
    return report


def partition_dir(tree: Path, tenant: str, day: date) -> Path:
    return tree / f"tenant={tenant.replace(':', '%3A')}" / f"day={day.isoformat()}"


def _partitions(store: DuckDbStore, start: date | None, end: date | None) -> list[tuple[str, date]]:
    where, params = _day_range(start, end)
    sql = f"SELECT DISTINCT channel, CAST(ets AS DATE) AS day FROM telemetry{where} ORDER BY channel, day"
    found: list[tuple[str, date]] = []
    for batch in store.stream_rows(sql, params, batch_rows=BATCH_ROWS, timeout_s=TIMEOUT_S):
        found.extend(zip(batch.column("channel").to_pylist(), batch.column("day").to_pylist()))
    return found


def _day_range(start: date | None, end: date | None) -> tuple[str, dict[str, object]]:
    conditions: list[str] = []
    params: dict[str, object] = {}
    if start is not None:
        conditions.append("ets >= $start")
        params["start"] = datetime(start.year, start.month, start.day)
    if end is not None:
        conditions.append("ets < $end")
        params["end"] = datetime(end.year, end.month, end.day)
    return (" WHERE " + " AND ".join(conditions) if conditions else ""), params


def _write_partition(store: DuckDbStore, tree: Path, staging: Path, tenant: str, day: date) -> tuple[int, int, int]:
    """One tenant's day, staged then put in place; (rows, files, bytes)."""
    schema = arrow_schema(DATASET)
    columns = ", ".join(f"CAST({c.name} AS VARCHAR) AS {c.name}" if c.duckdb_type == "JSON" else c.name
                        for c in DATASET.table.columns)
    sql = f"SELECT {columns} FROM telemetry WHERE channel = $tenant AND ets >= $start AND ets < $end"
    start = datetime(day.year, day.month, day.day)
    params = {"tenant": tenant, "start": start, "end": start + timedelta(days=1)}
    stage = staging / uuid.uuid4().hex
    stage.mkdir()
    rows = files = size = 0
    writer: pq.ParquetWriter | None = None
    in_file = 0
    try:
        for batch in store.stream_rows(sql, params, batch_rows=BATCH_ROWS, timeout_s=TIMEOUT_S):
            batch = conform(batch, schema)
            if not batch.num_rows:
                continue
            if writer is None or in_file >= ROWS_PER_FILE:
                if writer is not None:
                    writer.close()
                writer = pq.ParquetWriter(stage / f"part-{files}.parquet", schema, compression=PARQUET_COMPRESSION)
                files += 1
                in_file = 0
            writer.write_batch(batch, row_group_size=batch.num_rows)
            in_file += batch.num_rows
            rows += batch.num_rows
    finally:
        if writer is not None:
            writer.close()
    for part in stage.iterdir():
        size += part.stat().st_size
        with open(part, "rb") as handle:
            os.fsync(handle.fileno())
    sync_path(stage)
    target = partition_dir(tree, tenant, day)
    target.parent.mkdir(parents=True, exist_ok=True)
    old = staging / f"old-{uuid.uuid4().hex}"
    if target.exists():
        os.replace(target, old)
    os.replace(stage, target)
    sync_path(target.parent)
    shutil.rmtree(old, ignore_errors=True)
    return rows, files, size
