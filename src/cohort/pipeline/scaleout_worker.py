"""`cohort worker`: one process of the scale-out pipeline (run N of them, one consumer group).

Per batch of one raw partition: register the records in the intake ledger (idempotent) → run the
core's CPU-heavy half (`prepare_batch`, pseudonyms from the shared Redis identity vault) → publish the prepared batch to the processed topic and wait
for the broker → only then commit the raw offsets. A crash anywhere replays from the last commit;
the store writer keeps only what lies after its stored position, so a replay doubles nothing.

Failures follow the embedded runner's rule: infrastructure faults (Kafka, Redis) are retried with
backoff from the last commit; a batch the core fails on is prepared record by record, then event by
event (`prepare_isolated`), and what still fails is quarantined whole (`quarantine_record`): an input
that fails every time never stops the pipeline. Terminal faults stop the worker loudly.
"""

from __future__ import annotations

import logging
import threading
import time

from cohort.core.errors import ErrorCode, TerminalFault, TransientFault
from cohort.core.log_record import LogRecord
from cohort.core.stages.transform import Pseudonymiser
from cohort.core.process_batch import (CORE_STAGE, PreparedBatch, prepare_batch, prepare_isolated,
                                       quarantine_record)
from cohort.core.telemetry_schema import compile_all, schema_version
from cohort.core.work_item import describe_failure
from cohort.ingest.kafka_log import KafkaLogConsumer
from cohort.pipeline.gc_tuning import collector_paused
from cohort.pipeline.isolation import RecordIsolation, quarantine_message
from cohort.pipeline.processed_topic import ProcessedPublisher
from cohort.pipeline.pseudonymisation import LazyPseudonymiser
from cohort.pipeline.role_loop import run_role
from cohort.state.redis_intake import RedisIntake

log = logging.getLogger("cohort.worker")


class ScaleoutWorker:
    def __init__(self, raw: KafkaLogConsumer, publisher: ProcessedPublisher, intake: RedisIntake, *,
                 batch_events: int = 2000, poll_timeout_s: float = 0.2, pseudonyms: LazyPseudonymiser | None = None):
        """`pseudonyms`: the worker's own (it closes it); without it identifiers are stored as sent (tests of
        other concerns only: `build_worker` always gives one)."""
        self._raw = raw
        self._pseudonyms = pseudonyms
        self._publisher = publisher
        self._intake = intake
        self._batch_events = batch_events
        self._poll_timeout_s = poll_timeout_s
        self._config_version = schema_version()
        compile_all()
        self.batches = 0
        self.events = 0
        self._isolation = RecordIsolation()
        self.last_error: str | None = None
        self.terminal_error: str | None = None

    def step(self) -> int:
        """Process one batch of one raw partition; return its events (0: nothing arrived)."""
        records = self._raw.poll(self._batch_events, self._poll_timeout_s)
        self._raw.take_revoked()  # nothing is held between steps, so a revoked partition needs no cleanup
        if not records:
            return 0
        partition = records[0].partition
        try:
            self._intake.register((r.partition, r.offset, r.event_count, r.received_at_ms) for r in records)
            with collector_paused():
                prepared = self._prepare(records)
            self._publisher.publish(prepared)
            self._raw.commit({partition: records[-1].offset})
        except BaseException:
            # Nothing of this batch counts as done: read it again from the last commit.
            committed = self._raw.committed().get(partition, -1)
            self._raw.seek(partition, committed)
            raise
        self.batches += 1
        events = sum(r.event_count for r in records)
        self.events += events
        return events

    def _prepare(self, records: list[LogRecord]) -> list[PreparedBatch]:
        now = int(time.time() * 1000)
        try:
            return [prepare_batch(records, now_ms=now, config_version=self._config_version,
                                  pseudonyms=self._own_pseudonyms())]
        except (TransientFault, TerminalFault):
            raise
        except Exception as exc:
            log.warning("isolating raw records %d..%d of partition %d: %s", records[0].offset, records[-1].offset,
                        records[0].partition, describe_failure(exc))
            return [self._prepare_alone(record, now) for record in records]

    def _prepare_alone(self, record: LogRecord, now: int) -> PreparedBatch:
        version = self._config_version
        pseudonyms = self._own_pseudonyms()

        def quarantine(failure: Exception) -> PreparedBatch:
            message = quarantine_message(failure)
            log.error("quarantining raw record %d of partition %d: %s", record.offset, record.partition, message)
            return quarantine_record(record, ErrorCode.PIPELINE_POISON, CORE_STAGE, message, pseudonyms)

        return self._isolation.first_that_works(
            (lambda: prepare_batch([record], now_ms=now, config_version=version, pseudonyms=pseudonyms),
             lambda: prepare_isolated(record, now_ms=now, config_version=version, pseudonyms=pseudonyms)),
            quarantine)

    def _own_pseudonyms(self) -> Pseudonymiser | None:
        """The worker's pseudonymiser (raises PseudonymsUnavailable, a fault, while the vault cannot open)."""
        return self._pseudonyms.get() if self._pseudonyms is not None else None

    @property
    def isolated_records(self) -> int:
        """Raw records that failed as part of a batch and were prepared alone (or quarantined)."""
        return self._isolation.isolated_records

    def close(self) -> None:
        """Leave the consumer group and let the clients go (call once `run` returned)."""
        closers = [self._raw.close, self._publisher.close, self._intake.close]
        if self._pseudonyms is not None:
            closers.append(self._pseudonyms.close)
        for close in closers:
            try:
                close()
            except Exception as exc:  # closing the others matters more than this one's error
                log.warning("closing the worker: %s", describe_failure(exc))

    def run(self, stop: threading.Event) -> None:
        """Until `stop` is set (or a terminal fault): steps, with backoff after a failed one."""
        run_role(self, stop, log, "worker", "Acknowledged events wait in the raw topic.")
