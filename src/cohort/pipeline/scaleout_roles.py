"""The scale-out footprint's parts, built from settings: one place, so `cohort serve`, `cohort worker`
and `cohort store-writer` agree on topics, groups and clients.

Roles (processes), each started with the same COHORT_* settings:
- `cohort serve`: ingest + query API. Acks once the raw topic's brokers confirmed a request, then
  registers it in the intake ledger. Runs the store writer too when `serve_store_writer` says so
  (by default when the store is the embedded ClickHouse engine, which one process must own).
- `cohort worker` (N of them, one consumer group over the raw topic): validate, enrich, prepare.
- `cohort store-writer` (one per processed partition at most, a consumer group): dedup on Redis
  and write to ClickHouse. With a ClickHouse server it runs anywhere; with chdb, inside `serve`.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any, Callable

from cohort.core.errors import CohortError, ErrorCode
from cohort.ingest.kafka_log import KafkaLogConsumer, KafkaLogWriter, ensure_topic, max_message_bytes_for
from cohort.pipeline.processed_topic import MAX_PROCESSED_MESSAGE_BYTES, ProcessedPublisher
from cohort.pipeline.pseudonymisation import LazyPseudonymiser, PseudonymiserSource
from cohort.pipeline.scaleout_worker import ScaleoutWorker
from cohort.pipeline.store_writer import StoreWriter
from cohort.security.secrets import load_or_create_secrets
from cohort.settings import Settings
from cohort.state.redis_dedup import RedisDedupState
from cohort.state.redis_intake import RedisIntake
from cohort.store.clickhouse_store import ClickHouseStore

log = logging.getLogger("cohort.scaleout")


class ScaleoutMisconfigured(CohortError):
    """A setting the scale-out footprint needs is missing or contradicts another."""

    def __init__(self, message: str):
        super().__init__(ErrorCode.CONFIG_INVALID, message)


def require_engines(settings: Settings, *, kafka: bool = True, redis: bool = True, clickhouse: bool = True) -> None:
    missing = [name for name, needed, value in (
        ("COHORT_KAFKA_BOOTSTRAP_SERVERS", kafka, settings.kafka_bootstrap_servers),
        ("COHORT_REDIS_URL", redis, settings.redis_url),
        ("COHORT_CLICKHOUSE_DSN", clickhouse, settings.clickhouse_dsn)) if needed and not value]
    if missing:
        raise ScaleoutMisconfigured("the scale-out footprint needs " + ", ".join(missing))


def serve_runs_store_writer(settings: Settings) -> bool:
    if settings.serve_store_writer == "auto":
        return settings.clickhouse_dsn.startswith("chdb:")
    return settings.serve_store_writer == "on"


def _consumer(settings: Settings, topic: str, group: str) -> KafkaLogConsumer:
    return KafkaLogConsumer(settings.kafka_bootstrap_servers, topic, group,
                            max_poll_interval_s=settings.kafka_max_poll_interval_seconds,
                            session_timeout_s=settings.kafka_session_timeout_seconds,
                            heartbeat_interval_s=settings.kafka_heartbeat_interval_seconds,
                            assignment_strategy=settings.kafka_assignment_strategy,
                            client_config=settings.kafka_client_config)


def ensure_topics(settings: Settings) -> int:
    """Create the raw and processed topics if missing (idempotent; every role calls it on start) and return
    the raw topic's partitions. The processed topic gets as many: raw partition p goes to processed p."""
    partitions = ensure_topic(settings.kafka_bootstrap_servers, settings.kafka_raw_topic, settings.kafka_partitions,
                              replication_factor=settings.kafka_replication_factor,
                              max_message_bytes=max_message_bytes_for(settings.max_body_bytes),
                              client_config=settings.kafka_client_config)
    processed = ensure_topic(settings.kafka_bootstrap_servers, settings.kafka_processed_topic, partitions,
                             replication_factor=settings.kafka_replication_factor,
                             max_message_bytes=MAX_PROCESSED_MESSAGE_BYTES, client_config=settings.kafka_client_config)
    if processed < partitions:
        raise ScaleoutMisconfigured(f"topic {settings.kafka_processed_topic} has {processed} partitions, fewer than "
                                    f"the {partitions} of {settings.kafka_raw_topic}: give it at least as many")
    return partitions


