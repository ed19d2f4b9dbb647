"""The embedded analytical store: one DuckDB file, written in Arrow batches."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import duckdb
import pyarrow as pa

from cohort.analytics import rollup_marks, rollup_tables, sketch_table, summary_table
from cohort.core.errors import CohortError, ErrorCode, first_line
from cohort.core.process_batch import BatchOutcome
from cohort.core.stages import FAILURE_STAGES
from cohort.owner_only_files import sync_path
from cohort.store.arrow_insert import append_arrow
from cohort.store.base import ForgetCounts, QueryResult, QueryTimeout, StoreCapabilities, StoreCounts
from cohort.store.query_results import VALUE_TOO_LARGE, FetchedRows, fetch_bounded, wrapped_sql
from cohort.store.query_watch import process_watch
from cohort.store.thread_priority import lower_threads_started_within

log = logging.getLogger("cohort.store.duckdb")

_DDL = """
CREATE TABLE IF NOT EXISTS telemetry (
    eid VARCHAR, ets TIMESTAMP, mid VARCHAR, actor_id VARCHAR, actor_type VARCHAR, channel VARCHAR,
    pdata_id VARCHAR, pdata_pid VARCHAR, pdata_ver VARCHAR, env VARCHAR, sid VARCHAR, did VARCHAR,
    object_id VARCHAR, object_type VARCHAR, object_ver VARCHAR, rollup JSON, edata JSON, event JSON,
    trace JSON, ingested_at TIMESTAMP, log_offset BIGINT
);
CREATE TABLE IF NOT EXISTS failed_events (
    failed_at TIMESTAMP, error_code VARCHAR, stage VARCHAR, message VARCHAR, mid VARCHAR, eid VARCHAR,
    channel VARCHAR, source VARCHAR, log_offset BIGINT, event_count INTEGER, payload VARCHAR
);
CREATE TABLE IF NOT EXISTS ingest_batches (
    log_offset BIGINT, received_at TIMESTAMP, source VARCHAR, msgid VARCHAR, headers JSON, event_count INTEGER
);
CREATE TABLE IF NOT EXISTS pipeline_state (name VARCHAR PRIMARY KEY, value BIGINT);
"""
# Counter rows exist from the start, so each batch updates them all in one statement. Positions are
# set by each batch (the others are added to); the last batch's first offset and commit time say which
# keys the dedup state may have missed if the process died right after the commit (see `last_batch`).
_POSITIONS = ("last_offset", "last_batch_first_offset", "last_batch_at_ms")
_COUNTERS = (*_POSITIONS, "stored", "failed", "duplicate", "duplicate_requests",
             *(f"failed:{stage}" for stage in FAILURE_STAGES))
_SET_POSITIONS = "CASE WHEN s.name IN (" + ", ".join(f"'{name}'" for name in _POSITIONS) + ") THEN d.v ELSE s.value + d.v END"

# A learner's rows (forget): telemetry by its actor, the quarantine by the pseudonym anywhere in the payload
_LEARNER_ROWS = "FROM telemetry WHERE channel = ? AND actor_id = ?"
_LEARNER_FAILED = "FROM failed_events WHERE channel = ? AND contains(payload, ?)"

_STRING = pa.string()
_TIMESTAMP = pa.timestamp("ms")
FAILED_ARROW_SCHEMA = pa.schema([
    ("failed_at", _TIMESTAMP), ("error_code", _STRING), ("stage", _STRING), ("message", _STRING),
    ("mid", _STRING), ("eid", _STRING), ("channel", _STRING), ("source", _STRING),
    ("log_offset", pa.int64()), ("event_count", pa.int32()), ("payload", _STRING),
])


@dataclass(frozen=True, slots=True)
class CommittedBatch:
    """One batch the pipeline committed: log records first_offset..last_offset, at `at_ms` (the time the
    runner gives the dedup state for its keys)."""

    first_offset: int
    last_offset: int
    at_ms: int


class DuckDbStore:
    transient_errors: tuple[type[BaseException], ...] = (duckdb.IOException, duckdb.OutOfMemoryException, duckdb.ConnectionException,
                        duckdb.FatalException, duckdb.InterruptException, duckdb.TransactionException, OSError)

    def __init__(self, path: Path, memory_limit: str = "1GB", checkpoint_threshold: str = "256MB",
                 engine_niceness: int = 0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # No file, network or extension access from SQL: queries come from users (SqlGuard is
        # the first line; this is the second). Arrow scans of registered tables still work.
        # A checkpoint costs about the same whatever the WAL size, so checkpointing every 16 MB
        # (the default) costs the pipeline half its speed; 256 MB measured 47.8k → 74.5k events/s.
        with lower_threads_started_within(engine_niceness):  # the engine's workers run queries: below acks
            self._con = duckdb.connect(str(self.path), config={"memory_limit": memory_limit,
                                                               "checkpoint_threshold": checkpoint_threshold,
                                                               "enable_external_access": False})
        self._con.execute(_DDL)
        for statement in rollup_tables.ddl("duckdb"):  # the rollups (analytics/rollup_tables.py) live beside
            self._con.execute(statement)
        for statement in summary_table.ddl("duckdb"):  # and the workflow summaries, refreshed with them
            self._con.execute(statement)
        self._con.execute(summary_table.upgrade_marks_duckdb())
        for statement in sketch_table.ddl("duckdb"):  # and the metrics' sketches, refreshed with them
            self._con.execute(statement)
        self._con.execute(sketch_table.backfill_marks("duckdb"))
        # a store refreshed before a rollup table existed has that table empty: its refreshed slices are marked
        # again (read from telemetry meanwhile, so exact) until the next refresh fills it
        self._con.execute(rollup_tables.backfill_marks("duckdb"))
        # one statement: executemany of these 16 rows took 26 ms, half of an open (one statement: 3 ms)
        self._con.execute("INSERT OR IGNORE INTO pipeline_state SELECT unnest(?::VARCHAR[]), 0", [list(_COUNTERS)])
        self._counters = set(_COUNTERS)
        self._write_lock = threading.Lock()
        self._aborted = False  # a failed write whose rollback failed too: roll back before the next one
        self._unsure = False  # a batch write raised: the next one first checks whether it was committed after all

    capabilities = StoreCapabilities(atomic_offset=True, idempotent_insert=False, sql_dialect="duckdb")

    def write_batch(self, outcome: BatchOutcome, *, failed_at_ms: int | None = None, token: str | None = None) -> None:
        telemetry = outcome.rows
        failed = pa.Table.from_pydict(_failed_columns(outcome, failed_at_ms), schema=FAILED_ARROW_SCHEMA)
        with self._write_lock:
            con = self._con
            self._end_aborted(con)
            if self._unsure and self._committed_through(con) >= outcome.last_offset:
                # the previous attempt's commit raised after the engine had committed it (an out-of-memory in what
                # follows a commit): writing it again would store every event twice
                log.warning("DuckDB store %s: batch %d..%d was committed although its commit reported an error; "
                            "not written again", self.path, outcome.first_offset, outcome.last_offset)
                self._unsure = False
                return
            self._unsure = False
            con.begin()
            try:
                append_arrow(con, "telemetry", telemetry)
                append_arrow(con, "failed_events", failed)
                append_arrow(con, "ingest_batches", outcome.requests)
                # the slices these rows re-open, for the rollup refresher: in the batch's own transaction
                append_arrow(con, "rollup_dirty", rollup_marks.slice_marks(telemetry, token or ""))
                # and the devices they touch, for the workflow summaries (summary_table: recomputed per device)
                append_arrow(con, summary_table.DEVICE_MARKS, rollup_marks.device_marks(telemetry, token or ""))
                increments = {"stored": outcome.stored, "failed": outcome.failed_count,
                              "duplicate": outcome.duplicates, "duplicate_requests": outcome.duplicate_requests}
                increments.update({f"failed:{stage}": n for stage, n in outcome.failed_by_stage.items()})
                for name in increments.keys() - self._counters:  # a stage this store has not seen yet
                    con.execute("INSERT OR IGNORE INTO pipeline_state VALUES (?, 0)", [name])
                    self._counters.add(name)
                committed_at_ms = failed_at_ms if failed_at_ms is not None else int(time.time() * 1000)
                rows = [("last_offset", outcome.last_offset), ("last_batch_first_offset", outcome.first_offset),
                        ("last_batch_at_ms", committed_at_ms), *((k, v) for k, v in increments.items() if v)]
                con.execute(
                    "UPDATE pipeline_state AS s SET value = " + _SET_POSITIONS + " FROM (VALUES "
                    + ", ".join(["(?, ?)"] * len(rows)) + ") AS d(name, v) WHERE s.name = d.name",
                    [x for row in rows for x in row])
                con.commit()
            except BaseException:
                self._unsure = True  # the engine may have committed it all the same: the retry checks
                try:
                    con.rollback()  # a rollback needs memory too: after an out-of-memory it can fail
                except duckdb.Error:
                    self._aborted = True
                raise

    def learner_mids(self, tenant: str, pseudonym: str) -> list[str]:
        args = [tenant, pseudonym]
        mids = [mid for (mid,) in self._fetch_rows(f"SELECT mid {_LEARNER_ROWS}", args)]
        mids += [mid for (mid,) in self._fetch_rows(f"SELECT mid {_LEARNER_FAILED}", args) if mid]
        return list(dict.fromkeys(mids))

    def forget_rows(self, tenant: str, pseudonym: str) -> ForgetCounts:
        """One transaction on the writer's connection, under the writer's lock (a batch commits before or
        after it, never inside it), then a checkpoint, so the rows leave the WAL too. DuckDB marks deleted
        rows and reclaims their bytes in the file when it rewrites their row group: until then they stay
        in the file, unreadable by any query, and linked to nobody once the vault forgot the pseudonym."""
        where_rows, where_failed = _LEARNER_ROWS, _LEARNER_FAILED
        args = [tenant, pseudonym]
        with self._write_lock:
            con = self._con
            self._end_aborted(con)
            con.begin()
            try:
                mids = [mid for (mid,) in con.execute(f"SELECT mid {where_rows}", args).fetchall()]
                mids += [mid for (mid,) in con.execute(f"SELECT mid {where_failed}", args).fetchall() if mid]
                days = [d for (d,) in con.execute(f"SELECT DISTINCT CAST(ets AS DATE) {where_rows}", args).fetchall()]
                (telemetry,) = con.execute(f"DELETE {where_rows}", args).fetchone() or (0,)
                (failed,) = con.execute(f"DELETE {where_failed}", args).fetchone() or (0,)
                # the learner's rollup rows and the summaries their events opened (uid: their first event's actor)
                # go now; the slices of the learner's events are marked, so the refresher recomputes the device's
                # other summaries without those events
                for table, column in summary_table.LEARNER_ROWS:
                    con.execute(f"DELETE FROM {table} WHERE tenant = ? AND {column} = ?", args)
                if days:  # marked as of their own day: a forget is no late data (rollup_state.reopened_at)
                    mark = f"forget:{uuid.uuid4().hex}"  # summary_table: a refresh that read before it writes nothing
                    con.executemany("INSERT INTO rollup_dirty VALUES (?, ?, CAST(? AS TIMESTAMP), "
                                    "CAST(? AS TIMESTAMP), ?)", [[tenant, d, d, d, mark] for d in days])
                con.commit()
            except BaseException:
                try:
                    con.rollback()
                except duckdb.Error:
                    self._aborted = True
                raise
            if telemetry or failed:
                self._checkpoint()
        return ForgetCounts(telemetry=int(telemetry), failed=int(failed), mids=list(dict.fromkeys(mids)))

    @contextlib.contextmanager
    def rollup_transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """The writer's connection in one transaction under the write lock (a batch commits before or after it,
        never inside): what the rollup refresher recomputes slices in. Committed when the block ends, rolled
        back when it raises."""
        with self._write_lock:
            con = self._con
            self._end_aborted(con)
            con.begin()
            try:
                yield con
                con.commit()
            except BaseException:
                try:
                    con.rollback()
                except duckdb.Error:
                    self._aborted = True
                raise

    @staticmethod
    def _committed_through(con: duckdb.DuckDBPyConnection) -> int:
        [(offset,)] = con.execute("SELECT value FROM pipeline_state WHERE name = 'last_offset'").fetchall()
        return int(offset)

    def _end_aborted(self, con: duckdb.DuckDBPyConnection) -> None:
        """Before a write: roll back the transaction a failed write left open when its own rollback failed (the
        engine refuses everything until then). That rollback may fail again (still out of memory: a transient
        fault, retried). Or the engine ended the transaction itself before its error reached us, and rolling
        back says no transaction is active: nothing is left to undo, and retrying it would fail for ever."""
        if not self._aborted:
            return
        try:
            con.rollback()
        except duckdb.TransactionException as exc:
            if "no transaction is active" not in str(exc):
                raise
        self._aborted = False

    @contextlib.contextmanager
    def read_cursor(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor of its own for a long read Cohort runs (the workflow summaries' events): never waits for the
        write lock, each statement sees what was committed before it. Closed when the block ends."""
        cursor = self._con.cursor()
        try:
            yield cursor
        finally:
            cursor.close()

    def _checkpoint(self) -> None:
        """Move the WAL into the file and empty it (the deleted rows' inserts are in the WAL until then). A
        query holding an old snapshot can make DuckDB refuse it: the next automatic checkpoint does it."""
        try:
            self._con.execute("CHECKPOINT")
        except duckdb.Error as exc:
            log.info("DuckDB store %s: no checkpoint after a forget (%s); the next one empties the WAL",
                     self.path, first_line(exc))

    def counts(self) -> StoreCounts:
        """All counters from one read of pipeline_state, so they are one consistent snapshot."""
        cursor = self._con.cursor()
        try:
            state = dict(cursor.execute("SELECT name, value FROM pipeline_state").fetchall())
        finally:
            cursor.close()
        by_stage = {name.split(":", 1)[1]: n for name, n in state.items() if name.startswith("failed:") and n}
        return StoreCounts(stored=state["stored"], failed=state["failed"], duplicate=state["duplicate"],
                           last_offset=state["last_offset"], failed_by_stage=by_stage,
                           positions={0: state["last_offset"]}, duplicate_requests=state.get("duplicate_requests", 0))

    def mids_since(self, since_ms: int, limit: int | None = None) -> Iterator[str]:
        """Mids ingested since the cut-off, oldest first; with `limit`, only the newest `limit` of them."""
        cursor = self._con.cursor()
        try:
            if limit is None:
                cursor.execute("SELECT mid FROM telemetry WHERE ingested_at >= make_timestamp(? * 1000) "
                               "ORDER BY log_offset", [since_ms])
            else:
                cursor.execute("SELECT mid FROM (SELECT mid, log_offset FROM telemetry "
                               "WHERE ingested_at >= make_timestamp(? * 1000) ORDER BY log_offset DESC LIMIT ?) "
                               "ORDER BY log_offset", [since_ms, limit])
            while chunk := cursor.fetchmany(100_000):
                for (mid,) in chunk:
                    yield mid
        finally:
            cursor.close()

    # -- what the embedded dedup indexes are recovered from (not part of the Store contract) --------

    def last_batch(self) -> CommittedBatch | None:
        """The log offsets and commit time of the last batch committed; None before the first one (or
        when the store was last written by a Cohort that did not record them)."""
        state = self._read_state()
        if state.get("last_batch_first_offset", 0) <= 0 or state["last_offset"] <= 0:
            return None
        return CommittedBatch(state["last_batch_first_offset"], state["last_offset"], state["last_batch_at_ms"])

    def first_received_ms(self) -> int | None:
        """When the oldest request the store holds was acknowledged (None: it holds none)."""
        return self._fetch_rows("SELECT epoch_ms(min(received_at)) FROM ingest_batches", [])[0][0]

    def stored_mids(self, since_ms: int, after_offset: int = 0,
                    through_offset: int | None = None) -> Iterator[list[tuple[str, int]]]:
        """(mid, acknowledged at, epoch ms) of the rows stored from requests acknowledged at or after
        `since_ms`, in log order, optionally only those of log records (after, through]; in chunks, so
        any number of rows streams in bounded memory (the engine sorts within its memory limit)."""
        yield from self._chunks("SELECT mid, epoch_ms(ingested_at) FROM telemetry "
                                "WHERE ingested_at >= make_timestamp(? * 1000) AND log_offset > ? AND log_offset <= ? "
                                "ORDER BY log_offset", [since_ms, after_offset, _through(through_offset)])

    def request_msgids(self, since_ms: int, after_offset: int = 0,
                       through_offset: int | None = None) -> Iterator[list[tuple[str | None, str, int]]]:
        """(X-Channel-Id, msgid, acknowledged at) of the requests with a msgid acknowledged at or after
        `since_ms` (retried ones included), in log order, optionally only log records (after, through]."""
        yield from self._chunks("SELECT json_extract_string(headers, '$.\"x-channel-id\"'), msgid, "
                                "epoch_ms(received_at) FROM ingest_batches WHERE msgid IS NOT NULL "
                                "AND received_at >= make_timestamp(? * 1000) AND log_offset > ? AND log_offset <= ? "
                                "ORDER BY log_offset", [since_ms, after_offset, _through(through_offset)])

    def _chunks(self, sql: str, params: list[Any], rows: int = 100_000) -> Iterator[list[Any]]:
        cursor = self._con.cursor()
        try:
            cursor.execute(sql, params)
            while chunk := cursor.fetchmany(rows):
                yield chunk
        finally:
            cursor.close()

    def _read_state(self) -> dict[str, int]:
        return dict(self._fetch_rows("SELECT name, value FROM pipeline_state", []))

    def _fetch_rows(self, sql: str, params: list[Any]) -> list[Any]:
        cursor = self._con.cursor()
        try:
            return cursor.execute(sql, params).fetchall()
        finally:
            cursor.close()

    def query(self, sql: str, params: dict[str, Any] | None, row_limit: int, timeout_s: float,
              max_result_bytes: int | None = None, max_memory_bytes: int | None = None) -> QueryResult:
        """Run one query within its bounds: `row_limit` rows, `max_result_bytes` of JSON, `timeout_s`, and
        `max_memory_bytes` of growth of this process while it runs (see query_watch). Values come back ready
        for JSON (see query_results). The engine's errors are raised as CohortError (ERR_QUERY_FAILED,
        ERR_QUERY_MEMORY), the time limit as QueryTimeout."""
        cursor = self._con.cursor()
        try:
            with process_watch().watch(cursor, time.monotonic() + timeout_s, max_memory_bytes) as watched:
                try:
                    fetched = _run_bounded(cursor, sql, params, row_limit, max_result_bytes)
                except duckdb.Error as exc:
                    raise _query_error(exc, watched.reason, timeout_s, max_memory_bytes) from None
                except (TypeError, ValueError, OverflowError) as exc:  # parameters DuckDB cannot bind
                    raise CohortError(ErrorCode.QUERY_FAILED, first_line(exc)) from None
                if watched.reason is not None:  # interrupted as the last rows arrived
                    raise _query_error(duckdb.InterruptException(), watched.reason, timeout_s, max_memory_bytes)
        finally:
            cursor.close()
        return QueryResult(columns=fetched.columns, rows=fetched.rows, truncated=fetched.truncated_by is not None,
                           truncated_by=fetched.truncated_by, json_bytes=fetched.json_bytes)

    def close(self) -> None:
        with self._write_lock:
            self._con.close()

    def stream_rows(self, sql: str, params: dict[str, Any] | None, *, batch_rows: int, timeout_s: float,
                    max_memory_bytes: int | None = None) -> Iterator[pa.RecordBatch]:
        """The rows of a statement Cohort built (an export, the lake), as Arrow batches of `batch_rows` rows pulled
        from the engine as they are consumed (a relation's Arrow reader streams; a DB-API result's Arrow output
        is built whole first: 3 M rows of 220 bytes took the process from 60 MB to 1 GB, the reader to 290 MB).
        On a cursor of its own (its own snapshot; never waits for the writer's lock), closed when the consumer
        stops, which ends the query. The time limit is a timer of its own, not the query watch: an hour-long
        export's memory baseline would lower the floor against which every running query's growth is measured.
        The process's growth is checked between batches instead (ERR_QUERY_MEMORY past `max_memory_bytes`)."""
        cursor = self._con.cursor()
        guard = threading.Lock()
        timed_out = threading.Event()

        def interrupt() -> None:
            with guard:
                if not timed_out.is_set():
                    timed_out.set()
                    with contextlib.suppress(Exception):
                        cursor.interrupt()

        timer = threading.Timer(timeout_s, interrupt)
        timer.daemon = True
        watch = process_watch()
        baseline = watch.rss()
        try:
            timer.start()
            try:
                reader = cursor.sql(sql, params=params or None).to_arrow_reader(batch_rows)
                for batch in reader:
                    if max_memory_bytes is not None and watch.rss() - baseline > max_memory_bytes:
                        raise CohortError(ErrorCode.QUERY_MEMORY, f"the export was stopped: the server's memory "
                                          f"grew by more than {_mb(max_memory_bytes)} MB while it ran")
                    yield batch
            except (duckdb.Error, pa.ArrowException) as exc:
                if timed_out.is_set():
                    raise QueryTimeout(f"the export ran longer than {timeout_s:g} s") from None
                if isinstance(exc, duckdb.Error):
                    raise _query_error(exc, None, timeout_s, max_memory_bytes) from None
                raise CohortError(ErrorCode.QUERY_FAILED, first_line(exc)) from None
        finally:
            with guard:
                timed_out.set()  # from here on the timer does nothing to the closed cursor
            timer.cancel()
            cursor.close()


