"""Latency of metric requests over the rollups: `python -m cohort.benchmark.metrics_latency --events N`.

A learning world (synthetic_cohorts) is generated once, run through the pipeline's core and written into a
DuckDB store as the pipeline writes it (not via HTTP), and its rollups refreshed. Then the store is grown to
N events of one tenant (the worst case: every request reads one tenant's rows) by copies of that world with
other learners, devices, sessions and mids, made inside the store by SQL (`grow`): each copy's telemetry rows,
and its rollup rows, which are what a refresh of the copied telemetry computes (only the ids differ, and they
differ alike; tests/benchmark/test_metrics_latency.py checks it against a refresh). Copying the rollup rows
instead of refreshing them is what makes 50 M events loadable on a small machine: the refresh reads every
event's JSON.

Then a mix of requests (every metric; day, week, month and all; by none, school, app and content; with and
without a school scope; a 30-day window ending the day after the newest event) is answered as the API
answers it (metric_answer: freshness, the marked days, cells, late slices) and timed, per request kind. With
`--marked` the same mix is timed again with the newest day marked (one batch written after the refresh: what
a live tenant's requests meet between two refreshes), and `--raw` times it over raw telemetry. Prints JSON
(and writes it to --output).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from cohort.analytics import sketch_table
from cohort.analytics.metric_answer import QueryBounds, answer_metric
from cohort.analytics.metric_query import MetricQuery
from cohort.analytics.metrics import METRICS, TELEMETRY_METRICS
from cohort.analytics.rollup_metric import rows_table
from cohort.analytics.rollup_refresh import RollupRefresher
from cohort.analytics.rollup_tables import COLUMNS, ROLLUP_TABLES
from cohort.core.log_record import LogRecord
from cohort.core.process_batch import BatchOutcome, process_batch
from cohort.core.stages.route import TELEMETRY_COLUMNS
from cohort.security.identity import Scope
from cohort.settings import Settings
from cohort.state.mid_window import MidWindow
from cohort.store.duckdb_store import DuckDbStore
from cohort.synthetic_cohorts import CohortWorld

BOUNDS = QueryBounds(row_limit=100_000, timeout_s=600.0, max_result_bytes=64 << 20, max_memory_bytes=8 << 30)
COPIED_IDS = ("actor_id", "did", "sid")  # what tells one copy's learners, devices and sessions from another's


def base_outcomes(days: int, learners: int) -> tuple[list[BatchOutcome], str, str]:
    """The world's uploads through the core, a few thousand events a batch; its first tenant and a school."""
    world = _world(days, learners)
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


def _suffixed(column: str, copy: str, empty_is_none: bool) -> str:
    """`column` of copy number `copy` (a SQL expression): an id gets `~copy`; no id (NULL, or '' in a rollup,
    which is how a rollup writes no id) stays as it is."""
    if empty_is_none:
        return f"CASE WHEN {column} = '' THEN {column} ELSE {column} || '~' || {copy} END"
    return f"CASE WHEN {column} IS NULL OR {column} = '' THEN {column} ELSE {column} || '~' || {copy} END"


def grow(store: DuckDbStore, copies: int, *, first_copy: int = 1, telemetry_copies: int | None = None) -> None:
    """Copies first_copy..copies-1 of the rows written so far (copy 0): telemetry day by day, in ets order with
    a row's copies side by side (as a store that keeps its rows in time order holds them, and so that its text
    columns compress), and every rollup table's rows, in one transaction. `telemetry_copies`: copy telemetry
    only up to that many copies (the rollups still get all): a refreshed window's requests read no telemetry,
    so their latency is that of the full store, while 50 M events of telemetry (≈ 30 GB) need not be on disk."""
    if copies <= first_copy:
        return
    numbers = f"range({first_copy}, {copies}) AS c(n)"
    telemetry_numbers = f"range({first_copy}, {min(copies, telemetry_copies or copies)}) AS c(n)"
    names = ", ".join(TELEMETRY_COLUMNS)
    changed = {name: _suffixed(name, "CAST(n AS VARCHAR)", empty_is_none=False) for name in (*COPIED_IDS, "mid")}
    select = ", ".join(changed.get(name, name) for name in TELEMETRY_COLUMNS)
    with store.rollup_transaction() as con:
        con.execute("CREATE OR REPLACE TEMP TABLE base_rows AS SELECT * FROM telemetry").fetchall()
        days = [day for (day,) in con.execute("SELECT DISTINCT CAST(ets AS DATE) FROM base_rows ORDER BY 1").fetchall()]
        for day in days:
            con.execute(f"INSERT INTO telemetry ({names}) SELECT {select} FROM base_rows, {telemetry_numbers} WHERE "
                        f"CAST(ets AS DATE) = DATE '{day.isoformat()}' ORDER BY ets, mid, n").fetchall()
        con.execute("DROP TABLE base_rows").fetchall()
        for table in ROLLUP_TABLES:
            grain, measures = COLUMNS[table]
            columns = [name for name, _, _ in (*grain, *measures)] + ["version"]
            select = ", ".join(_suffixed(name, "CAST(n AS VARCHAR)", empty_is_none=True) if name in COPIED_IDS
                               else name for name in columns)
            con.execute(f"INSERT INTO {table} ({', '.join(columns)}) SELECT {select} FROM "
                        f"(SELECT * FROM {table}) AS base, {numbers}").fetchall()
        # the sketches are not copies: each day's are computed again from its grown rows, as a refresh computes them
        for table in sketch_table.TABLES:
            con.execute(f"DELETE FROM {table}").fetchall()
        for (day,) in con.execute("SELECT DISTINCT day FROM learner_days ORDER BY 1").fetchall():
            sketch_table.write_duckdb(con, "{day} = DATE '" + day.isoformat() + "'")


