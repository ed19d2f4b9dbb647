"""The scale-out ingest log: one Kafka topic, written by the ingest API and read by a consumer group.

Why it is shaped this way:
- **Ack after the broker's acks.** `KafkaLogWriter.append_many` produces a whole group of requests (the
  group committer's) with an idempotent `acks=all` producer and returns only when every delivery report
  is back: one flush per group, as the embedded log has one fsync per group. A failed or late report
  raises `LogUnavailable`, so the client is not acked (a record that times out may still land: the
  client's retry is then absorbed by batch dedup on msgid, as for any log).
- **The record travels as the client sent it.** The message value is the acknowledged payload bytes;
  the record's own fields (`cohort-source`, `cohort-received-at-ms`, `cohort-event-count`) and the kept
  request headers (`x-channel-id`, `x-app-id`, `x-device-id`, `msgid`) are Kafka headers, so a reader
  gets back exactly the record that was written, and other tools can read the topic without Cohort.
- **Compressed by the producer** (zstd by default): a 500-event Sunbird batch is ≈ 18× smaller on the
  wire, on the brokers' disks and in replication, and the broker does less work per event.
- **Partitioned by a key** (the channel by default): a client's retries of a batch land in the same
  partition and so reach one worker in order. Keys are hashed like Java clients do (murmur2), so an
  absent key ("") is one partition too, not a random one.
- **Batches of one partition.** The pipeline's batch offsets are a range of one partition, so
  `KafkaLogConsumer.poll` never mixes partitions in one result.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from cohort.core.errors import TerminalFault
from cohort.core.log_record import LogRecord
from cohort.ingest.log import LogConsumer, LogUnavailable, LogWriter

log = logging.getLogger("cohort.kafka")

# The record's own fields, as Kafka headers (values are UTF-8; numbers in decimal).
SOURCE_HEADER = "cohort-source"
RECEIVED_AT_HEADER = "cohort-received-at-ms"
EVENT_COUNT_HEADER = "cohort-event-count"
_RECORD_HEADERS = frozenset({SOURCE_HEADER, RECEIVED_AT_HEADER, EVENT_COUNT_HEADER})

# What a message may be keyed by: the name of a kept request header (see LogRecord.headers).
PARTITION_KEYS = {"channel": "x-channel-id", "app": "x-app-id", "device": "x-device-id"}

# Room a message needs beyond its payload: Kafka's record framing and our headers (ids ≤ 256 chars each).
MESSAGE_HEADROOM_BYTES = 64 * 1024


def max_message_bytes_for(max_body_bytes: int) -> int:
    """The message size the producer and the topic must allow so that any accepted body fits."""
    return max_body_bytes + MESSAGE_HEADROOM_BYTES


class KafkaClientFatal(TerminalFault):
    """The Kafka client reported a fatal error (e.g. this consumer was fenced): it cannot go on."""


def _client_config(bootstrap_servers: str, client_config: dict[str, Any] | None) -> dict[str, Any]:
    config: dict[str, Any] = {"bootstrap.servers": bootstrap_servers, "logger": log,
                              # a broker back from an outage is used within a second (librdkafka: 10 s)
                              "reconnect.backoff.max.ms": 1000}
    config.update(client_config or {})  # TLS, SASL, client.id, …: passed to librdkafka as they are
    return config


def encode_headers(record: LogRecord) -> list[tuple[str, str | bytes | None]]:
    """A record's fields and kept request headers as Kafka headers (str values go out as UTF-8)."""
    if not _RECORD_HEADERS.isdisjoint(record.headers):
        raise ValueError(f"request header names reserved for the record's own fields: "
                         f"{sorted(_RECORD_HEADERS.intersection(record.headers))}")
    return [(SOURCE_HEADER, record.source), (RECEIVED_AT_HEADER, str(record.received_at_ms)),
            (EVENT_COUNT_HEADER, str(record.event_count)), *record.headers.items()]


