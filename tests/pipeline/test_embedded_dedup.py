"""The embedded footprint's dedup on disk: the period honoured exactly across restarts, the keys of a batch
the store committed but the index never heard of added on start, and a missing index rebuilt from the store.

Real DuckDB store, real SQLite log, real RocksDB directories, a real EmbeddedNode (behind the HTTP API
where the behaviour is the API's). Time is moved with a clock given to the node (the indexes) and to the
runner (the commit time it gives keys), so "a period later" is exact and instant."""

from __future__ import annotations

import contextlib
import logging
import shutil
import time

import pytest

import cohort.pipeline.runner as runner_module
from cohort.core.log_record import LogRecord
from cohort.pipeline.embedded import EmbeddedNode
from cohort.settings import Settings
from cohort.state.rocksdb_dedup import DedupIndexError, DiskDedupIndex
from support import app_client, envelope, metric_values, wait_for

DAY_S = 86_400.0
PERIOD_S = 7 * DAY_S


class Clock:
    """Real time, moved forward on demand."""

    def __init__(self):
        self.offset_s = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset_s


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(runner_module, "_now_ms", lambda: int(clock() * 1000))  # the commit time keys get
    return clock


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(data_dir=tmp_path / "data", pipeline_workers=0, pipeline_idle_wait_seconds=0.005,
                    dedup_index_cache_mb=8, dedup_period_days=PERIOD_S / DAY_S)


@contextlib.contextmanager
def serving(settings: Settings, clock: Clock):
    """A node started on the data dir, behind the HTTP API; closed (a restart) on leaving."""
    node = EmbeddedNode(settings, clock=clock)
    node.start()
    try:
        with app_client(settings, node=node) as client:
            yield client, node
    finally:
        node.close()


def post(client, events: list, msgid: str | None = None, channel: str = "ch-a") -> None:
    body = envelope(events) if msgid is None else envelope(events, msgid=msgid)
    response = client.post("/v1/telemetry", content=body,
                           headers={"Content-Type": "application/json", "X-Channel-Id": channel})
    assert response.status_code == 200, response.text


def drained(node: EmbeddedNode):
    assert wait_for(lambda: node.status().ledger.in_flight == 0, timeout=30), node.status()
    ledger = node.status().ledger
    assert ledger.unaccounted == 0
    return ledger


def stored_copies(node: EmbeddedNode, mids: list[str]) -> set[int]:
    rows = node.store.query("SELECT mid, count(*) FROM telemetry GROUP BY mid", None, 100_000, 10.0).rows
    copies = dict(rows)
    return {copies.get(mid, 0) for mid in mids}


def broken(events: list, n: int) -> list:
    """`n` events that fail validation (quarantined, never deduplicated by mid)."""
    return [dict(e, mid=f"bad-{i}", ets="not a time") for i, e in enumerate(events[:n])]


def test_a_duplicate_inside_the_period_is_dropped_and_one_older_is_stored_again_across_restarts(
        settings, clock, sample_events):
    events = sample_events[:50]
    mids = [e["mid"] for e in events]
    with serving(settings, clock) as (client, node):
        post(client, events)
        assert drained(node).stored == 50

    clock.offset_s = PERIOD_S - 60  # restarted a minute before the period ends: still a duplicate
    with serving(settings, clock) as (client, node):
        post(client, events)
        ledger = drained(node)
        assert (ledger.stored, ledger.duplicate) == (50, 50)
        assert stored_copies(node, mids) == {1}

    clock.offset_s = PERIOD_S + 60  # a minute past the period: the same events are new again
    with serving(settings, clock) as (client, node):
        post(client, events)
        ledger = drained(node)
        assert (ledger.stored, ledger.duplicate) == (100, 50)
        assert stored_copies(node, mids) == {2}

    with serving(settings, clock) as (client, node):  # and stored again means remembered again
        post(client, events)
        ledger = drained(node)
        assert (ledger.stored, ledger.duplicate) == (100, 100)


