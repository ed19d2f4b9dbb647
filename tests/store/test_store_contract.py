"""The Store contract, run over every store: what the runner, the dedup reload and the query API rely on.

A new backend proves itself by passing this file (add it to STORES and to `faulty_write`). What differs
between stores is declared in `capabilities` and tested as such: `atomic_offset` (a failed write leaves
nothing) and `idempotent_insert` (the same token twice is stored once); both promise that a batch written
again after a failed write is stored once. SQL is in the store's dialect (`sql_dialect`).
"""

from __future__ import annotations

import contextlib
import threading
import time

import duckdb
import orjson
import pytest
from clickhouse_connect.driver.exceptions import OperationalError

from cohort.core.errors import CohortError, ErrorCode
from cohort.core.log_record import LogRecord
from cohort.core.process_batch import process_batch
from cohort.state.mid_window import MidWindow
from cohort.store.base import QueryTimeout, Store
from cohort.store.clickhouse_store import ClickHouseStore
from cohort.store.duckdb_store import DuckDbStore

NOW_MS = int(time.time() * 1000)
STORES = ["duckdb", "clickhouse"]

# The few statements that differ between dialects.
DIALECT_SQL = {
    "duckdb": {
        "slow": "SELECT count(*) FROM range(100000000) a, range(100000000) b WHERE a.range + b.range = -1",
        "numbers": "SELECT i, repeat('x', 1000) AS pad FROM range(100000) t(i) ORDER BY i",
        "huge_value": "SELECT repeat('x', 100000) AS big",
        "param": ("SELECT eid FROM telemetry WHERE mid = $mid", "mid"),
    },
    "clickhouse": {
        "slow": "SELECT count() FROM numbers(1000000000000000)",
        "numbers": "SELECT number AS i, repeat('x', 1000) AS pad FROM numbers(100000) ORDER BY i",
        "huge_value": "SELECT repeat('x', 100000) AS big",
        "param": ("SELECT eid FROM telemetry WHERE mid = {mid:String}", "mid"),
    },
}


@pytest.fixture(params=STORES)
def store(request, tmp_path):
    if request.param == "duckdb":
        store = DuckDbStore(tmp_path / "store.duckdb")
    else:
        store = ClickHouseStore(request.getfixturevalue("clickhouse_dsn"),
                                database=request.getfixturevalue("clickhouse_database"))
    yield store
    store.close()


def sql(store: Store, name: str):
    return DIALECT_SQL[store.capabilities.sql_dialect][name]


def batch(events: list, offset: int, *, received_at_ms: int = NOW_MS, extra: list[LogRecord] = ()):
    body = orjson.dumps({"id": "api.sunbird.telemetry", "events": events})
    records = [LogRecord(payload=body, event_count=len(events), offset=offset, received_at_ms=received_at_ms), *extra]
    return process_batch(records, MidWindow(3600), now_ms=NOW_MS, config_version="test")


def write(store: Store, outcome, token: str | None = None) -> None:
    store.write_batch(outcome, failed_at_ms=NOW_MS, token=token or f"p{outcome.partition}-{outcome.first_offset}-"
                                                                    f"{outcome.last_offset}")


def scalar(store: Store, statement: str):
    return store.query(statement, None, 10, 10.0).rows[0][0]


def tables(store: Store) -> dict[str, list]:
    """What a user sees of the store: every row of the exposed tables, sorted."""
    return {table: sorted(map(repr, store.query(f"SELECT * FROM {table}", None, 100_000, 30.0).rows))
            for table in ("telemetry", "failed_events", "ingest_batches")}


@contextlib.contextmanager
def faulty_write(store: Store):
    """Make the next write fail half-way, as a lost disk or connection would, and restore the store after."""
    if isinstance(store, DuckDbStore):
        real = store._con

        class Faulty:
            def execute(self, statement, *args):
                if "UPDATE pipeline_state" in statement:  # the batch's last statement: rows are already in
                    raise duckdb.IOException("IO Error: could not write file (injected)")
                return real.execute(statement, *args)

            def __getattr__(self, name):
                return getattr(real, name)

        store._con = Faulty()
        try:
            yield
        finally:
            store._con = real
    elif isinstance(store, ClickHouseStore):
        real_client = store._writer

        class FaultyClient:
            inserts = 0

            def insert_arrow(self, *args, **kwargs):
                result = real_client.insert_arrow(*args, **kwargs)
                self.inserts += 1
                if self.inserts == 2:  # rows and quarantine are in, counters and position are not
                    raise OperationalError("connection reset by peer (injected)")
                return result

            def __getattr__(self, name):
                return getattr(real_client, name)

        store._writer = FaultyClient()
        try:
            yield
        finally:
            store._writer = real_client
    else:
        raise AssertionError(f"no fault injection for {type(store).__name__}: add one to faulty_write")


