"""What a 5,000-event batch costs to write: the ClickHouse store against the DuckDB store, in one run.

Both stores get the same batches: the 500 real DIKSHA events of tests/fixtures (ten copies with fresh
mids per batch), in requests of 100 events, prepared by process_batch as the pipeline does. The stores
are written in alternation, batch by batch, so the machine's noise falls on both; compare them by the
ratio, which comes from the same run. ClickHouse is the embedded engine (chdb, in this process) unless
--clickhouse-dsn names a server. Also timed: the same batch written again with its token (on ClickHouse,
the replay that follows a failed write: every insert is skipped by its token).

    .venv/bin/python -m cohort.benchmark.store_write --batches 30 --output bench/results/store-write.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from cohort.core.log_record import LogRecord
from cohort.core.process_batch import BatchOutcome, process_batch
from cohort.state.mid_window import MidWindow
from cohort.store.clickhouse_store import ClickHouseStore
from cohort.store.duckdb_store import DuckDbStore

SAMPLE = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "sunbird" / "telemetry-sample.jsonl"
BATCH_EVENTS = 5000
EVENTS_PER_REQUEST = 100


def batches(sample: list[dict], count: int, now_ms: int) -> list[BatchOutcome]:
    """`count` prepared batches of BATCH_EVENTS events each, every mid unique across all of them."""
    outcomes = []
    offset = 1
    for number in range(count):
        events = [dict(e, mid=f"{e['mid']}-{number}-{copy}") for copy in range(BATCH_EVENTS // len(sample))
                  for e in sample]
        records = []
        for start in range(0, len(events), EVENTS_PER_REQUEST):
            chunk = events[start:start + EVENTS_PER_REQUEST]
            records.append(LogRecord(payload=orjson.dumps({"id": "api.sunbird.telemetry", "events": chunk}),
                                     event_count=len(chunk), offset=offset, received_at_ms=now_ms,
                                     headers={"msgid": f"bench-{offset}"}))
            offset += 1
        outcomes.append(process_batch(records, MidWindow(3600), now_ms=now_ms, config_version="bench"))
    return outcomes


def _summary(seconds: list[float]) -> dict[str, Any]:
    per_event = sorted(s * 1e6 / BATCH_EVENTS for s in seconds)
    return {"median_us_per_event": round(statistics.median(per_event), 2),
            "p90_us_per_event": round(per_event[int(0.9 * (len(per_event) - 1))], 2),
            "min_us_per_event": round(per_event[0], 2), "batches": len(per_event)}


def run(count: int, warmup: int, clickhouse_dsn: str | None) -> dict:
    sample = [orjson.loads(line) for line in SAMPLE.read_bytes().splitlines()]
    now_ms = int(time.time() * 1000)
    outcomes = batches(sample, count + warmup, now_ms)
    assert all(o.stored == BATCH_EVENTS for o in outcomes)
    with tempfile.TemporaryDirectory(prefix="cohort-store-bench-") as directory:
        duck = DuckDbStore(Path(directory) / "store.duckdb", memory_limit="512MB", checkpoint_threshold="256MB")
        click = ClickHouseStore(clickhouse_dsn or f"chdb://{directory}/clickhouse",
                                database=f"bench_{now_ms}")
        try:
            times: dict[str, list[float]] = {"duckdb": [], "clickhouse": [], "clickhouse_replay": []}
            for number, outcome in enumerate(outcomes):
                token = f"p0-{outcome.first_offset}-{outcome.last_offset}"
                for name, store in (("duckdb", duck), ("clickhouse", click)) if number % 2 else \
                        (("clickhouse", click), ("duckdb", duck)):
                    started = time.perf_counter()
                    store.write_batch(outcome, failed_at_ms=now_ms, token=token)
                    if number >= warmup:
                        times[name].append(time.perf_counter() - started)
                started = time.perf_counter()
                click.write_batch(outcome, failed_at_ms=now_ms, token=token)  # the replay: skipped by its token
                if number >= warmup:
                    times["clickhouse_replay"].append(time.perf_counter() - started)
            stored = {"duckdb": duck.counts().stored, "clickhouse": click.counts().stored}
            assert stored["duckdb"] == stored["clickhouse"] == BATCH_EVENTS * len(outcomes), stored
        finally:
            duck.close()
            click.close()
    result: dict[str, Any] = {name: _summary(seconds) for name, seconds in times.items()}
    result["clickhouse_over_duckdb"] = round(result["clickhouse"]["median_us_per_event"]
                                             / result["duckdb"]["median_us_per_event"], 2)
    result["events_per_batch"] = BATCH_EVENTS
    result["clickhouse"]["dsn"] = "chdb (embedded)" if not clickhouse_dsn else clickhouse_dsn.split("@")[-1]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=30, help="timed batches per store")
    parser.add_argument("--warmup", type=int, default=2, help="batches written first and not timed")
    parser.add_argument("--clickhouse-dsn", default=None, help="a ClickHouse server (default: the embedded engine)")
    parser.add_argument("--output", type=Path, default=None, help="write the result as JSON here")
    args = parser.parse_args()
    result = run(args.batches, args.warmup, args.clickhouse_dsn)
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
