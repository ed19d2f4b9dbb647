"""The processed topic: prepared batches from the workers to the store writer (Obsrv's shape:
pipeline → Kafka → store ingestion), so N workers can feed one store.

A prepared batch of raw partition p is published to partition p of the processed topic, so all
of one raw partition reaches one store writer, in order: the store writer's per-partition
position then tells exactly what is already stored. The processed topic needs at least as many
partitions as the raw one (`ensure_topic` with the same count).
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from cohort.core.log_record import LogRecord
from cohort.core.prepared_codec import encode_prepared
from cohort.core.process_batch import PreparedBatch
from cohort.ingest.kafka_log import ZSTD_LEVEL, encode_headers
from cohort.ingest.log import LogUnavailable

SOURCE = "cohort-worker"
MAX_PROCESSED_MESSAGE_BYTES = 64 * 2**20  # a prepared batch of a few thousand events, with room


class ProcessedPublisher:
    """Publishes prepared batches with an idempotent acks=all producer; returns once the broker has them."""

    def __init__(self, bootstrap_servers: str, topic: str, *, delivery_timeout_s: float = 30.0,
                 client_config: dict[str, Any] | None = None):
        self.topic = topic
        self._timeout_s = delivery_timeout_s
        config: dict[str, Any] = {"bootstrap.servers": bootstrap_servers, "enable.idempotence": True, "acks": "all",
                                  "message.timeout.ms": int(delivery_timeout_s * 1000),
                                  "message.max.bytes": MAX_PROCESSED_MESSAGE_BYTES, "compression.type": "zstd",
                                  "compression.level": ZSTD_LEVEL,
                                  "allow.auto.create.topics": False}
        config.update(client_config or {})
        self._producer = Producer(config)

    def publish(self, batches: list[PreparedBatch]) -> None:
        reports: list[KafkaError | None] = []

        def delivered(error: KafkaError | None, _message: Message) -> None:
            reports.append(error)

        try:
            for batch in batches:
                record = LogRecord(payload=b"", event_count=batch.events_in, source=SOURCE)
                self._producer.produce(self.topic, value=encode_prepared(batch), partition=batch.partition,
                                       headers=encode_headers(record), on_delivery=delivered)
            left = self._producer.flush(self._timeout_s)
        except (BufferError, Exception) as exc:  # KafkaException, or the local queue full
            raise LogUnavailable(f"processed topic: {exc}") from exc
        errors = [e for e in reports if e is not None]
        if left or errors or len(reports) != len(batches):
            raise LogUnavailable(f"processed topic: {len(batches) - len(reports) + len(errors)} of {len(batches)} "
                                 f"batches not confirmed" + (f" ({errors[0]})" if errors else ""))

    def close(self) -> None:
        self._producer.flush(min(self._timeout_s, 5.0))
        self._producer = None  # type: ignore[assignment]  # librdkafka's threads end with the object
