"""The scale-out footprint as users run it: `cohort serve` and N `cohort worker` processes, configured
only by COHORT_* settings, on the tests' engines (Tansu, redis-server) and an embedded ClickHouse
engine of its own (chdb: one process per path, so `serve` owns it and runs the store writer)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cohort.benchmark.server_process import RoleProcess, ServerProcess

# Group timeouts short enough that a killed worker's partitions move within seconds.
FAST_GROUPS = {"COHORT_KAFKA_SESSION_TIMEOUT_SECONDS": "6", "COHORT_KAFKA_HEARTBEAT_INTERVAL_SECONDS": "1",
               "COHORT_KAFKA_MAX_POLL_INTERVAL_SECONDS": "10"}


class ScaleoutDeployment:
    def __init__(self, directory: Path, bootstrap: str, redis_url: str, topic: str, *, workers: int = 2,
                 partitions: int = 4, env: dict[str, str] | None = None):
        self.directory = directory
        # topics and groups of this deployment only (the test broker, Tansu 0.6, can leave a group
        # whose members all left stuck in a rebalance, so groups are never reused across tests)
        self.env = {"COHORT_FOOTPRINT": "scaleout", "COHORT_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                    "COHORT_REDIS_URL": redis_url, "COHORT_CLICKHOUSE_DSN": f"chdb://{directory / 'clickhouse'}",
                    "COHORT_KAFKA_RAW_TOPIC": f"{topic}-raw", "COHORT_KAFKA_PROCESSED_TOPIC": f"{topic}-processed",
                    "COHORT_KAFKA_CONSUMER_GROUP": f"{topic}-pipeline", "COHORT_KAFKA_STORE_GROUP": f"{topic}-store",
                    "COHORT_KAFKA_PARTITIONS": str(partitions), "COHORT_PIPELINE_BATCH_EVENTS": "1000",
                    **FAST_GROUPS, **(env or {})}
        self.server = ServerProcess(directory / "serve", env=self.env, log_path=directory / "serve.log")
        self.workers: list[RoleProcess] = []
        self._initial_workers = workers

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> "ScaleoutDeployment":
        self.server.start(timeout=90)  # creates the topics; its store writer joins the store group
        for _ in range(self._initial_workers):
            self.start_worker()
        self.wait_assigned(self.workers)
        return self

    def wait_assigned(self, workers: list[RoleProcess], timeout: float = 60.0) -> None:
        """Wait until each worker holds raw partitions (a group's first rebalance takes seconds), so a test's
        timings measure the pipeline, not the warm-up."""
        topic = self.env["COHORT_KAFKA_RAW_TOPIC"]
        deadline = time.monotonic() + timeout
        while not all(f"of {topic} assigned" in _text(w.log_path) for w in workers):
            if time.monotonic() > deadline or not all(w.running for w in workers):
                raise RuntimeError("workers did not get partitions: " + self.logs())
            time.sleep(0.1)

    def start_worker(self) -> RoleProcess:
        worker = RoleProcess("worker", self.env, self.directory / f"worker-{len(self.workers)}.log").start()
        self.workers.append(worker)
        return worker

    def wait_drained(self, timeout: float = 60.0) -> dict[str, float]:
        return self.server.wait_drained(timeout)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.directory.glob("*.log")))

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.server.stop()


@pytest.fixture
def scaleout(tmp_path, kafka_bootstrap, redis_url, unique_topic):
    deployment = ScaleoutDeployment(tmp_path / "scaleout", kafka_bootstrap, redis_url, unique_topic).start()
    yield deployment
    deployment.stop()


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


@pytest.fixture
def scaleout_settings(tmp_path, kafka_bootstrap, redis_url, unique_topic, clickhouse_dsn, clickhouse_database):
    """Settings of an in-process scale-out node on the session's engines (the chdb engine of this test process)."""
    from cohort.settings import Settings

    return Settings(footprint="scaleout", data_dir=tmp_path / "data", kafka_bootstrap_servers=kafka_bootstrap,
                    redis_url=redis_url, clickhouse_dsn=clickhouse_dsn, clickhouse_database=clickhouse_database,
                    kafka_raw_topic=f"{unique_topic}-raw", kafka_processed_topic=f"{unique_topic}-processed",
                    kafka_consumer_group=f"{unique_topic}-pipeline", kafka_store_group=f"{unique_topic}-store",
                    kafka_partitions=2, pipeline_batch_events=1000, kafka_session_timeout_seconds=6,
                    kafka_heartbeat_interval_seconds=1, kafka_max_poll_interval_seconds=10)


@pytest.fixture
def scaleout_client(scaleout_settings):
    """The API on the scale-out footprint in this process (its node runs the store writer), with one worker
    beside it on a thread, as `cohort worker` would run it."""
    from starlette.testclient import TestClient

    from cohort.api.app import create_app
    from cohort.pipeline.scaleout_roles import RoleThread, build_worker

    with TestClient(create_app(scaleout_settings), raise_server_exceptions=False) as client:
        worker = RoleThread(build_worker(scaleout_settings), "worker")
        worker.start()
        try:
            yield client
        finally:
            worker.stop()
