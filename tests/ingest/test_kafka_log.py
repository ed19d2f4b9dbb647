"""The Kafka ingest log against a real Kafka-protocol broker (Tansu, memory storage): acks, keys,
consumer groups, commits, replays. What every log consumer shares is in test_log_consumer_contract.py."""

from __future__ import annotations

import time

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from cohort.core.log_record import LogRecord
from cohort.ingest.kafka_log import (KafkaLogConsumer, KafkaLogWriter, ensure_topic, max_message_bytes_for)
from cohort.ingest.log import LogUnavailable
from engines import QUICK_GROUP, KafkaBroker

PARTITIONS = 4


def rec(n: int, channel: str | None = "ch-1", events: int = 1, **headers: str) -> LogRecord:
    kept = {"x-channel-id": channel} if channel is not None else {}
    kept.update({name.replace("_", "-"): value for name, value in headers.items()})
    return LogRecord(payload=b'{"events":[%d]}' % n, event_count=events, source="/v1/telemetry",
                     received_at_ms=1_700_000_000_000 + n, headers=kept)


def seq(record: LogRecord) -> int:
    return int(record.payload.split(b"[")[1].split(b"]")[0])


def consumer_for(bootstrap: str, topic: str, **kwargs) -> KafkaLogConsumer:
    """A member of the test's own group: on Tansu 0.6 a group whose leader left during a rebalance
    never assigns partitions again, so no test may inherit another's group."""
    return KafkaLogConsumer(bootstrap, topic, f"{topic}-workers", **QUICK_GROUP, **kwargs)


def drain(consumers: list[KafkaLogConsumer], count: int, timeout_s: float = 40.0, commit: bool = True,
          max_events: int = 50, seen: dict | None = None) -> dict[int, list[tuple[KafkaLogConsumer, LogRecord]]]:
    """Poll the members in turn (one thread, as separate processes would interleave) until `count`
    distinct records are in `seen`. With `commit`, each batch is committed right after it (the runner's
    store-then-commit) and counts only once its commit succeeded (a failed one is read again later).
    Returns `seen`: by sequence number, each processing of that record as (member, record)."""
    seen = {} if seen is None else seen
    deadline = time.monotonic() + timeout_s
    while len(seen) < count and time.monotonic() < deadline:
        for consumer in consumers:
            batch = consumer.poll(max_events, 0.1)
            if not batch:
                continue
            assert len({r.partition for r in batch}) == 1, "a poll mixed partitions"
            assert batch[0].partition in consumer.assignment(), "a poll served a partition not held"
            if commit:
                try:
                    consumer.commit({batch[0].partition: batch[-1].offset})
                except LogUnavailable:  # e.g. the group is rebalancing: not processed, read again
                    continue
            for record in batch:
                seen.setdefault(seq(record), []).append((consumer, record))
    return seen


@pytest.fixture
def topic(kafka_bootstrap, unique_topic) -> str:
    ensure_topic(kafka_bootstrap, unique_topic, PARTITIONS)
    return unique_topic


@pytest.fixture
def writer(kafka_bootstrap, topic):
    writer = KafkaLogWriter(kafka_bootstrap, topic, delivery_timeout_s=10)
    yield writer
    writer.close()


@pytest.fixture
def consumers():
    made: list[KafkaLogConsumer] = []
    yield made
    for consumer in made:
        consumer.close()


class CountingProducer:
    """The writer's real producer, with its produce and flush calls counted."""

    def __init__(self, producer):
        self._producer = producer
        self.produced = 0
        self.flushes = 0

    def produce(self, *args, **kwargs):
        self.produced += 1
        return self._producer.produce(*args, **kwargs)

    def flush(self, *args, **kwargs):
        self.flushes += 1
        return self._producer.flush(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._producer, name)


# writing

def test_round_trip_is_exact(kafka_bootstrap, topic, writer, consumers):
    records = [
        LogRecord(payload='{"events":[{"eid":"START","é":"ü"}]}  \n'.encode(), event_count=1,
                  source="/v1/telemetry", received_at_ms=1_700_000_000_123,
                  headers={"x-channel-id": "ch-α", "x-app-id": "prod.diksha.app", "x-device-id": "d" * 40,
                           "msgid": "m-1"}),
        LogRecord(payload=b"\x00\xff raw bytes, not re-encoded", event_count=500, source="/v1/telemetry",
                  received_at_ms=1, headers={}),  # no channel: the empty key
        LogRecord(payload=b"{}", event_count=3, source="/replay", received_at_ms=0, headers={"msgid": ""}),
    ]
    positions = writer.append_positions(records)
    consumers.append(consumer_for(kafka_bootstrap, topic))
    got: list[LogRecord] = []
    deadline = time.monotonic() + 30
    while len(got) < len(records) and time.monotonic() < deadline:
        got.extend(consumers[0].poll(100, 0.2))
    by_position = {(r.partition, r.offset): r for r in got}
    assert set(by_position) == set(positions)
    for record, position in zip(records, positions):
        back = by_position[position]
        assert back.payload == record.payload
        assert (back.event_count, back.source, back.received_at_ms, back.headers) == \
               (record.event_count, record.source, record.received_at_ms, record.headers)


