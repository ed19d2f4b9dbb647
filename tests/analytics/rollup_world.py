"""A small learning world (synthetic_cohorts) written into a real store, batch by batch, as the pipeline
writes it: the rollup tests' data, whose right answers the world's ground truth knows."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from functools import cache

import orjson

from cohort.analytics.metric_answer import QueryBounds, sketched_cells
from cohort.analytics.metric_query import MetricQuery
from cohort.analytics.metrics import METRICS, TELEMETRY_METRICS
from cohort.analytics.rollup_metric import MarkedSlices, marked_slices_sql
from cohort.core.log_record import LogRecord
from cohort.core.process_batch import process_batch
from cohort.state.mid_window import MidWindow
from cohort.store.clickhouse_store import ClickHouseStore
from cohort.store.duckdb_store import DuckDbStore
from cohort.synthetic_cohorts import CohortWorld, GroundTruth

WORLD = {"seed": 11, "states": 2, "districts": 1, "schools": 2, "classes": 1, "learners": 6, "courses": 2, "days": 9}


@cache
def world_and_truth() -> tuple[CohortWorld, GroundTruth, tuple[tuple[dict, ...], ...]]:
    world = CohortWorld(**WORLD)
    truth = GroundTruth(world)
    uploads = tuple(tuple(u.envelope["events"]) for u in world.uploads(batch_size=200, truth=truth))
    return world, truth, uploads


def write(store, events: list[dict] | tuple[dict, ...], offset: int, received_ms: int | None = None) -> None:
    """One batch of `events` through the pipeline's core into `store`, acknowledged at `received_ms`."""
    now_ms = received_ms if received_ms is not None else int(time.time() * 1000)
    body = orjson.dumps({"id": "api.sunbird.telemetry", "events": list(events)})
    outcome = process_batch([LogRecord(payload=body, event_count=len(events), offset=offset, received_at_ms=now_ms)],
                            MidWindow(10**9), now_ms=now_ms, config_version="test")
    assert outcome.failed_count == 0 and outcome.duplicates == 0
    store.write_batch(outcome, failed_at_ms=now_ms, token=f"w-{offset}")


def load_world(store, batches: int = 0) -> int:
    """Every upload of the world, `batches` uploads per write (0: all in a few writes); the last offset."""
    _, _, uploads = world_and_truth()
    per = batches or 50
    offset = 0
    for at in range(0, len(uploads), per):
        offset += 1
        write(store, [e for upload in uploads[at:at + per] for e in upload], offset)
    return offset


def open_store(kind: str, tmp_path, request):
    """An empty store of `kind` (duckdb: a file under tmp_path; clickhouse: the test's database)."""
    if kind == "duckdb":
        return DuckDbStore(tmp_path / "store.duckdb")
    return ClickHouseStore(request.getfixturevalue("clickhouse_dsn"),
                           database=request.getfixturevalue("clickhouse_database"))


def first_tenant() -> str:
    return world_and_truth()[1].tenants[0]


BOUNDS = QueryBounds(row_limit=100_000, timeout_s=60.0, max_result_bytes=64 << 20, max_memory_bytes=1 << 30)


def cells(store, name: str, query: MetricQuery, raw: bool = False, general: bool = False,
          sketches: bool = True) -> dict:
    """The metric's cells: `raw`, the telemetry metric's; else the rollup metric's as the API reads them (merged
    from the sketches where they answer — exactly, in this small world — else the tenant's marked days first),
    or with `general` its statement that reads the marks itself (lineage's)."""
    dialect = store.capabilities.sql_dialect
    if sketches and not raw and not general:
        sketched, exact = sketched_cells(store, METRICS[name], query, dialect, BOUNDS, time.monotonic() + 60)
        if sketched is not None:
            assert exact, (name, query)  # every (day, group) of this world is small
            return {(c.bucket, c.group): (c.value, c.learners) for c in sketched}
    metric = TELEMETRY_METRICS[name] if raw else METRICS[name]
    marks = None if raw or general or not METRICS[name].reads_rollups(query) else marked_slices_sql(query, dialect)
    if marks is None:
        statement = metric.cell_sql(query, dialect)
    else:
        marked = MarkedSlices.of(store.query(marks.sql, marks.params, 1000, 60.0).rows)
        statement = METRICS[name].cell_sql(query, dialect, marked.whole, marked.deltas)
    rows = store.query(statement.sql, statement.params, 100_000, 60.0).rows
    return {(int(b), g): (v, int(n)) for b, g, v, n in rows}


def window() -> tuple[datetime, datetime]:
    world, _, _ = world_and_truth()
    start = datetime(world.start.year, world.start.month, world.start.day, tzinfo=UTC)
    return start, start + timedelta(days=world.days)
