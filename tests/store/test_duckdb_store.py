"""The embedded analytical store: one atomic commit per batch, counters and offset included."""

from __future__ import annotations

import time

import duckdb
import orjson
import pytest

from cohort.core.errors import CohortError, ErrorCode
from cohort.core.log_record import LogRecord
from cohort.core.process_batch import process_batch
from cohort.state.mid_window import MidWindow
from cohort.store.base import QueryTimeout, StoreCounts
from cohort.store.duckdb_store import DuckDbStore

NOW_MS = int(time.time() * 1000)


def outcome_for(events: list, offset: int = 1, *, extra_records: list[LogRecord] = (), seen=None,
                received_at_ms: int = NOW_MS):
    body = orjson.dumps({"id": "api.sunbird.telemetry", "events": events})
    records = [LogRecord(payload=body, event_count=len(events), offset=offset, received_at_ms=received_at_ms),
               *extra_records]
    return process_batch(records, seen or MidWindow(3600), now_ms=NOW_MS, config_version="test")


@pytest.fixture
def store(tmp_path):
    store = DuckDbStore(tmp_path / "data" / "store.duckdb")
    yield store
    store.close()


class FaultyConnection:
    """Wraps the store's DuckDB connection; a statement containing `fault` raises mid-transaction."""

    def __init__(self, con):
        self._con = con
        self.fault: str | None = None

    def execute(self, sql, *args):
        if self.fault and self.fault in sql:
            raise duckdb.IOException("IO Error: could not write file (injected)")
        return self._con.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self._con, name)


def scalar(store, sql):
    return store.query(sql, None, 10, 5.0).rows[0][0]


def test_new_store_is_empty(store):
    assert store.counts() == StoreCounts(stored=0, failed=0, duplicate=0, last_offset=0, failed_by_stage={},
                                          positions={0: 0})
    assert list(store.mids_since(0)) == []


def test_write_batch_stores_rows_failed_counters_and_offset(store, sample_events):
    bad = {k: v for k, v in sample_events[3].items() if k != "mid"}
    events = sample_events[:3] + [sample_events[0], bad, "x"]
    corrupt = LogRecord(payload=b"{oops", event_count=2, offset=5)
    outcome = outcome_for(events, offset=4, extra_records=[corrupt])
    store.write_batch(outcome, failed_at_ms=NOW_MS)

    assert store.counts() == StoreCounts(stored=3, failed=4, duplicate=1, last_offset=5,
                                         failed_by_stage={"validate": 1, "extract": 3}, positions={0: 5})
    result = store.query("SELECT mid, eid, epoch_ms(ets), channel, log_offset, event FROM telemetry ORDER BY ets",
                         None, 10, 5.0)
    assert sorted(r[0] for r in result.rows) == sorted(e["mid"] for e in sample_events[:3])
    first = next(r for r in result.rows if r[0] == sample_events[0]["mid"])
    assert first[1] == sample_events[0]["eid"] and first[3] == sample_events[0]["context"]["channel"]
    assert first[2] == int(sample_events[0]["ets"])
    assert first[4] == 4
    assert orjson.loads(first[5]) == sample_events[0]

    failed = store.query("SELECT error_code, stage, event_count, payload, log_offset, epoch_ms(failed_at) FROM failed_events "
                         "ORDER BY error_code", None, 10, 5.0).rows
    assert [(r[0], r[1], r[2]) for r in failed] == [
        (ErrorCode.EXTRACT_NOT_OBJECT, "extract", 1), (ErrorCode.EXTRACT_PAYLOAD, "extract", 2),
        (ErrorCode.VALIDATION_SCHEMA, "validate", 1)]
    assert failed[1][3] == "{oops" and failed[1][4] == 5
    assert orjson.loads(failed[2][3]) == bad  # the original event, for replay
    assert failed[0][5] == NOW_MS


def test_counters_accumulate_and_offset_moves(store, sample_events):
    store.write_batch(outcome_for(sample_events[:10], offset=1))
    store.write_batch(outcome_for(sample_events[10:15] + sample_events[10:12], offset=2))
    counts = store.counts()
    assert (counts.stored, counts.failed, counts.duplicate, counts.last_offset) == (15, 0, 2, 2)
    assert scalar(store, "SELECT count(*) FROM telemetry") == 15


def test_empty_outcome_only_moves_the_offset(store, sample_events):
    outcome = outcome_for([sample_events[0]], offset=9, seen=_seen(sample_events[0]["mid"]))
    store.write_batch(outcome)
    assert store.counts() == StoreCounts(stored=0, failed=0, duplicate=1, last_offset=9, failed_by_stage={},
                                         positions={0: 9})


