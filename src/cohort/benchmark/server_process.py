"""`cohort serve` as users run it, in a child process on 127.0.0.1: for tests and harnesses."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

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
        self.key: str | None = None  # the harness's admin key, made before the first start

    @property
    def headers(self) -> dict[str, str]:
        """What a request needs to be let in (nothing when authentication is off)."""
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    def client(self, **kwargs) -> httpx.Client:
        """An HTTP client for this server, authenticated as the harness's admin."""
        return httpx.Client(base_url=self.url, headers={**self.headers, **kwargs.pop("headers", {})}, **kwargs)

    def start(self, timeout: float = 60.0) -> "ServerProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.key is None:
            self.key = harness_admin_key(self.env, self.data_dir)
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


def harness_admin_key(env: dict[str, str], data_dir: Path) -> str | None:
    """An admin key for a harness, made in the key store the server of `env` and `data_dir` will read (the
    data dir's, or Redis on scale-out), as an operator would with `cohort keys create`; None when the
    server runs with authentication off."""
    from cohort.settings import Settings

    named = {"footprint": "COHORT_FOOTPRINT", "redis_url": "COHORT_REDIS_URL", "auth": "COHORT_AUTH",
             "auth_db": "COHORT_AUTH_DB"}
    given: dict[str, Any] = {field: env[name] for field, name in named.items() if env.get(name)}
    if data_dir.exists() and not data_dir.is_dir():
        return None  # a data dir the server will refuse (tests of that refusal)
    return admin_key(Settings(data_dir=data_dir, **given))


def admin_key(settings) -> str | None:
    """An admin key in the key store `settings` name (None when authentication is off)."""
    from cohort.security.api_keys import open_key_store
    from cohort.security.identity import Role

    if settings.auth == "off":
        return None
    if settings.footprint == "embedded":
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = open_key_store(settings)
    try:
        return store.create_key(None, Role.ADMIN, label="harness")[1]
    finally:
        store.close()


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
