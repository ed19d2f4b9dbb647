"""The scale-out store writer on real engines (Kafka protocol, Redis, ClickHouse): a batch the store refuses
never stops its partition, and a passing fault is never blamed on the input.

ClickHouse itself refuses the poison: a CHECK constraint on `telemetry` refuses rows whose mid starts with
"poison" (VIOLATED_CONSTRAINT), as it would a value a column cannot take. Prepared batches are published
to the processed topic as a worker publishes them, with the raw records registered in the intake ledger,
so each test chooses where the poison sits in a batch.
"""

from __future__ import annotations

import threading
import time

import clickhouse_connect
import orjson
import pytest
from clickhouse_connect.driver.exceptions import OperationalError

from cohort.core.errors import ErrorCode
from cohort.core.log_record import LogRecord
from cohort.core.process_batch import prepare_batch
from cohort.ingest.kafka_log import KafkaLogConsumer, ensure_topic
from cohort.pipeline.processed_topic import MAX_PROCESSED_MESSAGE_BYTES, ProcessedPublisher
from cohort.pipeline.store_writer import StoreWriter
from cohort.state.redis_dedup import RedisDedupState
from cohort.state.redis_faults import RedisStateUnavailable
from cohort.state.redis_intake import RedisIntake
from cohort.store.clickhouse_store import ClickHouseStore
from engines import QUICK_GROUP

pytestmark = pytest.mark.e2e
PARTITIONS = 2
PERIOD_S = 7 * 86400


class TellFailsOnce:
    """Fault injection: a dedup state whose `add` fails once, for the first keys `when` picks, as when Redis
    goes away after the store took a write and before the writer told the state."""

    def __init__(self, state, when):
        self._state = state
        self._when = when
        self.failed = False

    def add(self, keys, at_ms):
        if not self.failed and self._when(list(keys)):
            self.failed = True
            raise RedisStateUnavailable("Redis went away before the keys were told (injected)")
        self._state.add(keys, at_ms)

    def __getattr__(self, name):
        return getattr(self._state, name)


class Harness:
    """A processed topic, the intake ledger, a ClickHouse store that refuses poison, and one store writer."""

    def __init__(self, bootstrap, redis_url, dsn, database, topic, *, mid_fault=None, request_fault=None):
        self.dsn, self.database = dsn, database
        processed = topic + "-processed"
        ensure_topic(bootstrap, processed, PARTITIONS, max_message_bytes=MAX_PROCESSED_MESSAGE_BYTES)
        self.store = ClickHouseStore(dsn, database=database)
        self.command(f"ALTER TABLE {database}.telemetry ADD CONSTRAINT no_poison CHECK NOT startsWith(mid, 'poison')")
        self.intake = RedisIntake(redis_url)
        self.publisher = ProcessedPublisher(bootstrap, processed)
        self.mid_state = RedisDedupState(redis_url, PERIOD_S, "mid")
        self.request_state = RedisDedupState(redis_url, PERIOD_S, "msgid")
        # the writer's own clients, as its process would have; a fault injected only where a test asks
        self.mid_tell = TellFailsOnce(RedisDedupState(redis_url, PERIOD_S, "mid"), mid_fault or (lambda keys: False))
        self.request_tell = TellFailsOnce(RedisDedupState(redis_url, PERIOD_S, "msgid"),
                                          request_fault or (lambda keys: False))
        self.writer = StoreWriter(KafkaLogConsumer(bootstrap, processed, topic + "-store", **QUICK_GROUP), self.store,
                                  mid_state=self.mid_tell, request_state=self.request_tell,
                                  intake=RedisIntake(redis_url))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.writer.run, args=(self._stop,), daemon=True)
        self._thread.start()

    def command(self, sql: str) -> None:
        """A statement from an operator's own connection (the writer's thread keeps using the store's)."""
        client = clickhouse_connect.get_client(dsn=self.dsn)
        try:
            client.command(sql)
        finally:
            client.close()

    def publish(self, records: list[LogRecord]) -> None:
        """What a worker does with raw records it read: register them, prepare them, publish one batch."""
        self.intake.register((r.partition, r.offset, r.event_count, r.received_at_ms) for r in records)
        self.publisher.publish([prepare_batch(records, now_ms=int(time.time() * 1000), config_version="test")])

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
            time.sleep(0.1)

    def rows(self, sql: str) -> list[tuple]:
        return self.store.query(sql, None, 10_000, 30.0).rows

    def close(self) -> None:
        self._stop.set()
        self._thread.join(15)
        self.writer.close()
        for close in (self.publisher.close, self.intake.close, self.mid_state.close, self.request_state.close,
                      self.store.close):
            close()


