"""The ClickHouse store on the embedded engine: replay-safe writes, day partitions, bounded coded queries,
and faults told apart (retry, stop, or the batch's fault)."""

from __future__ import annotations

import threading
import time

import clickhouse_connect
import orjson
import pytest
from clickhouse_connect.driver.exceptions import OperationalError

from cohort.benchmark.server_process import free_port
from cohort.core.errors import CohortError, ErrorCode, TerminalFault
from cohort.core.log_record import LogRecord
from cohort.core.process_batch import process_batch
from cohort.state.mid_window import MidWindow
from cohort.core.prepared_split import rejected_by_store
from cohort.store import clickhouse_store
from cohort.store.base import StoreCounts
from cohort.store.clickhouse_errors import (ClickHouseMisconfigured, ClickHousePartlyRefused, ClickHouseUnavailable,
                                            error_code, is_transient)
from cohort.analytics import sketch_table, summary_table
from cohort.analytics.rollup_tables import ROLLUP_TABLES
from cohort.store.clickhouse_store import LEGACY_PROGRESS_TABLES, TABLES, ClickHouseStore
from cohort.store.query_results import encode_row

NOW_MS = int(time.time() * 1000)
DAY_MS = 86_400_000


def record(events: list, offset: int, received_at_ms: int = NOW_MS, partition: int = 0) -> LogRecord:
    return LogRecord(payload=orjson.dumps({"id": "api.sunbird.telemetry", "events": events}), event_count=len(events),
                     offset=offset, received_at_ms=received_at_ms, partition=partition)


def outcome_of(*records: LogRecord, seen=None):
    return process_batch(list(records), seen or MidWindow(3600), now_ms=NOW_MS, config_version="test")


@pytest.fixture
def store(clickhouse_dsn, clickhouse_database):
    store = ClickHouseStore(clickhouse_dsn, database=clickhouse_database, query_niceness=10)  # as the API runs it
    yield store
    store.close()


@pytest.fixture(scope="module")
def mixed_outcome(sample_lines):
    """A batch that writes all five tables: stored, duplicate and invalid events, and a corrupt request."""
    events = [orjson.loads(line) for line in sample_lines[:40]]
    bad = {k: v for k, v in events[3].items() if k != "mid"}
    return outcome_of(record(events + [events[0], bad, "x"], 4), LogRecord(payload=b"{oops", event_count=2, offset=5,
                                                                            received_at_ms=NOW_MS))


def dump(store: ClickHouseStore) -> dict[str, list[tuple]]:
    """Every row of every table, sorted: what two stores must agree on."""
    return {table: store._writer.query(f"SELECT * FROM {store.database}.{table} ORDER BY ALL").result_rows
            for table in TABLES}


def scalar(store, sql, params=None):
    return store.query(sql, params, 10, 10.0).rows[0][0]


class FaultyClient:
    """Wraps the store's write client: the first write attempt fails right after its `fail_after`-th insert
    reached the server (0: before the first), as when the connection drops before the answer."""

    def __init__(self, client, fail_after: int):
        self._client = client
        self.fail_after = fail_after
        self.inserts = 0

    def insert_arrow(self, *args, **kwargs):
        if self.fail_after == 0:
            raise OperationalError("connection refused (injected)")
        result = self._client.insert_arrow(*args, **kwargs)
        self.inserts += 1
        if self.inserts == self.fail_after:
            raise OperationalError("connection reset by peer after the insert (injected)")
        return result

    def __getattr__(self, name):
        return getattr(self._client, name)


class SettingsClient:
    """Wraps the store's write client so its inserts run with extra server settings: real engine faults."""

    def __init__(self, client, **settings):
        self._client = client
        self.settings = settings

    def insert_arrow(self, *args, settings=None, **kwargs):
        return self._client.insert_arrow(*args, settings={**(settings or {}), **self.settings}, **kwargs)

    def __getattr__(self, name):
        return getattr(self._client, name)


def test_new_store_is_empty(store):
    assert store.counts() == StoreCounts(stored=0, failed=0, duplicate=0, last_offset=0, failed_by_stage={},
                                         positions={})
    assert list(store.mids_since(0)) == []
    assert store.capabilities.sql_dialect == "clickhouse" and store.capabilities.idempotent_insert
    assert not store.capabilities.atomic_offset


