"""The pipeline runner over a real SQLite log and DuckDB store: store first, then the log offset."""

from __future__ import annotations

import time

import orjson
import pytest

from cohort.core.log_record import LogRecord
from cohort.ingest.sqlite_log import SqliteLog
from cohort.pipeline.embedded_dedup import open_dedup_states
from cohort.pipeline.runner import CONSUMER, PipelineRunner
from cohort.settings import Settings
from cohort.store.duckdb_store import DuckDbStore

DAY_S = 86_400.0


class Node:
    """The embedded footprint's files, opened (and re-opened after a 'crash') like EmbeddedNode does."""

    def __init__(self, data_dir, clock=time.time):
        self.data_dir = data_dir
        self.log = SqliteLog(data_dir / "ingest-log.sqlite")
        self.store = DuckDbStore(data_dir / "store.duckdb")
        paths = Settings(data_dir=data_dir)
        self.dedup = open_dedup_states(self.store, 7 * DAY_S, mid_path=paths.dedup_mid_path,
                                       msgid_path=paths.dedup_msgid_path, cache_bytes=8 << 20, clock=clock)

    def runner(self, batch_events: int = 100) -> PipelineRunner:
        return PipelineRunner(self.log, self.store, **self.dedup, batch_events=batch_events,
                              retention_s=DAY_S, idle_wait_s=0.005)

    def append(self, events: list, per_record: int = 50, received_at_ms: int | None = None) -> list[int]:
        received = received_at_ms if received_at_ms is not None else int(time.time() * 1000)
        records = [
            LogRecord(payload=orjson.dumps({"id": "api.sunbird.telemetry", "params": {"msgid": f"m{i}"},
                                            "events": events[i:i + per_record]}),
                      event_count=len(events[i:i + per_record]), received_at_ms=received,
                      headers={"x-channel-id": "test"})
            for i in range(0, len(events), per_record)
        ]
        return self.log.append_many(records)

    def stored_rows(self) -> int:
        return self.store.query("SELECT count(*) FROM telemetry", None, 1, 5.0).rows[0][0]

    def distinct_mids(self) -> int:
        return self.store.query("SELECT count(DISTINCT mid) FROM telemetry", None, 1, 5.0).rows[0][0]

    def close(self):
        for state in self.dedup.values():
            state.close()
        self.store.close()
        self.log.close()


@pytest.fixture
def node(tmp_path):
    node = Node(tmp_path / "data")
    yield node
    node.close()


def reopen(node: Node, clock=time.time) -> Node:
    """A crash and restart: drop every in-memory object, open the same files again."""
    node.close()
    return Node(node.data_dir, clock)


def test_drain_processes_everything_and_commits_the_log_offset(node, sample_events):
    runner = node.runner(batch_events=100)
    offsets = node.append(sample_events, per_record=50)
    runner.acked(500)
    assert runner.backlog_events == 500

    assert runner.drain() == 500
    counts = node.store.counts()
    assert (counts.stored, counts.failed, counts.duplicate) == (500, 0, 0)
    assert counts.last_offset == offsets[-1] == runner.offset
    assert node.log.committed(CONSUMER) == offsets[-1]
    assert runner.batches == 5  # 100 events a batch
    assert runner.backlog_events == 0
    assert node.stored_rows() == node.distinct_mids() == 500
    assert runner.step() == 0  # drained


def test_bad_events_are_quarantined_and_counted(node, sample_events):
    runner = node.runner()
    events = sample_events[:10] + [{"eid": "NOPE", "mid": "x"}, 7] + sample_events[:2]
    node.append(events, per_record=5)
    node.log.append_many([LogRecord(payload=b"\x00garbage", event_count=3)])
    assert runner.drain() == 17
    counts = node.store.counts()
    assert (counts.stored, counts.failed, counts.duplicate) == (10, 5, 2)
    assert counts.stored + counts.failed + counts.duplicate == node.log.stats().received_events