def decode_record(message: Message) -> LogRecord:
    """The LogRecord a message carries, with its partition and offset. A message Cohort did not write
    (no record headers) reads as a record of 0 events from source "kafka"."""
    fields: dict[str, str] = {}
    kept: dict[str, str] = {}
    raw = message.headers() or []
    for name, value in (raw.items() if isinstance(raw, dict) else raw):
        text = value.decode() if isinstance(value, bytes) else (value or "")
        (fields if name in _RECORD_HEADERS else kept)[name] = text
    return LogRecord(payload=message.value() or b"",
                     event_count=int(fields.get(EVENT_COUNT_HEADER, 0)),
                     source=fields.get(SOURCE_HEADER, "kafka"),
                     received_at_ms=int(fields.get(RECEIVED_AT_HEADER, 0)),
                     headers=kept, offset=_int(message.offset()), partition=_int(message.partition()))


def _int(value: int | None) -> int:
    return value if value is not None else -1


# zstd's level 1 compresses a telemetry batch about as well as its default, 3 (13.4× vs 13.8× on a
# prepared batch), for half the CPU (2.3 vs 4.5 µs/event on the workers' Kafka threads:
# python -m cohort.benchmark.scaleout_roles)
ZSTD_LEVEL = 1

class KafkaLogWriter:
    """The ingest API's side of the log: an idempotent producer with `acks=all`.

    Called from one thread (the group committer). `append_many` returns each record's offset within
    its partition; `append_positions` returns (partition, offset) pairs, which is what identifies a
    message in Kafka.
    """

    def __init__(self, bootstrap_servers: str, topic: str, *, partition_key: str = "channel",
                 delivery_timeout_s: float = 10.0, max_message_bytes: int = max_message_bytes_for(10 * 1024 * 1024),
                 compression: str = "zstd", client_config: dict[str, Any] | None = None):
        if partition_key not in PARTITION_KEYS:
            raise ValueError(f"partition key {partition_key!r} is not one of {sorted(PARTITION_KEYS)}")
        if delivery_timeout_s <= 0:
            raise ValueError("delivery_timeout_s must be positive")
        self.topic = topic
        self.delivery_timeout_s = delivery_timeout_s
        self._key_header = PARTITION_KEYS[partition_key]
        self._config = _client_config(bootstrap_servers, client_config)
        self._config.update({
            "enable.idempotence": True,
            "acks": "all",
            # librdkafka itself fails a message after this long, so no delivery report is left pending
            "message.timeout.ms": max(1, int(delivery_timeout_s * 1000)),
            "message.max.bytes": max_message_bytes,
            "compression.type": compression,
            "partitioner": "murmur2_random",  # Java clients' hash; the empty key is one partition
            "allow.auto.create.topics": False,  # a missing topic is an error, not a topic with broker defaults
        })
        if compression == "zstd":
            self._config.setdefault("compression.level", ZSTD_LEVEL)
        self._producer: Producer | None = Producer(self._config)
        self._closed = False

    def append_many(self, records: list[LogRecord]) -> list[int]:
        return [offset for _, offset in self.append_positions(records)]

    def append_positions(self, records: list[LogRecord]) -> list[tuple[int, int]]:
        """Produce every record, flush once, and return (partition, offset) of each, in order. Raise
        LogUnavailable unless every delivery report came back without error within the bound."""
        if self._closed:
            raise LogUnavailable("the Kafka log writer is closed")
        if not records:
            return []
        producer = self._producer or self._rebuild()
        deadline = time.monotonic() + self.delivery_timeout_s
        reports: list[tuple[KafkaError | None, int, int] | None] = [None] * len(records)
        try:
            for index, record in enumerate(records):
                self._produce(producer, record, functools.partial(_report, reports, index), deadline)
            producer.flush(max(0.0, deadline - time.monotonic()))
        except LogUnavailable:
            raise
        except Exception as exc:  # KafkaException, or (on a fatal error) a SystemError wrapping one
            error = _kafka_error_in(exc)
            self._after_error(error)
            raise LogUnavailable(f"Kafka refused the records: {error.str() if error else exc}") from exc
        missing = sum(1 for report in reports if report is None)
        if missing:
            raise LogUnavailable(f"{missing} of {len(records)} records had no delivery report from Kafka "
                                 f"within {self.delivery_timeout_s:g} s")
        positions: list[tuple[int, int]] = []
        for report in reports:
            assert report is not None
            error, partition, offset = report
            if error is not None:
                self._after_error(error)
                raise LogUnavailable(f"Kafka did not take a record: {error.str()}")
            positions.append((partition, offset))
        return positions

    def _produce(self, producer: Producer, record: LogRecord, on_delivery: Callable, deadline: float) -> None:
        key = record.headers.get(self._key_header, "").encode()
        while True:
            try:
                producer.produce(self.topic, value=record.payload, key=key, headers=encode_headers(record),
                                 timestamp=record.received_at_ms if record.received_at_ms > 0 else 0,
                                 on_delivery=on_delivery)
                return
            except BufferError:  # the client's queue is full: let deliveries drain it, within the bound
                if time.monotonic() >= deadline:
                    raise LogUnavailable("the Kafka producer's queue stayed full") from None
                producer.poll(0.05)

    def _after_error(self, error: KafkaError | None) -> None:
        """A fatal error leaves the producer unusable (e.g. a broker that lost the idempotence state
        of this producer, as a restarted memory-only broker does): the next call starts a new one
        instead of failing for ever."""
        if error is not None and error.fatal():
            log.error("Kafka producer hit a fatal error (%s); a new producer is used from the next group",
                      error.str())
            self._producer = None

    def _rebuild(self) -> Producer:
        self._producer = Producer(self._config)
        return self._producer

    def close(self) -> None:
        """Deliver what is still queued (within the bound), then let go of the producer."""
        if self._closed:
            return
        self._closed = True
        if self._producer is not None:
            try:
                self._producer.flush(self.delivery_timeout_s)
            except Exception as exc:  # nothing waits for these reports any more
                log.warning("Kafka producer closed with deliveries pending: %s", exc)
            self._producer = None