def test_write_batch_stores_rows_quarantine_requests_counters_and_position(store, mixed_outcome, sample_lines):
    store.write_batch(mixed_outcome, failed_at_ms=NOW_MS, token="p0-4-5")

    assert store.counts() == StoreCounts(stored=40, failed=4, duplicate=1, last_offset=5,
                                         failed_by_stage={"validate": 1, "extract": 3}, positions={0: 5})
    events = {e["mid"]: e for e in map(orjson.loads, sample_lines[:40])}
    rows = store.query("SELECT mid, eid, toUnixTimestamp64Milli(ets), channel, log_offset, event FROM telemetry",
                       None, 100, 10.0).rows
    assert sorted(r[0] for r in rows) == sorted(events)
    for mid, eid, ets, channel, offset, event in rows:
        original = events[mid]
        assert (eid, ets, channel, offset) == (original["eid"], int(original["ets"]), original["context"]["channel"], 4)
        assert orjson.loads(event) == original  # the event's JSON text, as received
    failed = store.query("SELECT error_code, stage, event_count, payload, log_offset, "
                         "toUnixTimestamp64Milli(failed_at) FROM failed_events ORDER BY error_code",
                         None, 10, 10.0).rows
    assert [(r[0], r[1], r[2]) for r in failed] == [
        (ErrorCode.EXTRACT_NOT_OBJECT, "extract", 1), (ErrorCode.EXTRACT_PAYLOAD, "extract", 2),
        (ErrorCode.VALIDATION_SCHEMA, "validate", 1)]
    assert failed[1][3] == "{oops" and failed[1][4] == 5
    assert orjson.loads(failed[2][3]) == {k: v for k, v in orjson.loads(sample_lines[3]).items() if k != "mid"}
    assert failed[0][5] == NOW_MS
    assert scalar(store, "SELECT count() FROM ingest_batches") == 2


def test_write_without_a_token_is_refused_and_writes_nothing(store, mixed_outcome):
    with pytest.raises(TerminalFault, match="token"):
        store.write_batch(mixed_outcome, failed_at_ms=NOW_MS)
    assert all(rows == [] for rows in dump(store).values())


# a batch's inserts: its tables, and its rollup slice marks (rollup_dirty) just before its progress row
INSERTS = len(TABLES) + 1
# the tables created beside the pipeline's: the rollups, their bookkeeping and the workflow summaries
ROLLUP_BOOKKEEPING = {*ROLLUP_TABLES, "rollup_dirty", "rollup_state", "forgotten_learners", summary_table.TABLE,
                      *sketch_table.TABLES}


@pytest.mark.parametrize("fail_after", range(INSERTS + 1))
def test_replay_with_the_same_token_after_a_failure_at_every_insert_stores_the_batch_once(
        clickhouse_dsn, clickhouse_database, mixed_outcome, fail_after):
    clean = ClickHouseStore(clickhouse_dsn, database=clickhouse_database + "_clean")
    replayed = ClickHouseStore(clickhouse_dsn, database=clickhouse_database)
    try:
        clean.write_batch(mixed_outcome, failed_at_ms=NOW_MS, token="p0-4-5")
        expected_rows, expected_counts = dump(clean), clean.counts()
        assert all(expected_rows.values())  # the batch writes every table, so every failure point is met

        real = replayed._writer
        replayed._writer = FaultyClient(real, fail_after)
        with pytest.raises(replayed.transient_errors):
            replayed.write_batch(mixed_outcome, failed_at_ms=NOW_MS, token="p0-4-5")
        replayed._writer = real
        assert replayed.counts().positions == ({0: 5} if fail_after == INSERTS else {})  # position last

        replayed.write_batch(mixed_outcome, failed_at_ms=NOW_MS, token="p0-4-5")
        assert dump(replayed) == expected_rows
        assert replayed.counts() == expected_counts
        replayed.write_batch(mixed_outcome, failed_at_ms=NOW_MS, token="p0-4-5")  # and once more: still once
        assert dump(replayed) == expected_rows
    finally:
        clean.close()
        replayed.close()


def test_a_different_token_is_a_different_batch(store, sample_events):
    batch = outcome_of(record(sample_events[:5], 1))
    store.write_batch(batch, failed_at_ms=NOW_MS, token="a")
    store.write_batch(batch, failed_at_ms=NOW_MS, token="b")  # the runner names each batch: a new name is new data
    assert store.counts().stored == 10