def test_the_largest_accepted_body_goes_through(kafka_bootstrap, topic, writer, consumers):
    body = b"[" + b"7" * (10 * 1024 * 1024 - 2) + b"]"  # settings.max_body_bytes, the default
    [(partition, offset)] = writer.append_positions([LogRecord(payload=body, event_count=1,
                                                               headers={"x-channel-id": "big"})])
    consumers.append(consumer_for(kafka_bootstrap, topic))
    got: list[LogRecord] = []
    deadline = time.monotonic() + 30
    while not got and time.monotonic() < deadline:
        got = consumers[0].poll(100, 0.2)
    assert [(r.partition, r.offset, r.payload == body) for r in got] == [(partition, offset, True)]


def test_a_record_over_the_message_bound_is_refused_not_acked(kafka_bootstrap, topic):
    writer = KafkaLogWriter(kafka_bootstrap, topic, max_message_bytes=max_message_bytes_for(1000))
    try:
        with pytest.raises(LogUnavailable):
            writer.append_many([rec(1), LogRecord(payload=b"x" * 200_000, event_count=1)])
        assert writer.append_many([rec(2)])  # the writer goes on
    finally:
        writer.close()


def test_append_many_is_one_flush_with_offsets_increasing_per_partition(writer):
    counting = writer._producer = CountingProducer(writer._producer)
    records = [rec(n, channel=f"ch-{n % 10}") for n in range(200)]
    positions = writer.append_positions(records)
    assert (counting.produced, counting.flushes) == (200, 1)
    assert len(positions) == 200 and len(set(positions)) == 200
    per_partition: dict[int, list[int]] = {}
    for partition, offset in positions:
        per_partition.setdefault(partition, []).append(offset)
    assert len(per_partition) > 1  # ten channels over four partitions
    for offsets in per_partition.values():
        assert offsets == sorted(offsets) and offsets == list(range(offsets[0], offsets[0] + len(offsets)))


def test_records_of_one_key_land_in_one_partition_in_order(kafka_bootstrap, topic, writer, consumers):
    channels = ["ch-a", "ch-b", "ch-c", "ch-d", "ch-e", None]  # None: no X-Channel-Id, the empty key
    records = [rec(n, channel=channels[n % len(channels)]) for n in range(120)]
    for start in range(0, 120, 30):  # several groups, as the group committer sends them
        writer.append_many(records[start:start + 30])
    consumer = consumer_for(kafka_bootstrap, topic, max_buffered_bytes=100)  # reads ahead ≈ nothing
    consumers.append(consumer)
    seen: dict = {}
    deadline = time.monotonic() + 40
    while len(seen) < len(records) and time.monotonic() < deadline:
        drain(consumers, len(seen) + 1, timeout_s=0.2, seen=seen)
        assert consumer._buffered_bytes <= 100 + 2 * max(len(r.payload) for r in records)  # memory bounded
    assert sorted(seen) == list(range(120))
    by_channel: dict[str | None, list[LogRecord]] = {}
    for n in sorted(seen, key=lambda n: (seen[n][0][1].partition, seen[n][0][1].offset)):
        record = seen[n][0][1]
        by_channel.setdefault(record.headers.get("x-channel-id"), []).append(record)
    for channel, reads in by_channel.items():
        assert len({r.partition for r in reads}) == 1, f"channel {channel} spread over partitions"
        assert [seq(r) for r in reads] == sorted(seq(r) for r in reads), f"channel {channel} out of order"


def test_partition_key_may_be_the_device(kafka_bootstrap, topic):
    writer = KafkaLogWriter(kafka_bootstrap, topic, partition_key="device")
    try:
        positions = writer.append_positions([rec(n, channel="one-channel", x_device_id=f"dev-{n % 8}")
                                             for n in range(64)])
    finally:
        writer.close()
    partitions_of_device: dict[int, set[int]] = {}
    for n, (partition, _) in enumerate(positions):
        partitions_of_device.setdefault(n % 8, set()).add(partition)
    assert all(len(p) == 1 for p in partitions_of_device.values())
    assert len({p for ps in partitions_of_device.values() for p in ps}) > 1  # one channel, spread by device
    with pytest.raises(ValueError):
        KafkaLogWriter(kafka_bootstrap, topic, partition_key="mid")