@pytest.fixture
def harness_for(kafka_bootstrap, redis_url, clickhouse_dsn, clickhouse_database, unique_topic):
    made = []

    def make(**faults) -> Harness:
        made.append(Harness(kafka_bootstrap, redis_url, clickhouse_dsn, clickhouse_database, unique_topic, **faults))
        return made[-1]

    yield make
    for harness in made:
        harness.close()


def request(events: list, offset: int, msgid: str, partition: int = 1) -> LogRecord:
    body = orjson.dumps({"id": "api.sunbird.telemetry", "params": {"msgid": msgid}, "events": events})
    return LogRecord(payload=body, event_count=len(events), received_at_ms=int(time.time() * 1000),
                     headers={"x-channel-id": "state-a", "msgid": msgid}, offset=offset, partition=partition)


def poisoned(events: list, at: int) -> list:
    """The events with the one at `at` given a mid the store refuses (still a valid event for the core)."""
    return [dict(e, mid=f"poison-{e['mid']}") if i == at else e for i, e in enumerate(events)]


def mids(events: list) -> list[str]:
    return [e["mid"] for e in events]


def told(state, keys: list[str], timeout_s: float = 30.0) -> set[str]:
    """Which of `keys` the state holds once it holds them all (or the time is up): the ledger settles when the
    store has a batch, and the writer tells the state right after (again, after a stop)."""
    deadline = time.monotonic() + timeout_s
    while (held := state.seen(keys)) != set(keys) and time.monotonic() < deadline:
        time.sleep(0.05)
    return held


def test_a_poison_record_in_the_middle_of_a_batch_is_quarantined_and_the_partition_keeps_moving(
        harness_for, sample_events):
    harness = harness_for()
    ev = [sample_events[i * 5:i * 5 + 5] for i in range(8)]
    bad = poisoned(ev[2], 3)
    batch = [request(ev[0], 0, "r0"), request(ev[1], 1, "r1"), request(bad, 2, "r2"),
             request(ev[3] + [ev[1][0]], 3, "r3"),  # an event of r1 again: a duplicate across isolated records
             request(ev[4], 4, "r4")]
    harness.publish(batch)
    harness.publish([request(ev[5], 5, "r5"), request(ev[6], 6, "r6")])  # the partition goes on after it
    harness.publish([request(ev[7], 0, "other", partition=0)])
    ledger = harness.wait_settled(41)
    assert ledger == {"received": 41, "stored": 35, "failed": 5, "duplicate": 1, "in_flight": 0,
                      "duplicate_requests": 0}
    assert harness.rows("SELECT count() AS n, uniqExact(mid) FROM telemetry") == [(35, 35)]
    assert harness.rows("SELECT count() FROM telemetry WHERE log_offset = 2") == [(0,)]  # r2 whole, not 4 of it
    quarantined = harness.rows("SELECT error_code, stage, log_offset, mid, payload, message FROM failed_events")
    assert sorted(r[3] for r in quarantined) == sorted(mids(bad))
    for code, stage, offset, _, payload, message in quarantined:
        assert (code, stage, offset) == (ErrorCode.STORE_REJECTED, "store", 2)
        assert "VIOLATED_CONSTRAINT" in message or "no_poison" in message
    assert {r[3]: orjson.loads(r[4]) for r in quarantined} == {e["mid"]: e for e in bad}  # each event's text
    assert harness.store.counts().positions == {0: 0, 1: 6}
    assert harness.writer.isolated_records == 1 and harness.writer.terminal_error is None
    # The state learned what was stored, and nothing of what the store refused.
    stored_mids = [m for e in ev[:7] if e is not ev[2] for m in mids(e)]
    assert told(harness.mid_state, stored_mids) == set(stored_mids)
    assert harness.mid_state.seen(mids(bad)) == set()

    # The client retries the refused request: a duplicate request, nothing quarantined again.
    harness.publish([request(bad, 7, "r2")])
    ledger = harness.wait_settled(46)
    assert (ledger["failed"], ledger["duplicate"], ledger["duplicate_requests"], ledger["in_flight"]) == (5, 6, 1, 0)
    assert harness.rows("SELECT count() FROM failed_events") == [(5,)]