def test_tokens_older_than_the_window_are_forgotten(clickhouse_dsn, clickhouse_database, sample_events):
    """Why COHORT_CLICKHOUSE_DEDUP_WINDOW matters: a replay after more inserts than the window is stored again."""
    store = ClickHouseStore(clickhouse_dsn, database=clickhouse_database, dedup_window=2)
    try:
        batches = [outcome_of(record(sample_events[i:i + 2], i + 1)) for i in range(0, 6, 2)]
        for i, batch in enumerate(batches):
            store.write_batch(batch, failed_at_ms=NOW_MS, token=f"t{i}")
        store.write_batch(batches[2], failed_at_ms=NOW_MS, token="t2")  # within the window: once
        assert store.counts().stored == 6
        store.write_batch(batches[0], failed_at_ms=NOW_MS, token="t0")  # two inserts later: forgotten
        assert store.counts().stored == 8
    finally:
        store.close()


def test_partitions_by_day_of_arrival_and_a_batch_of_scattered_event_times_lands_in_one(store, sample_events):
    for day in range(3):
        arrived = record(sample_events[day * 3:day * 3 + 3], day + 1, received_at_ms=NOW_MS - day * DAY_MS)
        store.write_batch(outcome_of(arrived), failed_at_ms=NOW_MS, token=f"d{day}")
    scattered = []  # events from 300 different days (devices offline for months), arriving together
    for i in range(300):
        event = dict(sample_events[10 + i % 400], mid=f"scattered-{i}", ets=NOW_MS - (i + 1) * DAY_MS)
        scattered.append(event)
    store.write_batch(outcome_of(record(scattered, 10)), failed_at_ms=NOW_MS, token="scattered")
    assert store.counts().stored == 309

    partitions = store._writer.query(
        "SELECT partition, sum(rows) FROM system.parts WHERE database = {db:String} AND table = 'telemetry' "
        "AND active GROUP BY partition ORDER BY partition", parameters={"db": store.database}).result_rows
    days = [time.strftime("%Y-%m-%d", time.gmtime((NOW_MS - d * DAY_MS) / 1000)) for d in (2, 1, 0)]
    assert partitions == [(days[0], 3), (days[1], 3), (days[2], 303)]


def test_a_batch_spanning_two_days_replayed_with_its_token_is_stored_once(store, sample_events):
    batch = outcome_of(record(sample_events[:4], 1, received_at_ms=NOW_MS - DAY_MS), record(sample_events[4:8], 2))
    store.write_batch(batch, failed_at_ms=NOW_MS, token="two-days")
    store.write_batch(batch, failed_at_ms=NOW_MS, token="two-days")
    assert scalar(store, "SELECT count() FROM telemetry") == 8 == store.counts().stored
    assert scalar(store, "SELECT uniqExact(toDate(ingested_at)) FROM telemetry") == 2


def test_positions_are_kept_per_partition_and_never_move_back(store, sample_events):
    writes = [(0, 5), (1, 3), (0, 9), (1, 4), (0, 7)]  # the last: an older batch of partition 0 replayed
    for i, (partition, offset) in enumerate(writes):
        store.write_batch(outcome_of(record(sample_events[i:i + 1], offset, partition=partition)), failed_at_ms=NOW_MS,
                          token=f"p{partition}-{offset}")
    counts = store.counts()
    assert counts.positions == {0: 9, 1: 4}
    assert counts.last_offset == 9
    assert counts.stored == 5


def test_mids_since_oldest_first_by_arrival_and_limit_keeps_the_newest(store, sample_events):
    store.write_batch(outcome_of(record(sample_events[:2], 1, received_at_ms=NOW_MS - 2 * DAY_MS)),
                      failed_at_ms=NOW_MS, token="old")
    store.write_batch(outcome_of(record(sample_events[2:3], 2, received_at_ms=NOW_MS - 1000),
                                 record(sample_events[3:4], 3, received_at_ms=NOW_MS - 1000)), failed_at_ms=NOW_MS,
                      token="new")
    mids = [e["mid"] for e in sample_events[:4]]
    assert sorted(list(store.mids_since(0))[:2]) == sorted(mids[:2])  # one request: no order between its events
    assert list(store.mids_since(0))[2:] == mids[2:]
    assert list(store.mids_since(NOW_MS - DAY_MS)) == mids[2:]
    assert list(store.mids_since(0, limit=1)) == mids[3:]
    for _ in store.mids_since(0):  # the store stays usable while mids stream (a connection of its own)
        assert store.counts().stored == 4