# -- writes and counts -------------------------------------------------------------------------------


def test_a_new_store_counts_nothing(store):
    counts = store.counts()
    assert (counts.stored, counts.failed, counts.duplicate, counts.duplicate_requests) == (0, 0, 0, 0)
    assert counts.failed_by_stage == {} and counts.last_offset == 0 and counts.positions.get(0, 0) == 0
    assert list(store.mids_since(0)) == []


def test_counts_reconcile_with_the_tables_and_the_events_in(store, sample_events):
    bad = {k: v for k, v in sample_events[3].items() if k != "ets"}
    outcomes = [batch(sample_events[:30] + [sample_events[0], bad, "x"], 1,
                      extra=[LogRecord(payload=b"{oops", event_count=2, offset=2, received_at_ms=NOW_MS)]),
                batch(sample_events[30:60], 3)]
    for outcome in outcomes:
        write(store, outcome)
    counts = store.counts()
    events_in = sum(o.events_in for o in outcomes)
    assert counts.stored + counts.failed + counts.duplicate == events_in
    assert counts.stored == scalar(store, "SELECT count(*) FROM telemetry") == 60
    assert counts.failed == scalar(store, "SELECT sum(event_count) FROM failed_events") == 4
    assert counts.duplicate == 1  # the repeat within the first batch
    assert sum(counts.failed_by_stage.values()) == counts.failed
    assert scalar(store, "SELECT count(*) FROM ingest_batches") == 3


def test_positions_follow_the_last_offset_written(store, sample_events):
    write(store, batch(sample_events[:2], 5))
    assert store.counts().positions.get(0) == 5 == store.counts().last_offset
    write(store, batch(sample_events[2:4], 9))
    counts = store.counts()
    assert counts.positions.get(0) == 9 == counts.last_offset


def test_mids_since_oldest_first_and_the_newest_within_a_limit(store, sample_events):
    write(store, batch(sample_events[:1], 1, received_at_ms=NOW_MS - 10 * 86_400_000))
    for i in range(1, 4):
        write(store, batch(sample_events[i:i + 1], i + 1))
    mids = [e["mid"] for e in sample_events[:4]]
    assert list(store.mids_since(0)) == mids
    assert list(store.mids_since(NOW_MS - 86_400_000)) == mids[1:]
    assert list(store.mids_since(0, limit=2)) == mids[2:]
    assert list(store.mids_since(NOW_MS + 1)) == []


def test_counts_are_one_snapshot_while_batches_are_written(store, sample_events):
    """What the ledger relies on: counters read together with positions are exactly those of the batches at
    or below the positions, even while a writer writes (the ledger would blip otherwise)."""
    outcomes = [batch(sample_events[i * 3:i * 3 + 1 + i % 3] + [{"eid": "NOPE"}] * (i % 4 == 0), 10 + i)
                for i in range(24)]

    def expected(position: int) -> tuple[int, int, int]:
        below = [o for o in outcomes if o.last_offset <= position]
        return (sum(o.stored for o in below), sum(o.failed_count for o in below), sum(o.duplicates for o in below))

    writer = threading.Thread(target=lambda: [write(store, o) for o in outcomes])
    writer.start()
    wrong = []
    while writer.is_alive():
        counts = store.counts()
        position = counts.positions.get(0, -1)
        if (counts.stored, counts.failed, counts.duplicate) != expected(position):
            wrong.append((position, counts))
    writer.join()
    assert wrong == []
    assert store.counts().positions.get(0) == 33


# -- what each capability promises -------------------------------------------------------------------


