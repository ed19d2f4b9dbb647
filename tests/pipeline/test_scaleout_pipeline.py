"""The scale-out pipeline on real engines: Kafka protocol (Tansu), Redis, ClickHouse (chdb).

Two workers and a store writer, each with its own clients as separate processes would have,
move acknowledged raw messages into the store: every event stored once, quarantined once or
counted as a duplicate once; a retried request adds nothing; a worker that leaves mid-run loses
and doubles nothing; and the ledger reconciles across Redis and the store.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import orjson
import pytest

from cohort.core.log_record import LogRecord
from cohort.ingest.kafka_log import KafkaLogConsumer, KafkaLogWriter, ensure_topic
from cohort.pipeline.processed_topic import MAX_PROCESSED_MESSAGE_BYTES, ProcessedPublisher
from cohort.pipeline.pseudonymisation import LazyPseudonymiser
from cohort.pipeline.scaleout_roles import worker_pseudonyms
from cohort.pipeline.scaleout_worker import ScaleoutWorker
from cohort.pipeline.store_writer import StoreWriter
from cohort.security.secrets import load_or_create_secrets
from cohort.settings import Settings
from cohort.state.redis_dedup import RedisDedupState
from cohort.state.redis_intake import RedisIntake
from cohort.store.clickhouse_store import ClickHouseStore
from engines import QUICK_GROUP

pytestmark = pytest.mark.e2e
PARTITIONS = 4


class Deployment:
    """The engines' topics, Redis and store, and the roles started as threads with clients of their own."""

    def __init__(self, bootstrap, redis_url, dsn, database, topic):
        self.bootstrap, self.redis_url = bootstrap, redis_url
        self.raw, self.processed = topic + "-raw", topic + "-processed"
        # consumer groups of this deployment only: the test broker (Tansu 0.6) can leave a group whose
        # members all left stuck in a rebalance, so groups are never reused across tests
        self.pipeline_group, self.store_group = topic + "-pipeline", topic + "-store"
        ensure_topic(bootstrap, self.raw, PARTITIONS)
        ensure_topic(bootstrap, self.processed, PARTITIONS, max_message_bytes=MAX_PROCESSED_MESSAGE_BYTES)
        self.store = ClickHouseStore(dsn, database=database)
        self.intake = RedisIntake(redis_url)
        self.roles: list[tuple[threading.Event, threading.Thread, object]] = []

    def ingest(self, records: list[LogRecord]) -> None:
        """What `cohort serve` does for an acknowledged group: the broker's acks, then the intake ledger."""
        writer = KafkaLogWriter(self.bootstrap, self.raw)
        try:
            positions = writer.append_positions(records)
        finally:
            writer.close()
        self.intake.register((p, o, r.event_count, r.received_at_ms) for (p, o), r in zip(positions, records))

    def start_worker(self, pseudonyms: LazyPseudonymiser | None = None) -> ScaleoutWorker:
        worker = ScaleoutWorker(KafkaLogConsumer(self.bootstrap, self.raw, self.pipeline_group, **QUICK_GROUP),
                                ProcessedPublisher(self.bootstrap, self.processed), RedisIntake(self.redis_url),
                                batch_events=200, pseudonyms=pseudonyms)
        return self._start(worker)

    def start_store_writer(self) -> StoreWriter:
        period = 7 * 86400
        writer = StoreWriter(KafkaLogConsumer(self.bootstrap, self.processed, self.store_group, **QUICK_GROUP),
                             self.store, mid_state=RedisDedupState(self.redis_url, period, "mid"),
                             request_state=RedisDedupState(self.redis_url, period, "msgid"),
                             intake=RedisIntake(self.redis_url))
        return self._start(writer)

    def _start(self, role):
        stop = threading.Event()
        thread = threading.Thread(target=role.run, args=(stop,), daemon=True)
        thread.start()
        self.roles.append((stop, thread, role))
        return role

    def kill(self, role) -> None:
        """A worker that goes away mid-run (between two batches: a kill -9 of a `cohort worker` process is
        for the process-level tests): it leaves the group and the others take its partitions over."""
        for stop, thread, r in self.roles:
            if r is role:
                stop.set()
                thread.join(15)
                role.closed_by_test = True
                role.close()  # it leaves the group; what it read but did not commit is replayed by the others

    def ledger(self) -> dict:
        counts = self.store.counts()
        return {"received": self.intake.received(), "stored": counts.stored, "failed": counts.failed,
                "duplicate": counts.duplicate, "in_flight": self.intake.in_flight(counts.positions),
                "duplicate_requests": counts.duplicate_requests}

    def wait_settled(self, total: int, timeout_s: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            ledger = self.ledger()
            done = ledger["stored"] + ledger["failed"] + ledger["duplicate"]
            if (done == total and ledger["in_flight"] == 0) or time.monotonic() > deadline:
                return ledger
            time.sleep(0.2)

    def close(self) -> None:
        for stop, thread, _ in self.roles:
            stop.set()
        for _, thread, role in self.roles:
            thread.join(15)
            if not getattr(role, "closed_by_test", False):
                role.close()
        self.intake.close()
        self.store.close()


@pytest.fixture
def deployment(kafka_bootstrap, redis_url, clickhouse_dsn, clickhouse_database, unique_topic):
    deployment = Deployment(kafka_bootstrap, redis_url, clickhouse_dsn, clickhouse_database, unique_topic)
    yield deployment
    deployment.close()


def request(events: list, msgid: str, channel: str) -> LogRecord:
    body = orjson.dumps({"id": "api.sunbird.telemetry", "params": {"msgid": msgid}, "events": events})
    return LogRecord(payload=body, event_count=len(events), received_at_ms=int(time.time() * 1000),
                     headers={"x-channel-id": channel, "msgid": msgid})


def sample_requests(sample_events, per_request: int = 20) -> list[LogRecord]:
    channels = ["state-a", "state-b", "state-c", "state-d", "state-e"]
    return [request(sample_events[i:i + per_request], f"batch-{i}", channels[(i // per_request) % len(channels)])
            for i in range(0, len(sample_events), per_request)]


def test_two_workers_and_a_store_writer_store_everything_once_and_reconcile(deployment, sample_events):
    bad = [dict(sample_events[0], ets="never"), "not an object"]
    records = sample_requests(sample_events) + [request(bad, "bad-1", "state-a")]
    deployment.start_worker()
    deployment.start_worker()
    deployment.start_store_writer()
    deployment.ingest(records)
    ledger = deployment.wait_settled(502)
    assert ledger == {"received": 502, "stored": 500, "failed": 2, "duplicate": 0, "in_flight": 0,
                      "duplicate_requests": 0}
    rows = deployment.store.query("SELECT count() AS n, uniqExact(mid) AS m FROM telemetry", None, 10, 30)
    assert rows.rows == [(500, 500)]

    # A client that did not hear its acks retries three requests, one holding invalid events, and
    # re-sends some events in a new request: nothing is stored or quarantined again.
    retried = [records[0], records[5], records[-1], request(sample_events[:7], "new-1", "state-a")]
    deployment.ingest(retried)
    ledger = deployment.wait_settled(502 + 20 + 20 + 2 + 7)
    assert ledger == {"received": 551, "stored": 500, "failed": 2, "duplicate": 49, "in_flight": 0,
                      "duplicate_requests": 3}


def test_two_workers_store_no_clear_actor_or_device_id_and_share_one_pseudonym_per_learner(deployment, sample_events,
                                                                                         tmp_path):
    secrets_file = tmp_path / "secrets.json"  # the one file every scale-out process is given
    load_or_create_secrets(Settings(footprint="embedded", secrets_file=secrets_file))
    settings = Settings(footprint="scaleout", redis_url=deployment.redis_url, secrets_file=secrets_file)
    records = [replace(r, headers={**r.headers, "x-device-id": "tablet-serial-0042"})
               for r in sample_requests(sample_events)]
    deployment.start_worker(worker_pseudonyms(settings))
    deployment.start_worker(worker_pseudonyms(settings))
    deployment.start_store_writer()
    deployment.ingest(records)
    assert deployment.wait_settled(500)["stored"] == 500
    texts = []
    for table in ("telemetry", "ingest_batches"):
        texts += [orjson.dumps(row).decode()
                  for row in deployment.store.query(f"SELECT * FROM {table}", None, 1000, 30).rows]
    channels = {e["context"]["channel"] for e in sample_events}
    clear = ({e["actor"]["id"] for e in sample_events} | {e["context"]["did"] for e in sample_events
                                                          if e["context"].get("did")} | {"tablet-serial-0042"})
    assert {c for c in clear - channels if len(c) >= 8 and any(c in text for text in texts)} == set()
    # one learner, one pseudonym, whichever worker met it (its events span several requests and partitions)
    rows = deployment.store.query("SELECT mid, actor_id FROM telemetry", None, 1000, 30).rows
    pseudonym_of = dict(rows)
    by_learner: dict[tuple[str, str], set[str]] = {}
    for event in sample_events:
        key = (event["context"]["channel"], event["actor"]["id"])
        by_learner.setdefault(key, set()).add(pseudonym_of[event["mid"]])
    assert all(len(p) == 1 for p in by_learner.values()) and len(by_learner) > 10


def test_a_worker_leaving_mid_run_loses_and_doubles_nothing(deployment, sample_events):
    records = sample_requests(sample_events * 4, per_request=25)  # 2,000 events: the same mids four times
    first = deployment.start_worker()
    deployment.start_worker()
    deployment.start_store_writer()
    deployment.ingest(records[:40])
    deadline = time.monotonic() + 30
    while first.batches == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    deployment.kill(first)  # mid-run: the other worker takes its partitions over from their last commits
    deployment.ingest(records[40:])
    ledger = deployment.wait_settled(2000, timeout_s=60)
    assert ledger["received"] == 2000 and ledger["in_flight"] == 0
    assert (ledger["stored"], ledger["failed"], ledger["duplicate"]) == (500, 0, 1500)
    rows = deployment.store.query("SELECT count() AS n, uniqExact(mid) AS m FROM telemetry", None, 10, 30)
    assert rows.rows == [(500, 500)]


def test_a_request_the_core_fails_on_every_time_is_quarantined_and_the_rest_flows(deployment, sample_events,
                                                                                   monkeypatch):
    import cohort.pipeline.scaleout_worker as worker_module

    real_prepare, real_isolated = worker_module.prepare_batch, worker_module.prepare_isolated

    def poisoned(records, **kwargs):  # fault injection: the core crashes on one request, whatever the batch
        if any(b"poison-pill" in r.payload for r in records):
            raise RuntimeError("core crashed")
        return real_prepare(records, **kwargs)

    def poisoned_alone(record, **kwargs):
        if b"poison-pill" in record.payload:
            raise RuntimeError("core crashed again")
        return real_isolated(record, **kwargs)

    monkeypatch.setattr(worker_module, "prepare_batch", poisoned)
    monkeypatch.setattr(worker_module, "prepare_isolated", poisoned_alone)
    records = sample_requests(sample_events[:100])
    records.insert(2, request([dict(sample_events[100], mid="poison-pill")] * 3, "pill", "state-c"))
    worker = deployment.start_worker()
    deployment.start_store_writer()
    deployment.ingest(records)
    ledger = deployment.wait_settled(103)
    assert ledger == {"received": 103, "stored": 100, "failed": 3, "duplicate": 0, "in_flight": 0,
                      "duplicate_requests": 0}
    rows = deployment.store.query("SELECT error_code, stage, event_count FROM failed_events", None, 10, 30)
    assert rows.rows == [("ERR_PIPELINE_POISON", "core", 3)]  # the request whole, as received, counted as 3
    assert worker.isolated_records >= 1 and worker.terminal_error is None