def test_a_retried_request_after_a_restart_is_dropped_whole_and_counted_once(settings, clock, sample_events):
    request = sample_events[:20] + broken(sample_events, 3)
    with serving(settings, clock) as (client, node):
        post(client, request, msgid="batch-1")
        ledger = drained(node)
        assert (ledger.stored, ledger.failed, ledger.duplicate_requests) == (20, 3, 0)

    with serving(settings, clock) as (client, node):
        post(client, request, msgid="batch-1")  # the client did not hear the ack and sends it again
        ledger = drained(node)
        assert (ledger.stored, ledger.failed, ledger.duplicate, ledger.duplicate_requests) == (20, 3, 23, 1)
        assert node.store.query("SELECT count(*) FROM failed_events", None, 1, 10.0).rows == [(3,)]
        assert metric_values(client)["cohort_requests_duplicate_total"] == 1

        post(client, sample_events[20:30], msgid="batch-1", channel="ch-b")  # another tenant's msgid
        ledger = drained(node)
        assert (ledger.stored, ledger.duplicate_requests) == (30, 1)

    clock.offset_s = PERIOD_S + 60
    with serving(settings, clock) as (client, node):
        post(client, broken(sample_events, 3), msgid="batch-1")  # a period later the msgid is new again
        ledger = drained(node)
        assert (ledger.failed, ledger.duplicate_requests) == (6, 1)


def append(node: EmbeddedNode, events: list, msgid: str, received_at_ms: int | None = None) -> None:
    """A request as the API makes it durable, straight into the log."""
    received = received_at_ms if received_at_ms is not None else int(time.time() * 1000)
    node.log.append_many([LogRecord(payload=envelope(events, msgid=msgid), event_count=len(events),
                                    received_at_ms=received, headers={"x-channel-id": "ch-a", "msgid": msgid})])


def test_keys_of_a_batch_committed_but_never_added_to_the_index_are_added_on_start(settings, clock, sample_events,
                                                                                    monkeypatch, caplog):
    node = EmbeddedNode(settings, clock=clock)
    append(node, sample_events[:40], "first")
    node.runner.drain()
    append(node, sample_events[40:100], "second")
    append(node, sample_events[100:110], "third")

    def killed(self, keys, at_ms):
        raise DedupIndexError(self.path, "killed between the store's commit and the index's add (injected)")

    real_add = DiskDedupIndex.add
    monkeypatch.setattr(DiskDedupIndex, "add", killed)
    with pytest.raises(DedupIndexError, match="injected"):
        node.runner.step()  # the store commits both requests, then the index hears nothing
    monkeypatch.setattr(DiskDedupIndex, "add", real_add)
    assert node.store.counts().stored == 110
    assert node.runner.mid_state.seen([e["mid"] for e in sample_events[40:110]]) == set()
    node.close()  # what the process had in memory (the keys still to add) is gone

    with caplog.at_level(logging.WARNING, logger="cohort.node"):
        node = EmbeddedNode(settings, clock=clock)
    try:
        assert "lacked 70 keys" in caplog.text and "lacked 2 keys" in caplog.text
        mids = [e["mid"] for e in sample_events[:110]]
        assert node.runner.mid_state.seen(mids) == set(mids)
        assert node.runner.request_state.seen(["ch-a/first", "ch-a/second", "ch-a/third"]) == {
            "ch-a/first", "ch-a/second", "ch-a/third"}
        append(node, sample_events[60:100], "resent")  # resent after the crash: duplicates, not stored twice
        append(node, sample_events[100:110], "third")  # a retry of a request of the lost batch
        node.runner.drain()
        counts = node.store.counts()
        assert (counts.stored, counts.duplicate, counts.duplicate_requests) == (110, 50, 1)
    finally:
        node.close()


def test_a_clean_restart_adds_nothing_again(settings, clock, sample_events, caplog):
    node = EmbeddedNode(settings, clock=clock)
    append(node, sample_events[:40], "first")
    node.runner.drain()
    node.close()
    with caplog.at_level(logging.WARNING, logger="cohort.node"):
        EmbeddedNode(settings, clock=clock).close()
    assert caplog.text == ""