def test_a_batch_written_again_after_a_failed_write_is_stored_once(store, sample_events):
    """What the runner relies on whatever the store: retrying a failed batch (same token) stores it once."""
    write(store, batch(sample_events[:5], 1))
    failing = batch(sample_events[5:10] + [{"eid": "NOPE"}], 2)
    with faulty_write(store), pytest.raises(store.transient_errors):
        write(store, failing)
    write(store, failing)
    counts = store.counts()
    assert (counts.stored, counts.failed, counts.last_offset) == (10, 1, 2)
    assert scalar(store, "SELECT count(*) FROM telemetry") == 10
    assert scalar(store, "SELECT count(DISTINCT mid) FROM telemetry") == 10
    assert scalar(store, "SELECT count(*) FROM failed_events") == 1


def test_atomic_offset_a_failed_write_leaves_nothing(store, sample_events):
    if not store.capabilities.atomic_offset:
        pytest.skip(f"{type(store).__name__} does not promise atomic_offset")
    write(store, batch(sample_events[:5], 1))
    before_counts, before_rows = store.counts(), tables(store)
    with faulty_write(store), pytest.raises(store.transient_errors):
        write(store, batch(sample_events[5:10] + [{"eid": "NOPE"}], 2))
    assert store.counts() == before_counts
    assert tables(store) == before_rows


def test_idempotent_insert_the_same_token_twice_is_stored_once(store, sample_events):
    if not store.capabilities.idempotent_insert:
        pytest.skip(f"{type(store).__name__} does not promise idempotent_insert")
    outcome = batch(sample_events[:10] + [{"eid": "NOPE"}], 1)
    write(store, outcome, token="batch-1")
    once_counts, once_rows = store.counts(), tables(store)
    write(store, outcome, token="batch-1")
    assert store.counts() == once_counts
    assert tables(store) == once_rows


# -- queries ---------------------------------------------------------------------------------------


def test_the_declared_dialect_is_one_the_guard_parses(store):
    from sqlglot.dialects.dialect import Dialect

    assert Dialect.get_or_raise(store.capabilities.sql_dialect)
    assert scalar(store, "SELECT 1 AS one") == 1


def test_query_rows_columns_and_parameters(store, sample_events):
    write(store, batch(sample_events[:20], 1))
    result = store.query("SELECT eid, count(*) AS n FROM telemetry GROUP BY eid ORDER BY n DESC, eid", None, 100, 10.0)
    assert result.columns == ["eid", "n"]
    assert sum(n for _, n in result.rows) == 20 and not result.truncated and result.truncated_by is None
    statement, name = sql(store, "param")
    assert store.query(statement, {name: sample_events[7]["mid"]}, 10, 10.0).rows == [(sample_events[7]["eid"],)]


def test_query_truncation_by_rows_and_by_bytes(store):
    exact = store.query(sql(store, "numbers"), None, 100_000, 30.0)
    assert len(exact.rows) == 100_000 and not exact.truncated
    by_rows = store.query(sql(store, "numbers"), None, 10, 30.0)
    assert [r[0] for r in by_rows.rows] == list(range(10)) and by_rows.truncated_by == "rows" and by_rows.truncated
    by_bytes = store.query(sql(store, "numbers"), None, 100_000, 30.0, max_result_bytes=100_000)
    assert by_bytes.truncated_by == "bytes" and by_bytes.truncated
    assert 0 < len(by_bytes.rows) < 100 and by_bytes.json_bytes <= 100_000
    assert [r[0] for r in by_bytes.rows] == list(range(len(by_bytes.rows)))  # a prefix, in order


def test_a_first_row_over_the_byte_cap_is_coded(store):
    with pytest.raises(CohortError) as info:
        store.query(sql(store, "huge_value"), None, 10, 10.0, max_result_bytes=50_000)
    assert info.value.code == ErrorCode.QUERY_RESULT_TOO_LARGE


def test_query_errors_are_coded_never_the_engines(store):
    with pytest.raises(CohortError) as info:
        store.query("SELECT nope FROM telemetry", None, 10, 10.0)
    assert info.value.code in (ErrorCode.QUERY_INVALID, ErrorCode.QUERY_FAILED) and "nope" in info.value.message
    started = time.monotonic()
    with pytest.raises((QueryTimeout, CohortError)) as timed_out:
        store.query(sql(store, "slow"), None, 10, 0.3)
    if isinstance(timed_out.value, CohortError):
        assert timed_out.value.code == ErrorCode.QUERY_TIMEOUT
    assert time.monotonic() - started < 10
    assert scalar(store, "SELECT 1") == 1  # usable after an interrupted query