def test_a_missing_topic_is_an_error_not_created_with_defaults(kafka_bootstrap, unique_topic):
    writer = KafkaLogWriter(kafka_bootstrap, unique_topic, delivery_timeout_s=1.5)
    started = time.monotonic()
    try:
        with pytest.raises(LogUnavailable):
            writer.append_many([rec(1)])
    finally:
        writer.close()
    assert time.monotonic() - started < 1.5 + 3
    assert unique_topic not in AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=5).topics


def test_broker_down_is_log_unavailable_within_the_bound_then_recovers():
    broker = KafkaBroker().start()
    bound = 1.5
    try:
        ensure_topic(broker.bootstrap, "raw", PARTITIONS)
        writer = KafkaLogWriter(broker.bootstrap, "raw", delivery_timeout_s=bound)
        assert len(writer.append_many([rec(1), rec(2)])) == 2
        broker.proc.kill()  # the broker crashes
        broker.proc.wait()
        for _ in range(2):  # and again: a failed group leaves nothing behind that blocks the next
            started = time.monotonic()
            with pytest.raises(LogUnavailable):
                writer.append_many([rec(n) for n in range(50)])
            assert time.monotonic() - started < bound + 3
        broker.start()  # same port, empty (memory storage): the topic is recreated, the producer too
        # (the broker forgot this producer's id: one group fails on that, the next gets a new producer)
        ensure_topic(broker.bootstrap, "raw", PARTITIONS)
        deadline = time.monotonic() + 30
        while True:
            try:
                assert len(writer.append_many([rec(3)])) == 1
                break
            except LogUnavailable:
                assert time.monotonic() < deadline, "the writer did not recover after the broker came back"
        writer.close()
    finally:
        broker.proc.kill()  # memory only: nothing to shut down gracefully
        broker.proc.wait()


def test_a_writer_started_while_the_broker_is_down_fails_within_the_bound():
    broker = KafkaBroker()  # never started: nothing listens on its port
    writer = KafkaLogWriter(broker.bootstrap, "raw", delivery_timeout_s=1.0)
    started = time.monotonic()
    with pytest.raises(LogUnavailable):
        writer.append_many([rec(1)])
    assert time.monotonic() - started < 1.0 + 3
    closing = time.monotonic()
    writer.close()
    assert time.monotonic() - closing < 1.0 + 3


def test_a_consumer_whose_broker_is_down_never_hangs():
    broker = KafkaBroker().start()
    try:
        ensure_topic(broker.bootstrap, "raw", 2)
        writer = KafkaLogWriter(broker.bootstrap, "raw")
        writer.append_many([rec(n, channel=f"ch-{n}") for n in range(10)])
        writer.close()
        consumer = KafkaLogConsumer(broker.bootstrap, "raw", "raw-workers", session_timeout_s=2,
                                    heartbeat_interval_s=0.5, request_timeout_s=1)
        read: list[LogRecord] = []
        deadline = time.monotonic() + 30
        while len(read) < 10 and time.monotonic() < deadline:
            read.extend(consumer.poll(100, 0.2))
        broker.proc.kill()  # the broker crashes
        broker.proc.wait()
        started = time.monotonic()
        assert consumer.poll(100, 0.5) == []  # the client reconnects by itself meanwhile
        for call, bound in ((lambda: consumer.commit({read[0].partition: read[0].offset}), 2 + 3),
                            (consumer.committed, 1 + 3), (consumer.lag, 1 + 3)):  # session / request timeouts
            started = time.monotonic()
            with pytest.raises(LogUnavailable):
                call()
            assert time.monotonic() - started < bound
        started = time.monotonic()
        consumer.close()
        assert time.monotonic() - started < 2 + 3
    finally:
        broker.proc.kill()
        broker.proc.wait()


def test_ensure_topic_is_idempotent_and_sets_the_message_bound(kafka_bootstrap, unique_topic):
    assert ensure_topic(kafka_bootstrap, unique_topic, 3, max_message_bytes=12_345_678) == 3
    assert ensure_topic(kafka_bootstrap, unique_topic, 3) == 3
    assert ensure_topic(kafka_bootstrap, unique_topic, 8) == 3  # never repartitioned: keys would move
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    [future] = admin.describe_configs([ConfigResource("topic", unique_topic)]).values()
    assert future.result()["max.message.bytes"].value == "12345678"


# consuming

