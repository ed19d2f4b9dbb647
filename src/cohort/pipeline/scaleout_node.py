"""`cohort serve` on the scale-out footprint: the ingest and query API over Kafka, Redis and ClickHouse.

A request is acknowledged once the raw topic's brokers confirmed it (acks=all, idempotent producer,
many requests to one flush through the group committer) and it was registered in the intake
ledger. If Redis cannot take the registration, the request is acknowledged all the same (it is
durable in Kafka) and the worker that reads it registers it: the received count only lags.

The ledger spans processes, so it is read, store first, from the two places that hold it:
received and in flight from the intake ledger (Redis), stored / failed / duplicate and each raw
partition's position from the store (ClickHouse); in flight = what the intake holds above those
positions. If the store wrote more between the two reads, the intake says so (`overtaken`) and
both are read again. `received − stored − failed − duplicate − in flight` is then 0.
"""

from __future__ import annotations

import logging
import threading
import time

from cohort.core.errors import first_line
from cohort.core.log_record import LogRecord
from cohort.ingest.group_commit import GroupCommitter
from cohort.ingest.kafka_log import KafkaLogWriter
from cohort.pipeline import scaleout_roles as roles
from cohort.pipeline.node_status import Ledger, NodeStatus
from cohort.pipeline.runner import RunnerStatus
from cohort.settings import Settings
from cohort.state.dedup_state import DedupState
from cohort.state.redis_intake import IntakeSnapshot, RedisIntake
from cohort.store.base import StoreCounts

log = logging.getLogger("cohort.node")
REFRESH_S = 1.0  # how often the backlog (for backpressure) is read when no scrape reads it


class RegisteringLog:
    """The LogWriter the group committer appends to: the raw topic, then the intake ledger."""

    def __init__(self, writer: KafkaLogWriter, intake: RedisIntake):
        self._writer = writer
        self._intake = intake
        self.unregistered = 0  # acknowledged messages the intake could not take (a worker registers them)

    def append_many(self, records: list[LogRecord]) -> list[int]:
        positions = self._writer.append_positions(records)  # raises LogUnavailable: nothing acknowledged
        try:
            self._intake.register((p, o, r.event_count, r.received_at_ms) for (p, o), r in zip(positions, records))
        except Exception as exc:  # durable in Kafka: acknowledge, the worker registers it when it reads it
            self.unregistered += len(records)
            log.warning("acknowledged %d requests without registering them in the intake ledger (%s): the "
                        "received count lags until a worker reads them", len(records), first_line(exc))
        return [offset for _, offset in positions]

    def close(self) -> None:
        self._writer.close()