def test_data_survives_close_and_reopen(clickhouse_dsn, clickhouse_database, sample_events):
    first = ClickHouseStore(clickhouse_dsn, database=clickhouse_database)
    first.write_batch(outcome_of(record(sample_events[:3], 7)), failed_at_ms=NOW_MS, token="t")
    first.close()
    again = ClickHouseStore(clickhouse_dsn, database=clickhouse_database)
    try:
        assert again.counts().stored == 3 and again.counts().positions == {0: 7}
        again.write_batch(outcome_of(record(sample_events[:3], 7)), failed_at_ms=NOW_MS, token="t")
        assert again.counts().stored == 3  # the tokens survived too
    finally:
        again.close()


# -- faults: retry, stop, or the batch's fault -------------------------------------------------------


def test_too_many_parts_is_transient_and_the_retry_stores_the_batch_once(store, sample_events):
    store.write_batch(outcome_of(record(sample_events[:2], 1)), failed_at_ms=NOW_MS, token="first")
    store._writer.command(f"ALTER TABLE {store.database}.telemetry MODIFY SETTING parts_to_throw_insert = 1")
    batch = outcome_of(record(sample_events[2:4], 2))
    with pytest.raises(ClickHouseUnavailable, match="TOO_MANY_PARTS"):
        store.write_batch(batch, failed_at_ms=NOW_MS, token="second")
    store._writer.command(f"ALTER TABLE {store.database}.telemetry MODIFY SETTING parts_to_throw_insert = 3000")
    store.write_batch(batch, failed_at_ms=NOW_MS, token="second")
    assert store.counts().stored == 4 == scalar(store, "SELECT count() FROM telemetry")


def test_the_server_out_of_memory_is_transient(store, sample_events):
    real = store._writer
    store._writer = SettingsClient(real, max_memory_usage=1000)
    with pytest.raises(ClickHouseUnavailable, match="MEMORY_LIMIT_EXCEEDED"):
        store.write_batch(outcome_of(record(sample_events[:5], 1)), failed_at_ms=NOW_MS, token="t")


def test_a_batch_over_the_partitions_of_one_insert_is_the_batchs_fault_not_transient(store, sample_events):
    store._writer = SettingsClient(store._writer, max_partitions_per_insert_block=1)
    batch = outcome_of(record(sample_events[:2], 1, received_at_ms=NOW_MS - DAY_MS), record(sample_events[2:4], 2))
    with pytest.raises(Exception) as info:
        store.write_batch(batch, failed_at_ms=NOW_MS, token="t")
    assert "252" in str(info.value) and "partitions" in str(info.value)
    assert not isinstance(info.value, store.transient_errors) and not isinstance(info.value, TerminalFault)
    assert not is_transient(info.value)  # the same batch fails every time: the runner isolates it


def test_a_store_it_cannot_write_as_configured_stops_the_pipeline(store, sample_events):
    store._writer.command(f"ALTER TABLE {store.database}.telemetry DROP COLUMN trace")
    with pytest.raises(ClickHouseMisconfigured, match="trace"):
        store.write_batch(outcome_of(record(sample_events[:2], 1)), failed_at_ms=NOW_MS, token="t")
    assert isinstance(ClickHouseMisconfigured("x"), TerminalFault)


def test_an_unreachable_server_is_transient():
    with pytest.raises(ClickHouseUnavailable):
        ClickHouseStore(f"http://127.0.0.1:{free_port()}", database="cohort")


def test_sql_errors_are_not_transient(store):
    try:
        store._writer.query("SELEC 1")
    except Exception as exc:  # noqa: BLE001 - the engine's own exception is the subject
        assert not is_transient(exc)
    else:
        pytest.fail("the engine accepted invalid SQL")


# -- queries -------------------------------------------------------------------------------------------