def _seen(*mids):
    window = MidWindow(3600)
    window.add(mids)
    return window


@pytest.mark.parametrize("fault", ["INSERT INTO failed_events", "UPDATE pipeline_state"])
def test_write_batch_is_atomic(store, sample_events, fault):
    store.write_batch(outcome_for(sample_events[:5], offset=1))
    before = store.counts()
    faulty = FaultyConnection(store._con)
    store._con = faulty
    faulty.fault = fault
    batch = outcome_for(sample_events[5:10] + [{"eid": "NOPE"}], offset=2)
    with pytest.raises(duckdb.IOException):
        store.write_batch(batch)
    # nothing of the failed batch is visible: not its rows, not its quarantine, not its counters/offset
    assert store.counts() == before
    assert scalar(store, "SELECT count(*) FROM telemetry") == 5
    assert scalar(store, "SELECT count(*) FROM failed_events") == 0

    faulty.fault = None  # the retry commits the whole batch once
    store.write_batch(batch)
    counts = store.counts()
    assert (counts.stored, counts.failed, counts.last_offset) == (10, 1, 2)
    assert scalar(store, "SELECT count(DISTINCT mid) FROM telemetry") == 10


def test_mids_since_uses_ingest_time(store, sample_events):
    old, new = sample_events[:3], sample_events[3:5]
    store.write_batch(outcome_for(old, offset=1, received_at_ms=NOW_MS - 10 * 86_400_000))
    store.write_batch(outcome_for(new, offset=2, received_at_ms=NOW_MS))
    assert sorted(store.mids_since(NOW_MS - 86_400_000)) == sorted(e["mid"] for e in new)
    assert sorted(store.mids_since(0)) == sorted(e["mid"] for e in old + new)
    assert list(store.mids_since(NOW_MS + 1)) == []


def test_query_returns_columns_and_rows(store, sample_events):
    store.write_batch(outcome_for(sample_events[:20]))
    result = store.query("SELECT eid, count(*) AS n FROM telemetry GROUP BY eid ORDER BY n DESC, eid", None, 100, 5.0)
    assert result.columns == ["eid", "n"]
    assert sum(n for _, n in result.rows) == 20 and not result.truncated


def test_query_named_params(store, sample_events):
    store.write_batch(outcome_for(sample_events[:20]))
    mid = sample_events[7]["mid"]
    result = store.query("SELECT eid FROM telemetry WHERE mid = $mid", {"mid": mid}, 10, 5.0)
    assert result.rows == [(sample_events[7]["eid"],)]


def test_query_row_limit_sets_truncated(store, sample_events):
    store.write_batch(outcome_for(sample_events[:30]))
    limited = store.query("SELECT mid FROM telemetry", None, 10, 5.0)
    assert len(limited.rows) == 10 and limited.truncated
    exact = store.query("SELECT mid FROM telemetry", None, 30, 5.0)
    assert len(exact.rows) == 30 and not exact.truncated


def test_query_timeout(store):
    started = time.monotonic()
    with pytest.raises(QueryTimeout):
        store.query("SELECT count(*) FROM range(100000000) a, range(100000000) b WHERE a.range + b.range = -1",
                    None, 10, 0.2)
    assert time.monotonic() - started < 5
    assert scalar(store, "SELECT 1") == 1  # the store is usable after an interrupted query


def test_sql_errors_are_coded_not_timeouts_nor_engine_errors(store):
    """The API needs no knowledge of the engine: its errors arrive as ERR_QUERY_FAILED with its message."""
    with pytest.raises(CohortError) as info:
        store.query("SELECT nope FROM telemetry", None, 10, 5.0)
    assert info.value.code == ErrorCode.QUERY_FAILED and "nope" in info.value.message
    with pytest.raises(CohortError) as info:
        store.query("SELECT $missing", {"other": 1}, 10, 5.0)
    assert info.value.code == ErrorCode.QUERY_FAILED


def test_data_survives_close_and_reopen(tmp_path, sample_events):
    path = tmp_path / "store.duckdb"
    store = DuckDbStore(path)
    store.write_batch(outcome_for(sample_events[:8] + [5], offset=3))
    counts = store.counts()
    store.close()
    store = DuckDbStore(path)
    try:
        assert store.counts() == counts
        assert counts.stored == 8 and counts.failed == 1 and counts.last_offset == 3
        assert scalar(store, "SELECT count(*) FROM telemetry") == 8
        assert scalar(store, "SELECT count(*) FROM failed_events") == 1
        assert sorted(store.mids_since(0)) == sorted(e["mid"] for e in sample_events[:8])
    finally:
        store.close()