def raw_writer(settings: Settings) -> KafkaLogWriter:
    return KafkaLogWriter(settings.kafka_bootstrap_servers, settings.kafka_raw_topic,
                          partition_key=settings.kafka_partition_key,
                          delivery_timeout_s=settings.kafka_delivery_timeout_seconds,
                          max_message_bytes=max_message_bytes_for(settings.max_body_bytes),
                          compression=settings.kafka_compression, client_config=settings.kafka_client_config)


def intake(settings: Settings) -> RedisIntake:
    return RedisIntake(settings.redis_url, socket_timeout_s=settings.redis_socket_timeout_seconds)


def dedup_state(settings: Settings, namespace: str) -> RedisDedupState:
    return RedisDedupState(settings.redis_url, settings.dedup_period_days * 86400, namespace,
                           socket_timeout_s=settings.redis_socket_timeout_seconds)


def open_store(settings: Settings) -> ClickHouseStore:
    return ClickHouseStore(settings.clickhouse_dsn, database=settings.clickhouse_database,
                           dedup_window=settings.clickhouse_dedup_window, query_niceness=settings.query_niceness,
                           query_slots=settings.query_max_concurrent)


def worker_pseudonyms(settings: Settings) -> LazyPseudonymiser:
    """The worker's pseudonymiser on the shared Redis identity vault, opened now: a missing secrets file
    (every process needs the same one), bad field settings or a vault made with other keys stop the start."""
    pseudonyms = LazyPseudonymiser(PseudonymiserSource(settings, load_or_create_secrets(settings)))
    pseudonyms.open_now()
    return pseudonyms


def build_worker(settings: Settings) -> ScaleoutWorker:
    require_engines(settings, clickhouse=False)
    pseudonyms = worker_pseudonyms(settings)
    try:
        ensure_topics(settings)
        publisher = ProcessedPublisher(settings.kafka_bootstrap_servers, settings.kafka_processed_topic,
                                       delivery_timeout_s=max(30.0, settings.kafka_delivery_timeout_seconds),
                                       client_config=settings.kafka_client_config)
    except BaseException:
        pseudonyms.close()
        raise
    return ScaleoutWorker(_consumer(settings, settings.kafka_raw_topic, settings.kafka_consumer_group), publisher,
                          intake(settings), batch_events=settings.pipeline_batch_events, pseudonyms=pseudonyms)


def build_store_writer(settings: Settings, store: ClickHouseStore | None = None) -> StoreWriter:
    """The store writer over `store` (the caller's, e.g. `serve`'s), or over a store of its own that it closes."""
    require_engines(settings)
    ensure_topics(settings)
    return StoreWriter(_consumer(settings, settings.kafka_processed_topic, settings.kafka_store_group),
                       store or open_store(settings), mid_state=dedup_state(settings, "mid"),
                       request_state=dedup_state(settings, "msgid"), intake=intake(settings),
                       owns_store=store is None, refresh_interval_s=settings.rollup_refresh_seconds,
                       refresh_busy_share=settings.rollup_max_busy_share)


class RoleThread:
    """A role's loop on a thread of its own, stopped by `stop()` (which waits for the current step)."""

    def __init__(self, role: Any, name: str):
        self.role = role
        self._stop = threading.Event()
        self._thread = threading.Thread(target=role.run, args=(self._stop,), name=f"cohort-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait for the loop to end by itself (a terminal fault) or by `stop`; True when it ended."""
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("%s did not stop within %.0f s", self._thread.name, timeout_s)
            return
        self.role.close()


def run_until_signalled(role_thread: RoleThread, on_stop: Callable[[], None] | None = None) -> int:
    """Run a role in the foreground until SIGTERM/SIGINT (then stop cleanly: leave the group, close the
    clients) or a terminal fault (exit status 1, so a supervisor restarts it and an operator sees it)."""
    stopping = threading.Event()

    def handle(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        stopping.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        role_thread.start()
        while not stopping.is_set() and role_thread.alive:
            stopping.wait(0.5)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    terminal = getattr(role_thread.role, "terminal_error", None)
    role_thread.stop()
    if on_stop is not None:
        on_stop()
    return 1 if terminal else 0
