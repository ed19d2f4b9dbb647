"""One pass of the pipeline core over a batch of log records: pure, no I/O.

extract → validate → dedup → (denorm, transform: seams for the dataset-config
work) → route. The outcome accounts for every event the API counted at ingest:
stored + failed + duplicates == events_in, checked here, because a mismatch
would be a silent loss.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from cohort.core.log_record import LogRecord
from cohort.core.stages.dedup import SeenMids, dedup
from cohort.core.stages.extract import extract
from cohort.core.stages.route import route
from cohort.core.stages.validate import validate
from cohort.core.work_item import FailedEvent, WorkItem


class AccountingError(RuntimeError):
    """The stages lost or invented events: never commit such a batch."""


@dataclass(slots=True)
class BatchOutcome:
    rows: dict[str, list[Any]]
    failed: list[FailedEvent]
    duplicates: int
    events_in: int
    first_offset: int
    last_offset: int
    stage_micros: dict[str, int] = field(default_factory=dict)

    @property
    def stored(self) -> int:
        return len(self.rows["mid"])

    @property
    def failed_count(self) -> int:
        return sum(f.event_count for f in self.failed)

    @property
    def failed_by_stage(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for f in self.failed:
            counts[f.stage] = counts.get(f.stage, 0) + f.event_count
        return counts


def process_batch(records: list[LogRecord], seen: SeenMids, *, now_ms: int, config_version: str) -> BatchOutcome:
    micros: dict[str, int] = {}

    started = time.perf_counter_ns()
    items, failed = extract(records)
    micros["extract"] = _since(started)

    started = time.perf_counter_ns()
    items, invalid = validate(items)
    failed += invalid
    micros["validate"] = _since(started)

    started = time.perf_counter_ns()
    items, duplicates = dedup(items, seen)
    micros["dedup"] = _since(started)

    # Seams: denormalisation (master data) and transformation (pseudonymise/mask)
    # plug in here, between dedup and route, with the dataset-config issue.

    stage_trace = {name: {"ok": True, "batch_us": us} for name, us in micros.items()}
    stage_trace["denorm"] = {"ok": False, "skipped": "not configured"}
    stage_trace["transform"] = {"ok": False, "skipped": "not configured"}

    def trace_of(item: WorkItem) -> str:
        record = item.record
        return orjson.dumps({
            "source": record.source,
            "ingested_at": record.received_at_ms,
            "processed_at": now_ms,
            "log_offset": record.offset,
            "headers": record.headers,
            "schema": item.schema,
            "config_version": config_version,
            "stages": stage_trace,
        }).decode()

    started = time.perf_counter_ns()
    rows, misrouted = route(items, trace_of)
    failed += misrouted
    micros["route"] = _since(started)

    outcome = BatchOutcome(
        rows=rows, failed=failed, duplicates=duplicates,
        events_in=sum(r.event_count for r in records),
        first_offset=records[0].offset, last_offset=records[-1].offset, stage_micros=micros,
    )
    accounted = outcome.stored + outcome.failed_count + outcome.duplicates
    if accounted != outcome.events_in:
        raise AccountingError(
            f"offsets {outcome.first_offset}..{outcome.last_offset}: {outcome.events_in} events in, "
            f"{accounted} accounted for (stored {outcome.stored}, failed {outcome.failed_count}, "
            f"duplicate {outcome.duplicates})")
    return outcome


def _since(started_ns: int) -> int:
    return (time.perf_counter_ns() - started_ns) // 1000
