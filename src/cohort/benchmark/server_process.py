"""`cohort serve` as users run it, in a child process on 127.0.0.1: for tests and harnesses."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    def __init__(self, data_dir: Path, port: int | None = None, env: dict[str, str] | None = None,
                 log_path: Path | None = None):
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path or self.data_dir.parent / f"server-{self.data_dir.name}.log"

    def start(self, timeout: float = 60.0) -> "ServerProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cohort.cli", "serve", "--data-dir", str(self.data_dir),
                 "--port", str(self.port)],
                stdout=log_file, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}): {self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.kill()  # a server that is not serving must not keep holding its data dir
        raise RuntimeError(f"server did not become healthy: {self.log_path.read_text()[-3000:]}")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, no flushing — a crash."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def wait_drained(self, timeout: float = 60.0) -> dict[str, float]:
        """Wait until every acknowledged event is processed; return the metrics then."""
        deadline = time.monotonic() + timeout
        while True:
            metrics = scrape_metrics(self.url)
            if metrics.get("cohort_events_in_flight") == 0 or time.monotonic() > deadline:
                return metrics
            time.sleep(0.05)


class RoleProcess:
    """`cohort worker` or `cohort store-writer` as users run it, in a child process (settings in `env`)."""

    def __init__(self, role: str, env: dict[str, str], log_path: Path):
        self.role = role
        self.env = {**os.environ, **env}
        self.log_path = Path(log_path)
        self.proc: subprocess.Popen | None = None

    def start(self) -> "RoleProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log_file:
            self.proc = subprocess.Popen([sys.executable, "-m", "cohort.cli", self.role], stdout=log_file,
                                         stderr=subprocess.STDOUT, env=self.env)
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: it leaves its consumer group only when the group's session timeout says so."""
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then wait for it to leave its group and exit; returns its exit status."""
        if self.running:
            assert self.proc is not None
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode if self.proc else None


def scrape_metrics(url: str, client: httpx.Client | None = None) -> dict[str, float]:
    """The server's /metrics; pass a client when scraping often (a new one costs a TLS context to build)."""
    if client is None:
        return parse_metrics(httpx.get(url + "/metrics", timeout=10).text)
    return parse_metrics(client.get(url + "/metrics", timeout=10).text)


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text as {'name{labels}': value}."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values