def compact_store_file(path: Path) -> None:
    """Rewrite a closed store file with its live rows only, then put it in place of the old one.

    Why: DuckDB marks deleted rows and reclaims their bytes only when it rewrites their row group, and it
    does not overwrite the blocks it frees, so a forgotten learner's rows can stay readable in the file's
    bytes (not to queries) long after `forget_rows`. A copy holds none of them. Offline only: no process
    may have the file open (`cohort forget --data-dir D --compact` holds the data directory's lock). The copy
    is written beside the file, synced, and renamed over it, so a crash leaves the old file or the new one."""
    path = Path(path)
    copy = path.with_name(path.name + ".compact")
    for leftover in (copy, copy.with_name(copy.name + ".wal")):
        leftover.unlink(missing_ok=True)
    con = duckdb.connect()
    try:
        con.execute(f"ATTACH '{_quoted(path)}' AS src (READ_ONLY)")
        con.execute(f"ATTACH '{_quoted(copy)}' AS dst")
        con.execute("COPY FROM DATABASE src TO dst")
        con.execute("DETACH src")
        con.execute("DETACH dst")
    finally:
        con.close()
    with open(copy, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(copy, path)
    sync_path(path.parent)


def _quoted(path: Path) -> str:
    return str(path).replace("'", "''")


def _through(offset: int | None) -> int:
    return offset if offset is not None else 2**63 - 1


def _failed_columns(outcome: BatchOutcome, failed_at_ms: int | None) -> dict[str, list]:
    failed = outcome.failed
    return {
        "failed_at": [failed_at_ms] * len(failed),
        "error_code": [str(f.code) for f in failed],
        "stage": [f.stage for f in failed],
        "message": [f.message for f in failed],
        "mid": [f.mid for f in failed],
        "eid": [f.eid for f in failed],
        "channel": [f.channel for f in failed],
        "source": [f.source for f in failed],
        "log_offset": [f.log_offset for f in failed],
        "event_count": [f.event_count for f in failed],
        "payload": [f.payload for f in failed],
    }


def _run_bounded(cursor: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any] | None, row_limit: int,
                 max_bytes: int | None) -> FetchedRows:
    """Learn the result's columns and types (LIMIT 0 plans without producing rows), then run the statement
    wrapped to render each type for JSON and stop after row_limit + 1 rows, and fetch within the bounds."""
    body = sql.strip().rstrip(";")
    cursor.execute(f"SELECT * FROM (\n{body}\n) AS _q LIMIT 0", params or None)
    description = cursor.description or []
    columns = [d[0] for d in description]
    wrapped, converters = wrapped_sql(body, [d[1] for d in description], row_limit, max_bytes)
    cursor.execute(wrapped, params or None)
    return fetch_bounded(cursor, columns, converters, row_limit, max_bytes)


