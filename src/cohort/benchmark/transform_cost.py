"""CPU per event of the pipeline's prepare half with and without the transform stage (pseudonymisation
on the real SQLite identity vault), over the synthetic generator's requests cut into pipeline batches.

Why CPU time and interleaved rounds: the machine is shared and noisy, so wall-clock rates of two separate
runs differ by more than the 10 % the issue allows; CPU seconds of this process (the vault's SQLite work
included, it runs in-process as in a pipeline worker), alternated run by run, compare the same work. Both
the medians and the minima are given: under contention CPU time inflates too, and the minimum is the run
least disturbed. The pipeline's pseudonymiser remembers the pseudonyms it was given (core/pseudonym_cache.py);
a third series runs without that memory, each batch asking the vault for every id, to show what it saves.

    python -m cohort.benchmark.transform_cost --events 50000 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import orjson

from cohort.core.log_record import LogRecord
from cohort.core.process_batch import prepare_batch
from cohort.core.stages.transform import Pseudonymiser
from cohort.core.telemetry_schema import compile_all
from cohort.pipeline.gc_tuning import collector_paused, tune_gc
from cohort.pipeline.pseudonymisation import PseudonymiserSource
from cohort.security.secrets import load_or_create_secrets
from cohort.settings import Settings
from cohort.synthetic import TelemetryGenerator


def pipeline_batches(events: int, request_events: int, batch_events: int, seed: int) -> list[list[LogRecord]]:
    """The generator's requests as the log holds them (headers kept lower-case), cut into pipeline batches."""
    batches: list[list[LogRecord]] = [[]]
    in_batch = 0
    generator = TelemetryGenerator(seed=seed)
    for offset, (envelope, headers) in enumerate(generator.batches_with_headers(events, request_events), 1):
        if in_batch >= batch_events:
            batches.append([])
            in_batch = 0
        count = len(envelope["events"])
        batches[-1].append(LogRecord(payload=orjson.dumps(envelope), event_count=count, received_at_ms=0,
                                     headers={k.lower(): v for k, v in headers.items()}, offset=offset))
        in_batch += count
    return batches


def cpu_us_per_event(batches: list[list[LogRecord]], pseudonyms: Pseudonymiser | None) -> tuple[float, float]:
    """CPU µs per event of prepare_batch, and wall µs per event of its transform stage alone."""
    events = sum(r.event_count for batch in batches for r in batch)
    transform_us = 0
    started = time.process_time()
    for batch in batches:
        with collector_paused():
            prepared = prepare_batch(batch, now_ms=0, config_version="bench", pseudonyms=pseudonyms)
        transform_us += prepared.stage_micros.get("transform", 0)
    return (time.process_time() - started) * 1e6 / events, transform_us / events


def distinct_ids(batches: list[list[LogRecord]]) -> dict[str, float]:
    learners, devices = [], []
    for batch in batches:
        events = [e for r in batch for e in orjson.loads(r.payload)["events"]]
        learners.append(len({e["actor"]["id"] for e in events}))
        devices.append(len({e["context"].get("did") for e in events}))
    return {"learners_per_batch": statistics.mean(learners), "devices_per_batch": statistics.mean(devices)}


def run(events: int, request_events: int, batch_events: int, rounds: int, seed: int) -> dict:
    compile_all()
    tune_gc()
    batches = pipeline_batches(events, request_events, batch_events, seed)
    with tempfile.TemporaryDirectory(prefix="cohort-transform-cost-") as directory:
        settings = Settings(data_dir=Path(directory))
        pseudonyms = PseudonymiserSource(settings, load_or_create_secrets(settings)).open()
        try:
            uncached = replace(pseudonyms, cache=None)  # every id asked of the vault, every batch
            cpu_us_per_event(batches, None)  # warm-up: caches, allocator
            cold, cold_stage = cpu_us_per_event(batches, pseudonyms)  # every id new: vault entries made
            without, with_, stage, without_cache, stage_without_cache = [], [], [], [], []
            for _ in range(rounds):  # interleaved, so the machine's noise falls on all alike
                without.append(cpu_us_per_event(batches, None)[0])
                cpu, transform = cpu_us_per_event(batches, pseudonyms)
                with_.append(cpu)
                stage.append(transform)
                cpu, transform = cpu_us_per_event(batches, uncached)
                without_cache.append(cpu)
                stage_without_cache.append(transform)
        finally:
            pseudonyms.resolver.close()  # type: ignore[attr-defined]
    base, transformed = statistics.median(without), statistics.median(with_)
    return {"events": events, "request_events": request_events, "batch_events": batch_events,
            "batches": len(batches), **distinct_ids(batches), "rounds": rounds,
            "us_per_event_without": round(base, 2), "us_per_event_with": round(transformed, 2),
            "us_per_event_with_cold_vault": round(cold, 2), "ratio": round(transformed / base, 3),
            "us_per_event_without_min": round(min(without), 2), "us_per_event_with_min": round(min(with_), 2),
            "ratio_of_minima": round(min(with_) / min(without), 3),
            "transform_stage_us_per_event": round(statistics.median(stage), 2),
            "transform_stage_us_per_event_cold_vault": round(cold_stage, 2),
            "ratio_cold_vault": round(cold / base, 3),
            "us_per_event_with_no_cache": round(statistics.median(without_cache), 2),
            "ratio_no_cache": round(statistics.median(without_cache) / base, 3),
            "transform_stage_us_per_event_no_cache": round(statistics.median(stage_without_cache), 2),
            "runs_without": [round(v, 2) for v in without], "runs_with": [round(v, 2) for v in with_],
            "runs_with_no_cache": [round(v, 2) for v in without_cache]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--request-events", type=int, default=500, help="events per request (the bench's)")
    parser.add_argument("--batch-events", type=int, default=5000, help="events per pipeline batch (the default)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    print(json.dumps(run(args.events, args.request_events, args.batch_events, args.rounds, args.seed), indent=2))


if __name__ == "__main__":
    main()
