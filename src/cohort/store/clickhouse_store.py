"""The scale-out analytical store: ClickHouse through clickhouse-connect, written in Arrow inserts.

`dsn` is a server (`http(s)://user:password@host:8123`) in production, or the embedded engine
(`chdb:///path`, one process per path) in tests and on one machine; the code is the same.

ClickHouse has no transaction across tables, so a batch is four inserts, in this order: its rows
(`telemetry`), its quarantined events (`failed_events`), its requests (`ingest_batches`) and, last,
its progress row (`pipeline_progress`): the partition's new position and the batch's counter
increments, in one row. Each insert carries a deduplication token derived from the batch's token,
and every table keeps the tokens of its last `dedup_window` insert blocks: writing the batch again
with the same token skips what the first attempt stored, wherever it stopped, and writes the rest.
The progress row goes last, so a writer resuming a partition after its position never skips a batch
that is not all stored.

Counters and positions are one row because a reader must see them together: `counts()` is one read of
one table, and an insert of one row is one part, visible whole or not at all, so the counters it
returns are exactly those of the batches at or below the positions it returns (two tables, written by
two inserts, would let a reader see a batch's counters without its position: the ledger would blip).
The table is an AggregatingMergeTree ordered by partition: merges fold the rows of a partition into
one (max of the offsets, sums of the counters: associative, so a merge never loses or doubles a
count), and `counts()` aggregates the same way, so it stays one row per partition to read after
months. A store written by the earlier shape (`pipeline_counters` + `pipeline_positions`) is
migrated when opened (see `_migrate_legacy_progress`).

A batch the store refuses for a reason of its own (a value a column cannot take) must have left
nothing behind, or a writer that isolates it (record by record, what is still refused quarantined)
would store the part it took twice: telemetry goes first and is the only insert of values from the
events themselves, and a refusal after an insert of the batch landed stops the writer
(`ClickHousePartlyRefused`) instead of being blamed on the batch.

The tables are MergeTree, partitioned by day of arrival (`ingested_at`, `failed_at`,
`received_at`): a batch read from the log at one moment lands in one or two partitions, whatever
its devices' clocks say. Partitioning by `ets` would scatter one batch of offline-synced events
across hundreds of days, past `max_partitions_per_insert_block` (100: the insert is refused) and
into thousands of tiny parts. Queries by event time use the sort key (channel, eid, ets) and a
min-max index on ets instead. JSON columns are String holding the JSON text as received (exact,
replayable; queried with JSONExtract*/JSON_VALUE): the JSON type re-encodes values, drops the
original text and, measured here on 5,000 real events, made the insert ≈ 50 times slower.

Queries run read-only (`readonly=1`: no writes, no settings, no table functions such as file() or
url()), within `max_execution_time` and `max_memory_usage`, and are streamed, so the row and byte
bounds stop them early (see clickhouse_results). Users write ClickHouse SQL; parameters are
`{name:Type}` placeholders.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any, Iterator, NoReturn, Sequence

import clickhouse_connect
import pyarrow as pa
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from cohort.analytics import rollup_marks, rollup_tables, sketch_table, summary_table
from cohort.core.errors import CohortError, ErrorCode, TerminalFault, first_line
from cohort.core.process_batch import BatchOutcome
from cohort.core.stages import STORE_STAGE
from cohort.store.base import ForgetCounts, QueryResult, QueryTimeout, StoreCapabilities, StoreCounts
from cohort.store.clickhouse_errors import (ClickHousePartlyRefused, ClickHouseUnavailable, error_code, message_of,
                                            query_error, store_fault)
from cohort.store.clickhouse_results import RENDER_SETTINGS, StreamCursor, wrapped_sql
from cohort.store.query_results import fetch_bounded

log = logging.getLogger("cohort.store.clickhouse")

DEFAULT_DEDUP_WINDOW = 10_000
REJECTED_LOOKUP_CHUNK = 1_000  # mids per lookup: bounds the statement a server receives
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PLACEHOLDER = re.compile(r"\{\s*[A-Za-z_][A-Za-z0-9_]*\s*:")

_DDL = (
    """CREATE TABLE IF NOT EXISTS {db}.telemetry (
        eid LowCardinality(String), ets DateTime64(3, 'UTC'), mid String, actor_id Nullable(String),
        actor_type LowCardinality(Nullable(String)), channel LowCardinality(String),
        pdata_id LowCardinality(Nullable(String)), pdata_pid LowCardinality(Nullable(String)),
        pdata_ver LowCardinality(Nullable(String)), env LowCardinality(Nullable(String)), sid Nullable(String),
        did Nullable(String), object_id Nullable(String), object_type LowCardinality(Nullable(String)),
        object_ver Nullable(String), rollup Nullable(String), edata String, event String, trace String,
        ingested_at DateTime64(3, 'UTC'), log_offset Int64,
        INDEX ets_range ets TYPE minmax GRANULARITY 4
    ) ENGINE = MergeTree PARTITION BY toDate(ingested_at) ORDER BY (channel, eid, ets)""",
    """CREATE TABLE IF NOT EXISTS {db}.failed_events (
        failed_at DateTime64(3, 'UTC'), error_code LowCardinality(String), stage LowCardinality(String),
        message String, mid Nullable(String), eid Nullable(String), channel Nullable(String),
        source LowCardinality(String), log_offset Int64, event_count Int32, payload String
    ) ENGINE = MergeTree PARTITION BY toDate(failed_at) ORDER BY (stage, error_code, failed_at)""",
    """CREATE TABLE IF NOT EXISTS {db}.ingest_batches (
        log_offset Int64, received_at DateTime64(3, 'UTC'), source LowCardinality(String), msgid Nullable(String),
        headers String, event_count Int32
    ) ENGINE = MergeTree PARTITION BY toDate(received_at) ORDER BY (log_offset, received_at)""",
    # One row per batch: its partition's new position and its counter increments, written as one part (see
    # the module doc); merges fold a partition's rows into one with the same functions counts() reads with.
    """CREATE TABLE IF NOT EXISTS {db}.pipeline_progress (
        log_partition UInt32, last_offset SimpleAggregateFunction(max, Int64),
        stored SimpleAggregateFunction(sum, Int64), failed SimpleAggregateFunction(sum, Int64),
        duplicate SimpleAggregateFunction(sum, Int64), duplicate_requests SimpleAggregateFunction(sum, Int64),
        failed_by_stage SimpleAggregateFunction(sumMap, Map(String, Int64))
    ) ENGINE = AggregatingMergeTree ORDER BY log_partition""",
)
# In write order: a batch's progress row goes last.
TABLES = ("telemetry", "failed_events", "ingest_batches", "pipeline_progress")
# The earlier shape of the progress: counters and positions in two tables (migrated on open).
LEGACY_PROGRESS_TABLES = ("pipeline_counters", "pipeline_positions")
_MIGRATION_TOKEN = "migrated-from:pipeline_counters+pipeline_positions"
_COUNTERS = ("stored", "failed", "duplicate", "duplicate_requests")
_UNKNOWN_TABLE = 60

_FAILED_SCHEMA = pa.schema([
    ("failed_at", pa.timestamp("ms")), ("error_code", pa.string()), ("stage", pa.string()), ("message", pa.string()),
    ("mid", pa.string()), ("eid", pa.string()), ("channel", pa.string()), ("source", pa.string()),
    ("log_offset", pa.int64()), ("event_count", pa.int32()), ("payload", pa.string()),
])
_PROGRESS_SCHEMA = pa.schema([("log_partition", pa.uint32()), ("last_offset", pa.int64()),
                              *[(name, pa.int64()) for name in _COUNTERS],
                              ("failed_by_stage", pa.map_(pa.string(), pa.int64()))])
# A learner's rows (forget): telemetry by its actor, the quarantine by the pseudonym anywhere in the payload
_LEARNER_ROWS = "channel = {channel:String} AND actor_id = {pseudonym:String}"
_LEARNER_FAILED = "channel = {channel:String} AND position(payload, {pseudonym:String}) > 0"
# Synchronous, deduplicated inserts whatever the server's profile says (26.x enables async_insert by
# default, and an asynchronous insert deduplicates by other rules).
_INSERT_SETTINGS = {"insert_deduplicate": 1, "async_insert": 0}


class ClickHouseStore:
    capabilities = StoreCapabilities(atomic_offset=False, idempotent_insert=True, sql_dialect="clickhouse")
    # Every ClickHouse fault the store cannot blame on the batch is raised as one of these (see clickhouse_errors).
    transient_errors: tuple[type[BaseException], ...] = (ClickHouseUnavailable,)

    def __init__(self, dsn: str, *, database: str = "cohort", dedup_window: int = DEFAULT_DEDUP_WINDOW,
                 query_niceness: int = 0, query_slots: int = 1):
        """Open (and create, if missing) the store's database and tables at `dsn`. `dedup_window`: how many
        recent insert blocks each table remembers the token of (a batch replayed after more inserts than
        that would be stored twice); `query_niceness`: the CPU niceness of the engine threads that run
        queries (ClickHouse's os_thread_priority; needs CAP_SYS_NICE, otherwise ignored); `query_slots`:
        how many queries may run at once, so that each gets its share of a query memory bound and all of
        them together stay within it."""
        if not _IDENTIFIER.match(database):
            raise ValueError(f"database name {database!r} must be a plain identifier")
        if dedup_window < 1:
            raise ValueError("dedup_window must be at least 1: without it a replayed batch is stored twice")
        self.dsn = dsn
        self.database = database
        self.dedup_window = dedup_window
        self.query_niceness = query_niceness
        self.query_slots = max(1, query_slots)
        self._clients: list[Client] = []
        self._clients_lock = threading.Lock()
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._closed = False
        try:
            self._writer = self._connect(database=None)
            self._create_tables(self._writer)
            self._writer.database = database
        except BaseException as exc:
            self.close()
            _raise_fault(exc, f"opening database {database}")

    # -- writes -------------------------------------------------------------------------------------

    def write_batch(self, outcome: BatchOutcome, *, failed_at_ms: int, token: str | None = None) -> None:
        """Store the batch as four token-deduplicated inserts, its progress row last (see the module doc)."""
        if not token:
            raise TerminalFault("ClickHouseStore.write_batch needs the batch's token: without one a replayed "
                                "batch would be stored twice")
        parts = self._batch_tables(outcome, failed_at_ms)
        marks = rollup_marks.slice_marks(outcome.rows, token)
        with self._write_lock:
            landed: list[str] = []
            for table, rows in zip(TABLES, parts):
                if table == "pipeline_progress" and marks.num_rows:
                    # the slices this batch re-opens (rollup_refresh): after its rows, before its position moves
                    self._insert("rollup_dirty", marks, f"{token}:rollup_dirty", landed)
                    landed.append("rollup_dirty")
                if rows.num_rows:
                    self._insert(table, rows, f"{token}:{table}", landed)
                    landed.append(table)

    def _batch_tables(self, outcome: BatchOutcome, failed_at_ms: int) -> list[pa.Table]:
        quarantined = outcome.failed
        failed = pa.Table.from_pydict({
            "failed_at": [failed_at_ms] * len(quarantined), "error_code": [str(f.code) for f in quarantined],
            "stage": [f.stage for f in quarantined], "message": [f.message for f in quarantined],
            "mid": [f.mid for f in quarantined], "eid": [f.eid for f in quarantined],
            "channel": [f.channel for f in quarantined], "source": [f.source for f in quarantined],
            "log_offset": [f.log_offset for f in quarantined], "event_count": [f.event_count for f in quarantined],
            "payload": [f.payload for f in quarantined],
        }, schema=_FAILED_SCHEMA)
        progress = pa.Table.from_pydict({
            "log_partition": [outcome.partition], "last_offset": [outcome.last_offset],
            "stored": [outcome.stored], "failed": [outcome.failed_count], "duplicate": [outcome.duplicates],
            "duplicate_requests": [outcome.duplicate_requests],
            "failed_by_stage": [[(stage, n) for stage, n in outcome.failed_by_stage.items() if n]],
        }, schema=_PROGRESS_SCHEMA)
        return [outcome.rows, failed, outcome.requests, progress]

    def _insert(self, table: str, rows: pa.Table, token: str, landed: list[str]) -> None:
        try:
            self._writer.insert_arrow(table, rows, database=self.database,
                                      settings={**_INSERT_SETTINGS, "insert_deduplication_token": token})
        except Exception as exc:
            fault = store_fault(exc, f"writing {table}")
            if fault is exc and landed:  # refused for the batch's own reason, but part of it is in already
                raise ClickHousePartlyRefused(
                    f"ClickHouse took this batch's {', '.join(landed)} and refused its {table}: writing it again "
                    f"any other way would store what it took twice, so the batch waits (the same token stores it "
                    f"once when {table} takes it): {message_of(exc)}") from exc
            _raise_fault(exc, f"writing {table}")

    def learner_mids(self, tenant: str, pseudonym: str) -> list[str]:
        args = {"channel": tenant, "pseudonym": pseudonym}
        try:
            client = self._reader()
            mids = [str(m) for (m,) in client.query(f"SELECT mid FROM {self.database}.telemetry WHERE {_LEARNER_ROWS}",
                                                    parameters=args).result_rows]
            mids += [str(m) for (m,) in client.query(
                f"SELECT mid FROM {self.database}.failed_events WHERE {_LEARNER_FAILED}", parameters=args).result_rows
                if m is not None]
        except Exception as exc:
            _raise_fault(exc, "reading a learner's mids")
        return list(dict.fromkeys(mids))

    def forget_rows(self, tenant: str, pseudonym: str) -> ForgetCounts:
        """`ALTER TABLE … DELETE` with mutations_sync=2: each part holding a matching row is rewritten without
        it before this returns (a lightweight DELETE only masks rows until a merge; a mutation removes
        them from the active parts; the parts replaced are dropped after the server's old_parts_lifetime).
        The counters in pipeline_progress are left as they are (see ForgetCounts). A replay of a batch
        written before cannot bring the rows back: its insert token is still in the table's dedup window,
        so the insert is skipped. Under the write lock, so no batch is inserted half-way through."""
        db, args = self.database, {"channel": tenant, "pseudonym": pseudonym}
        rows_where, failed_where = _LEARNER_ROWS, _LEARNER_FAILED
        mutation = {"mutations_sync": 2}
        with self._write_lock:
            try:
                client = self._writer
                # first the tombstone, so a refresh that reads the learner's events before the deletes below sees
                # it when it sweeps after its inserts (rollup_refresh.sweep_forgotten)
                client.command(f"INSERT INTO {db}.forgotten_learners VALUES ({{channel:String}}, {{pseudonym:String}}, "
                               "now64(3, 'UTC'))", parameters=args, settings={"async_insert": 0})
                mids = [str(m) for (m,) in client.query(f"SELECT mid FROM {db}.telemetry WHERE {rows_where}",
                                                        parameters=args).result_rows]
                failed_mids = [str(m) if m is not None else "" for (m,) in client.query(
                    f"SELECT mid FROM {db}.failed_events WHERE {failed_where}", parameters=args).result_rows]
                days = [d for (d,) in client.query(f"SELECT DISTINCT toDate(ets, 'UTC') FROM {db}.telemetry "
                                                   f"WHERE {rows_where}", parameters=args).result_rows]
                if mids:
                    client.command(f"ALTER TABLE {db}.telemetry DELETE WHERE {rows_where}", parameters=args,
                                   settings=mutation)
                if failed_mids:
                    client.command(f"ALTER TABLE {db}.failed_events DELETE WHERE {failed_where}", parameters=args,
                                   settings=mutation)
                # the learner's rollup rows and the summaries their events opened go (tombstones and older
                # versions too); then the slices of those events are marked, so the refresher recomputes the
                # device's other summaries without them (marked as of their own day: a forget is no late data)
                for table, column in summary_table.LEARNER_ROWS:
                    client.command(f"ALTER TABLE {db}.{table} DELETE WHERE tenant = {{channel:String}} AND "
                                   f"{column} = {{pseudonym:String}}", parameters=args, settings=mutation)
                if days:
                    stamps = [datetime.combine(d, datetime.min.time(), UTC) for d in days]
                    marks = pa.Table.from_pydict(
                        {"tenant": [tenant] * len(days), "day": days, "first_ingested": stamps, "last_ingested": stamps,
                         "mark": [f"forget:{uuid.uuid4().hex}"] * len(days)}, schema=rollup_marks.MARK_SCHEMA)
                    client.insert_arrow("rollup_dirty", marks, database=db,
                                        settings={"insert_deduplicate": 0, "async_insert": 0})
            except Exception as exc:
                _raise_fault(exc, "forgetting a learner's rows")
        return ForgetCounts(telemetry=len(mids), failed=len(failed_mids),
                            mids=list(dict.fromkeys([*mids, *(m for m in failed_mids if m)])))

    def rollup_client(self) -> Client:
        """This thread's client, for the rollup refresher's statements (rollup_refresh): inserts … selects and
        mutations of the rollup tables, never of the pipeline's."""
        return self._reader()

    # -- reads --------------------------------------------------------------------------------------

    def counts(self) -> StoreCounts:
        """The counters summed over every batch stored, and each partition's position: one read of one table,
        so the counters are exactly those of the batches at or below the positions (see the module doc)."""
        sql = (f"SELECT log_partition, max(last_offset), {', '.join(f'sum({c})' for c in _COUNTERS)}, "
               f"sumMap(failed_by_stage) FROM {self.database}.pipeline_progress GROUP BY log_partition")
        try:
            rows = self._reader().query(sql).result_rows
        except Exception as exc:
            _raise_fault(exc, "reading the counters")
        totals = dict.fromkeys(_COUNTERS, 0)
        by_stage: dict[str, int] = {}
        positions: dict[int, int] = {}
        for partition, last_offset, *sums, stages in rows:
            if last_offset >= 0:  # a migrated partition whose counters had no position yet has none
                positions[int(partition)] = int(last_offset)
            for name, value in zip(_COUNTERS, sums):
                totals[name] += int(value)
            for stage, n in stages.items():
                by_stage[stage] = by_stage.get(stage, 0) + int(n)
        return StoreCounts(stored=totals["stored"], failed=totals["failed"], duplicate=totals["duplicate"],
                           last_offset=positions.get(0, 0), failed_by_stage={k: n for k, n in by_stage.items() if n},
                           positions=positions, duplicate_requests=totals["duplicate_requests"])

    def store_rejected(self, mids: Sequence[str]) -> set[str]:
        """Which of `mids` the store refused and a writer quarantined instead (ERR_STORE_REJECTED, stage store).

        A store writer telling the dedup state again what it wrote before a crash must leave those out: they
        are not stored, and a key for them would turn the event, sent again once the cause is fixed, into a
        duplicate. Cheap: the lookup reads only the quarantine's ERR_STORE_REJECTED rows (the sort key's
        prefix), which a healthy store has few of."""
        wanted = list(dict.fromkeys(m for m in mids if m is not None))
        sql = (f"SELECT DISTINCT mid FROM {self.database}.failed_events WHERE stage = {{stage:String}} "
               "AND error_code = {code:String} AND mid IN {mids:Array(String)}")
        refused = {"stage": STORE_STAGE, "code": str(ErrorCode.STORE_REJECTED)}
        found: set[str] = set()
        for at in range(0, len(wanted), REJECTED_LOOKUP_CHUNK):
            chunk = wanted[at:at + REJECTED_LOOKUP_CHUNK]
            try:
                rows = self._reader().query(sql, parameters={**refused, "mids": chunk}).result_rows
            except Exception as exc:
                _raise_fault(exc, "reading what the store refused")
            found.update(str(mid) for (mid,) in rows)
        return found

    def mids_since(self, since_ms: int, limit: int | None = None) -> Iterator[str]:
        """Mids ingested since the cut-off, oldest first (by arrival, then log offset); with `limit`, only the
        newest `limit` of them. Reads and sorts every mid of the period's partitions, so on a big store it
        takes seconds to minutes: meant for a worker's start, not for every batch. It uses a connection of
        its own, so the caller may use the store while it iterates."""
        where = f"FROM {self.database}.telemetry WHERE ingested_at >= fromUnixTimestamp64Milli({{since:Int64}}, 'UTC')"
        if limit is None:
            sql = f"SELECT mid {where} ORDER BY ingested_at, log_offset"
        else:
            sql = (f"SELECT mid FROM (SELECT mid, ingested_at, log_offset {where} "
                   "ORDER BY ingested_at DESC, log_offset DESC LIMIT {limit:UInt64}) ORDER BY ingested_at, log_offset")
        try:
            client = self._connect(database=self.database, track=False)
        except Exception as exc:
            _raise_fault(exc, "reading recent mids")
        try:
            with client.query_rows_stream(sql, parameters={"since": int(since_ms), "limit": int(limit or 0)}) as rows:
                for (mid,) in rows:
                    yield mid
        except ClickHouseError as exc:
            _raise_fault(exc, "reading recent mids")
        finally:
            client.close()

    def query(self, sql: str, params: dict[str, Any] | None, row_limit: int, timeout_s: float,
              max_result_bytes: int | None = None, max_memory_bytes: int | None = None) -> QueryResult:
        """Run one read-only query within its bounds: at most `row_limit` rows and `max_result_bytes` of JSON
        (streamed: the query stops when either is reached), `timeout_s` (max_execution_time) and
        `max_memory_bytes` (max_memory_usage, which ClickHouse tracks for every allocation of the query).
        Values come back ready for JSON (see clickhouse_results); errors are CohortError with a query code."""
        deadline = time.monotonic() + timeout_s
        if max_memory_bytes is not None:  # every slot may be busy: one query holds at most its share
            max_memory_bytes = max(1, max_memory_bytes // self.query_slots)
        body = sql.strip().rstrip(";")
        bound = _checked_params(body, params)
        client = self._reader()
        try:
            described = client.query(f"DESCRIBE TABLE (\n{body}\n)", parameters=bound,
                                     settings=self._query_settings(timeout_s, max_memory_bytes))
            columns = [(str(row[0]), str(row[1])) for row in described.result_rows]
            wrapped, converters = wrapped_sql(body, columns, row_limit)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CohortError(ErrorCode.QUERY_TIMEOUT, f"query ran longer than {timeout_s:g} s")
            with client.query_rows_stream(wrapped, parameters=bound,
                                          settings=self._query_settings(remaining, max_memory_bytes)) as rows:
                fetched = fetch_bounded(StreamCursor(rows), [name for name, _ in columns], converters, row_limit,
                                        max_result_bytes)
        except CohortError:
            raise
        except (ClickHouseError, OSError) as exc:
            raise query_error(exc, timeout_s, max_memory_bytes) from None
        except (TypeError, ValueError, OverflowError) as exc:  # parameters the client cannot bind
            raise CohortError(ErrorCode.QUERY_FAILED, first_line(exc)) from None
        return QueryResult(columns=fetched.columns, rows=fetched.rows, truncated=fetched.truncated_by is not None,
                           truncated_by=fetched.truncated_by, json_bytes=fetched.json_bytes)

    def _query_settings(self, timeout_s: float, max_memory_bytes: int | None) -> dict[str, Any]:
        # readonly=1 (not 2): no settings changes from the statement and no table functions (file, url, s3, …);
        # the settings sent beside it here are checked against the user's profile, not against readonly=1.
        settings: dict[str, Any] = {"readonly": 1, "max_execution_time": max(round(timeout_s, 3), 0.001),
                                    "timeout_overflow_mode": "throw", **RENDER_SETTINGS}
        if max_memory_bytes:
            settings["max_memory_usage"] = int(max_memory_bytes)
        if self.query_niceness:
            settings["os_thread_priority"] = int(self.query_niceness)
        return settings

    def close(self) -> None:
        with self._write_lock, self._clients_lock:
            self._closed = True
            clients, self._clients = self._clients, []
        for client in clients:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing what may already be broken
                pass

    # -- connections --------------------------------------------------------------------------------

    def _connect(self, database: str | None, track: bool = True) -> Client:
        """A client of its own: clickhouse-connect serialises the calls of one chdb client, and an HTTP client
        must not share a session between threads, so writes, each query thread and mids_since each get one."""
        options: dict[str, Any] = {"query_limit": 0}
        if not self.dsn.startswith("chdb:"):
            options["autogenerate_session_id"] = False  # concurrent queries on one session are refused
        client = clickhouse_connect.get_client(dsn=self.dsn, database=database, **options)
        if track:
            with self._clients_lock:
                if self._closed:
                    client.close()
                    raise ClickHouseUnavailable("the store is closed")
                self._clients.append(client)
        return client

    def _reader(self) -> Client:
        """This thread's client for reads (queries, counts)."""
        client = getattr(self._local, "client", None)
        if client is None:
            try:
                client = self._local.client = self._connect(database=self.database)
            except Exception as exc:
                _raise_fault(exc, "connecting")
        return client

    def _create_tables(self, client: Client) -> None:
        """Create what is missing, bring each existing table's token window to `dedup_window`, and migrate a
        store of the earlier shape."""
        db = self.database
        client.command(f"CREATE DATABASE IF NOT EXISTS {db}")
        found = client.query("SELECT name, engine_full FROM system.tables WHERE database = {db:String}",
                             parameters={"db": db}).result_rows
        existing = {str(name): str(engine) for name, engine in found}
        window = f"non_replicated_deduplication_window = {self.dedup_window}"
        for table, ddl in zip(TABLES, _DDL):
            if table not in existing:
                client.command(ddl.format(db=db) + f" SETTINGS {window}")
            elif window not in existing[table]:
                client.command(f"ALTER TABLE {db}.{table} MODIFY SETTING {window}")
        for statement in rollup_tables.ddl("clickhouse", db):  # the rollups (analytics/rollup_tables.py)
            if "rollup_dirty" in statement:  # written with each batch under its token, like the batch's tables
                statement += f" SETTINGS {window}"
            client.command(statement)
        for statement in summary_table.ddl("clickhouse", db):  # the workflow summaries, refreshed with the rollups
            client.command(statement)
        for statement in sketch_table.ddl("clickhouse", db):  # the metrics' sketches, refreshed with the rollups
            client.command(statement)
        client.command(sketch_table.backfill_marks("clickhouse", db), settings={"insert_deduplicate": 0})
        # a store refreshed before a rollup table existed: its refreshed slices marked again (rollup_tables)
        client.command(rollup_tables.backfill_marks("clickhouse", db), settings={"insert_deduplicate": 0})
        self._migrate_legacy_progress(client, [t for t in LEGACY_PROGRESS_TABLES if t in existing])

    def _migrate_legacy_progress(self, client: Client, legacy: list[str]) -> None:
        """Fold a store of the earlier shape (counters in `pipeline_counters`, positions in `pipeline_positions`)
        into `pipeline_progress`: one row per partition, inserted under one fixed token, then the old tables
        dropped. A crash in between is harmless: the next open inserts under the same token, which the table
        still remembers (nothing else was written since), and drops what is left. Several processes opening
        the store at once (serve replicas) may all migrate: the token keeps one insert, and one that finds a
        table dropped under it leaves the rest to the process that dropped it. Stop every store writer of the
        earlier version before opening: what it wrote after this read would not be counted."""
        if not legacy:
            return
        db = self.database
        progress: dict[int, dict[str, Any]] = {}

        def of(partition: int) -> dict[str, Any]:
            return progress.setdefault(partition, {"last_offset": -1, **dict.fromkeys(_COUNTERS, 0), "stages": {}})

        try:
            if "pipeline_counters" in legacy:
                for name, partition, value in client.query(
                        f"SELECT name, log_partition, toInt64(sum(value)) FROM {db}.pipeline_counters "
                        "GROUP BY name, log_partition").result_rows:
                    row = of(int(partition))
                    if name in _COUNTERS:
                        row[name] += int(value)
                    elif name.startswith("failed:") and value:
                        row["stages"][name.split(":", 1)[1]] = int(value)
            if "pipeline_positions" in legacy:
                for partition, last_offset in client.query(
                        f"SELECT log_partition, max(last_offset) FROM {db}.pipeline_positions GROUP BY log_partition"
                ).result_rows:
                    of(int(partition))["last_offset"] = int(last_offset)
        except ClickHouseError as exc:
            if error_code(exc) == _UNKNOWN_TABLE:  # another process opening the store migrated it meanwhile
                return
            raise
        if progress:  # another process migrating at the same time inserts the same rows: the token keeps one
            rows = pa.Table.from_pydict({
                "log_partition": list(progress), "last_offset": [r["last_offset"] for r in progress.values()],
                **{name: [r[name] for r in progress.values()] for name in _COUNTERS},
                "failed_by_stage": [list(r["stages"].items()) for r in progress.values()],
            }, schema=_PROGRESS_SCHEMA)
            client.insert_arrow("pipeline_progress", rows, database=db,
                                settings={**_INSERT_SETTINGS, "insert_deduplication_token": _MIGRATION_TOKEN})
        for table in legacy:
            client.command(f"DROP TABLE IF EXISTS {db}.{table}")
        log.warning("ClickHouse store %s: counters and positions of %d partitions moved from %s to pipeline_progress",
                    db, len(progress), " and ".join(legacy))


    # -- exports ------------------------------------------------------------------------------------

    def stream_rows(self, sql: str, params: dict[str, Any] | None, *, batch_rows: int, timeout_s: float,
                    max_memory_bytes: int | None = None) -> Iterator[pa.RecordBatch]:
        """The rows of a statement Cohort built (an export), as Arrow batches read from the server as they are
        consumed (one Native block of about `batch_rows` rows at a time). On a client of its own, closed
        when the consumer stops: that closes the response, and the server cancels the query. The server
        bounds it: `max_execution_time` = `timeout_s`, `max_memory_usage` = `max_memory_bytes` (unshared:
        exports have slots of their own), read-only."""
        settings: dict[str, Any] = {"max_execution_time": max(round(timeout_s, 3), 0.001),
                                    "timeout_overflow_mode": "throw", "max_block_size": max(1, int(batch_rows))}
        if max_memory_bytes:
            settings["max_memory_usage"] = int(max_memory_bytes)
        if self.query_niceness:
            settings["os_thread_priority"] = int(self.query_niceness)
        settings["readonly"] = 1  # last: the embedded engine applies settings one by one, as SET statements
        try:
            client = self._connect(database=self.database, track=False)
        except Exception as exc:
            raise query_error(exc, timeout_s, max_memory_bytes) from None
        try:
            # Native blocks, not ArrowStream: the embedded engine materialises a whole ArrowStream result
            # before the first byte, while Native streams block by block on both engines
            with client.query_column_block_stream(sql.strip().rstrip(";"), parameters=_checked_params(sql, params),
                                                  settings=settings) as blocks:
                names = list(blocks.source.column_names)
                for block in blocks:
                    yield pa.RecordBatch.from_arrays([pa.array(column) for column in block], names=names)
        except (ClickHouseError, OSError) as exc:
            error = query_error(exc, timeout_s, max_memory_bytes)
            if error.code == ErrorCode.QUERY_TIMEOUT:
                raise QueryTimeout(error.message) from None
            raise error from None
        finally:
            client.close()

def _raise_fault(exc: BaseException, doing: str) -> NoReturn:
    """Raise what `exc` means to the pipeline (clickhouse_errors.store_fault): retry, stop, or itself."""
    fault = store_fault(exc, doing)
    if fault is exc:
        raise exc
    raise fault from exc


def _checked_params(sql: str, params: dict[str, Any] | None) -> dict[str, Any] | None:
    """Parameters are bound by the server only, as {name:Type} placeholders: without one in the statement,
    clickhouse-connect would format values into the SQL text client-side, which the guard never saw."""
    if not params:
        return None
    for name in params:
        if not isinstance(name, str) or not _IDENTIFIER.match(name):
            raise CohortError(ErrorCode.QUERY_INVALID, f"parameter name {name!r} must be a plain identifier")
    if not _PLACEHOLDER.search(sql):
        raise CohortError(ErrorCode.QUERY_INVALID, "parameters were given but the SQL has no placeholder: in "
                          "ClickHouse SQL a parameter is written {name:Type}, e.g. WHERE eid = {eid:String}")
    return params