def _query_error(exc: duckdb.Error, reason: str | None, timeout_s: float, max_memory_bytes: int | None) -> Exception:
    if reason == "timeout":
        return QueryTimeout(f"query ran longer than {timeout_s:g} s")
    if reason == "memory":
        return CohortError(ErrorCode.QUERY_MEMORY,
                           f"query was stopped: the server's memory grew by more than {_mb(max_memory_bytes)} MB "
                           "while it ran; narrow it (filter, aggregate, select fewer columns)")
    if VALUE_TOO_LARGE in str(exc):
        return CohortError(ErrorCode.QUERY_RESULT_TOO_LARGE,
                           "a value in the result is larger than a response may be; select a shorter one (substr, ->>, "
                           "an aggregate), or export the data (GET /v1/exhaust)")
    if isinstance(exc, duckdb.OutOfMemoryException):
        return CohortError(ErrorCode.QUERY_MEMORY, f"query needs more memory than the store allows: {first_line(exc)}")
    if isinstance(exc, duckdb.InterruptException):
        return CohortError(ErrorCode.QUERY_FAILED, "query was interrupted (the server is stopping)")
    return CohortError(ErrorCode.QUERY_FAILED, first_line(exc))


def _mb(n: int | None) -> int:
    return (n or 0) // (1024 * 1024)
