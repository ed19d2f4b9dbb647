"""The scale-out footprint as users run it, for harnesses and tests: `cohort serve` and N `cohort worker`
processes, configured only by COHORT_* settings (`env`), on engines someone else started."""

from __future__ import annotations

import time
from pathlib import Path

from cohort.benchmark.server_process import RoleProcess, ServerProcess


class ScaleoutProcesses:
    def __init__(self, directory: Path, env: dict[str, str], *, workers: int = 2, port: int | None = None):
        self.directory = Path(directory)
        self.env = {"COHORT_FOOTPRINT": "scaleout", **env}
        self.server = ServerProcess(self.directory / "serve", port=port, env=self.env,
                                    log_path=self.directory / "serve.log")
        self.workers: list[RoleProcess] = []
        self._initial_workers = workers

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> "ScaleoutProcesses":
        self.server.start(timeout=90)  # creates the topics; with chdb its store writer joins the store group
        for _ in range(self._initial_workers):
            self.start_worker()
        self.wait_assigned(self.workers)
        return self

    def start_worker(self) -> RoleProcess:
        worker = RoleProcess("worker", self.env, self.directory / f"worker-{len(self.workers)}.log").start()
        self.workers.append(worker)
        return worker

    def wait_assigned(self, workers: list[RoleProcess], timeout: float = 60.0) -> None:
        """Wait until each worker holds raw partitions (a group's first rebalance takes seconds), so what
        follows measures the pipeline, not the warm-up."""
        topic = self.env.get("COHORT_KAFKA_RAW_TOPIC", "cohort.raw")
        deadline = time.monotonic() + timeout
        while not all(f"of {topic} assigned" in _text(w.log_path) for w in workers):
            if time.monotonic() > deadline or not all(w.running for w in workers):
                raise RuntimeError("workers did not get partitions: " + self.logs())
            time.sleep(0.1)

    def wait_drained(self, timeout: float = 60.0) -> dict[str, float]:
        return self.server.wait_drained(timeout)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.directory.glob("*.log")))

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.server.stop()


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""
