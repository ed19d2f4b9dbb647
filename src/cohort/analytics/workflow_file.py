"""File mode of the workflow summariser: a raw telemetry file in, one summary a line out, no server.

Raw lake files are in arrival order, not in event-time order (a device syncs hours of events at once), and
the summaries are defined over each device's events in `ets` order. So the file is read once, line by line,
into an on-disk SQLite sort (memory stays constant in the number of lines), then read back device by device
in `ets` order; only one device's open summaries are in memory at a time. `presorted=True` skips the sort
for files already in time order and streams them through the incremental summariser instead.
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from cohort.analytics.summary_record import record_bytes
from cohort.analytics.workflow_events import DEFAULT_APP_ID, WorkflowEvent, normalise, unwrap
from cohort.analytics.workflow_sessions import SummariserStats, WorkflowSummariser

SKIP_BLANK = "blank line"
SKIP_NOT_JSON = "not JSON"
#: How often (in event time) a presorted stream ends devices silent for longer than the session break.
_IDLE_SWEEP_MS = 60_000


@dataclass
class FileSummaryReport:
    """Counts of one run: lines_read = lines with events + skipped_lines; events_found = stats.events_in."""

    lines_read: int = 0
    skipped_lines: Counter[str] = field(default_factory=Counter)
    events_found: int = 0
    stats: SummariserStats = field(default_factory=SummariserStats)
    summaries_written: int = 0


def _events_of_lines(lines: IO[bytes], report: FileSummaryReport) -> Iterator[object]:
    for line in lines:
        report.lines_read += 1
        if not line.strip():
            report.skipped_lines[SKIP_BLANK] += 1
            continue
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError:
            report.skipped_lines[SKIP_NOT_JSON] += 1
            continue
        events = unwrap(value)
        report.events_found += len(events)
        yield from events


def _write(out: IO[bytes], records: list[dict[str, Any]], report: FileSummaryReport) -> None:
    for record in records:
        out.write(record_bytes(record) + b"\n")
    report.summaries_written += len(records)


def summarise_file(input_path: Path, output_path: Path, *, presorted: bool = False, lateness_ms: int = 0,
                   default_app_id: str = DEFAULT_APP_ID, tmp_dir: Path | None = None) -> FileSummaryReport:
    """Write the workflow summaries of `input_path` (JSON lines: events, batches, wrappers) to `output_path`."""
    report = FileSummaryReport()
    summariser = WorkflowSummariser(lateness_ms=lateness_ms, default_app_id=default_app_id)
    report.stats = summariser.stats
    with open(input_path, "rb") as lines, open(output_path, "wb") as out:
        if presorted:
            swept: int | None = None
            for raw in _events_of_lines(lines, report):
                event = _counted_event(raw, summariser.stats, default_app_id)
                if event is None:
                    continue
                _write(out, summariser.add_event(event), report)
                if swept is None or event.ets - swept >= _IDLE_SWEEP_MS:  # end devices silent for too long
                    if swept is not None:
                        _write(out, summariser.flush(event.ets), report)
                    swept = event.ets
        else:
            with tempfile.TemporaryDirectory(dir=tmp_dir, prefix="cohort-summarise-") as tmp:
                _sorted_run(lines, out, Path(tmp) / "sort.sqlite", summariser, report, default_app_id)
        _write(out, summariser.flush(), report)
    return report


def _counted_event(raw: object, stats: SummariserStats, default_app_id: str) -> WorkflowEvent | None:
    stats.events_in += 1
    event = normalise(raw, default_app_id)
    if isinstance(event, str):
        stats.skipped[event] += 1
        return None
    return event


def _raw_bytes(raw: object) -> bytes:
    try:
        return orjson.dumps(raw)
    except (orjson.JSONEncodeError, TypeError):  # it came from JSON text, so the standard encoder takes it
        return json.dumps(raw, separators=(",", ":"), default=repr).encode("utf-8", "replace")


def _sorted_run(lines: IO[bytes], out: IO[bytes], db_path: Path, summariser: WorkflowSummariser,
                report: FileSummaryReport, default_app_id: str) -> None:
    stats = summariser.stats
    db = sqlite3.connect(db_path)
    try:
        db.execute("PRAGMA journal_mode=OFF")
        db.execute("PRAGMA synchronous=OFF")
        db.execute("CREATE TABLE ev (k BLOB, ets INTEGER, seq INTEGER, raw BLOB)")
        batch: list[tuple[bytes, int, int, bytes]] = []
        for seq, raw in enumerate(_events_of_lines(lines, report)):
            event = _counted_event(raw, stats, default_app_id)
            if event is None:
                continue
            batch.append((orjson.dumps(list(event.key)), event.ets, seq, _raw_bytes(raw)))
            if len(batch) >= 10_000:
                db.executemany("INSERT INTO ev VALUES (?, ?, ?, ?)", batch)
                batch.clear()
        db.executemany("INSERT INTO ev VALUES (?, ?, ?, ?)", batch)
        current_key: bytes | None = None
        for key, raw_bytes in db.execute("SELECT k, raw FROM ev ORDER BY k, ets, seq"):
            if key != current_key:
                _write(out, summariser.flush(), report)  # the previous device is complete
                current_key = key
            stored = normalise(orjson.loads(raw_bytes), default_app_id)
            if isinstance(stored, WorkflowEvent):
                _write(out, summariser.add_event(stored), report)
    finally:
        db.close()