def test_two_members_split_the_partitions_and_process_every_record_once(kafka_bootstrap, topic, writer,
                                                                         consumers):
    revoked_in_callback: list[list[int]] = []
    first = consumer_for(kafka_bootstrap, topic, on_revoke=revoked_in_callback.append)
    consumers.append(first)
    writer.append_many([rec(n, channel=f"ch-{n % 16}") for n in range(200)])
    seen = drain([first], 50)
    assert first.assignment() == list(range(PARTITIONS)) and first.take_revoked() == set()
    second = consumer_for(kafka_bootstrap, topic)  # joins mid-stream: the group rebalances under load
    consumers.append(second)
    deadline = time.monotonic() + 40
    while not (first.assignment() and second.assignment()) or len(seen) < 200:
        assert time.monotonic() < deadline, "the second member got no partitions"
        drain(consumers, len(seen) + 1, timeout_s=0.5, seen=seen)
    revoked = first.take_revoked()
    assert set(second.assignment()) <= revoked  # what moved was reported, once, and to the callback too
    assert first.take_revoked() == set()
    assert {p for call in revoked_in_callback for p in call} == revoked
    writer.append_many([rec(n, channel=f"ch-{n % 16}") for n in range(200, 400)])  # after the split
    drain(consumers, 400, seen=seen)

    assert sorted(seen) == list(range(400))
    twice = {n: [(c.assignment(), r.partition, r.offset) for c, r in reads] for n, reads in seen.items()
             if len(reads) > 1}
    assert not twice, f"records processed again after their commit: {twice}"
    held = [set(c.assignment()) for c in consumers]
    assert all(held) and not held[0] & held[1] and held[0] | held[1] == set(range(PARTITIONS))
    assert {c for n in range(200, 400) for c, _ in seen[n]} == set(consumers)  # both work after the split
    assert all(sum(c.lag().values()) == 0 for c in consumers)
    before = second.committed()
    first.commit({p: 0 for p in revoked - set(first.assignment())})  # no longer held: skipped, not an error
    assert second.committed() == before


def test_records_a_member_did_not_commit_are_read_by_the_next(kafka_bootstrap, topic, writer, consumers):
    writer.append_many([rec(n, channel=f"ch-{n % 8}") for n in range(80)])
    first = consumer_for(kafka_bootstrap, topic)
    read: list[LogRecord] = []
    deadline = time.monotonic() + 30
    while len(read) < 80 and time.monotonic() < deadline:
        batch = first.poll(10, 0.2)
        read.extend(batch)
        if batch and len(read) <= 40:  # it commits the first half of what it read, then dies
            first.commit({batch[0].partition: batch[-1].offset})
    committed_positions = first.committed()
    first.close()
    uncommitted = {seq(r) for r in read if r.offset > committed_positions[r.partition]}
    assert len(read) == 80 and 0 < len(uncommitted) < 80

    consumers.append(consumer_for(kafka_bootstrap, topic))
    again = drain(consumers, len(uncommitted), timeout_s=40)
    assert set(again) == uncommitted


def test_seek_replays_after_the_offset(kafka_bootstrap, topic, writer, consumers):
    positions = writer.append_positions([rec(n, channel="one") for n in range(20)])
    partition = positions[0][0]
    consumers.append(consumer_for(kafka_bootstrap, topic))
    consumer = consumers[0]
    read = drain(consumers, 20, commit=False, max_events=5)
    assert sorted(read) == list(range(20))
    consumer.seek(partition, positions[11][1])  # replay from the 13th record on
    again = drain(consumers, 8, commit=False, max_events=100)
    assert sorted(again) == list(range(12, 20))
    consumer.seek(partition, positions[2][1])
    replay = drain(consumers, 17, commit=False)
    assert sorted(replay) == list(range(3, 20))


def test_lag_counts_uncommitted_messages_and_reaches_zero(kafka_bootstrap, topic, writer, consumers):
    positions = writer.append_positions([rec(n, channel=f"ch-{n % 8}") for n in range(60)])  # one group
    consumer = consumer_for(kafka_bootstrap, topic)
    consumers.append(consumer)
    drain(consumers, 60, commit=False)
    assert sum(consumer.lag().values()) == 60  # read is not processed: nothing committed yet
    partition = positions[0][0]
    last = max(offset for p, offset in positions if p == partition)
    consumer.commit({partition: last})
    lag = consumer.lag()
    assert lag[partition] == 0 and sum(lag.values()) == 60 - sum(1 for p, _ in positions if p == partition)
    consumer.commit({p: max(o for q, o in positions if q == p) for p, _ in positions})
    assert consumer.lag() == {p: 0 for p in range(PARTITIONS)}
    assert consumer.committed() == {p: max((o for q, o in positions if q == p), default=-1)
                                    for p in range(PARTITIONS)}
