"""A prepared batch cut by log record, and a part the store refused: pure, no I/O.

A scale-out store writer holds prepared batches, not log records: the workers ran the core and
published its result. When the store refuses a batch for a reason of the batch's own, the writer
writes its halves (`halves`), and theirs, down to the record the store refuses, which it quarantines
(`rejected_by_store`); after a crash it tells the dedup state again what lies at or before the
store's position (`through_offset`, the other side of `after_offset`). Each part is a prepared batch
of its own, accounted for as the API counted its records.
"""

from __future__ import annotations

from dataclasses import replace

import pyarrow as pa
import pyarrow.compute as pc

from cohort.core.errors import ErrorCode
from cohort.core.process_batch import BatchOutcome, PreparedBatch, after_offset
from cohort.core.stages import STORE_STAGE
from cohort.core.stages.route import TELEMETRY_SCHEMA
from cohort.core.work_item import FailedEvent


def through_offset(prepared: PreparedBatch, offset: int) -> PreparedBatch | None:
    """The part of a prepared batch whose records lie at or before `offset` (None when none does)."""
    if prepared.first_offset > offset:
        return None
    if prepared.last_offset <= offset:
        return prepared
    return _part(prepared, {r.offset for r in prepared.request_keys if r.offset <= offset})


def halves(prepared: PreparedBatch) -> tuple[PreparedBatch, PreparedBatch]:
    """The batch's records in two halves, in log order (the first holds the smaller half): how a writer
    narrows a batch the store refuses down to the record it refuses, in few writes."""
    offsets = sorted(r.offset for r in prepared.request_keys)
    if len(offsets) < 2:
        raise ValueError("a batch of one record has no halves")
    cut = offsets[len(offsets) // 2 - 1]
    first, second = through_offset(prepared, cut), after_offset(prepared, cut)
    assert first is not None and second is not None
    return first, second


def rejected_by_store(outcome: BatchOutcome, message: str) -> BatchOutcome:
    """The outcome with every event it would have stored quarantined instead, because the store refused
    it every time: ERR_STORE_REJECTED, stage `store`, `message` saying why, the event's JSON text as
    received, its ids and offset. Duplicates stay duplicates and events the core quarantined keep their
    own reason; request rows and keys stay (what the client sent is still known), so the part is
    accounted for as before."""
    rows = outcome.rows
    requests = outcome.requests
    sources = dict(zip(requests.column("log_offset").to_pylist(), requests.column("source").to_pylist()))
    columns = [rows.column(name).to_pylist() for name in ("event", "mid", "eid", "channel", "log_offset")]
    rejected = [FailedEvent(code=ErrorCode.STORE_REJECTED, stage=STORE_STAGE, message=message, payload=event,
                            log_offset=offset, source=sources.get(offset) or "", mid=mid, eid=eid, channel=channel)
                for event, mid, eid, channel, offset in zip(*columns)]
    return replace(outcome, rows=TELEMETRY_SCHEMA.empty_table(), failed=[*outcome.failed, *rejected])


def _part(prepared: PreparedBatch, offsets: set[int]) -> PreparedBatch | None:
    kept = [r for r in prepared.request_keys if r.offset in offsets]
    if not kept:
        return None
    wanted = pa.array(sorted(offsets), pa.int64())
    rows = prepared.rows.filter(pc.is_in(prepared.rows.column("log_offset"), value_set=wanted))
    requests = prepared.requests.filter(pc.is_in(prepared.requests.column("log_offset"), value_set=wanted))
    return replace(prepared, rows=rows, failed=[f for f in prepared.failed if f.log_offset in offsets],
                   events_in=sum(r.event_count for r in kept), first_offset=min(r.offset for r in kept),
                   last_offset=max(r.offset for r in kept), requests=requests, request_keys=kept)
