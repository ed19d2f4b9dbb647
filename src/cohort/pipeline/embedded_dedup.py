"""The embedded footprint's dedup state: two exact on-disk indexes in the data directory, one of event
mids and one of request keys (channel/msgid), opened so that they hold every key the store committed
within the dedup period.

The store is the truth; an index can fall behind it in two ways, both repaired here before the
pipeline starts:
- The process died between the store's commit of a batch and the index's `add` (the runner tells the
  state only after the commit). The store records the last batch's offsets and commit time, so that
  batch's keys are added again with the time the runner would have given them; adding a key already
  held keeps its first time, so this costs one small read when nothing was lost. Every `add` is synced
  before the next batch is deduplicated, so no other batch can be missing, after kill -9 or power loss.
- The index directory is missing while the store holds data (an upgrade from the in-memory window, or
  an operator deleted it). It is rebuilt from the store: the mids stored, and the request keys of the
  requests acknowledged, within the period, each with the time its request was acknowledged (a little
  before the commit time the runner uses, so such a key is forgotten earlier by the pipeline's lag at
  the time, usually well under a second). The rows stream in log order, in chunks. The rebuild writes
  into `<directory>.tmp`, flushes it, and only then renames it into place: one cut short is finished by
  the next start, never taken for a complete index.
"""

from __future__ import annotations

import logging
import time
from itertools import groupby
from operator import itemgetter
from pathlib import Path
from typing import Callable, Iterable, Iterator

from cohort.core.log_record import LogRecord
from cohort.core.stages.batch_dedup import batch_key
from cohort.owner_only_files import sync_path
from cohort.state.rocksdb_dedup import DiskDedupIndex
from cohort.store.duckdb_store import DuckDbStore

log = logging.getLogger("cohort.node")

KeyRows = Callable[..., Iterator[list[tuple[str, int]]]]  # (since_ms, after_offset, through_offset) → chunks


def open_dedup_states(store: DuckDbStore, period_s: float, *, mid_path: Path, msgid_path: Path,
                      cache_bytes: int, clock: Callable[[], float] = time.time) -> dict[str, DiskDedupIndex]:
    """The runner's dedup states (keyword arguments of PipelineRunner), complete with respect to the store."""
    states: dict[str, DiskDedupIndex] = {}
    try:
        for name, path, rows in (("mid_state", mid_path, lambda *a: _mid_rows(store, *a)),
                                 ("request_state", msgid_path, lambda *a: _request_rows(store, *a))):
            states[name] = _open_index(store, path, rows, period_s, cache_bytes, clock)
    except BaseException:
        for state in states.values():
            state.close()
        raise
    return states


def _open_index(store: DuckDbStore, path: Path, rows: KeyRows, period_s: float, cache_bytes: int,
                clock: Callable[[], float]) -> DiskDedupIndex:
    rebuild = not path.exists() and store.counts().last_offset > 0
    if rebuild:
        _rebuild(store, path, rows, period_s, cache_bytes, clock)
    index = DiskDedupIndex(path, period_s, cache_bytes=cache_bytes, clock=clock)
    try:
        if not rebuild:  # a rebuilt index holds the last batch already (by the time it was acknowledged)
            _add_last_batch(store, index, rows)
    except BaseException:
        index.close()
        raise
    return index


def _add_last_batch(store: DuckDbStore, index: DiskDedupIndex, rows: KeyRows) -> None:
    """The keys of the last committed batch, added again at their commit time: a no-op unless the
    process died between the store's commit and the index's add."""
    batch = store.last_batch()
    if batch is None:
        return
    keys = list(dict.fromkeys(key for chunk in rows(0, batch.first_offset - 1, batch.last_offset) for key, _ in chunk))
    held = index.seen(keys)
    missing = [key for key in keys if key not in held]
    if missing:
        # (a retried request's key is among them only if its first request's key expired since the crash)
        log.warning("dedup index %s lacked %d keys of the last batch the store committed (log offsets %d..%d): "
                    "added them again", index.path, len(missing), batch.first_offset, batch.last_offset)
        index.add(missing, batch.at_ms)


def _rebuild(store: DuckDbStore, path: Path, rows: KeyRows, period_s: float, cache_bytes: int,
             clock: Callable[[], float]) -> None:
    started = time.monotonic()
    building = path.with_name(path.name + ".tmp")
    since_ms = int((clock() - period_s) * 1000)
    log.warning("dedup index %s is missing but the store holds data: rebuilding it from the store's keys of the "
                "last %.1f days into %s", path, period_s / 86400, building)
    # the rebuilt index holds every key committed since the store's first request (or the whole period)
    created_ms = store.first_received_ms() or int(clock() * 1000)
    index = DiskDedupIndex(building, period_s, cache_bytes=cache_bytes, clock=clock, sync=False,
                           created_ms=created_ms)
    added = 0
    try:
        for chunk in rows(since_ms, 0, None):
            added += _add_by_time(index, chunk)
        index.compact()  # flushed to synced table files: nothing of it lives only in an unsynced log
    finally:
        index.close()
    building.rename(path)
    sync_path(path.parent)
    log.warning("dedup index %s rebuilt from the store: %d keys in %.1f s", path, added, time.monotonic() - started)


def _add_by_time(index: DiskDedupIndex, chunk: list[tuple[str, int]]) -> int:
    """Add keys in log order, one `add` per run of keys that share a time (one request's, usually)."""
    for at_ms, run in groupby(chunk, key=itemgetter(1)):
        index.add([key for key, _ in run], at_ms)
    return len(chunk)


def _mid_rows(store: DuckDbStore, since_ms: int, after_offset: int,
              through_offset: int | None) -> Iterator[list[tuple[str, int]]]:
    return store.stored_mids(since_ms, after_offset, through_offset)


def _request_rows(store: DuckDbStore, since_ms: int, after_offset: int,
                  through_offset: int | None) -> Iterator[list[tuple[str, int]]]:
    for chunk in store.request_msgids(since_ms, after_offset, through_offset):
        yield list(_request_keys(chunk))


def _request_keys(chunk: Iterable[tuple[str | None, str, int]]) -> Iterator[tuple[str, int]]:
    """Batch dedup's key of each stored request, made by the same function the pipeline uses."""
    for channel, msgid, at_ms in chunk:
        headers = {"msgid": msgid} if channel is None else {"msgid": msgid, "x-channel-id": channel}
        key = batch_key(LogRecord(payload=b"", event_count=0, headers=headers))
        if key is not None:
            yield key, at_ms