def test_store_failure_commits_nothing_and_the_retry_loses_nothing(node, sample_events, monkeypatch):
    runner = node.runner(batch_events=100)
    node.append(sample_events, per_record=50)
    runner.acked(500)
    real_write = node.store.write_batch
    failures = []

    def write_once_failing(outcome, **kwargs):
        if not failures:
            failures.append(outcome.last_offset)
            raise OSError("disk full")
        return real_write(outcome, **kwargs)

    monkeypatch.setattr(node.store, "write_batch", write_once_failing)
    with pytest.raises(OSError, match="disk full"):
        runner.step()
    assert node.log.committed(CONSUMER) == 0 and runner.offset == 0
    assert node.store.counts().stored == 0
    assert runner.backlog_events == 500
    assert runner.mid_state.seen([e["mid"] for e in sample_events]) == set()  # the failed batch's were not remembered

    assert runner.step() == 100  # the same batch again, now stored
    assert runner.drain() == 400
    counts = node.store.counts()
    assert (counts.stored, counts.failed, counts.duplicate) == (500, 0, 0)
    assert node.stored_rows() == node.distinct_mids() == 500
    assert runner.backlog_events == 0


def test_crash_between_store_commit_and_log_commit(node, sample_events, monkeypatch):
    runner = node.runner(batch_events=100)
    offsets = node.append(sample_events, per_record=50)
    assert runner.step() == 100
    real_commit = node.log.commit

    def crash(consumer, offset):
        raise SystemExit("killed after the store commit, before the log commit")

    monkeypatch.setattr(node.log, "commit", crash)
    with pytest.raises(SystemExit):
        runner.step()
    monkeypatch.setattr(node.log, "commit", real_commit)
    stored_before = node.store.counts()
    assert stored_before.stored == 200 and stored_before.last_offset == offsets[3]
    assert node.log.committed(CONSUMER) == offsets[1]  # the log did not hear of the second batch

    node = reopen(node)
    try:
        restarted = node.runner(batch_events=100)
        assert restarted.offset == offsets[3]  # resumes from the store's offset, not the log's
        assert node.log.committed(CONSUMER) == offsets[3]
        assert restarted.backlog_events == 300
        assert restarted.drain() == 300  # only what the store had not committed
        counts = node.store.counts()
        assert (counts.stored, counts.failed, counts.duplicate) == (500, 0, 0)  # nothing counted twice
        assert node.stored_rows() == node.distinct_mids() == 500  # nothing stored twice
        assert node.log.committed(CONSUMER) == offsets[-1]
    finally:
        node.close()


def test_dedup_survives_restart(node, sample_events):
    runner = node.runner(batch_events=500)
    node.append(sample_events[:300])
    runner.drain()
    node = reopen(node)
    try:
        restarted = node.runner(batch_events=500)
        assert restarted.mid_state.seen([e["mid"] for e in sample_events]) == {e["mid"] for e in sample_events[:300]}
        node.append(sample_events)  # a client re-sends everything after a timeout
        assert restarted.drain() == 500
        counts = node.store.counts()
        assert (counts.stored, counts.duplicate) == (500, 300)
        assert node.stored_rows() == node.distinct_mids() == 500
    finally:
        node.close()


def test_after_a_restart_mids_stored_more_than_a_period_ago_are_new_again(node, sample_events):
    runner = node.runner()
    node.append(sample_events[:20])
    runner.drain()
    node = reopen(node, clock=lambda: time.time() + 8 * DAY_S)  # restarted 8 days later
    try:
        restarted = node.runner()
        assert restarted.mid_state.seen([e["mid"] for e in sample_events[:20]]) == set()
        node.append(sample_events[:20])
        restarted.drain()
        assert node.store.counts().stored == 40  # beyond the dedup period a mid is new again
    finally:
        node.close()


def test_backlog_bookkeeping(node, sample_events):
    node.append(sample_events[:120], per_record=40)
    runner = node.runner(batch_events=40)
    assert runner.backlog_events == 120  # what was in the log before the runner started
    node.append(sample_events[120:200], per_record=40)
    runner.acked(40)
    runner.acked(40)
    assert runner.backlog_events == 200
    runner.step()
    assert runner.backlog_events == 160
    runner.drain()
    assert runner.backlog_events == 0
    assert runner.backlog_events == node.log.stats(after=runner.offset).events_after