def test_values_render_for_json_by_type(store):
    result = store.query(
        "SELECT 1 AS i, toUInt64(18446744073709551615) AS u64, toInt128('170141183460469231731687303715884105727') "
        "AS i128, toDecimal64(-12.345, 3) AS dec, 1.5 AS f, nan AS nan_, 'é' AS s, NULL AS n, true AS b, "
        "[1, 2] AS arr, map('k', toInt64(9007199254740993)) AS m, tuple(1, 'a') AS t, "
        "toDateTime64('2024-01-02 03:04:05.678', 3, 'UTC') AS ts, toDate('2024-01-02') AS d, "
        "toUUID('00000000-0000-0000-0000-000000000001') AS id, CAST(NULL AS Nullable(Int128)) AS nbig",
        None, 10, 10.0)
    encoded = encode_row(result.columns, result.rows[0])
    assert b'"i128":170141183460469231731687303715884105727,"dec":-12.345,' in encoded  # exact, not floats
    assert orjson.loads(encoded) == {
        "i": 1, "u64": 18446744073709551615, "i128": 1.7014118346046923e+38, "dec": -12.345,
        "f": 1.5, "nan_": None, "s": "é", "n": None, "b": True, "arr": [1, 2], "m": {"k": 9007199254740993},
        "t": [1, "a"], "ts": "2024-01-02 03:04:05.678", "d": "2024-01-02",
        "id": "00000000-0000-0000-0000-000000000001", "nbig": None}


def test_query_parameters_are_placeholders_bound_by_the_server(store, sample_events):
    store.write_batch(outcome_of(record(sample_events[:20], 1)), failed_at_ms=NOW_MS, token="t")
    eid = sample_events[0]["eid"]
    expected = sum(1 for e in sample_events[:20] if e["eid"] == eid)
    assert scalar(store, "SELECT count() FROM telemetry WHERE eid = {eid:String}", {"eid": eid}) == expected
    assert scalar(store, "SELECT {s:String}", {"s": "it's ' OR 1=1 --"}) == "it's ' OR 1=1 --"
    assert scalar(store, "SELECT count() FROM telemetry WHERE eid IN {eids:Array(String)}", {"eids": [eid]}) == expected
    for sql, params in [("SELECT count() FROM telemetry WHERE log_offset % 2 = 0", {"x": 1}),  # no placeholder
                        ("SELECT {x:String}", {"x y": 1}), ("SELECT {x:String}", {"$x$": 1})]:
        with pytest.raises(CohortError) as info:
            store.query(sql, params, 10, 10.0)
        assert info.value.code == ErrorCode.QUERY_INVALID
    with pytest.raises(CohortError) as info:
        store.query("SELECT {x:String}", None, 10, 10.0)
    assert info.value.code == ErrorCode.QUERY_INVALID and "x" in info.value.message


def test_results_are_bounded_while_streaming(store):
    """A statement of a trillion rows answers at the row or byte bound instead of running to its time limit."""
    rows = store.query("SELECT number FROM numbers(1000000000000)", None, 5, 30.0)
    assert rows.rows == [(0,), (1,), (2,), (3,), (4,)] and rows.truncated_by == "rows"
    wide = store.query("SELECT number, repeat('x', 1000) AS pad FROM numbers(1000000000000)", None, 10_000, 30.0,
                       max_result_bytes=50_000)
    assert wide.truncated_by == "bytes" and 40 <= len(wide.rows) < 50 and wide.json_bytes <= 50_000
    with pytest.raises(CohortError) as info:
        store.query("SELECT repeat('x', 100000) AS big", None, 10, 10.0, max_result_bytes=50_000)
    assert info.value.code == ErrorCode.QUERY_RESULT_TOO_LARGE


def test_order_survives_the_rendering_wrapper(store):
    rows = store.query("SELECT number, toDate(number) FROM numbers(100) ORDER BY number DESC", None, 3, 10.0).rows
    assert rows == [(99, "1970-04-10"), (98, "1970-04-09"), (97, "1970-04-08")]