def requests(tenant: str, school: str, end: datetime) -> list[MetricQuery]:
    start = end - timedelta(days=30)
    scope = Scope.parse(f"rollup.l3:{school}")
    return [MetricQuery(start, end, granularity, by, tenant, sc)
            for granularity in ("day", "week", "month", "all") for by in ("none", "rollup.l3", "pdata_id", "object_id")
            for sc in (None, scope)]


def kind(query: MetricQuery) -> str:
    return f"by={query.by}{' scoped' if query.scope is not None else ''}"


def timed(store: DuckDbStore, metrics: dict, queries: list[MetricQuery], rounds: int,
          suppressed: bool = False) -> list[tuple[str, str, float]]:
    """(metric, request kind, ms) of every request answered, as for an admin or educator (not suppressed), or as
    for an analyst (`suppressed`: the cells' learners are counted too)."""
    times = []
    for _ in range(rounds):
        for name, metric in metrics.items():
            for query in queries:
                started = time.perf_counter()
                answer_metric(store, metric, query, suppressed=suppressed, k=5, bounds=BOUNDS, now=datetime.now(UTC))
                times.append((name, kind(query), (time.perf_counter() - started) * 1000))
    return times


def summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {"requests": len(ordered), "p50_ms": round(statistics.median(ordered), 1),
            "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))], 1), "max_ms": round(ordered[-1], 1)}


def summaries(times: list[tuple[str, str, float]]) -> dict[str, Any]:
    """All requests, then per metric and per request kind (group-by and scope)."""
    by_metric: dict[str, list[float]] = defaultdict(list)
    by_kind: dict[str, list[float]] = defaultdict(list)
    for name, request_kind, ms in times:
        by_metric[name].append(ms)
        by_kind[request_kind].append(ms)
    return {"all": summary([ms for _, _, ms in times]),
            "per_metric": {name: summary(values) for name, values in sorted(by_metric.items())},
            "per_kind": {name: summary(values) for name, values in sorted(by_kind.items())}}


def count(store: DuckDbStore, sql: str) -> Any:
    return store.query(sql, None, 1, 600.0).rows[0][0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--learners", type=int, default=20, help="learners per class of the base world")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--raw", action="store_true", help="time the same requests over raw telemetry too")
    parser.add_argument("--marked", action="store_true", help="time them again with the newest day marked")
    parser.add_argument("--suppressed", action="store_true", help="time them again as an analyst's (suppressed: the "
                        "cells' learners are counted too)")
    parser.add_argument("--telemetry-events", type=int, default=None, help="grow telemetry only to about this many "
                        "events (the rollups to --events): what a refreshed window's requests read is then that of "
                        "--events; the marked-day and raw figures are of the smaller telemetry")
    parser.add_argument("--memory-limit", default=Settings.model_fields["store_memory_limit"].default,
                        help="the store's memory limit (default: the server's)")
    parser.add_argument("--reuse", action="store_true", help="time over the store already in --data-dir (refreshed "
                        "first) instead of loading one")
    parser.add_argument("--output", type=Path, default=None, help="write the JSON here too")
    args = parser.parse_args()
    directory = args.data_dir or Path(tempfile.mkdtemp(prefix="cohort-metrics-bench-"))
    store = DuckDbStore(directory / "store.duckdb", memory_limit=args.memory_limit)
    load: dict[str, Any] = {}
    if args.reuse and count(store, "SELECT count(*) FROM telemetry"):
        world = _world(args.days, args.learners)  # the same world: its tenant and school, without its events
        tenant, school = world.tenants[0].channel, next(iter(world.classes.values())).rollup["l3"]
        started = time.perf_counter()
        load["reused_store_refresh_s"] = (RollupRefresher(store).refresh(), round(time.perf_counter() - started, 1))
    else:
        started = time.perf_counter()
        base, tenant, school = base_outcomes(args.days, args.learners)
        load["generate_s"] = round(time.perf_counter() - started, 1)
        load["base_world_events"] = per_copy = sum(o.stored for o in base)
        load["copies"] = copies = max(1, -(-args.events // per_copy))
        started = time.perf_counter()
        for outcome in base:
            store.write_batch(outcome, failed_at_ms=0)
        load["write_base_s"] = round(time.perf_counter() - started, 1)
        started = time.perf_counter()
        load["slices"] = RollupRefresher(store).refresh()
        load["refresh_base_s"] = round(time.perf_counter() - started, 1)
        started = time.perf_counter()
        telemetry_copies = None if args.telemetry_events is None else max(1, -(-args.telemetry_events // per_copy))
        load["telemetry_copies"] = telemetry_copies or copies
        grow(store, copies, telemetry_copies=telemetry_copies)
        print(f"grown to {copies} copies in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        store._checkpoint()  # the copies out of the WAL before anything is timed
        load["grow_s"] = round(time.perf_counter() - started, 1)
    stored = count(store, "SELECT count(*) FROM telemetry")
    rows = {table: count(store, f"SELECT count(*) FROM {table}") for table in ("learner_hours", "learner_days")}
    rolled_events = count(store, "SELECT sum(events) FROM learner_days")  # the events the rollups summarise
    newest = count(store, "SELECT max(ets) FROM telemetry")
    end = datetime.fromisoformat(str(newest)).replace(tzinfo=UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    queries = requests(tenant, school, end + timedelta(days=1))
    timed(store, METRICS, queries[:8], 1)  # warm-up
    result: dict[str, Any] = {
        "events": stored, "rolled_up_events": int(rolled_events), **load, "rollup_rows": rows,
        "store_bytes": (directory / "store.duckdb").stat().st_size,
        "tables_read": {kind(q) + f" {q.granularity}": rows_table(q) for q in queries},
        "command": "python -m cohort.benchmark.metrics_latency " + " ".join(sys.argv[1:]),
        "rollups": summaries(timed(store, METRICS, queries, args.rounds)),
        "load_average_1m": round(os.getloadavg()[0], 1), "cpus": os.cpu_count()}  # others' processes share the CPUs
    print(json.dumps(result), file=sys.stderr, flush=True)  # so far: the next parts can take long
    if args.suppressed:
        result["rollups_suppressed"] = summaries(timed(store, METRICS, queries, args.rounds, suppressed=True))
    if args.marked:  # a live tenant between two refreshes: its newest day marked by one more batch
        day = end.date()
        added = store.query(f"SELECT count(*) FROM telemetry WHERE ets >= TIMESTAMP '{day}' AND "
                            f"ets < TIMESTAMP '{day + timedelta(days=1)}' AND mid NOT LIKE '%~%'", None, 1, 600.0)
        started = time.perf_counter()  # refreshed first, as the refresher leaves a live day (its covered offset)
        result["marked_day_recompute"] = (RollupRefresher(store).recompute(tenant, day, day),
                                          round(time.perf_counter() - started, 1))
        mark_day_again(store, tenant, day)
        result["marked_days"] = [str(d) for (d,) in store.query(
            "SELECT DISTINCT day FROM rollup_dirty ORDER BY 1", None, 100, 60.0).rows]
        result["marked_day_rows_added"] = int(added.rows[0][0])
        result["marked_day_events"] = int(count(store, f"SELECT count(*) FROM telemetry WHERE ets >= TIMESTAMP '{day}' "
                                                f"AND ets < TIMESTAMP '{day + timedelta(days=1)}'"))
        result["rollups_with_marked_day"] = summaries(timed(store, METRICS, queries, 1))
        print(json.dumps(result), file=sys.stderr, flush=True)
    if args.raw:
        result["raw_telemetry"] = summaries(timed(store, TELEMETRY_METRICS, queries, 1))
    store.close()
    text = json.dumps(result)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=1) + "\n")
    print(text)


NEXT_OFFSET = "SELECT value + 1 FROM pipeline_state WHERE name = 'last_offset'"


def mark_day_again(store: DuckDbStore, tenant: str, day: Any) -> None:
    """The first copy's events of `day` stored again with new mids, at the next log offset, and the day marked, as a
    batch's write stores and marks them (one transaction): new events of that day, which the metrics read from
    telemetry (those past the offset the day's refresh covered) until a refresh."""
    start, end = f"TIMESTAMP '{day}'", f"TIMESTAMP '{day + timedelta(days=1)}'"
    with store.rollup_transaction() as con:
        con.execute(f"INSERT INTO telemetry SELECT * REPLACE (mid || '~again' AS mid, ({NEXT_OFFSET}) AS log_offset) "
                    f"FROM telemetry WHERE ets >= {start} AND ets < {end} AND mid NOT LIKE '%~%'").fetchall()
        con.execute(f"UPDATE pipeline_state SET value = ({NEXT_OFFSET}) WHERE name = 'last_offset'").fetchall()
        con.execute("INSERT INTO rollup_dirty VALUES ($tenant, $day, now()::TIMESTAMP, now()::TIMESTAMP, 'bench')",
                    {"tenant": tenant, "day": day}).fetchall()


def _world(days: int, learners: int) -> CohortWorld:
    return CohortWorld(seed=3, states=1, districts=2, schools=3, classes=2, learners=learners, courses=3, days=days)


if __name__ == "__main__":
    main()
