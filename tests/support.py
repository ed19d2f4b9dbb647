"""Helpers for tests: request bodies, polling, queries, and a real server process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SAMPLE_FILE = SHARED / "data" / "sunbird" / "telemetry-sample.jsonl"


def envelope(events: list, msgid: str | None = "m-1") -> bytes:
    body = {"id": "api.sunbird.telemetry", "ver": "3.0", "ets": 1_700_000_000_000, "events": events}
    if msgid is not None:
        body["params"] = {"msgid": msgid}
    return orjson.dumps(body)


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def query(client, sql: str, params: dict | None = None) -> list[dict]:
    response = client.post("/v1/query", json={"sql": sql, "params": params})
    assert response.status_code == 200, response.text
    return response.json()["result"]


def scalar(client, sql: str):
    return next(iter(query(client, sql)[0].values()))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """`cohort serve` as users run it: a separate process on 127.0.0.1."""

    def __init__(self, data_dir: Path, port: int | None = None, env: dict[str, str] | None = None):
        self.data_dir = data_dir
        self.port = port or free_port()
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir.parent / f"server-{self.port}.log"

    def start(self, timeout: float = 30.0) -> "ServerProcess":
        log_file = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cohort.cli", "serve", "--data-dir", str(self.data_dir), "--port", str(self.port)],
            stdout=log_file, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError("server did not become healthy")

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, no flushing — a crash."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


def metric_values(client) -> dict[str, float]:
    """Prometheus text from /metrics as {'name{labels}': value}."""
    values = {}
    for line in client.get("/metrics").text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values
