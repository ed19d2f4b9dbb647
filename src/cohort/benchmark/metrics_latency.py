"""Latency of metric requests over the rollups: `python -m cohort.benchmark.metrics_latency --events N`.

A learning world (synthetic_cohorts) is generated once and run through the pipeline's core; its stored rows
are then copied with other learners, devices, sessions and mids until the store holds N events of one tenant
(the worst case: every request reads one tenant's rows), written straight into a DuckDB store (not via
HTTP), and the rollups refreshed. Then a mix of requests (every metric; day, week, month and all; by none,
school, app and content; with and without a school scope; a 30-day window) is answered as the API answers
it (metric_answer: cells, freshness, late slices) and timed; the same mix over raw telemetry is timed too.
Prints JSON: events, load and refresh seconds, p50/p95/max ms of both.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from cohort.analytics.metric_answer import QueryBounds, answer_metric
from cohort.analytics.metric_query import MetricQuery
from cohort.analytics.metrics import METRICS, TELEMETRY_METRICS
from cohort.analytics.rollup_refresh import RollupRefresher
from cohort.core.log_record import LogRecord
from cohort.core.process_batch import BatchOutcome, process_batch
from cohort.security.identity import Scope
from cohort.state.mid_window import MidWindow
from cohort.store.duckdb_store import DuckDbStore
from cohort.synthetic_cohorts import CohortWorld

BOUNDS = QueryBounds(row_limit=100_000, timeout_s=120.0, max_result_bytes=64 << 20, max_memory_bytes=4 << 30)


def base_outcomes(days: int, learners: int) -> tuple[list[BatchOutcome], str, str]:
    """The world's uploads through the core, a few thousand events a batch; its first tenant and a school."""
    world = CohortWorld(seed=3, states=1, districts=2, schools=3, classes=2, learners=learners, courses=3, days=days)
    now_ms = int(time.time() * 1000)
    outcomes, events, offset = [], [], 0
    for upload in world.uploads(batch_size=500):
        events.extend(upload.envelope["events"])
        if len(events) >= 5_000:
            offset += 1
            outcomes.append(_outcome(events, offset, now_ms))
            events = []
    if events:
        outcomes.append(_outcome(events, offset + 1, now_ms))
    tenant = world.tenants[0].channel
    school = next(iter(world.classes.values())).rollup["l3"]
    return outcomes, tenant, school


def _outcome(events: list[dict], offset: int, now_ms: int) -> BatchOutcome:
    body = orjson.dumps({"id": "api.sunbird.telemetry", "events": events})
    return process_batch([LogRecord(payload=body, event_count=len(events), offset=offset, received_at_ms=now_ms)],
                         MidWindow(10**9), now_ms=now_ms, config_version="bench")


def copied(outcome: BatchOutcome, copy: int, offset: int) -> BatchOutcome:
    """The batch as another cohort's: learners, devices, sessions and mids suffixed with the copy number."""
    rows = outcome.rows
    suffix = f"~{copy}"
    for name in ("actor_id", "did", "sid", "mid"):
        column = rows.column(name)
        rows = rows.set_column(rows.schema.get_field_index(name), name,
                               pc.if_else(pc.is_null(column), column, pc.binary_join_element_wise(column, suffix, "")))
    rows = rows.set_column(rows.schema.get_field_index("log_offset"), "log_offset",
                           pa.array([offset] * rows.num_rows, pa.int64()))
    return dataclasses.replace(outcome, rows=rows, first_offset=offset, last_offset=offset,
                               requests=outcome.requests.slice(0, 0))


def requests(tenant: str, school: str, end: datetime) -> list[MetricQuery]:
    start = end - timedelta(days=30)
    scope = Scope.parse(f"rollup.l3:{school}")
    return [MetricQuery(start, end, granularity, by, tenant, sc)
            for granularity in ("day", "week", "month", "all") for by in ("none", "rollup.l3", "pdata_id", "object_id")
            for sc in (None, scope)]


def timed(store: DuckDbStore, metrics: dict, queries: list[MetricQuery], rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        for name, metric in metrics.items():
            for query in queries:
                started = time.perf_counter()
                answer_metric(store, metric, query, suppressed=False, k=5, bounds=BOUNDS, now=datetime.now(UTC))
                times.append((time.perf_counter() - started) * 1000)
    return times


def summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {"requests": len(ordered), "p50_ms": round(statistics.median(ordered), 1),
            "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))], 1), "max_ms": round(ordered[-1], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--learners", type=int, default=20, help="learners per class of the base world")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--raw", action="store_true", help="time the same requests over raw telemetry too")
    args = parser.parse_args()
    directory = args.data_dir or Path(tempfile.mkdtemp(prefix="cohort-metrics-bench-"))
    store = DuckDbStore(directory / "store.duckdb", memory_limit="8GB")
    started = time.perf_counter()
    base, tenant, school = base_outcomes(args.days, args.learners)
    generated = time.perf_counter() - started
    per_copy = sum(o.stored for o in base)
    stored, copy, offset = 0, 0, 0
    started = time.perf_counter()
    while stored < args.events:
        for outcome in base:
            offset += 1
            store.write_batch(outcome if copy == 0 else copied(outcome, copy, offset), failed_at_ms=0)
            stored += outcome.stored
            if stored >= args.events:
                break
        copy += 1
    loaded = time.perf_counter() - started
    started = time.perf_counter()
    slices = RollupRefresher(store).refresh()
    refreshed = time.perf_counter() - started
    rollup_rows = store.query("SELECT count(*) FROM learner_hours", None, 1, 60.0).rows[0][0]
    newest = store.query("SELECT max(ets) FROM telemetry", None, 1, 60.0).rows[0][0]
    end = datetime.fromisoformat(str(newest)).replace(tzinfo=UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    queries = requests(tenant, school, end + timedelta(days=1))
    timed(store, METRICS, queries[:4], 1)  # warm-up
    result = {"events": stored, "base_world_events": per_copy, "copies": copy, "generate_s": round(generated, 1),
              "load_s": round(loaded, 1), "refresh_s": round(refreshed, 1), "slices": slices,
              "learner_hours_rows": rollup_rows, "rollups": summary(timed(store, METRICS, queries, args.rounds))}
    if args.raw:
        result["raw_telemetry"] = summary(timed(store, TELEMETRY_METRICS, queries, 1))
    store.close()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