def _kafka_error_in(exc: BaseException | None) -> KafkaError | None:
    """The KafkaError behind an exception, if any (confluent-kafka chains it on fatal errors)."""
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
            return exc.args[0]
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def _report(reports: list, index: int, error: KafkaError | None, message: Message) -> None:
    reports[index] = (error, message.partition(), message.offset())


class KafkaLogConsumer:
    """A pipeline worker's side of the log: one member of a consumer group.

    Use it from **one thread** (the pipeline's): librdkafka runs the rebalance callbacks inside poll,
    and calling into the same consumer from a second thread meanwhile (e.g. `lag()` for /metrics)
    can deadlock on the GIL; publish a snapshot from the polling thread instead.

    - `poll` returns records of **one partition** per call (in offset order, up to about `max_events`
      events, at least one record); records of other partitions wait, buffered, for later calls.
    - Offsets in this contract are the *last processed* offset; Kafka commits the *next* offset to read,
      so `commit({p: o})` stores o + 1 and `committed()` gives it back as o (-1: nothing committed).
    - Rebalances: partitions leave this member only inside `poll` (where the client serves callbacks).
      Their buffered records are dropped there, and the partitions are remembered until the caller asks:
      after each `poll`, `take_revoked()` returns (and clears) the partitions revoked or lost since the
      last call — the runner drops its in-flight work of those (their new owner replays from the last
      commit). An `on_revoke(partitions)` callback, if given, runs inside `poll` while the partitions
      are still held: the last moment a commit of their finished work is accepted.
    - Commits are manual and synchronous; a commit of a partition no longer held is skipped (its new
      owner decides its position), and a failed commit raises LogUnavailable.
    """

    def __init__(self, bootstrap_servers: str, topic: str, group: str, *,
                 max_poll_interval_s: float = 10.0, session_timeout_s: float = 6.0,
                 heartbeat_interval_s: float = 1.0, assignment_strategy: str = "cooperative-sticky",
                 on_revoke: Callable[[list[int]], None] | None = None,
                 request_timeout_s: float = 10.0, max_buffered_bytes: int = 32 * 1024 * 1024,
                 client_config: dict[str, Any] | None = None):
        self.topic = topic
        self.group = group
        self.request_timeout_s = request_timeout_s
        self._on_revoke = on_revoke
        self._max_buffered_bytes = max_buffered_bytes  # records read ahead, beyond librdkafka's own queue
        config = _client_config(bootstrap_servers, client_config)
        config.update({
            "group.id": group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",  # a new group starts at the first acknowledged record
            "enable.partition.eof": False,
            "max.poll.interval.ms": int(max_poll_interval_s * 1000),
            "session.timeout.ms": int(session_timeout_s * 1000),
            "heartbeat.interval.ms": int(heartbeat_interval_s * 1000),
            "partition.assignment.strategy": assignment_strategy,
        })
        self._consumer = Consumer(config)
        self._buffer: dict[int, deque[LogRecord]] = {}
        self._buffered_bytes = 0
        self._mean_record_bytes = 1024.0  # running mean of payload sizes: how many records fit the buffer
        self._held: set[int] = set()
        self._revoked: set[int] = set()
        self._pending_seeks: dict[int, int] = {}  # partition → next offset to read, once seeking is possible
        self._last_partition = -1
        self._closed = False
        self._consumer.subscribe([topic], on_assign=self._assigned, on_revoke=self._revoked_cb,
                                 on_lost=self._lost)

    # rebalance callbacks (run inside consume)
    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        added = {tp.partition for tp in partitions}
        self._held |= added
        log.info("consumer group %s: partitions %s of %s assigned", self.group, sorted(added), self.topic)

    def _revoked_cb(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        gone = sorted(tp.partition for tp in partitions)
        try:
            if gone and self._on_revoke is not None:
                self._on_revoke(gone)
        finally:
            self._let_go(gone, "revoked")

    def _lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._let_go(sorted(tp.partition for tp in partitions), "lost")  # too late to commit anything

    def _let_go(self, partitions: list[int], how: str) -> None:
        for partition in partitions:
            self._held.discard(partition)
            self._drop_buffered(partition)
            self._pending_seeks.pop(partition, None)
            self._revoked.add(partition)
        if partitions:
            log.info("consumer group %s: partitions %s of %s %s", self.group, partitions, self.topic, how)

    # the LogConsumer contract
    def poll(self, max_events: int, timeout_s: float) -> list[LogRecord]:
        self._check_open()
        self._apply_pending_seeks()
        # Always ask the client (non-blocking) so callbacks run and the poll interval is honoured.
        room = self._room()
        self._fetch(room, 0.0)
        if not self._buffered() and timeout_s > 0:
            self._fetch(1, timeout_s)  # returns on the first message, not after timeout_s
            self._fetch(room, 0.0)  # and whatever else is already here
        return self._take_batch(max_events)

    def seek(self, partition: int, offset: int) -> None:
        """The next poll of `partition` starts after `offset`. A partition this member no longer holds is
        left alone: its new owner starts from the last commit."""
        self._check_open()
        if partition not in self._held:
            return
        self._drop_buffered(partition)
        self._pending_seeks[partition] = offset + 1
        self._apply_pending_seeks()

    def commit(self, positions: dict[int, int]) -> None:
        self._check_open()
        offsets = [TopicPartition(self.topic, partition, offset + 1)
                   for partition, offset in sorted(positions.items()) if partition in self._held]
        skipped = sorted(set(positions) - self._held)
        if skipped:
            log.info("consumer group %s: commit of partitions %s skipped, no longer held", self.group, skipped)
        if not offsets:
            return
        try:
            results = self._consumer.commit(offsets=offsets, asynchronous=False)
        except Exception as exc:
            error = _kafka_error_in(exc)
            if error is None:
                raise
            self._raise_for(error, "commit failed")
            raise LogUnavailable(f"Kafka commit failed: {error.str()}") from exc
        failed = [tp for tp in results or [] if tp.error is not None]
        if failed:
            raise LogUnavailable("Kafka commit failed for partitions "
                                 + ", ".join(f"{tp.partition} ({tp.error})" for tp in failed))

    def committed(self) -> dict[int, int]:
        self._check_open()
        return {partition: (next_offset - 1 if next_offset >= 0 else -1)
                for partition, next_offset in self._committed_next().items()}

    def lag(self) -> dict[int, int]:
        """Messages after the last commit, per held partition, from the partitions' high watermarks.

        The high watermark is the one of the last fetch (at most a fetch wait old), so that /metrics
        costs no request per partition; the broker is asked (ListOffsets) only for a partition not
        fetched yet. Tansu 0.6 answers ListOffsets with the start of the last produced batch + 1, so
        right after a start a partition written in groups may show too little lag, never too much."""
        self._check_open()
        lags: dict[int, int] = {}
        for partition, next_offset in self._committed_next().items():
            tp = TopicPartition(self.topic, partition)
            try:
                low, high = self._consumer.get_watermark_offsets(tp, cached=True) or (-1, -1)
                if high < 0:
                    low, high = self._consumer.get_watermark_offsets(tp, timeout=self.request_timeout_s,
                                                                     cached=False) or (-1, -1)
                [position] = self._consumer.position([tp])
            except KafkaException as exc:
                raise LogUnavailable(f"Kafka watermarks unavailable: {exc}") from exc
            end = max(high, position.offset)
            lags[partition] = max(0, end - max(next_offset, low, 0))
        return lags

    def close(self) -> None:
        """Leave the group without committing anything more (its partitions go to other members)."""
        if self._closed:
            return
        self._closed = True
        self._buffer.clear()
        self._buffered_bytes = 0
        self._consumer.close()

    # beyond the contract
    def take_revoked(self) -> set[int]:
        """Partitions revoked or lost since the last call (then forgotten): drop their in-flight work."""
        revoked, self._revoked = self._revoked, set()
        return revoked

    def assignment(self) -> list[int]:
        """The partitions this member holds now (as of its last poll)."""
        return sorted(self._held)

    # internals
    def _check_open(self) -> None:
        if self._closed:
            raise LogUnavailable("the Kafka log consumer is closed")

    def _buffered(self) -> int:
        return sum(len(records) for records in self._buffer.values())

    def _room(self) -> int:
        """How many more records to take from the client: what fits the read-ahead bound (at least one,
        so that every poll serves the client's callbacks)."""
        free = self._max_buffered_bytes - self._buffered_bytes
        return int(min(500, max(1, free // self._mean_record_bytes)))

    def _drop_buffered(self, partition: int) -> None:
        dropped = self._buffer.pop(partition, None) or ()
        self._buffered_bytes -= sum(len(record.payload) for record in dropped)

    def _fetch(self, count: int, timeout_s: float) -> None:
        try:
            messages = self._consumer.consume(count, timeout_s)
        except Exception as exc:  # KafkaException, or a SystemError wrapping one; others are the callbacks'
            error = _kafka_error_in(exc)
            if error is None:
                raise
            self._raise_for(error, "consume failed")
            raise LogUnavailable(f"Kafka consume failed: {error.str()}") from exc
        errors: list[KafkaError] = []
        for message in messages:
            error = message.error()
            if error is not None:
                errors.append(error)
                continue
            partition = message.partition()
            if partition not in self._held or partition in self._pending_seeks:
                continue  # from before a rebalance or a seek: its position is decided elsewhere
            record = decode_record(message)
            self._buffer.setdefault(partition, deque()).append(record)
            self._buffered_bytes += len(record.payload)
            self._mean_record_bytes += (max(1, len(record.payload)) - self._mean_record_bytes) / 16
        for error in errors:
            self._raise_for(error, "consumer error")
        if errors and not self._buffered():
            raise LogUnavailable(f"Kafka consumer error: {errors[0].str()}")
        for error in errors:  # the client retries these by itself; records already here are served first
            log.warning("Kafka consumer error (retried by the client): %s", error.str())

    def _take_batch(self, max_events: int) -> list[LogRecord]:
        partitions = sorted(p for p, records in self._buffer.items() if records)
        if not partitions:
            return []
        # Round robin over partitions with records, so that none waits behind a busy one.
        partition = next((p for p in partitions if p > self._last_partition), partitions[0])
        self._last_partition = partition
        queue = self._buffer[partition]
        batch = [queue.popleft()]
        events = batch[0].event_count
        while queue and events + queue[0].event_count <= max_events:
            events += queue[0].event_count
            batch.append(queue.popleft())
        self._buffered_bytes -= sum(len(record.payload) for record in batch)
        return batch

    def _apply_pending_seeks(self) -> None:
        for partition, next_offset in list(self._pending_seeks.items()):
            try:
                self._consumer.seek(TopicPartition(self.topic, partition, next_offset))
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if isinstance(error, KafkaError) and error.code() == KafkaError._STATE:
                    continue  # assigned but not fetching yet: retried at the next poll
                raise LogUnavailable(f"Kafka seek failed: {exc}") from exc
            del self._pending_seeks[partition]

    def _committed_next(self) -> dict[int, int]:
        """The next offset to read after the last commit, per held partition (-1: none committed)."""
        if not self._held:
            return {}
        try:
            partitions = self._consumer.committed([TopicPartition(self.topic, p) for p in sorted(self._held)],
                                                  timeout=self.request_timeout_s)
        except KafkaException as exc:
            raise LogUnavailable(f"Kafka committed offsets unavailable: {exc}") from exc
        return {tp.partition: (tp.offset if tp.offset >= 0 else -1) for tp in partitions}

    def _raise_for(self, error: Any, what: str) -> None:
        if isinstance(error, KafkaError) and error.fatal():
            raise KafkaClientFatal(f"Kafka {what}: {error.str()}")


def ensure_topic(bootstrap_servers: str, topic: str, partitions: int, *, replication_factor: int = -1,
                 max_message_bytes: int = max_message_bytes_for(10 * 1024 * 1024), timeout_s: float = 15.0,
                 client_config: dict[str, Any] | None = None) -> int:
    """Create the topic if it is missing (partitions, replication factor -1 = the broker's default, and
    `max.message.bytes` so any accepted body fits) and return its partition count. Idempotent: an
    existing topic is left as it is — never repartitioned, since that would move keys between
    partitions — and a warning is logged when it has fewer partitions than asked."""
    admin = AdminClient(_client_config(bootstrap_servers, client_config))
    existing = _partition_count(admin, topic, timeout_s)
    if existing is None:
        new = NewTopic(topic, num_partitions=partitions, replication_factor=replication_factor,
                       config={"max.message.bytes": str(max_message_bytes)})
        future = admin.create_topics([new], operation_timeout=timeout_s, request_timeout=timeout_s)[topic]
        try:
            future.result(timeout=timeout_s)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if not (isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS):
                raise LogUnavailable(f"Kafka topic {topic} could not be created: {exc}") from exc
        deadline = time.monotonic() + timeout_s
        while existing is None and time.monotonic() < deadline:  # metadata catches up with the creation
            existing = _partition_count(admin, topic, timeout_s)
            if existing is None:
                time.sleep(0.05)
        if existing is None:
            raise LogUnavailable(f"Kafka topic {topic} was created but does not appear in the metadata")
    if existing < partitions:
        log.warning("Kafka topic %s has %d partitions, fewer than the %d configured: left as it is "
                    "(at most %d workers get partitions)", topic, existing, partitions, existing)
    return existing


def _partition_count(admin: AdminClient, topic: str, timeout_s: float) -> int | None:
    # Metadata of all topics: asking for one topic by name would make some brokers create it.
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise LogUnavailable(f"Kafka metadata unavailable: {exc}") from exc
    found = metadata.topics.get(topic)
    if found is None or found.error is not None:
        return None
    return len(found.partitions)


def _fits_the_contracts(writer: KafkaLogWriter, consumer: KafkaLogConsumer) -> tuple[LogWriter, LogConsumer]:
    """Never called: the static check of src/ verifies here that both classes fit their contracts."""
    return writer, consumer
