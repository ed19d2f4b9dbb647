"""A redis-server of our own on 127.0.0.1, configured as the scale-out footprint runs it: for harnesses.

AOF with `appendfsync always`: Redis answers a write only once it is on disk, which is what a dedup
key needs (a key acknowledged and then lost would let a replayed event be stored twice).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from cohort.benchmark.server_process import free_port


class RedisProcess:
    def __init__(self, directory: Path, port: int | None = None, databases: int = 16):
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.binary = binary
        self.directory = Path(directory)
        self.port = port or free_port()
        self.databases = databases
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, timeout_s: float = 10.0) -> "RedisProcess":
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--protected-mode", "yes",
             "--databases", str(self.databases), "--logfile", str(self.directory / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: see {self.directory}/redis.log")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.05)
        else:
            self.stop(kill=True)
            raise RuntimeError(f"redis-server not listening on {self.port} after {timeout_s} s")
        self._wait_loaded(max(30.0, timeout_s))
        return self

    def _wait_loaded(self, timeout_s: float) -> None:
        """Redis listens before it has replayed its append-only file and answers LOADING until then: a
        restarted Redis is ready only once it says it has loaded its data."""
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    if client.info("persistence").get("loading") == 0:
                        return
                except (redis.BusyLoadingError, redis.ConnectionError):
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

    def disk_bytes(self) -> int:
        """What its files take on disk (the AOF, mostly)."""
        return sum(path.stat().st_size for path in self.directory.rglob("*") if path.is_file()
                   and path.name != "redis.log")
