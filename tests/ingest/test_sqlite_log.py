"""The embedded ingest log: one SQLite file, WAL, synchronous=FULL, AUTOINCREMENT offsets."""

from __future__ import annotations

import sqlite3

import pytest

from cohort.core.log_record import LogRecord
from cohort.ingest.log import LogStats, LogUnavailable
from cohort.ingest.sqlite_log import SqliteLog


def rec(n: int, events: int = 1, received_at_ms: int = 1_000) -> LogRecord:
    return LogRecord(payload=b'{"events":[%d]}' % n, event_count=events, source="/v1/telemetry",
                     received_at_ms=received_at_ms, headers={"x-channel-id": f"ch-{n}"})


@pytest.fixture
def log(tmp_path):
    log = SqliteLog(tmp_path / "log" / "ingest.sqlite")
    yield log
    try:
        log.close()
    except sqlite3.ProgrammingError:
        pass


class FaultyConnection:
    """Wraps the writer connection; while `fault` is set, statements starting with it fail as a full
    or failing disk would make them fail."""

    def __init__(self, conn: sqlite3.Connection):
        self._conn = conn
        self.fault: str | None = None
        self.error: BaseException = sqlite3.OperationalError("disk I/O error")

    def execute(self, sql, *args):
        if self.fault is not None and sql.lstrip().upper().startswith(self.fault):
            raise self.error
        return self._conn.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self._conn, name)


