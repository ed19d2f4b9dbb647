"""CPU cost of the embedded pipeline's dedup state, in one process, on the same events: the on-disk
indexes (what a node runs) against the in-memory window (what it ran before).

CPU seconds are counted, not wall seconds, so the figure holds on a machine other people load too.
The pipeline runs inline (no worker processes): every event's parse, validate, dedup and store
commit is in this process, and the `seen`/`add` calls are timed on their own thread's clock.

    .venv/bin/python bench/embedded_dedup_cpu.py --events 200000 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import orjson

from cohort.core.log_record import LogRecord
from cohort.ingest.sqlite_log import SqliteLog
from cohort.pipeline.embedded_dedup import open_dedup_states
from cohort.pipeline.runner import PipelineRunner
from cohort.state.mid_window import MidWindow
from cohort.store.duckdb_store import DuckDbStore
from cohort.synthetic import TelemetryGenerator

WEEK_S = 7 * 86_400.0


class Timed:
    """A dedup state whose `seen` and `add` calls are timed on the calling thread's CPU clock."""

    def __init__(self, state):
        self.state = state
        self.period_s = state.period_s
        self.cpu_s = 0.0

    def seen(self, keys):
        started = time.thread_time()
        try:
            return self.state.seen(keys)
        finally:
            self.cpu_s += time.thread_time() - started

    def add(self, keys, at_ms):
        started = time.thread_time()
        try:
            return self.state.add(keys, at_ms)
        finally:
            self.cpu_s += time.thread_time() - started

    def reach_seconds(self):
        return self.state.reach_seconds()

    def close(self):
        self.state.close()


def records(n_events: int) -> list[LogRecord]:
    now = int(time.time() * 1000)
    return [LogRecord(payload=orjson.dumps(envelope), event_count=len(envelope["events"]), received_at_ms=now,
                      headers={"msgid": envelope["params"]["msgid"], "x-channel-id": headers.get("X-Channel-Id", "")})
            for envelope, headers in TelemetryGenerator(seed=11).batches_with_headers(n_events, 500)]


def run(kind: str, requests: list[LogRecord], directory: Path) -> dict:
    log = SqliteLog(directory / "ingest-log.sqlite")
    store = DuckDbStore(directory / "store.duckdb")
    if kind == "disk":
        states = open_dedup_states(store, WEEK_S, mid_path=directory / "dedup-mid",
                                   msgid_path=directory / "dedup-msgid", cache_bytes=128 << 20)
    else:
        states = {"mid_state": MidWindow(WEEK_S), "request_state": MidWindow(WEEK_S)}
    timed = {name: Timed(state) for name, state in states.items()}
    log.append_many(requests)
    runner = PipelineRunner(log, store, **timed, batch_events=5000, retention_s=86_400)  # type: ignore[arg-type]
    cpu, wall = time.process_time(), time.perf_counter()
    events = runner.drain()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    dedup_cpu = sum(t.cpu_s for t in timed.values())
    for state in timed.values():
        state.close()
    store.close()
    log.close()
    return {"state": kind, "events": events, "cpu_us_per_event": round(cpu / events * 1e6, 2),
            "dedup_state_cpu_us_per_event": round(dedup_cpu / events * 1e6, 2),
            "wall_us_per_event": round(wall / events * 1e6, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    requests = records(args.events)
    results = []
    for _ in range(args.rounds):
        for kind in ("memory", "disk"):  # interleaved: load from others hits both alike
            with tempfile.TemporaryDirectory(prefix="cohort-dedup-cpu-") as directory:
                results.append(run(kind, requests, Path(directory)))
                print(json.dumps(results[-1]))
    summary = {kind: {key: round(sum(r[key] for r in results if r["state"] == kind) / args.rounds, 2)
                      for key in ("cpu_us_per_event", "dedup_state_cpu_us_per_event", "wall_us_per_event")}
               for kind in ("memory", "disk")}
    data = {"command": f"bench/embedded_dedup_cpu.py --events {args.events} --rounds {args.rounds}",
            "runs": results, "mean": summary}
    print(json.dumps(summary, indent=2))
    if args.output:
        args.output.write_text(json.dumps(data, indent=2))


if __name__ == "__main__":
    main()
