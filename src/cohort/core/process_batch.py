"""The pipeline core over a batch of log records: pure, no I/O.

Two halves, so the heavy one can run in worker processes:
- `prepare_batch` (stateless, CPU-heavy): extract → validate → (denorm, transform:
  seams for the dataset-config work) → route, giving the rows as one Arrow table.
- `finish_batch` (needs the dedup state, cheap): drops rows whose mid is already
  stored or repeats within the batch.
Dedup runs last because its state must reflect only what the store has committed;
an event that is both a duplicate and unroutable is quarantined, and either way it
is accounted for. The outcome accounts for every event the API counted at ingest:
stored + failed + duplicates == events_in, checked here, because a mismatch would
be a silent loss.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import orjson
import pyarrow as pa

from cohort.core.log_record import LogRecord
from cohort.core.stages.dedup import SeenMids, dedup
from cohort.core.stages.extract import extract
from cohort.core.stages.route import TELEMETRY_SCHEMA, route
from cohort.core.stages.validate import validate
from cohort.core.work_item import FailedEvent, WorkItem


class AccountingError(RuntimeError):
    """The stages lost or invented events: never commit such a batch."""


@dataclass(slots=True)
class PreparedBatch:
    rows: pa.Table
    failed: list[FailedEvent]
    events_in: int
    first_offset: int
    last_offset: int
    stage_micros: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class BatchOutcome:
    rows: pa.Table
    failed: list[FailedEvent]
    duplicates: int
    events_in: int
    first_offset: int
    last_offset: int
    stage_micros: dict[str, int] = field(default_factory=dict)

    @property
    def stored(self) -> int:
        return self.rows.num_rows

    @property
    def stored_mids(self) -> list[str]:
        return self.rows.column("mid").to_pylist()

    @property
    def failed_count(self) -> int:
        return sum(f.event_count for f in self.failed)

    @property
    def failed_by_stage(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for f in self.failed:
            counts[f.stage] = counts.get(f.stage, 0) + f.event_count
        return counts


def prepare_batch(records: list[LogRecord], *, now_ms: int, config_version: str) -> PreparedBatch:
    micros: dict[str, int] = {}

    started = time.perf_counter_ns()
    items, failed = extract(records)
    micros["extract"] = _since(started)

    started = time.perf_counter_ns()
    items, invalid = validate(items)
    failed += invalid
    micros["validate"] = _since(started)

    # Seams: denormalisation (master data) and transformation (pseudonymise/mask)
    # plug in here, between validate and route, with the dataset-config issue.

    stage_trace = {name: {"ok": True, "batch_us": us} for name, us in micros.items()}
    stage_trace["dedup"] = {"ok": True}
    stage_trace["route"] = {"ok": True, "table": "telemetry"}
    stage_trace["denorm"] = {"ok": False, "skipped": "not configured"}
    stage_trace["transform"] = {"ok": False, "skipped": "not configured"}
    traces: dict[int, str] = {}  # one trace text per log record: its events share it

    def trace_of(item: WorkItem) -> str:
        record = item.record
        text = traces.get(record.offset)
        if text is None:
            text = traces[record.offset] = orjson.dumps({
                "source": record.source,
                "ingested_at": record.received_at_ms,
                "processed_at": now_ms,
                "log_offset": record.offset,
                "headers": record.headers,
                "config_version": config_version,
                "stages": stage_trace,
            }).decode()
        return text

    started = time.perf_counter_ns()
    columns, misrouted = route(items, trace_of)
    failed += misrouted
    rows = pa.Table.from_pydict(columns, schema=TELEMETRY_SCHEMA)
    micros["route"] = _since(started)

    return PreparedBatch(rows=rows, failed=failed, events_in=sum(r.event_count for r in records),
                         first_offset=records[0].offset, last_offset=records[-1].offset, stage_micros=micros)


def finish_batch(prepared: PreparedBatch, seen: SeenMids) -> BatchOutcome:
    started = time.perf_counter_ns()
    rows, duplicates = dedup(prepared.rows, seen)
    micros = {**prepared.stage_micros, "dedup": _since(started)}
    outcome = BatchOutcome(rows=rows, failed=prepared.failed, duplicates=duplicates, events_in=prepared.events_in,
                           first_offset=prepared.first_offset, last_offset=prepared.last_offset, stage_micros=micros)
    accounted = outcome.stored + outcome.failed_count + outcome.duplicates
    if accounted != outcome.events_in:
        raise AccountingError(
            f"offsets {outcome.first_offset}..{outcome.last_offset}: {outcome.events_in} events in, "
            f"{accounted} accounted for (stored {outcome.stored}, failed {outcome.failed_count}, "
            f"duplicate {outcome.duplicates})")
    return outcome


def process_batch(records: list[LogRecord], seen: SeenMids, *, now_ms: int, config_version: str) -> BatchOutcome:
    """Both halves in one call: the embedded runner's inline path and the tests' entry point."""
    return finish_batch(prepare_batch(records, now_ms=now_ms, config_version=config_version), seen)


def _since(started_ns: int) -> int:
    return (time.perf_counter_ns() - started_ns) // 1000