def test_file_is_durable_wal(log):
    conn = sqlite3.connect(log.path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()
    assert log._writer.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_append_and_read_round_trip(log):
    offsets = log.append_many([rec(1, 3, received_at_ms=111), rec(2, 2, received_at_ms=222)])
    assert len(offsets) == 2 and offsets[0] < offsets[1]
    records = log.read(0, 100)
    assert [r.offset for r in records] == offsets
    assert records[0] == LogRecord(payload=b'{"events":[1]}', event_count=3, source="/v1/telemetry",
                                   received_at_ms=111, headers={"x-channel-id": "ch-1"}, offset=offsets[0])
    assert records[1].payload == b'{"events":[2]}' and records[1].event_count == 2


def test_read_after_an_offset(log):
    offsets = log.append_many([rec(n) for n in range(5)])
    assert [r.offset for r in log.read(offsets[2], 100)] == offsets[3:]
    assert log.read(offsets[-1], 100) == []


def test_offsets_strictly_increase_across_appends_and_reopen(tmp_path):
    path = tmp_path / "ingest.sqlite"
    log = SqliteLog(path)
    first = log.append_many([rec(1), rec(2)]) + log.append_many([rec(3)])
    log.close()
    log = SqliteLog(path)
    try:
        assert [r.offset for r in log.read(0, 100)] == first  # durable across close + reopen
        second = log.append_many([rec(4)])
        assert first == sorted(first) and len(set(first)) == 3
        assert second[0] > first[-1]
    finally:
        log.close()


def test_offsets_never_go_back_after_truncation(tmp_path):
    path = tmp_path / "ingest.sqlite"
    log = SqliteLog(path)
    offsets = log.append_many([rec(1), rec(2)])
    log.commit("pipeline", offsets[-1])
    assert log.truncate("pipeline", older_than_ms=10**15) == 2
    log.close()
    log = SqliteLog(path)
    try:
        assert log.read(0, 10) == []
        assert log.append_many([rec(3)])[0] > offsets[-1]
    finally:
        log.close()


def test_read_respects_max_events(log):
    offsets = log.append_many([rec(1, 3), rec(2, 3), rec(3, 3), rec(4, 1)])
    assert [r.offset for r in log.read(0, 6)] == offsets[:2]
    assert [r.offset for r in log.read(0, 7)] == offsets[:2]  # the third would make 9
    assert [r.offset for r in log.read(offsets[1], 4)] == offsets[2:]
    assert [r.offset for r in log.read(0, 1000)] == offsets


@pytest.mark.parametrize("max_events", [0, 1, 5])
def test_read_returns_at_least_one_record_even_when_it_is_bigger(log, max_events):
    offsets = log.append_many([rec(1, 50), rec(2, 1)])
    assert [r.offset for r in log.read(0, max_events)] == offsets[:1]


def test_commit_and_committed(log):
    assert log.committed("pipeline") == 0
    log.commit("pipeline", 5)
    log.commit("pipeline", 7)
    log.commit("replay", 2)
    assert log.committed("pipeline") == 7 and log.committed("replay") == 2


def test_committed_offset_survives_reopen(tmp_path):
    log = SqliteLog(tmp_path / "ingest.sqlite")
    log.commit("pipeline", 42)
    log.close()
    log = SqliteLog(tmp_path / "ingest.sqlite")
    try:
        assert log.committed("pipeline") == 42
    finally:
        log.close()


def test_stats_totals_and_backlog(log):
    assert log.stats() == LogStats(received_events=0, received_records=0, last_offset=0, events_after=0)
    offsets = log.append_many([rec(1, 4), rec(2, 6)]) + log.append_many([rec(3, 1)])
    assert log.stats() == LogStats(received_events=11, received_records=3, last_offset=offsets[-1], events_after=11)
    assert log.stats(after=offsets[0]).events_after == 7
    assert log.stats(after=offsets[-1]).events_after == 0


def test_stats_totals_persist_across_truncation_and_reopen(tmp_path):
    path = tmp_path / "ingest.sqlite"
    log = SqliteLog(path)
    offsets = log.append_many([rec(1, 4), rec(2, 6)])
    log.commit("pipeline", offsets[-1])
    log.truncate("pipeline", older_than_ms=10**15)
    log.close()
    log = SqliteLog(path)
    try:
        stats = log.stats(after=offsets[-1])
        assert (stats.received_events, stats.received_records, stats.last_offset) == (10, 2, offsets[-1])
        assert stats.events_after == 0
    finally:
        log.close()


def test_truncate_removes_only_committed_and_old_records(log):
    old = log.append_many([rec(1, received_at_ms=100), rec(2, received_at_ms=200)])
    new = log.append_many([rec(3, received_at_ms=900)])
    uncommitted_old = log.append_many([rec(4, received_at_ms=100)])
    log.commit("pipeline", new[0])  # committed: old[0], old[1], new[0]
    assert log.truncate("pipeline", older_than_ms=500) == 2  # the committed ones older than 500
    assert [r.offset for r in log.read(0, 100)] == new + uncommitted_old


def test_truncate_without_a_commit_removes_nothing(log):
    log.append_many([rec(1, received_at_ms=1)])
    assert log.truncate("pipeline", older_than_ms=10**15) == 0
    assert len(log.read(0, 10)) == 1


def test_truncate_uses_the_named_consumer(log):
    offsets = log.append_many([rec(1, received_at_ms=1), rec(2, received_at_ms=1)])
    log.commit("other", offsets[-1])
    log.commit("pipeline", offsets[0])
    assert log.truncate("pipeline", older_than_ms=10) == 1
    assert [r.offset for r in log.read(0, 10)] == offsets[1:]


def test_disk_error_mid_append_raises_log_unavailable_and_keeps_nothing(log):
    log.append_many([rec(1, 2)])
    before = log.stats()
    faulty = FaultyConnection(log._writer)
    log._writer = faulty
    faulty.fault = "UPDATE TOTALS"  # after the INSERTs, inside the transaction
    with pytest.raises(LogUnavailable, match="disk I/O error"):
        log.append_many([rec(2, 5), rec(3, 5)])
    assert not faulty.in_transaction
    assert log.stats() == before  # the half-written group was rolled back
    assert len(log.read(0, 100)) == 1

    faulty.fault = None  # the disk recovers
    offsets = log.append_many([rec(4, 1)])
    assert offsets[0] > before.last_offset
    assert log.stats().received_events == before.received_events + 1


@pytest.mark.parametrize("fault", ["BEGIN", "INSERT", "COMMIT"])
def test_any_failing_step_raises_log_unavailable_then_recovers(log, fault):
    faulty = FaultyConnection(log._writer)
    log._writer = faulty
    faulty.fault = fault
    with pytest.raises(LogUnavailable):
        log.append_many([rec(1)])
    assert log.read(0, 10) == [] and log.stats().received_records == 0
    faulty.fault = None
    assert len(log.append_many([rec(2)])) == 1
    assert log.stats().received_records == 1


def test_append_to_a_closed_log_raises_log_unavailable(log):
    log.close()
    with pytest.raises(LogUnavailable):
        log.append_many([rec(1)])


def test_a_non_sqlite_failure_does_not_poison_the_next_append(log):
    bad = LogRecord(payload=b"{}", event_count=1, headers={"x": object()})  # type: ignore[dict-item]
    with pytest.raises(Exception):
        log.append_many([rec(1), bad])
    assert len(log.append_many([rec(2)])) == 1  # an innocent client must not get a 503