def test_a_transient_store_fault_is_retried_never_quarantined(harness_for, sample_events):
    harness = harness_for()
    harness.publish([request(sample_events[:10], 0, "first")])
    assert harness.wait_settled(10)["stored"] == 10
    # Merges behind (too many parts): ClickHouse refuses every insert until it catches up.
    harness.command(f"ALTER TABLE {harness.database}.telemetry MODIFY SETTING parts_to_throw_insert = 1")
    harness.publish([request(sample_events[10:15], 1, "a"), request(sample_events[15:20], 2, "b")])
    deadline = time.monotonic() + 30
    while "TOO_MANY_PARTS" not in (harness.writer.last_error or "") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "TOO_MANY_PARTS" in (harness.writer.last_error or "")
    time.sleep(0.5)  # a few retries, backing off
    assert harness.ledger()["stored"] == 10 and harness.ledger()["failed"] == 0
    harness.command(f"ALTER TABLE {harness.database}.telemetry MODIFY SETTING parts_to_throw_insert = 3000")
    ledger = harness.wait_settled(20)
    assert ledger == {"received": 20, "stored": 20, "failed": 0, "duplicate": 0, "in_flight": 0,
                      "duplicate_requests": 0}
    assert harness.rows("SELECT count(), uniqExact(mid) FROM telemetry") == [(20, 20)]
    assert harness.rows("SELECT count() FROM failed_events") == [(0,)]
    assert harness.writer.isolated_records == 0


def test_a_writer_stopped_half_way_through_an_isolated_batch_stores_once_and_never_learns_a_refused_event(
        harness_for, sample_events):
    """Redis goes away twice right after the store took a write: after r1 in a batch being written record by
    record (the batch is read again, cut inside: the rest goes on record by record), and after the quarantine
    of the last record of another (read again, cut whole: only the state is told again)."""
    ev = [sample_events[i * 5:i * 5 + 5] for i in range(6)]
    first_bad, last_bad = poisoned(ev[2], 0), poisoned(ev[5], 4)
    harness = harness_for(mid_fault=lambda keys: ev[1][0]["mid"] in keys,
                          request_fault=lambda keys: "state-a/r5" in keys)
    harness.publish([request(ev[0], 0, "r0"), request(ev[1], 1, "r1"), request(first_bad, 2, "r2"),
                     request(ev[3], 3, "r3")])
    harness.publish([request(ev[4], 4, "r4"), request(last_bad, 5, "r5")])
    ledger = harness.wait_settled(30)
    assert ledger == {"received": 30, "stored": 20, "failed": 10, "duplicate": 0, "in_flight": 0,
                      "duplicate_requests": 0}
    assert harness.mid_tell.failed and harness.request_tell.failed  # both stops happened
    assert harness.rows("SELECT count(), uniqExact(mid) FROM telemetry") == [(20, 20)]
    assert harness.rows("SELECT log_offset, count() FROM failed_events WHERE error_code = 'ERR_STORE_REJECTED' "
                        "GROUP BY log_offset ORDER BY log_offset") == [(2, 5), (5, 5)]
    stored_mids = mids(ev[0] + ev[1] + ev[3] + ev[4])
    request_keys = [f"state-a/r{i}" for i in range(6)]
    assert told(harness.mid_state, stored_mids) == set(stored_mids)  # told again after each stop
    assert told(harness.request_state, request_keys) == set(request_keys)  # the refused requests' too
    assert harness.mid_state.seen(mids(first_bad) + mids(last_bad)) == set()


class ConnectionLostAfter:
    """Fault injection on the store's write client: the insert under `token` reaches the server, then the
    connection drops before the answer (once), as a network fault would."""

    def __init__(self, client, token: str):
        self._client = client
        self._token = token
        self.failed = False

    def insert_arrow(self, *args, settings=None, **kwargs):
        result = self._client.insert_arrow(*args, settings=settings, **kwargs)
        if not self.failed and (settings or {}).get("insert_deduplication_token") == self._token:
            self.failed = True
            raise OperationalError("connection reset by peer after the insert (injected)")
        return result

    def __getattr__(self, name):
        return getattr(self._client, name)


def test_a_part_written_half_way_when_the_connection_dropped_is_finished_under_its_own_token(
        harness_for, sample_events):
    """The store refuses r1 of r0..r5: the writer narrows it down by halves ([r0 r1 r2] → [r0], [r1 r2] →
    [r1] quarantined, [r2]; then [r3 r4 r5]). The connection drops right after r2's rows went in: the batch,
    read again, is cut inside (after r1) and must retrace the same parts: r2 under its own token again
    (stored once), not r2..r5 under a new one (r2's rows twice)."""
    harness = harness_for()
    lost = harness.store._writer = ConnectionLostAfter(harness.store._writer, "p1-2-2:telemetry")
    ev = [sample_events[i * 5:i * 5 + 5] for i in range(6)]
    harness.publish([request(poisoned(e, 2) if i == 1 else e, i, f"r{i}") for i, e in enumerate(ev)])
    ledger = harness.wait_settled(30)
    assert lost.failed
    assert ledger == {"received": 30, "stored": 25, "failed": 5, "duplicate": 0, "in_flight": 0,
                      "duplicate_requests": 0}
    assert harness.rows("SELECT count(), uniqExact(mid) FROM telemetry") == [(25, 25)]
    assert harness.rows("SELECT log_offset, count() FROM failed_events GROUP BY log_offset") == [(1, 5)]