@pytest.mark.parametrize("sql, code", [
    ("SELECT count() FROM numbers(1000000000000000)", ErrorCode.QUERY_TIMEOUT),
    ("SELECT groupArray(number) FROM numbers(100000000)", ErrorCode.QUERY_MEMORY),
    ("SELECT nope FROM telemetry", ErrorCode.QUERY_INVALID),
    ("SELEC 1", ErrorCode.QUERY_INVALID),
    ("SELECT * FROM no_such_table", ErrorCode.QUERY_INVALID),
    ("SELECT * FROM file('/etc/passwd', 'LineAsString')", ErrorCode.QUERY_FORBIDDEN),
    ("SELECT * FROM url('http://127.0.0.1:1/x', 'LineAsString')", ErrorCode.QUERY_FORBIDDEN),
    # a SETTINGS clause of the statement cannot lift its bounds (the statement runs as a subquery)
    ("SELECT * FROM file('/etc/passwd', 'LineAsString') SETTINGS readonly = 0", ErrorCode.QUERY_FORBIDDEN),
    ("SELECT length(groupArray(number)) FROM numbers(100000000) SETTINGS max_memory_usage = 0", ErrorCode.QUERY_MEMORY),
    ("SELECT count() FROM numbers(1000000000000000) SETTINGS max_execution_time = 0", ErrorCode.QUERY_TIMEOUT),
    ("SELECT throwIf(1)", ErrorCode.QUERY_FAILED),
])
def test_query_errors_carry_query_codes(store, sql, code):
    timeout_s = 60.0 if code == ErrorCode.QUERY_MEMORY else 0.5  # on a loaded machine 0.5 s may pass first
    with pytest.raises(CohortError) as info:
        store.query(sql, None, 10, timeout_s, max_memory_bytes=64 * 1024 * 1024)
    assert info.value.code == code, info.value
    assert "DB::Exception" not in info.value.message and "version" not in info.value.message


def test_queries_cannot_write(store):
    for sql in ["INSERT INTO telemetry (eid) VALUES ('x')", "DROP TABLE telemetry", "TRUNCATE TABLE telemetry"]:
        with pytest.raises(CohortError):
            store.query(sql, None, 10, 10.0)
    assert store._writer.query(f"EXISTS TABLE {store.database}.telemetry").result_rows == [(1,)]
    assert scalar(store, "SELECT count() FROM telemetry") == 0


def test_queries_and_writes_run_from_several_threads(store, sample_events):
    from concurrent.futures import ThreadPoolExecutor

    batches = [outcome_of(record(sample_events[i * 10:(i + 1) * 10], i + 1)) for i in range(8)]
    with ThreadPoolExecutor(4) as pool:
        writes = [pool.submit(store.write_batch, b, failed_at_ms=NOW_MS, token=f"t{i}") for i, b in enumerate(batches)]
        reads = [pool.submit(scalar, store, "SELECT count() FROM telemetry") for _ in range(8)]
        for future in writes + reads:
            future.result()
    assert store.counts().stored == 80 == scalar(store, "SELECT count() FROM telemetry")


# -- counters and positions read together ----------------------------------------------------------


def test_counts_never_show_counters_ahead_of_or_behind_the_positions(store, sample_events):
    """The ledger reads counts() while a writer writes: counters must be exactly those of the batches at or
    below the positions read with them, or received − stored − failed − duplicate − in flight blips."""
    batches: dict[int, list] = {0: [], 1: []}
    for i in range(60):
        events = sample_events[(i * 3) % 450:(i * 3) % 450 + 1 + i % 3]
        events = events + [events[0]] * (i % 2) + [{"eid": "NOPE"}] * (i % 5 == 0)  # duplicates, failures
        batches[i % 2].append(outcome_of(record(events, 10 + i, partition=i % 2)))
    total = sum(o.events_in for b in batches.values() for o in b)

    def expected(positions: dict[int, int]) -> tuple[int, int, int]:
        below = [o for p, b in batches.items() for o in b if o.last_offset <= positions.get(p, -1)]
        return (sum(o.stored for o in below), sum(o.failed_count for o in below), sum(o.duplicates for o in below))

    def write_all() -> None:
        for pair in zip(batches[0], batches[1]):
            for outcome in pair:
                store.write_batch(outcome, failed_at_ms=NOW_MS, token=f"p{outcome.partition}-{outcome.last_offset}")

    writer = threading.Thread(target=write_all)
    writer.start()
    seen, wrong = set(), []
    while writer.is_alive():
        counts = store.counts()
        got = (counts.stored, counts.failed, counts.duplicate)
        if got != expected(counts.positions):
            wrong.append((counts.positions, got, expected(counts.positions)))
        seen.add(tuple(sorted(counts.positions.items())))
    writer.join()
    assert wrong == []
    assert len(seen) > 10  # the reader did read while batches were being written
    final = store.counts()
    assert final.stored + final.failed + final.duplicate == total and final.positions == {0: 68, 1: 69}