def test_sql_cannot_reach_files_even_past_the_guard(tmp_path, store):
    """Defence in depth: the store itself refuses file access, whatever SQL reaches it."""
    secret = tmp_path / "secret.csv"
    secret.write_text("api_key\nTOP-SECRET-VALUE\n")
    for sql in (f"SELECT * FROM read_csv('{secret}')", f"SELECT * FROM '{secret}'"):
        with pytest.raises(CohortError) as info:
            store.query(sql, None, 10, 5.0)
        assert info.value.code == ErrorCode.QUERY_FAILED
        assert "TOP-SECRET-VALUE" not in str(info.value)


def test_mids_since_with_a_limit_keeps_the_newest_oldest_first(store, sample_events):
    for i in range(0, 30, 10):  # three batches, offsets 1..3
        store.write_batch(outcome_for(sample_events[i:i + 10], offset=i // 10 + 1))
    newest = list(store.mids_since(0, limit=15))
    assert len(newest) == 15
    batches = [{e["mid"] for e in sample_events[i:i + 10]} for i in range(0, 30, 10)]
    assert set(newest[-10:]) == batches[2]  # the newest batch, last
    assert set(newest[:5]) <= batches[1]  # then as much of the one before as fits
    assert not set(newest) & batches[0]


class _FailingConnection:
    """The store's connection, except that the next INSERT and the next `failures` rollbacks fail
    as the engine fails when its buffer memory is full (a rollback needs memory too)."""

    def __init__(self, con, failures: int, undone_anyway: bool = False):
        self._con, self.failures, self.insert_fails, self.undone_anyway = con, failures, True, undone_anyway

    def execute(self, sql, *args):
        if self.insert_fails and sql.startswith("INSERT INTO telemetry"):
            self.insert_fails = False
            raise duckdb.OutOfMemoryException("Out of Memory Error: failed to allocate data of size 32.0 KiB")
        return self._con.execute(sql, *args)

    def rollback(self):
        if self.failures:
            self.failures -= 1
            if self.undone_anyway:  # the engine ended the transaction before the error reached us
                self._con.rollback()
            raise duckdb.OutOfMemoryException("Out of Memory Error: failed to allocate data of size 2.0 KiB")
        return self._con.rollback()

    def __getattr__(self, name):
        return getattr(self._con, name)


def test_a_write_whose_rollback_failed_does_not_wedge_the_store(store, sample_events):
    """Seen under hostile queries: an insert ran out of memory, so did its rollback, and every later
    write failed with "Current transaction is aborted" for good: the pipeline stalled for ever."""
    real = store._con
    store._con = _FailingConnection(real, failures=2)
    first = outcome_for(sample_events[:5], offset=1)
    with pytest.raises(duckdb.OutOfMemoryException):
        store.write_batch(first, failed_at_ms=NOW_MS)
    with pytest.raises(duckdb.OutOfMemoryException):  # still out of memory: still a transient fault
        store.write_batch(first, failed_at_ms=NOW_MS)
    store.write_batch(first, failed_at_ms=NOW_MS)  # memory is back: the retry goes through
    store.write_batch(outcome_for(sample_events[5:8], offset=2), failed_at_ms=NOW_MS)
    store._con = real
    counts = store.counts()
    assert (counts.stored, counts.last_offset) == (8, 2)
    assert store.query("SELECT count(*) AS n FROM telemetry", None, 10, 10).rows == [(8,)]


def test_compacting_leaves_no_byte_of_forgotten_rows_and_keeps_the_rest(tmp_path, sample_events):
    """DuckDB keeps deleted rows' bytes in its file after a forget; the offline compaction's copy holds none."""
    import orjson

    from cohort.core.log_record import LogRecord
    from cohort.core.process_batch import process_batch
    from cohort.state.mid_window import MidWindow
    from cohort.store.duckdb_store import compact_store_file

    now = int(time.time() * 1000)
    path = tmp_path / "store.duckdb"
    store = DuckDbStore(path)
    gone, kept = "u:" + "a1" * 16, "u:" + "b2" * 16
    events = [dict(e, mid=f"m-{i}", actor={"id": gone if i % 4 == 0 else kept, "type": "User"},
                   context={**e["context"], "channel": "t1"}) for i, e in enumerate(sample_events * 8)]
    record = LogRecord(payload=orjson.dumps({"events": events}), event_count=len(events), offset=1, received_at_ms=now)
    store.write_batch(process_batch([record], MidWindow(3600), now_ms=now, config_version="t"), failed_at_ms=now)
    before = store.counts()
    assert store.forget_rows("t1", gone).telemetry == len(events) // 4
    store.close()
    assert gone.encode() in path.read_bytes()  # what the forget alone leaves in the file (not to queries)

    compact_store_file(path)

    data = path.read_bytes()
    assert gone.encode() not in data and not path.with_name(path.name + ".compact").exists()
    reopened = DuckDbStore(path)
    try:
        assert reopened.counts() == before
        assert reopened.query("SELECT count(*) FROM telemetry", None, 10, 10).rows == [(len(events) - len(events) // 4,)]
        assert reopened.query("SELECT count(*) FROM pipeline_state", None, 10, 10).rows == \
            reopened.query("SELECT count(DISTINCT name) FROM pipeline_state", None, 10, 10).rows
    finally:
        reopened.close()


@pytest.mark.parametrize("transaction", ["write_batch", "rollup_transaction"])
def test_a_rollback_that_failed_after_the_engine_ended_the_transaction_does_not_wedge_the_store(
        store, sample_events, transaction):
    """Seen under hostile queries at 10,000 events/s: a rollback reported out of memory although the engine had
    ended the transaction, and every later write failed on "cannot rollback - no transaction is active" for good
    (the pipeline stalled 200 s and more, 46 failures in a row, until the run was stopped)."""
    real = store._con
    store._con = _FailingConnection(real, failures=1, undone_anyway=True)
    first = outcome_for(sample_events[:5], offset=1)
    with pytest.raises(duckdb.OutOfMemoryException):
        store.write_batch(first, failed_at_ms=NOW_MS)
    if transaction == "rollup_transaction":
        with store.rollup_transaction() as con:
            con.execute("SELECT 1").fetchall()
    store.write_batch(first, failed_at_ms=NOW_MS)
    store._con = real
    assert store.query("SELECT count(*) AS n FROM telemetry", None, 10, 10).rows == [(5,)]


@pytest.mark.parametrize("sql", ["SELECT repeat('x', 100000) AS v", "SELECT [repeat('x', 100000)] AS l",
                                 "SELECT 1 AS n, {'s': repeat('x', 100000)} AS s", "SELECT repeat('x', 100000)::BLOB"])
def test_a_value_larger_than_a_response_is_refused_by_the_engine_before_the_server_copies_it(store, sql):
    """A value over the response bound could never be sent; fetched, a `string_agg` over the events copied hundreds
    of MB into the server (the Python string, then its JSON) before the size check: the engine refuses it now."""
    with pytest.raises(CohortError) as info:
        store.query(sql, None, 10, 10.0, max_result_bytes=50_000)
    assert info.value.code == ErrorCode.QUERY_RESULT_TOO_LARGE
    assert "larger than a response may be" in info.value.message
    ok = store.query("SELECT repeat('x', 1000) AS v, 42 AS n, 2.5::DOUBLE AS d", None, 10, 10.0, max_result_bytes=50_000)
    assert [tuple(row) for row in ok.rows] == [("x" * 1000, 42, 2.5)]


class _CommitRaisesAfterCommitting:
    """The store's connection, except that the next commit commits and then reports out of memory (as an
    out-of-memory in what the engine does right after a commit reaches the caller)."""

    def __init__(self, con):
        self._con, self.armed = con, True

    def commit(self):
        self._con.commit()
        if self.armed:
            self.armed = False
            raise duckdb.OutOfMemoryException("Out of Memory Error: failed to allocate data of size 8.0 MiB")

    def __getattr__(self, name):
        return getattr(self._con, name)


def test_a_batch_whose_commit_reported_an_error_after_committing_is_not_stored_twice(store, sample_events):
    """Seen under hostile queries: the pipeline retried a batch whose commit had raised, and its 5,000 events
    were stored twice (the ledger showed -5,000 unaccounted)."""
    real = store._con
    store._con = _CommitRaisesAfterCommitting(real)
    first = outcome_for(sample_events[:5], offset=1)
    with pytest.raises(duckdb.OutOfMemoryException):
        store.write_batch(first, failed_at_ms=NOW_MS)
    store.write_batch(first, failed_at_ms=NOW_MS)  # the pipeline's retry
    store.write_batch(outcome_for(sample_events[5:8], offset=2), failed_at_ms=NOW_MS)
    store._con = real
    counts = store.counts()
    assert (counts.stored, counts.last_offset) == (8, 2)
    assert store.query("SELECT count(*) AS n, count(DISTINCT mid) FROM telemetry", None, 10, 10).rows == [(8, 8)]