class ScaleoutNode:
    def __init__(self, settings: Settings):
        roles.require_engines(settings)
        self.settings = settings
        roles.ensure_topics(settings)
        self.store = roles.open_store(settings)
        self._intake = roles.intake(settings)
        self._log = RegisteringLog(roles.raw_writer(settings), roles.intake(settings))
        self.committer = GroupCommitter(self._log, max_records=settings.group_commit_max_records)
        self._reach = {"mid": roles.dedup_state(settings, "mid"), "msgid": roles.dedup_state(settings, "msgid")}
        self.writer = (roles.RoleThread(roles.build_store_writer(settings, self.store), "store-writer")
                       if roles.serve_runs_store_writer(settings) else None)
        self._waiting_events = 0  # in flight at the last read of the ledger, plus what was acked since
        self._stop = threading.Event()
        self._refresher = threading.Thread(target=self._refresh, name="cohort-ledger", daemon=True)

    @property
    def backlog_events(self) -> int:
        """Events acknowledged but not yet stored (as of the last ledger read, at most a second old, plus
        the acks since) and events being made durable: what backpressure bounds."""
        return self._waiting_events + self.committer.pending_events

    async def append(self, record: LogRecord) -> None:
        await self.committer.append(record)
        self._waiting_events += record.event_count

    # -- what a forget needs (cohort.pipeline.forget) ------------------------------------------------
    @property
    def mid_dedup(self) -> DedupState:
        return self._reach["mid"]

    def acked_mark(self) -> int:
        """Now, in epoch ms: the intake ledger stamps each message with the time it was acknowledged."""
        return int(time.time() * 1000)

    def processed_through(self, mark: int) -> bool:
        """No message acknowledged at or before `mark` (by any serve replica) is still in the intake ledger:
        the store writer lets a message go only after the store holds it and the dedup state took its mids.
        Limits: replicas' clocks are compared (a replica whose clock runs ahead by d may have its last d ms
        of messages left out), and a message whose registration failed at ack time is known only once a
        worker reads it."""
        oldest = self._intake.snapshot({}).waiting.oldest_received_ms
        return oldest is None or oldest > mark

    def status(self) -> NodeStatus:
        """The snapshot /health and /metrics read (off the event loop: it asks ClickHouse and Redis)."""
        store_error: str | None = None
        ledger: Ledger | None = None
        counts: StoreCounts | None = None
        intake: IntakeSnapshot | None = None
        try:
            for _ in range(5):  # store first, then the intake above its positions; again if the store moved
                counts = self.store.counts()
                intake = self._intake.snapshot(counts.positions)
                if not intake.overtaken:
                    break
        except Exception as exc:
            store_error = first_line(exc)
            log.warning("the ledger cannot be read right now: %s", store_error)
        now = time.time()
        oldest_age = 0.0
        stored_messages = 0
        waiting_messages = 0
        if counts is not None and intake is not None:
            waiting = intake.waiting
            self._waiting_events = waiting.events
            ledger = Ledger(received=intake.received, stored=counts.stored, failed=counts.failed,
                            duplicate=counts.duplicate, in_flight=waiting.events,
                            failed_by_stage=counts.failed_by_stage, duplicate_requests=counts.duplicate_requests,
                            received_requests=intake.received_requests)
            if waiting.oldest_received_ms is not None:
                oldest_age = max(0.0, now - waiting.oldest_received_ms / 1000)
            stored_messages = sum(position + 1 for position in counts.positions.values())
            waiting_messages = waiting.messages
        writer = self.writer.role if self.writer is not None else None
        last_error = (writer.last_error if writer is not None else None) or store_error
        terminal = writer.terminal_error if writer is not None else None
        running = self.writer.alive if self.writer is not None else True
        stalled = terminal is not None or oldest_age >= self.settings.pipeline_stall_seconds
        runner = RunnerStatus(running=running, offset=stored_messages, backlog_events=self.backlog_events,
                              last_error=last_error, consecutive_failures=0, failing_for_s=0.0,
                              oldest_unprocessed_age_s=oldest_age, stalled=stalled,
                              isolated_records=writer.isolated_records if writer is not None else 0,
                              terminal_error=terminal)
        reach: dict[str, float] = {}
        for key, state in self._reach.items():
            try:
                reach[key] = state.reach_seconds()
            except Exception as exc:  # Redis away: the gauge is left out rather than the scrape failing
                log.warning("dedup reach of %s unknown: %s", key, first_line(exc))
        return NodeStatus(footprint="scaleout", runner=runner, backlog_events=self.backlog_events, ledger=ledger,
                          store_error=store_error, log_offset=stored_messages + waiting_messages,
                          pipeline_offset=stored_messages, phase_seconds={}, dedup_reach_s=reach)

    def start(self) -> None:
        if self.writer is not None:
            self.writer.start()
        self._refresher.start()

    def _refresh(self) -> None:
        while not self._stop.wait(REFRESH_S):
            try:
                counts = self.store.counts()
                self._waiting_events = self._intake.snapshot(counts.positions).waiting.events
            except Exception as exc:
                log.debug("backlog not refreshed: %s", first_line(exc))

    def close(self) -> None:
        self._stop.set()
        self.committer.close()
        if self.writer is not None:
            self.writer.stop()
        if self._refresher.is_alive():
            self._refresher.join(5)
        for close in (self._log.close, self._intake.close, *(s.close for s in self._reach.values()),
                      self.store.close):
            try:
                close()
            except Exception as exc:
                log.warning("closing the node: %s", first_line(exc))
