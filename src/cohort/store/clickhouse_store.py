"""The scale-out analytical store: ClickHouse through clickhouse-connect, written in Arrow inserts.

`dsn` is a server (`http(s)://user:password@host:8123`) in production, or the embedded engine
(`chdb:///path`, one process per path) in tests and on one machine; the code is the same.

ClickHouse has no transaction across tables, so a batch is five inserts, in this order: its rows
(`telemetry`), its quarantined events (`failed_events`), its requests (`ingest_batches`), its
counter increments (`pipeline_counters`) and, last, its log position (`pipeline_positions`). Each
insert carries a deduplication token derived from the batch's token, and every table keeps the
tokens of its last `dedup_window` insert blocks: writing the batch again with the same token skips
what the first attempt stored, wherever it stopped, and writes the rest. Counters are rows summed
when read, so they count each batch once too. A position is written only after everything else,
so a writer resuming a partition after its position never skips a batch that is not all stored.

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

import re
import threading
import time
from typing import Any, Iterator, NoReturn

import clickhouse_connect
import pyarrow as pa
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from cohort.core.errors import CohortError, ErrorCode, TerminalFault, first_line
from cohort.core.process_batch import BatchOutcome
from cohort.store.base import QueryResult, StoreCapabilities, StoreCounts
from cohort.store.clickhouse_errors import ClickHouseUnavailable, query_error, store_fault
from cohort.store.clickhouse_results import RENDER_SETTINGS, StreamCursor, wrapped_sql
from cohort.store.query_results import fetch_bounded

DEFAULT_DEDUP_WINDOW = 10_000
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
    # One row per counter a batch moved; rows are summed when read (and by merges, in the background).
    """CREATE TABLE IF NOT EXISTS {db}.pipeline_counters (
        name LowCardinality(String), log_partition UInt32, value Int64
    ) ENGINE = SummingMergeTree ORDER BY (name, log_partition)""",
    # One row per batch: the last log offset it stored; the highest one of a partition is its position.
    """CREATE TABLE IF NOT EXISTS {db}.pipeline_positions (
        log_partition UInt32, last_offset Int64
    ) ENGINE = ReplacingMergeTree(last_offset) ORDER BY log_partition""",
)
# In write order: a batch's position goes last.
TABLES = ("telemetry", "failed_events", "ingest_batches", "pipeline_counters", "pipeline_positions")

_FAILED_SCHEMA = pa.schema([
    ("failed_at", pa.timestamp("ms")), ("error_code", pa.string()), ("stage", pa.string()), ("message", pa.string()),
    ("mid", pa.string()), ("eid", pa.string()), ("channel", pa.string()), ("source", pa.string()),
    ("log_offset", pa.int64()), ("event_count", pa.int32()), ("payload", pa.string()),
])
_COUNTERS_SCHEMA = pa.schema([("name", pa.string()), ("log_partition", pa.uint32()), ("value", pa.int64())])
_POSITIONS_SCHEMA = pa.schema([("log_partition", pa.uint32()), ("last_offset", pa.int64())])
# Synchronous, deduplicated inserts whatever the server's profile says (26.x enables async_insert by
# default, and an asynchronous insert deduplicates by other rules).
_INSERT_SETTINGS = {"insert_deduplicate": 1, "async_insert": 0}


class ClickHouseStore:
    capabilities = StoreCapabilities(atomic_offset=False, idempotent_insert=True, sql_dialect="clickhouse")
    # Every ClickHouse fault the store cannot blame on the batch is raised as one of these (see clickhouse_errors).
    transient_errors: tuple[type[BaseException], ...] = (ClickHouseUnavailable,)

    def __init__(self, dsn: str, *, database: str = "cohort", dedup_window: int = DEFAULT_DEDUP_WINDOW,
                 query_niceness: int = 0):
        """Open (and create, if missing) the store's database and tables at `dsn`. `dedup_window`: how many
        recent insert blocks each table remembers the token of (a batch replayed after more inserts than
        that would be stored twice); `query_niceness`: the CPU niceness of the engine threads that run
        queries (ClickHouse's os_thread_priority; needs CAP_SYS_NICE, otherwise ignored)."""
        if not _IDENTIFIER.match(database):
            raise ValueError(f"database name {database!r} must be a plain identifier")
        if dedup_window < 1:
            raise ValueError("dedup_window must be at least 1: without it a replayed batch is stored twice")
        self.dsn = dsn
        self.database = database
        self.dedup_window = dedup_window
        self.query_niceness = query_niceness
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
        """Store the batch as five token-deduplicated inserts, its position last (see the module doc)."""
        if not token:
            raise TerminalFault("ClickHouseStore.write_batch needs the batch's token: without one a replayed "
                                "batch would be stored twice")
        parts = self._batch_tables(outcome, failed_at_ms)
        with self._write_lock:
            for table, rows in zip(TABLES, parts):
                if rows.num_rows:
                    self._insert(table, rows, f"{token}:{table}")

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
        increments = {"stored": outcome.stored, "failed": outcome.failed_count, "duplicate": outcome.duplicates,
                      "duplicate_requests": outcome.duplicate_requests}
        increments.update({f"failed:{stage}": n for stage, n in outcome.failed_by_stage.items() if n})
        counters = pa.Table.from_pydict({"name": list(increments), "value": list(increments.values()),
                                         "log_partition": [outcome.partition] * len(increments)},
                                        schema=_COUNTERS_SCHEMA)
        position = pa.Table.from_pydict({"log_partition": [outcome.partition], "last_offset": [outcome.last_offset]},
                                        schema=_POSITIONS_SCHEMA)
        return [outcome.rows, failed, outcome.requests, counters, position]

    def _insert(self, table: str, rows: pa.Table, token: str) -> None:
        try:
            self._writer.insert_arrow(table, rows, database=self.database,
                                      settings={**_INSERT_SETTINGS, "insert_deduplication_token": token})
        except Exception as exc:
            _raise_fault(exc, f"writing {table}")

    # -- reads --------------------------------------------------------------------------------------

    def counts(self) -> StoreCounts:
        """The counters summed over every batch stored, and each partition's position, in one query."""
        sql = (f"SELECT name, toInt64(0), toInt64(sum(value)) FROM {self.database}.pipeline_counters GROUP BY name "
               f"UNION ALL SELECT '', toInt64(log_partition), max(last_offset) FROM {self.database}.pipeline_positions "
               "GROUP BY log_partition")
        try:
            rows = self._reader().query(sql).result_rows
        except Exception as exc:
            _raise_fault(exc, "reading the counters")
        counters = {name: value for name, _, value in rows if name}
        positions = {int(partition): int(offset) for name, partition, offset in rows if not name}
        by_stage = {name.split(":", 1)[1]: n for name, n in counters.items() if name.startswith("failed:") and n}
        return StoreCounts(stored=counters.get("stored", 0), failed=counters.get("failed", 0),
                           duplicate=counters.get("duplicate", 0), last_offset=positions.get(0, 0),
                           failed_by_stage=by_stage, positions=positions,
                           duplicate_requests=counters.get("duplicate_requests", 0))

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
        """Create what is missing, and bring each existing table's token window to `dedup_window`."""
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
