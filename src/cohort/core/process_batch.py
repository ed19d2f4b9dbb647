"""The pipeline core over a batch of log records: pure, no I/O.

Two halves, so the heavy one can run in worker processes:
- `prepare_batch` (stateless but for the pseudonym resolver, CPU-heavy): extract → validate →
  (denorm: a seam for the dataset-config work) → transform (learner and device ids replaced by
  pseudonyms) → route, giving the rows as one Arrow table.
- `finish_batch` (needs the dedup state, cheap): drops requests retried with a msgid
  already committed (batch dedup), then rows whose mid is already stored or repeats
  within the batch (event dedup).
Dedup runs last because its state must reflect only what the store has committed;
an event that is both a duplicate and unroutable is quarantined, and either way it
is accounted for. The outcome accounts for every event the API counted at ingest:
stored + failed + duplicates == events_in, checked here, because a mismatch would
be a silent loss.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from cohort.core.errors import ErrorCode, TerminalFault, TransientFault
from cohort.core.log_record import LogRecord
from cohort.core.original_payload import original_event_text
from cohort.core.stages import CORE_STAGE, STORE_STAGE  # the runner books isolated failures at these
from cohort.core.stages.batch_dedup import RequestKey, SeenKeys, duplicate_requests, request_keys
from cohort.core.stages.dedup import SeenMids, dedup
from cohort.core.stages.extract import extract
from cohort.core.stages.route import INGEST_BATCH_SCHEMA, TELEMETRY_SCHEMA, ingest_batch_rows, route
from cohort.core.stages.transform import Pseudonymiser, protect_quarantined, pseudonymise, pseudonymise_headers
from cohort.core.stages.tenant import check_tenant
from cohort.core.stages.validate import validate
from cohort.core.work_item import FailedEvent, WorkItem, describe_failure, failed_from_item



class AccountingError(TerminalFault):
    """The stages lost or invented events: never commit such a batch, and stop (it is Cohort's bug,
    and every batch after it may be affected)."""


@dataclass(slots=True)
class PreparedBatch:
    rows: pa.Table
    failed: list[FailedEvent]
    events_in: int
    first_offset: int
    last_offset: int
    stage_micros: dict[str, int] = field(default_factory=dict)
    requests: pa.Table = field(default_factory=INGEST_BATCH_SCHEMA.empty_table)  # one row per log record
    partition: int = 0  # the log partition of every record in the batch
    request_keys: list[RequestKey] = field(default_factory=list)  # batch dedup's view of each record


@dataclass(slots=True)
class BatchOutcome:
    rows: pa.Table
    failed: list[FailedEvent]
    duplicates: int
    events_in: int
    first_offset: int
    last_offset: int
    stage_micros: dict[str, int] = field(default_factory=dict)
    requests: pa.Table = field(default_factory=INGEST_BATCH_SCHEMA.empty_table)
    partition: int = 0
    duplicate_requests: int = 0  # requests dropped whole as retries (their events are in `duplicates`)
    new_request_keys: list[str] = field(default_factory=list)  # batch dedup keys to remember once committed

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


PART_EVENTS = 1_000  # events parsed at once: a batch's parsed events are its worker's peak memory


def prepare_batch(records: list[LogRecord], *, now_ms: int, config_version: str,
                  pseudonyms: Pseudonymiser | None = None) -> PreparedBatch:
    """The stored rows, quarantined events and request rows of these records. Without `pseudonyms`
    (tests and tools only: every pipeline passes one) identifiers are stored as sent.

    Prepared in parts of about PART_EVENTS events (whole records), whose rows are joined at the end: the parsed
    events of a whole 5,000-event batch held at once were most of a worker's memory (54 MB of Python objects,
    tracemalloc), and the stages treat each record apart, so the result is the same."""
    parts = [_prepare_part(part, now_ms=now_ms, config_version=config_version, pseudonyms=pseudonyms)
             for part in _parts(records, PART_EVENTS)]
    if len(parts) == 1:
        return parts[0]
    micros: dict[str, int] = {}
    for part in parts:
        for stage, us in part.stage_micros.items():
            micros[stage] = micros.get(stage, 0) + us
    return PreparedBatch(rows=pa.concat_tables([p.rows for p in parts]),
                         failed=[f for p in parts for f in p.failed], events_in=sum(p.events_in for p in parts),
                         first_offset=records[0].offset, last_offset=records[-1].offset, stage_micros=micros,
                         requests=pa.concat_tables([p.requests for p in parts]),
                         partition=_one_partition(records),
                         request_keys=[key for p in parts for key in p.request_keys])


def _parts(records: list[LogRecord], events: int) -> list[list[LogRecord]]:
    """`records` in order, cut into runs of whole records of about `events` events each."""
    out: list[list[LogRecord]] = []
    current: list[LogRecord] = []
    held = 0
    for record in records:
        if current and held + record.event_count > events:
            out.append(current)
            current, held = [], 0
        current.append(record)
        held += record.event_count
    if current:
        out.append(current)
    return out


def _prepare_part(records: list[LogRecord], *, now_ms: int, config_version: str,
                  pseudonyms: Pseudonymiser | None = None) -> PreparedBatch:
    """prepare_batch of a part of a batch."""
    micros: dict[str, int] = {}

    started = time.perf_counter_ns()
    items, failed = extract(records)
    micros["extract"] = _since(started)

    started = time.perf_counter_ns()
    items, invalid = validate(items)
    failed += invalid
    items, foreign = check_tenant(items)  # an ingestor's key writes its own tenant's events only
    failed += foreign
    micros["validate"] = _since(started)

    # Seam: denormalisation (master data) plugs in here, before transform, with the dataset-config issue.

    stage_trace: dict[str, dict[str, object]] = {name: {"ok": True, "batch_us": us} for name, us in micros.items()}
    stage_trace["dedup"] = {"ok": True}
    stage_trace["route"] = {"ok": True, "table": "telemetry"}
    stage_trace["denorm"] = {"ok": False, "skipped": "not configured"}
    stage_trace["transform"] = {"ok": False, "skipped": "not configured"}
    pseudonymised: dict[int, int] | None = None  # values pseudonymised per log offset, when transform ran
    received = records
    if pseudonyms is not None:
        started = time.perf_counter_ns()
        transformed = pseudonymise(items, records, pseudonyms)
        items, records, pseudonymised = transformed.items, transformed.records, transformed.pseudonymised
        failed = protect_quarantined(failed + transformed.failed, received, pseudonyms)
        micros["transform"] = _since(started)
        stage_trace["transform"] = {"ok": True, "batch_us": micros["transform"]}
    traces: dict[int, str] = {}  # one trace text per log record: its events share it

    def trace_of(item: WorkItem) -> str:
        record = item.record
        text = traces.get(record.offset)
        if text is None:
            stages = stage_trace
            if pseudonymised is not None:
                stages = {**stage_trace, "transform": {**stage_trace["transform"],
                                                       "pseudonymised": pseudonymised.get(record.offset, 0)}}
            text = traces[record.offset] = orjson.dumps({
                "source": record.source,
                "ingested_at": record.received_at_ms,
                "processed_at": now_ms,
                "log_offset": record.offset,  # the request's msgid and headers: ingest_batches, by log_offset
                "config_version": config_version,
                "stages": stages,
            }).decode()
        return text

    started = time.perf_counter_ns()
    columns, misrouted = route(items, trace_of)
    if pseudonyms is not None and misrouted:  # events transformed already, unless re-read exactly from the record
        misrouted = protect_quarantined(misrouted, received, pseudonyms, transformed=True)
    failed += misrouted
    rows = pa.Table.from_pydict(columns, schema=TELEMETRY_SCHEMA)
    micros["route"] = _since(started)

    return PreparedBatch(rows=rows, failed=failed, events_in=sum(r.event_count for r in records),
                         first_offset=records[0].offset, last_offset=records[-1].offset, stage_micros=micros,
                         requests=ingest_batch_rows(records), partition=_one_partition(records),
                         request_keys=request_keys(records))


def finish_batch(prepared: PreparedBatch, seen: SeenMids, seen_requests: SeenKeys | None = None) -> BatchOutcome:
    """Dedup a prepared batch against committed state: retried requests (`seen_requests`, by msgid)
    first, then events (`seen`, by mid). Without `seen_requests`, only retries within the batch are
    dropped."""
    started = time.perf_counter_ns()
    rows, failed = prepared.rows, prepared.failed
    retried = duplicate_requests(prepared.request_keys, seen_requests)
    retried_events = 0
    if retried:
        offsets = {r.offset for r in retried}
        retried_events = sum(r.event_count for r in retried)
        rows = rows.filter(pc.invert(pc.is_in(rows.column("log_offset"), value_set=pa.array(offsets, pa.int64()))))
        failed = [f for f in failed if f.log_offset not in offsets]
    micros = {**prepared.stage_micros, "batch_dedup": _since(started)}
    started = time.perf_counter_ns()
    rows, duplicates = dedup(rows, seen)
    micros["dedup"] = _since(started)
    retried_offsets = {r.offset for r in retried}
    new_keys = [r.key for r in prepared.request_keys if r.key is not None and r.offset not in retried_offsets]
    outcome = BatchOutcome(rows=rows, failed=failed, duplicates=duplicates + retried_events,
                           events_in=prepared.events_in, first_offset=prepared.first_offset,
                           last_offset=prepared.last_offset, stage_micros=micros, requests=prepared.requests,
                           partition=prepared.partition, duplicate_requests=len(retried), new_request_keys=new_keys)
    accounted = outcome.stored + outcome.failed_count + outcome.duplicates
    if accounted != outcome.events_in:
        raise AccountingError(
            f"offsets {outcome.first_offset}..{outcome.last_offset}: {outcome.events_in} events in, "
            f"{accounted} accounted for (stored {outcome.stored}, failed {outcome.failed_count}, "
            f"duplicate {outcome.duplicates})")
    return outcome


def process_batch(records: list[LogRecord], seen: SeenMids, *, now_ms: int, config_version: str,
                  seen_requests: SeenKeys | None = None, pseudonyms: Pseudonymiser | None = None) -> BatchOutcome:
    """Both halves in one call: the embedded runner's inline path and the tests' entry point."""
    prepared = prepare_batch(records, now_ms=now_ms, config_version=config_version, pseudonyms=pseudonyms)
    return finish_batch(prepared, seen, seen_requests)


def prepare_isolated(record: LogRecord, *, now_ms: int, config_version: str, prepare=None,
                     pseudonyms: Pseudonymiser | None = None) -> PreparedBatch:
    """Prepare a record that failed as a whole, one event at a time, so only what fails alone is lost
    to the quarantine (code ERR_PIPELINE_POISON, stage `core`, the exception as message).

    Each event becomes a one-event record with the same offset, headers and times, run through the
    same `prepare` as a normal batch (the runner passes its own), then the parts are joined back
    into one batch for the record, accounted for as the API counted it. Faults (a resolver away, a
    broken invariant) are never blamed on an event: they propagate.
    """
    prepare = prepare or prepare_batch
    items, failed = extract([record])
    if not items:  # the payload itself is unreadable, or holds no object events: extract said why
        return _prepared(record, TELEMETRY_SCHEMA.empty_table(), _protected(failed, record, pseudonyms), pseudonyms)
    failed = _protected(failed, record, pseudonyms)
    parts = [TELEMETRY_SCHEMA.empty_table()]
    for item in items:
        text = original_event_text(record, item.index, item.event)
        alone = replace(record, payload=b'{"events":[' + text.encode() + b"]}", event_count=1)
        try:
            part = prepare([alone], now_ms=now_ms, config_version=config_version, pseudonyms=pseudonyms)
        except (TransientFault, TerminalFault):
            raise
        except Exception as exc:
            poison = replace(failed_from_item(item, ErrorCode.PIPELINE_POISON, CORE_STAGE, describe_failure(exc)),
                             payload=text)
            failed += _protected([poison], record, pseudonyms)
            continue
        parts.append(part.rows)
        failed += part.failed
    return _prepared(record, pa.concat_tables(parts), failed, pseudonyms, _channel_of(items[0]))


def quarantine_record(record: LogRecord, code: ErrorCode, stage: str, message: str,
                      pseudonyms: Pseudonymiser | None = None) -> PreparedBatch:
    """The last resort for a record nothing can process: all its events quarantined as one row, with the
    request's identifiers pseudonymised (or its bytes sealed, when they cannot be), so it can be replayed
    once the cause is fixed. Its request row's device header is pseudonymised all the same (`pseudonyms`)."""
    failed = FailedEvent(code=code, stage=stage, message=message, payload=record.payload.decode("utf-8", "replace"),
                         log_offset=record.offset, source=record.source, event_count=record.event_count)
    return _prepared(record, TELEMETRY_SCHEMA.empty_table(), _protected([failed], record, pseudonyms), pseudonyms)