def test_merges_fold_the_progress_into_one_row_per_partition_and_change_no_count(store, sample_events):
    for i in range(12):
        outcome = outcome_of(record(sample_events[i:i + 3] + [{"eid": "NOPE"}], 100 + i, partition=i % 3))
        store.write_batch(outcome, failed_at_ms=NOW_MS, token=f"t{i}")
        store.write_batch(outcome, failed_at_ms=NOW_MS, token=f"t{i}")  # a replay: deduplicated, never summed
    before = store.counts()
    assert (before.stored, before.failed, before.positions) == (36, 12, {0: 109, 1: 110, 2: 111})
    assert before.failed_by_stage == {"validate": 12}
    store._writer.command(f"OPTIMIZE TABLE {store.database}.pipeline_progress FINAL")
    assert scalar(store, f"SELECT count() FROM {store.database}.pipeline_progress") == 3
    assert store.counts() == before


# -- a store of the earlier shape (counters and positions in two tables) ----------------------------

LEGACY_DDL = (
    "CREATE TABLE {db}.pipeline_counters (name LowCardinality(String), log_partition UInt32, value Int64) "
    "ENGINE = SummingMergeTree ORDER BY (name, log_partition) SETTINGS non_replicated_deduplication_window = 10000",
    "CREATE TABLE {db}.pipeline_positions (log_partition UInt32, last_offset Int64) "
    "ENGINE = ReplacingMergeTree(last_offset) ORDER BY log_partition "
    "SETTINGS non_replicated_deduplication_window = 10000",
)
# What the earlier store wrote per batch: (partition, last offset, counters it moved)
LEGACY_BATCHES = [(0, 4, {"stored": 40, "failed": 4, "duplicate": 1, "duplicate_requests": 0, "failed:extract": 3,
                          "failed:validate": 1}),
                  (0, 9, {"stored": 10, "failed": 0, "duplicate": 5, "duplicate_requests": 1}),
                  (2, 3, {"stored": 7, "failed": 2, "duplicate": 0, "duplicate_requests": 0, "failed:validate": 2})]
LEGACY_COUNTS = StoreCounts(stored=57, failed=6, duplicate=6, last_offset=9,
                            failed_by_stage={"extract": 3, "validate": 3}, positions={0: 9, 2: 3}, duplicate_requests=1)


def legacy_store(dsn: str, database: str) -> None:
    """A database as the earlier store left it: one insert of counter rows and one of a position per batch."""
    client = clickhouse_connect.get_client(dsn=dsn)
    try:
        client.command(f"CREATE DATABASE {database}")
        for ddl in LEGACY_DDL:
            client.command(ddl.format(db=database))
        for partition, offset, counters in LEGACY_BATCHES:
            values = ", ".join(f"('{name}', {partition}, {n})" for name, n in counters.items())
            client.command(f"INSERT INTO {database}.pipeline_counters VALUES {values}")
            client.command(f"INSERT INTO {database}.pipeline_positions VALUES ({partition}, {offset})")
    finally:
        client.close()


def tables_of(store: ClickHouseStore) -> set[str]:
    return {name for (name,) in store._writer.query("SELECT name FROM system.tables WHERE database = {db:String}",
                                                    parameters={"db": store.database}).result_rows}


def test_a_store_of_the_earlier_shape_is_migrated_when_opened(clickhouse_dsn, clickhouse_database, sample_events):
    legacy_store(clickhouse_dsn, clickhouse_database)
    store = ClickHouseStore(clickhouse_dsn, database=clickhouse_database)
    try:
        assert store.counts() == LEGACY_COUNTS
        assert tables_of(store) == set(TABLES) | ROLLUP_BOOKKEEPING  # the old tables are gone, the new ones are there
        # another process that saw the old tables before this one dropped them: it leaves the counts alone
        store._migrate_legacy_progress(store._writer, list(LEGACY_PROGRESS_TABLES))
        assert store.counts() == LEGACY_COUNTS
        store.write_batch(outcome_of(record(sample_events[:3], 10)), failed_at_ms=NOW_MS, token="p0-10-10")
        assert (store.counts().stored, store.counts().positions) == (60, {0: 10, 2: 3})
    finally:
        store.close()
    again = ClickHouseStore(clickhouse_dsn, database=clickhouse_database)  # nothing left to migrate
    try:
        assert (again.counts().stored, again.counts().failed, again.counts().positions) == (60, 6, {0: 10, 2: 3})
    finally:
        again.close()


