"""What every LogConsumer must do, whatever holds the log: one suite run over each implementation.

A new implementation proves itself by adding an entry to IMPLEMENTATIONS: a function that takes the
pytest request and returns a `LogUnderTest` (how to append records, how to make a new member of a
group). Offsets are per partition; "committed" and "seek" speak of the last *processed* offset.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from cohort.core.log_record import LogRecord
from cohort.ingest.log import LogConsumer
from engines import QUICK_GROUP

WAIT_S = 40.0  # a consumer group's first join takes seconds on some brokers (Tansu: ≈ 1.5 s, see QUICK_GROUP)


@dataclass
class LogUnderTest:
    append: Callable[[list[LogRecord]], list[int]]  # the LogWriter's append_many
    new_consumer: Callable[[str], LogConsumer]  # a new member of the named group
    partitions: int  # how many partitions records spread over (by their X-Channel-Id)
    cleanup: list[Callable[[], None]] = field(default_factory=list)
    consumers: list[LogConsumer] = field(default_factory=list)

    def consumer(self, group: str = "contract") -> LogConsumer:
        member = self.new_consumer(group)
        self.consumers.append(member)
        return member


def kafka_log(request) -> LogUnderTest:
    from cohort.ingest.kafka_log import KafkaLogConsumer, KafkaLogWriter, ensure_topic

    bootstrap = request.getfixturevalue("kafka_bootstrap")
    topic = request.getfixturevalue("unique_topic")
    ensure_topic(bootstrap, topic, 2)
    writer = KafkaLogWriter(bootstrap, topic)
    return LogUnderTest(append=writer.append_many, partitions=2, new_consumer=lambda group: KafkaLogConsumer(
                            bootstrap, topic, f"{topic}-{group}", **QUICK_GROUP),
                        cleanup=[writer.close])


IMPLEMENTATIONS: dict[str, Callable[..., LogUnderTest]] = {"kafka": kafka_log}


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def log(request):
    under_test = IMPLEMENTATIONS[request.param](request)
    yield under_test
    for consumer in under_test.consumers:
        try:
            consumer.close()
        except Exception:
            pass
    for step in under_test.cleanup:
        step()


def rec(n: int, events: int = 1, channel: str = "ch-1") -> LogRecord:
    return LogRecord(payload=b'{"events":[%d]}' % n, event_count=events, source="/v1/telemetry",
                     received_at_ms=1_700_000_000_000 + n, headers={"x-channel-id": channel, "msgid": f"m-{n}"})


def seq(record: LogRecord) -> int:
    return int(record.payload.split(b"[")[1].split(b"]")[0])


def read(consumer: LogConsumer, count: int, max_events: int = 1000, commit: bool = False) -> list[LogRecord]:
    """Poll until `count` records came (or the wait ran out); commit each batch when asked."""
    records: list[LogRecord] = []
    deadline = time.monotonic() + WAIT_S
    while len(records) < count and time.monotonic() < deadline:
        batch = consumer.poll(max_events, 0.2)
        records.extend(batch)
        if batch and commit:
            consumer.commit({batch[0].partition: batch[-1].offset})
    return records


def test_poll_returns_every_record_as_written(log):
    written = [rec(n, events=n % 4 + 1, channel=f"ch-{n % 3}") for n in range(30)]
    offsets = log.append(written)
    consumer = log.consumer()
    got = read(consumer, 30)
    assert sorted(seq(r) for r in got) == list(range(30))
    for record in got:
        original = written[seq(record)]
        assert (record.payload, record.event_count, record.source, record.received_at_ms, record.headers) == \
               (original.payload, original.event_count, original.source, original.received_at_ms, original.headers)
        assert record.offset == offsets[seq(record)]
    by_partition: dict[int, list[LogRecord]] = {}
    for record in got:
        by_partition.setdefault(record.partition, []).append(record)
    for records in by_partition.values():  # per partition: offsets increase, in the order written
        assert [r.offset for r in records] == sorted(r.offset for r in records)
        assert [seq(r) for r in records] == sorted(seq(r) for r in records)
    assert len({(r.partition, r.offset) for r in got}) == 30


def test_a_poll_holds_one_partition_and_about_max_events(log):
    log.append([rec(n, events=3, channel=f"ch-{n % 16}") for n in range(40)] + [rec(40, events=50)])
    consumer = log.consumer()
    got: list[LogRecord] = []
    deadline = time.monotonic() + WAIT_S
    while len(got) < 41 and time.monotonic() < deadline:
        batch = consumer.poll(7, 0.2)
        if not batch:
            continue
        assert len({r.partition for r in batch}) == 1
        assert sum(r.event_count for r in batch) <= 7 or len(batch) == 1  # a bigger record comes alone
        got.extend(batch)
    assert sorted(seq(r) for r in got) == list(range(41))
    assert len({r.partition for r in got}) == min(2, log.partitions)  # there was something to mix


def test_poll_with_nothing_to_read_returns_empty_within_its_timeout(log):
    log.append([rec(1)])
    consumer = log.consumer()
    assert len(read(consumer, 1)) == 1
    started = time.monotonic()
    assert consumer.poll(100, 0.3) == []
    assert time.monotonic() - started < 0.3 + 2


def test_committed_is_minus_one_until_a_commit_then_the_last_committed(log):
    offsets = log.append([rec(n, channel="one") for n in range(5)])
    consumer = log.consumer()
    got = read(consumer, 5)
    partition = got[0].partition
    assert consumer.committed()[partition] == -1
    consumer.commit({partition: offsets[2]})
    assert consumer.committed()[partition] == offsets[2]
    consumer.commit({partition: offsets[4]})
    assert consumer.committed()[partition] == offsets[4]


def test_a_new_member_resumes_after_the_last_commit(log):
    log.append([rec(n, channel=f"ch-{n % 2}") for n in range(20)])
    first = log.consumer()
    got = read(first, 20)
    assert len(got) == 20
    done: dict[int, int] = {}  # processed and committed: records 0–9
    for record in got:
        if seq(record) < 10:
            done[record.partition] = max(done.get(record.partition, -1), record.offset)
    first.commit(done)
    first.close()
    log.consumers.remove(first)

    second = log.consumer()
    again = read(second, 20 - sum(1 for r in got if r.offset <= done.get(r.partition, -1)))
    assert {seq(r) for r in again} == {seq(r) for r in got if r.offset > done.get(r.partition, -1)}
    assert second.committed() == {p: done.get(p, -1) for p in second.committed()}
    assert set(done) <= set(second.committed())


def test_seek_makes_the_next_poll_start_after_the_offset(log):
    offsets = log.append([rec(n, channel="one") for n in range(10)])
    consumer = log.consumer()
    got = read(consumer, 10)
    partition = got[0].partition
    consumer.seek(partition, offsets[5])
    assert [seq(r) for r in read(consumer, 4)] == [6, 7, 8, 9]
    consumer.seek(partition, offsets[0])
    assert [seq(r) for r in read(consumer, 9)] == list(range(1, 10))


def test_lag_counts_records_not_committed_and_reaches_zero(log):
    log.append([rec(n, channel=f"ch-{n % 3}") for n in range(12)])
    consumer = log.consumer()
    got = read(consumer, 12)
    assert sum(consumer.lag().values()) == 12
    consumer.commit({p: max(r.offset for r in got if r.partition == p) for p in {r.partition for r in got}})
    assert set(consumer.lag().values()) == {0}


def test_groups_are_independent(log):
    log.append([rec(n) for n in range(6)])
    pipeline = log.consumer("pipeline")
    assert len(read(pipeline, 6, commit=True)) == 6
    auditor = log.consumer("auditor")  # another group reads everything, whatever the first committed
    assert sorted(seq(r) for r in read(auditor, 6)) == list(range(6))