# -- forgetting a learner ----------------------------------------------------------------------------

LEARNER_A = "u:" + "a" * 32
LEARNER_B = "u:" + "b" * 32


def _of(event: dict, actor: str, channel: str = "forget-tenant") -> dict:
    event = {**event, "actor": {**event.get("actor", {}), "id": actor},
             "context": {**event.get("context", {}), "channel": channel}}
    return event


def _learner_batches(sample_events):
    a = [_of(e, LEARNER_A) for e in sample_events[:6]]
    b = [_of(e, LEARNER_B) for e in sample_events[6:12]]
    a_elsewhere = [_of(e, LEARNER_A, "other-tenant") for e in sample_events[12:14]]
    a_bad = {k: v for k, v in _of(sample_events[14], LEARNER_A).items() if k != "ets"}  # quarantined
    b_bad = {k: v for k, v in _of(sample_events[15], LEARNER_B).items() if k != "ets"}
    return [batch(a[:3] + b[:3] + [a_bad, b_bad], 1), batch(a[3:] + b[3:] + a_elsewhere, 2)], a


def test_forget_rows_deletes_one_learners_rows_of_one_tenant_only(store, sample_events):
    outcomes, a = _learner_batches(sample_events)
    for outcome in outcomes:
        write(store, outcome)
    before = store.counts()
    n = "count()" if store.capabilities.sql_dialect == "clickhouse" else "count(*)"

    expected = {e["mid"] for e in a} | {sample_events[14]["mid"]}
    assert set(store.learner_mids("forget-tenant", LEARNER_A)) == expected

    forgotten = store.forget_rows("forget-tenant", LEARNER_A)

    assert (forgotten.telemetry, forgotten.failed) == (6, 1)
    assert set(forgotten.mids) == expected and store.learner_mids("forget-tenant", LEARNER_A) == []
    assert scalar(store, f"SELECT {n} FROM telemetry WHERE actor_id = '{LEARNER_A}' AND channel = 'forget-tenant'") == 0
    assert scalar(store, f"SELECT {n} FROM telemetry WHERE actor_id = '{LEARNER_A}'") == 2  # another tenant's
    assert scalar(store, f"SELECT {n} FROM telemetry WHERE actor_id = '{LEARNER_B}'") == 6
    assert scalar(store, f"SELECT {n} FROM failed_events WHERE payload LIKE '%{LEARNER_A}%'") == 0
    assert scalar(store, f"SELECT {n} FROM failed_events WHERE payload LIKE '%{LEARNER_B}%'") == 1
    assert store.counts() == before  # the counters say what processing did: the ledger still reconciles
    assert store.forget_rows("forget-tenant", LEARNER_A).telemetry == 0  # again: nothing more


def test_forgotten_rows_do_not_come_back_when_a_batch_is_written_again(store, sample_events):
    outcomes, _ = _learner_batches(sample_events)
    for outcome in outcomes:
        write(store, outcome)
    store.forget_rows("forget-tenant", LEARNER_A)
    held = tables(store)
    if store.capabilities.idempotent_insert:  # a replay under the same token: skipped
        write(store, outcomes[0])
        assert tables(store) == held
    rows_of_a = [row for row in held["telemetry"] + held["failed_events"] if LEARNER_A in row]
    assert len(rows_of_a) == 2 and all("other-tenant" in row and "forget-tenant" not in row for row in rows_of_a)


def test_forget_rows_waits_for_a_batch_being_written(store, sample_events):
    """The writer's lock: a batch is written whole before or after a forget, never half-deleted."""
    outcomes, _ = _learner_batches(sample_events)
    write(store, outcomes[0])
    done = threading.Event()

    def writer():
        write(store, outcomes[1])
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    store.forget_rows("forget-tenant", LEARNER_A)
    thread.join(30)
    assert done.is_set()
    n = "count()" if store.capabilities.sql_dialect == "clickhouse" else "count(*)"
    left = scalar(store, f"SELECT {n} FROM telemetry WHERE actor_id = '{LEARNER_A}' AND channel = 'forget-tenant'")
    assert left in (0, 3)  # the second batch landed after the forget (whole) or before it (deleted whole)