@pytest.mark.parametrize("failing_drop", [1, 2])
def test_a_migration_cut_short_counts_once_when_the_store_is_opened_again(clickhouse_dsn, clickhouse_database,
                                                                          failing_drop):
    """The connection drops after the migrated rows went in, before (1) or between (2) the old tables' drops."""
    legacy_store(clickhouse_dsn, clickhouse_database)

    class DropFails:
        drops = 0

        def __init__(self, client):
            self._client = client

        def command(self, sql, *args, **kwargs):
            if sql.startswith("DROP TABLE"):
                DropFails.drops += 1
                if DropFails.drops == failing_drop:
                    raise OperationalError("connection reset by peer (injected)")
            return self._client.command(sql, *args, **kwargs)

        def __getattr__(self, name):
            return getattr(self._client, name)

    class CutShort(ClickHouseStore):
        def _connect(self, database, track=True):
            return DropFails(super()._connect(database, track))

    with pytest.raises(ClickHouseUnavailable):
        CutShort(clickhouse_dsn, database=clickhouse_database)
    store = ClickHouseStore(clickhouse_dsn, database=clickhouse_database)
    try:
        assert store.counts() == LEGACY_COUNTS
        assert tables_of(store) == set(TABLES) | ROLLUP_BOOKKEEPING
    finally:
        store.close()


# -- refusals: the batch's fault only if nothing of it landed ------------------------------------------


def test_a_refused_first_insert_leaves_nothing_and_is_the_batchs_fault(store, sample_events):
    store._writer.command(f"ALTER TABLE {store.database}.telemetry ADD CONSTRAINT no_poison "
                          "CHECK NOT startsWith(mid, 'poison')")
    batch = outcome_of(record(sample_events[:3] + [dict(sample_events[3], mid="poison-1")], 1))
    with pytest.raises(Exception) as info:
        store.write_batch(batch, failed_at_ms=NOW_MS, token="p0-1-1")
    assert error_code(info.value) == 469  # VIOLATED_CONSTRAINT: the engine's own refusal
    assert not isinstance(info.value, (store.transient_errors, TerminalFault))
    assert all(rows == [] for rows in dump(store).values())


def test_a_refusal_after_part_of_the_batch_landed_stops_and_the_same_token_finishes_it_once(store, sample_events):
    store._writer.command(f"ALTER TABLE {store.database}.failed_events ADD CONSTRAINT no_nope "
                          "CHECK position(payload, 'NOPE') = 0")
    batch = outcome_of(record(sample_events[:3] + [{"eid": "NOPE"}], 1))
    with pytest.raises(ClickHousePartlyRefused, match="took this batch's telemetry and refused its failed_events"):
        store.write_batch(batch, failed_at_ms=NOW_MS, token="p0-1-1")
    assert isinstance(ClickHousePartlyRefused("x"), TerminalFault)  # never isolated: that would store rows twice
    assert scalar(store, "SELECT count() FROM telemetry") == 3 and store.counts().positions == {}
    store._writer.command(f"ALTER TABLE {store.database}.failed_events DROP CONSTRAINT no_nope")
    store.write_batch(batch, failed_at_ms=NOW_MS, token="p0-1-1")
    assert scalar(store, "SELECT count() FROM telemetry") == 3 == store.counts().stored
    assert (store.counts().failed, store.counts().positions) == (1, {0: 1})


def test_store_rejected_names_only_the_mids_quarantined_as_refused_by_the_store(store, sample_events, monkeypatch):
    refused = outcome_of(record(sample_events[:4], 1))
    store.write_batch(rejected_by_store(refused, "refused"), failed_at_ms=NOW_MS, token="p0-1-1-rejected")
    invalid = {"eid": "NOPE", "mid": "m-invalid"}
    store.write_batch(outcome_of(record(sample_events[4:6] + [invalid], 2)), failed_at_ms=NOW_MS, token="p0-2-2")
    mids = [e["mid"] for e in sample_events[:6]] + ["m-invalid", "unknown", "it's \\ odd'"]
    assert store.store_rejected(mids) == {e["mid"] for e in sample_events[:4]}
    monkeypatch.setattr(clickhouse_store, "REJECTED_LOOKUP_CHUNK", 2)
    assert store.store_rejected(mids) == {e["mid"] for e in sample_events[:4]}
    assert store.store_rejected([]) == set()