def test_background_loop_retries_after_a_failure(node, sample_events, monkeypatch):
    runner = node.runner(batch_events=100)
    real_write = node.store.write_batch
    calls = []

    def flaky(outcome, **kwargs):
        calls.append(outcome.last_offset)
        if len(calls) == 1:
            raise OSError("transient")
        return real_write(outcome, **kwargs)

    monkeypatch.setattr(node.store, "write_batch", flaky)
    runner.start()
    try:
        node.append(sample_events, per_record=50)
        runner.acked(500)
        deadline = time.monotonic() + 15
        while node.store.counts().stored < 500 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        runner.stop()
    assert not runner.running
    counts = node.store.counts()
    assert (counts.stored, counts.failed, counts.duplicate) == (500, 0, 0)
    assert runner.last_error is None  # cleared by the next good batch
    assert calls.count(calls[0]) == 2  # the failed batch was retried, once
    assert node.stored_rows() == 500


def test_background_loop_truncates_processed_records(node, sample_events):
    old = int((time.time() - 2 * DAY_S) * 1000)
    node.append(sample_events[:100], per_record=50, received_at_ms=old)
    runner = node.runner(batch_events=1000)
    runner.start()
    try:
        deadline = time.monotonic() + 15
        while node.log.read(0, 1000) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        runner.stop()
    assert node.log.read(0, 1000) == []  # processed and older than the retention: gone
    assert node.store.counts().stored == 100
    assert node.log.stats().received_events == 100  # totals are kept


def test_a_lost_ingest_log_does_not_make_the_runner_skip_new_records(tmp_path, sample_events):
    """If the log file is deleted while the store survives, offsets continue after the store's."""
    from cohort.ingest.sqlite_log import SqliteLog
    from cohort.pipeline.runner import PipelineRunner
    from cohort.store.duckdb_store import DuckDbStore

    def envelope_record(events):
        body = orjson.dumps({"id": "api.sunbird.telemetry", "events": events})
        return LogRecord(payload=body, event_count=len(events), received_at_ms=1_700_000_000_000)

    store = DuckDbStore(tmp_path / "store.duckdb")
    log_ = SqliteLog(tmp_path / "log.sqlite")
    log_.append_many([envelope_record(sample_events[i:i + 10]) for i in range(0, 100, 10)])
    dedup = open_dedup_states(store, 3600, mid_path=tmp_path / "dedup-mid", msgid_path=tmp_path / "dedup-msgid",
                              cache_bytes=8 << 20)
    runner = PipelineRunner(log_, store, **dedup, batch_events=1000, retention_s=3600)
    assert runner.drain() == 100 and runner.offset == 10
    log_.close()
    for path in tmp_path.glob("log.sqlite*"):
        path.unlink()

    log_ = SqliteLog(tmp_path / "log.sqlite")
    runner = PipelineRunner(log_, store, **dedup, batch_events=1000, retention_s=3600)
    [offset] = log_.append_many([envelope_record(sample_events[100:150])])
    assert offset == 11
    assert runner.drain() == 50
    assert store.counts().stored == 150
    for state in dedup.values():
        state.close()


def _retryable_request(events: list, msgid: str) -> LogRecord:
    body = orjson.dumps({"id": "api.sunbird.telemetry", "params": {"msgid": msgid}, "events": events})
    return LogRecord(payload=body, event_count=len(events), received_at_ms=int(time.time() * 1000),
                     headers={"x-channel-id": "test", "msgid": msgid})