def test_a_missing_index_is_rebuilt_from_the_store_with_the_keys_of_the_period(settings, clock, sample_events,
                                                                              caplog):
    node = EmbeddedNode(settings, clock=clock)
    eight_days_ago = int((time.time() - 8 * DAY_S) * 1000)
    append(node, sample_events[:30], "old", received_at_ms=eight_days_ago)  # acknowledged before the period
    append(node, sample_events[30:80] + broken(sample_events, 2), "recent")
    node.runner.drain()
    node.close()
    shutil.rmtree(settings.dedup_mid_path)  # an operator deleted them (or they never existed: an upgrade)
    shutil.rmtree(settings.dedup_msgid_path)

    with caplog.at_level(logging.WARNING, logger="cohort.node"):
        node = EmbeddedNode(settings, clock=clock)
    try:
        assert "rebuilt from the store: 50 keys" in caplog.text and "rebuilt from the store: 1 keys" in caplog.text
        assert not settings.dedup_mid_path.with_name("dedup-mid.tmp").exists()
        old, recent = [e["mid"] for e in sample_events[:30]], [e["mid"] for e in sample_events[30:80]]
        assert node.runner.mid_state.seen(old + recent) == set(recent)
        assert node.runner.request_state.seen(["ch-a/old", "ch-a/recent"]) == {"ch-a/recent"}
        # the store holds requests older than the period: the rebuilt index holds all of the period
        assert node.runner.mid_state.reach_seconds() == pytest.approx(PERIOD_S)
        append(node, sample_events[30:80] + broken(sample_events, 2), "recent")  # a retry
        append(node, sample_events[:30], "old-again")  # beyond the period: new again
        node.runner.drain()
        counts = node.store.counts()
        assert (counts.stored, counts.failed, counts.duplicate_requests) == (110, 2, 1)
    finally:
        node.close()


def test_a_rebuild_cut_short_is_finished_by_the_next_start(settings, clock, sample_events, monkeypatch):
    node = EmbeddedNode(settings, clock=clock)
    append(node, sample_events[:60], "one")
    node.runner.drain()
    node.close()
    shutil.rmtree(settings.dedup_mid_path)

    def cut(self):
        raise OSError("killed during the rebuild (injected)")

    real_compact = DiskDedupIndex.compact
    monkeypatch.setattr(DiskDedupIndex, "compact", cut)
    with pytest.raises(OSError, match="injected"):
        EmbeddedNode(settings, clock=clock)
    monkeypatch.setattr(DiskDedupIndex, "compact", real_compact)
    building = settings.dedup_mid_path.with_name("dedup-mid.tmp")
    assert building.is_dir() and not settings.dedup_mid_path.exists()  # never taken for the index

    node = EmbeddedNode(settings, clock=clock)  # the data dir was released by the failed start
    try:
        assert not building.exists()
        mids = [e["mid"] for e in sample_events[:60]]
        assert node.runner.mid_state.seen(mids) == set(mids)
    finally:
        node.close()


def reach(client) -> dict[str, float]:
    values = metric_values(client)
    return {key: values[f'cohort_dedup_reach_seconds{{key="{key}"}}'] for key in ("mid", "msgid")}


def test_metrics_show_the_reach_the_indexes_hold(settings, clock, sample_events):
    with serving(settings, clock) as (client, node):
        assert all(0 <= seconds < 60 for seconds in reach(client).values())  # a new index holds nothing older
        post(client, sample_events[:10])
        drained(node)
    clock.offset_s = 3600.0
    with serving(settings, clock) as (client, node):
        assert reach(client) == pytest.approx({"mid": 3600, "msgid": 3600}, abs=60)
    clock.offset_s = 30 * DAY_S
    with serving(settings, clock) as (client, node):
        assert reach(client) == {"mid": PERIOD_S, "msgid": PERIOD_S}

    shutil.rmtree(settings.dedup_mid_path)  # rebuilt from a store that began before the period: full reach
    with serving(settings, clock) as (client, node):
        assert reach(client)["mid"] == PERIOD_S


def test_the_index_directories_live_in_the_data_dir_under_their_names(settings, clock):
    EmbeddedNode(settings, clock=clock).close()
    assert {"dedup-mid", "dedup-msgid"} <= {p.name for p in settings.data_dir.iterdir()}
    assert (settings.dedup_mid_path / "CURRENT").exists() and (settings.dedup_msgid_path / "CURRENT").exists()
