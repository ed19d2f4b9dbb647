"""Group commit: concurrent requests share appends; every waiter hears the outcome of its own group."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from cohort.core.log_record import LogRecord
from cohort.ingest.group_commit import GroupCommitter
from cohort.ingest.log import LogUnavailable
from cohort.ingest.sqlite_log import SqliteLog


class CountingLog:
    """A real SqliteLog whose append_many is counted, slowed (like an fsync) and can be made to fail."""

    def __init__(self, log: SqliteLog, delay_s: float = 0.005):
        self.log = log
        self.delay_s = delay_s
        self.calls: list[int] = []  # group sizes
        self.fail_with: Exception | None = None
        self.gate = threading.Event()
        self.gate.set()

    def append_many(self, records):
        self.gate.wait(5)
        self.calls.append(len(records))
        time.sleep(self.delay_s)
        if self.fail_with is not None:
            raise self.fail_with
        return self.log.append_many(records)

    def __getattr__(self, name):
        return getattr(self.log, name)


@pytest.fixture
def sqlite_log(tmp_path):
    log = SqliteLog(tmp_path / "ingest.sqlite")
    yield log
    log.close()


def rec(n: int, events: int = 1) -> LogRecord:
    return LogRecord(payload=b'{"events":[%d]}' % n, event_count=events, received_at_ms=n)


def test_concurrent_appends_share_fsyncs_and_get_distinct_offsets(sqlite_log):
    log = CountingLog(sqlite_log)
    committer = GroupCommitter(log)

    async def main():
        return await asyncio.gather(*(committer.append(rec(n)) for n in range(200)))

    try:
        offsets = asyncio.run(main())
    finally:
        committer.close()
    assert len(set(offsets)) == 200
    assert sum(log.calls) == 200
    assert len(log.calls) <= 20, f"{len(log.calls)} appends for 200 requests: not grouped"
    # each waiter got the offset of its own record
    by_offset = {r.offset: r for r in sqlite_log.read(0, 1000)}
    assert sorted(by_offset) == sorted(offsets)
    assert [by_offset[o].received_at_ms for o in offsets] == list(range(200))
    assert committer.pending_events == 0


def test_group_size_is_bounded(sqlite_log):
    log = CountingLog(sqlite_log)
    log.gate.clear()  # hold the writer until everything is queued
    committer = GroupCommitter(log, max_records=16)

    async def main():
        tasks = [asyncio.ensure_future(committer.append(rec(n))) for n in range(100)]
        await asyncio.sleep(0.05)
        log.gate.set()
        return await asyncio.gather(*tasks)

    try:
        offsets = asyncio.run(main())
    finally:
        committer.close()
    assert len(set(offsets)) == 100
    assert max(log.calls) <= 16 and sum(log.calls) == 100


def test_failing_append_fails_every_waiter_and_acks_nothing(sqlite_log):
    log = CountingLog(sqlite_log)
    log.fail_with = LogUnavailable("disk I/O error")
    committer = GroupCommitter(log)

    async def main():
        return await asyncio.gather(*(committer.append(rec(n)) for n in range(50)), return_exceptions=True)

    try:
        results = asyncio.run(main())
    finally:
        committer.close()
    assert all(isinstance(r, LogUnavailable) for r in results), results
    assert sqlite_log.read(0, 1000) == [] and sqlite_log.stats().received_records == 0
    assert committer.pending_events == 0


def test_unexpected_errors_reach_waiters_as_log_unavailable(sqlite_log):
    log = CountingLog(sqlite_log)
    log.fail_with = OSError("No space left on device")
    committer = GroupCommitter(log)

    async def main():
        return await asyncio.gather(*(committer.append(rec(n)) for n in range(10)), return_exceptions=True)

    try:
        results = asyncio.run(main())
    finally:
        committer.close()
    assert all(isinstance(r, LogUnavailable) and "No space" in str(r) for r in results), results


def test_appends_work_again_after_the_fault_clears(sqlite_log):
    log = CountingLog(sqlite_log)
    committer = GroupCommitter(log)

    async def main():
        log.fail_with = LogUnavailable("disk I/O error")
        with pytest.raises(LogUnavailable):
            await committer.append(rec(1))
        log.fail_with = None
        return await asyncio.gather(*(committer.append(rec(n)) for n in range(2, 12)))

    try:
        offsets = asyncio.run(main())
    finally:
        committer.close()
    assert len(set(offsets)) == 10
    assert [r.received_at_ms for r in sqlite_log.read(0, 100)] == list(range(2, 12))


def test_pending_events_counts_queued_work(sqlite_log):
    log = CountingLog(sqlite_log)
    log.gate.clear()
    committer = GroupCommitter(log)

    async def main():
        tasks = [asyncio.ensure_future(committer.append(rec(n, events=3))) for n in range(5)]
        await asyncio.sleep(0.05)
        queued = committer.pending_events
        log.gate.set()
        await asyncio.gather(*tasks)
        return queued

    try:
        assert asyncio.run(main()) == 15
    finally:
        committer.close()
    assert committer.pending_events == 0


def test_close_finishes_queued_work_then_refuses(sqlite_log):
    log = CountingLog(sqlite_log, delay_s=0.01)
    log.gate.clear()
    committer = GroupCommitter(log, max_records=7)

    async def main():
        tasks = [asyncio.ensure_future(committer.append(rec(n))) for n in range(50)]
        await asyncio.sleep(0.02)  # all 50 are queued, the writer is held
        closing = asyncio.ensure_future(asyncio.to_thread(committer.close))
        await asyncio.sleep(0.02)
        log.gate.set()
        await closing
        offsets = await asyncio.gather(*tasks)
        with pytest.raises(LogUnavailable, match="shutting down"):
            await committer.append(rec(99))
        return offsets

    offsets = asyncio.run(main())
    assert len(set(offsets)) == 50
    assert len(sqlite_log.read(0, 1000)) == 50


def test_a_cancelled_waiter_does_not_break_the_others(sqlite_log):
    log = CountingLog(sqlite_log)
    log.gate.clear()
    committer = GroupCommitter(log)

    async def main():
        tasks = [asyncio.ensure_future(committer.append(rec(n))) for n in range(10)]
        await asyncio.sleep(0.02)
        tasks[3].cancel()  # the client went away
        log.gate.set()
        return await asyncio.gather(*tasks, return_exceptions=True)

    try:
        results = asyncio.run(main())
    finally:
        committer.close()
    assert isinstance(results[3], asyncio.CancelledError)
    assert all(isinstance(r, int) for i, r in enumerate(results) if i != 3)
    assert len(sqlite_log.read(0, 100)) == 10  # durable all the same