def test_a_retried_request_adds_nothing_to_either_table(node, sample_events):
    """A client that did not hear the ack sends the same batch again: valid, duplicate and invalid events."""
    events = [*sample_events[:5], sample_events[0], dict(sample_events[5], ets="not a number"), 7]
    runner = node.runner()
    node.log.append_many([_retryable_request(events, "batch-1")])
    runner.drain()
    before = node.store.counts()
    assert (before.stored, before.failed, before.duplicate) == (5, 2, 1)

    node.log.append_many([_retryable_request(events, "batch-1"), _retryable_request(events, "batch-1")])
    runner.drain()
    after = node.store.counts()
    assert (after.stored, after.failed) == (before.stored, before.failed)  # nothing stored or quarantined again
    assert after.duplicate == before.duplicate + 2 * len(events) and after.duplicate_requests == 2
    assert node.stored_rows() == 5
    assert node.store.query("SELECT count(*) FROM failed_events", None, 1, 5.0).rows == [(2,)]


def test_a_terminal_fault_stops_the_pipeline_loudly_instead_of_retrying(node, sample_events, monkeypatch, caplog):
    from cohort.core.process_batch import AccountingError

    runner = node.runner(batch_events=100)
    calls = []

    def broken(outcome, **kwargs):
        calls.append(outcome.last_offset)
        raise AccountingError("offsets 1..2: 100 events in, 99 accounted for")

    monkeypatch.setattr(node.store, "write_batch", broken)
    runner.start()
    try:
        node.append(sample_events[:100], per_record=50)
        runner.acked(100)
        deadline = time.monotonic() + 10
        while runner.running and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not runner.running  # stopped for good, not retrying
        status = runner.status()
        assert status.stalled and "99 accounted for" in status.terminal_error
        assert len(calls) == 1 and runner.isolated_records == 0  # neither retried nor blamed on the input
        assert node.store.counts().failed == 0 and node.log.stats(after=runner.offset).events_after == 100
        assert any(r.levelname == "CRITICAL" and "pipeline stopped" in r.getMessage() for r in caplog.records)
    finally:
        runner.stop()


def test_a_state_that_fails_after_the_store_commit_never_causes_a_second_write(node, sample_events):
    from cohort.core.errors import TransientFault

    runner = node.runner(batch_events=50)
    real_add = runner.mid_state.add
    failures = []

    def add_failing_once(keys, at_ms):
        if not failures:
            failures.append(len(keys))
            raise TransientFault("dedup state unreachable")
        return real_add(keys, at_ms)

    runner.mid_state.add = add_failing_once
    node.append(sample_events[:100], per_record=50)
    with pytest.raises(TransientFault):
        runner.step()  # the store committed the first batch; telling the state failed
    assert runner.offset == node.store.counts().last_offset  # so the runner moves on from there
    node.append(sample_events[:50], per_record=50)  # the same events again: they must be caught
    runner.drain()
    counts = node.store.counts()
    assert (counts.stored, counts.duplicate) == (100, 50) and node.stored_rows() == node.distinct_mids() == 100


def _process_id(pseudonyms=None) -> int:
    import os

    return os.getpid()


def _arrow_pool(pseudonyms=None) -> str:
    import pyarrow as pa

    return pa.default_memory_pool().backend_name


def test_work_submitted_beside_the_pipeline_runs_on_its_workers_and_inline_when_it_is_stopped(node):
    """The server hands its workflow summaries to the pipeline's worker processes (they would hold its
    interpreter lock otherwise): while the pipeline runs they run there, before it starts and after it stops
    in the calling thread."""
    import os

    runner = PipelineRunner(node.log, node.store, **node.dedup, batch_events=100, retention_s=DAY_S,
                            idle_wait_s=0.005, workers=1)
    assert runner.submit_beside(_process_id).result() == os.getpid()
    runner.start()
    try:
        deadline = time.monotonic() + 30
        while runner._core_pool is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert runner.submit_beside(_process_id).result(timeout=60) != os.getpid()
        # workers allocate Arrow memory with the C allocator: Arrow's own pool kept each 30-45 MB larger
        assert runner.submit_beside(_arrow_pool).result(timeout=60) == "system"
    finally:
        runner.stop()
    assert runner.submit_beside(_process_id).result() == os.getpid()