def _protected(failed: list[FailedEvent], record: LogRecord, pseudonyms: Pseudonymiser | None) -> list[FailedEvent]:
    """Quarantined rows made here (not by `prepare`, which protects its own) with no clear id left."""
    return protect_quarantined(failed, [record], pseudonyms) if pseudonyms is not None else failed


def _prepared(record: LogRecord, rows: pa.Table, failed: list[FailedEvent], pseudonyms: Pseudonymiser | None,
              events_channel: object = None) -> PreparedBatch:
    """A one-record batch; its request row carries the device header's pseudonym, under the record's
    X-Channel-Id header's tenant, else its events' channel (when known), else the header is dropped."""
    stored = [record]
    if pseudonyms is not None:
        tenants = {record.offset: events_channel} if isinstance(events_channel, str) else None
        stored = pseudonymise_headers(stored, pseudonyms, tenants)
    return PreparedBatch(rows=rows, failed=failed, events_in=record.event_count, first_offset=record.offset,
                         last_offset=record.offset, requests=ingest_batch_rows(stored), partition=record.partition,
                         request_keys=request_keys([record]))


def _channel_of(item: WorkItem) -> object:
    context = item.event.get("context")
    return context.get("channel") if isinstance(context, dict) else None


def _one_partition(records: list[LogRecord]) -> int:
    """A batch's offsets are a range of one partition: mixing partitions would make them meaningless."""
    partition = records[0].partition
    if any(r.partition != partition for r in records):
        raise ValueError("a batch must hold records of one log partition")
    return partition


def _since(started_ns: int) -> int:
    return (time.perf_counter_ns() - started_ns) // 1000


def after_offset(prepared: PreparedBatch, offset: int) -> PreparedBatch | None:
    """The part of a prepared batch whose records lie after `offset` (None when nothing does).

    A scale-out store writer may receive the same log records twice (a worker that crashed after
    publishing, before committing, is replayed by another with other batch boundaries); it keeps
    only what lies after the store's position in that partition, so nothing is written twice."""
    if prepared.last_offset <= offset:
        return None
    if prepared.first_offset > offset:
        return prepared
    kept = [r for r in prepared.request_keys if r.offset > offset]
    rows = prepared.rows.filter(pc.greater(prepared.rows.column("log_offset"), offset))
    requests = prepared.requests.filter(pc.greater(prepared.requests.column("log_offset"), offset))
    return replace(prepared, rows=rows, failed=[f for f in prepared.failed if f.log_offset > offset],
                   events_in=sum(r.event_count for r in kept), first_offset=min(r.offset for r in kept),
                   requests=requests, request_keys=kept)
