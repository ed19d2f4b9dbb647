"""The scale-out footprint as users run it, on one machine: `cohort serve` and N `cohort worker` processes,
configured only by COHORT_* settings, on the engines given (a Kafka-protocol broker, Redis) and an embedded
ClickHouse engine (chdb) in a directory of its own. chdb is opened by one process per path, so `serve` owns
it and runs the store writer. For harnesses and benchmarks (the crash test); the tests' fixture wraps the
same shape around the session's engines.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx

from cohort.benchmark.server_process import RoleProcess, ServerProcess
from cohort.security.secrets import load_or_create_secrets
from cohort.settings import Settings

# Group timeouts short enough that a killed process's partitions move within seconds.
FAST_GROUPS = {"COHORT_KAFKA_SESSION_TIMEOUT_SECONDS": "6", "COHORT_KAFKA_HEARTBEAT_INTERVAL_SECONDS": "1",
               "COHORT_KAFKA_MAX_POLL_INTERVAL_SECONDS": "10"}
CLICKHOUSE_DATABASE = "cohort"


class ScaleoutDeployment:
    """`name` prefixes the topics and consumer groups: they belong to this deployment only (the test broker,
    Tansu 0.6, can leave a group whose members all left stuck in a rebalance, so groups are never reused)."""

    def __init__(self, directory: Path, kafka_bootstrap: str, redis_url: str, name: str, *, workers: int = 2,
                 partitions: int = 4, env: dict[str, str] | None = None):
        self.directory = Path(directory)
        self.clickhouse_path = self.directory / "clickhouse"
        secrets_file = self.directory / "secrets.json"  # one file for every process, as on real hosts
        load_or_create_secrets(Settings(footprint="embedded", secrets_file=secrets_file))
        self.env = {"COHORT_FOOTPRINT": "scaleout", "COHORT_SECRETS_FILE": str(secrets_file),
                    "COHORT_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
                    "COHORT_REDIS_URL": redis_url, "COHORT_CLICKHOUSE_DSN": f"chdb://{self.clickhouse_path}",
                    "COHORT_CLICKHOUSE_DATABASE": CLICKHOUSE_DATABASE, "COHORT_SERVE_STORE_WRITER": "auto",
                    "COHORT_KAFKA_RAW_TOPIC": f"{name}-raw", "COHORT_KAFKA_PROCESSED_TOPIC": f"{name}-processed",
                    "COHORT_KAFKA_CONSUMER_GROUP": f"{name}-pipeline", "COHORT_KAFKA_STORE_GROUP": f"{name}-store",
                    "COHORT_KAFKA_PARTITIONS": str(partitions), "COHORT_PIPELINE_BATCH_EVENTS": "1000",
                    "COHORT_METRICS_PORT": "0", **FAST_GROUPS, **(env or {})}
        self.server = ServerProcess(self.directory / "serve", env=self.env, log_path=self.directory / "serve.log")
        self.workers: list[RoleProcess] = []  # every worker started, the killed ones included
        self._serve_log_mark = 0  # where the log of `serve`'s current life starts
        self._initial_workers = workers

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def headers(self) -> dict[str, str]:
        """What a request needs to be let in: the harness's admin key (made in Redis before `serve` starts)."""
        return self.server.headers

    def client(self, **kwargs) -> httpx.Client:
        """An HTTP client for `serve`, authenticated as the harness's admin."""
        return self.server.client(**kwargs)

    @property
    def running_workers(self) -> list[RoleProcess]:
        return [worker for worker in self.workers if worker.running]

    def start(self, timeout: float = 90.0) -> "ScaleoutDeployment":
        """Start the workers, then `serve`: each role creates the topics it lacks, so the workers join their
        group while `serve` starts; return once `serve` answers and every worker holds partitions."""
        for _ in range(self._initial_workers):
            self.start_worker()
        self.server.start(timeout=timeout)
        self.wait_assigned(self.workers)
        return self

    def start_worker(self) -> RoleProcess:
        worker = RoleProcess("worker", self.env, self.directory / f"worker-{len(self.workers)}.log").start()
        self.workers.append(worker)
        return worker

    def wait_assigned(self, workers: list[RoleProcess], timeout: float = 60.0) -> None:
        """Wait until each worker holds raw partitions (a group's first rebalance takes seconds), so what
        follows measures the pipeline, not the warm-up."""
        deadline = time.monotonic() + timeout
        while not all(self._assigned(w) for w in workers):
            if time.monotonic() > deadline or not all(w.running for w in workers):
                raise RuntimeError("workers did not get partitions: " + self.logs())
            time.sleep(0.1)

    def assigned_workers(self) -> list[RoleProcess]:
        """Running workers that have been given raw partitions (a new one waits for the group to rebalance)."""
        return [worker for worker in self.running_workers if self._assigned(worker)]

    def wait_any_assigned(self, timeout: float = 60.0) -> list[RoleProcess]:
        deadline = time.monotonic() + timeout
        while not (assigned := self.assigned_workers()):
            if time.monotonic() > deadline:
                raise RuntimeError("no worker holds partitions: " + self.logs())
            time.sleep(0.1)
        return assigned

    def _assigned(self, worker: RoleProcess) -> bool:
        return bool(held_partitions(_text(worker.log_path), self.env["COHORT_KAFKA_RAW_TOPIC"]))

    def restart_server(self, timeout: float = 90.0) -> None:
        """Start `serve` again after it died (same port): it resumes the store writer where the store is."""
        self._serve_log_mark = len(_text(self.server.log_path))
        self.server.start(timeout=timeout)

    def wait_store_writer(self, timeout: float = 60.0) -> None:
        """Wait until the store writer in `serve` holds processed partitions: after a restart the group first
        waits for the dead writer's session to expire, and until then nothing is stored."""
        topic = self.env["COHORT_KAFKA_PROCESSED_TOPIC"]
        deadline = time.monotonic() + timeout
        while not held_partitions(_text(self.server.log_path)[self._serve_log_mark:], topic):
            if time.monotonic() > deadline or self.server.proc is None or self.server.proc.poll() is not None:
                raise RuntimeError("the store writer in `serve` did not get partitions: " + self.logs())
            time.sleep(0.1)

    def wait_drained(self, timeout: float = 120.0) -> dict[str, float]:
        return self.server.wait_drained(timeout)

    def logs(self, tail: int = 3000) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-tail:]}" for p in sorted(self.directory.glob("*.log")))

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.server.stop()


_ASSIGNMENT = re.compile(r"partitions \[([0-9, ]*)\] of (\S+) (assigned|revoked|lost)")


def held_partitions(log_text: str, topic: str) -> set[int]:
    """The partitions of `topic` a consumer holds, from its log's assignment lines (cooperative rebalancing
    logs what each round adds or takes away, and a round may add nothing)."""
    held: set[int] = set()
    for listed, named, change in _ASSIGNMENT.findall(log_text):
        if named == topic:
            partitions = {int(p) for p in listed.split(",") if p.strip()}
            held = held | partitions if change == "assigned" else held - partitions
    return held


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""
