"""The crash harness: SIGKILL the server at random moments under load, then prove nothing was lost.

Clients behave like real Sunbird apps: a batch is kept until it is acknowledged
and re-sent after a failure (so the server sees retries of batches it may have
already made durable). The harness keeps its own record of which batches were
acked; at the end it reads the store file directly and checks, per mid, that
every acked event is stored exactly once and nothing is stored twice.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import duckdb
import httpx
import orjson
import psutil

from cohort.benchmark.server_process import ServerProcess
from cohort.synthetic import TelemetryGenerator


@dataclass
class CrashReport:
    cycles: int
    events_generated: int
    events_acked: int
    send_failures: int
    stored_rows: int
    lost_mids: list[str] = field(default_factory=list)
    duplicated_mids: list[str] = field(default_factory=list)
    unexpected_mids: list[str] = field(default_factory=list)
    acked_unprocessed_at_kill: int = 0  # summed over kills: acked events not yet stored when SIGKILL hit
    target: str = "server"
    processes_killed: int = 0
    unaccounted: float = 0.0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return (not self.lost_mids and not self.duplicated_mids and not self.unexpected_mids
                and self.unaccounted == 0 and self.stored_rows == self.events_acked)

    def as_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok, "lost": len(self.lost_mids), "duplicated": len(self.duplicated_mids)}


class _Outbox:
    """Batches not yet acknowledged, shared by the sender threads."""

    def __init__(self, batches: list[tuple[bytes, list[str]]]):
        self._queue = deque(batches)
        self._lock = threading.Lock()
        self.acked_mids: set[str] = set()
        self.acked_batches = 0
        self.failures = 0

    def take(self) -> tuple[bytes, list[str]] | None:
        with self._lock:
            return self._queue.popleft() if self._queue else None

    def give_back(self, batch: tuple[bytes, list[str]]) -> None:
        with self._lock:
            self._queue.append(batch)
            self.failures += 1

    def acked(self, mids: list[str]) -> None:
        with self._lock:
            self.acked_mids.update(mids)
            self.acked_batches += 1

    def __len__(self) -> int:
        return len(self._queue)


def _send_until_stopped(url: str, outbox: _Outbox, stop: threading.Event) -> None:
    with httpx.Client(base_url=url, timeout=10) as client:
        while not stop.is_set():
            batch = outbox.take()
            if batch is None:
                return
            body, mids = batch
            try:
                response = client.post("/v1/telemetry", content=body, headers={"Content-Type": "application/json"})
            except httpx.HTTPError:
                outbox.give_back(batch)  # unknown outcome: a real app re-sends later
                return
            if response.status_code == 200:
                outbox.acked(mids)
            else:
                outbox.give_back(batch)
                if response.status_code != 503:
                    return


def run_crash_cycles(work_dir: Path, *, cycles: int, events: int, batch_size: int = 100, senders: int = 4,
                     seed: int = 0, kill_after_acks: tuple[int, int] = (5, 30), target: str = "server",
                     progress: Callable[[int, int], None] | None = None) -> CrashReport:
    """Each cycle: load the server and SIGKILL, right after a random number of acks, either the
    server itself (`target="server"`, then restart it) or one of its pipeline worker processes
    (`target="worker"`, the server lives on and must replace it)."""
    if target not in ("server", "worker"):
        raise ValueError("target must be 'server' or 'worker'")
    rng = random.Random(seed)
    started = time.monotonic()
    data_dir = Path(work_dir) / "data"
    batches = [(orjson.dumps(env), [e["mid"] for e in env["events"]])
               for env in TelemetryGenerator(seed=seed).batches(events, batch_size)]
    generated = {mid for _, mids in batches for mid in mids}
    outbox = _Outbox(batches)
    in_flight_at_kill = 0
    kills = 0

    server: ServerProcess | None = ServerProcess(data_dir).start()
    try:
        for cycle in range(cycles):
            if server is None:
                server = ServerProcess(data_dir).start()
            stop = threading.Event()
            threads = [threading.Thread(target=_send_until_stopped, args=(server.url, outbox, stop), daemon=True)
                       for _ in range(senders)]
            for thread in threads:
                thread.start()
            goal = outbox.acked_batches + rng.randint(*kill_after_acks)
            while outbox.acked_batches < goal and len(outbox) and any(t.is_alive() for t in threads):
                time.sleep(0.001)
            if target == "server":
                server.kill()
            else:
                kills += _kill_a_worker(server, rng)
            stop.set()
            for thread in threads:
                thread.join()
            if target == "server":
                in_flight_at_kill += len(outbox.acked_mids - _stored_mids(data_dir))
                server = None
            if progress:
                progress(cycle + 1, cycles)

        # last life: send what is left (retries included), let the pipeline drain, stop cleanly
        if server is None:
            server = ServerProcess(data_dir).start()
        stop = threading.Event()
        while len(outbox):
            _send_until_stopped(server.url, outbox, stop)
        metrics = server.wait_drained()
    finally:  # also on a failure: the caller may remove the data dir next, so no server may hold it
        if server is not None:
            server.stop()

    counts = stored_mid_counts(data_dir)
    return CrashReport(
        cycles=cycles,
        events_generated=len(generated),
        events_acked=len(outbox.acked_mids),
        send_failures=outbox.failures,
        stored_rows=sum(counts.values()),
        lost_mids=sorted(outbox.acked_mids - counts.keys()),
        duplicated_mids=sorted(mid for mid, n in counts.items() if n > 1),
        unexpected_mids=sorted(counts.keys() - generated),
        acked_unprocessed_at_kill=in_flight_at_kill,
        target=target,
        processes_killed=kills if target == "worker" else cycles,
        unaccounted=metrics.get("cohort_events_unaccounted", -1.0),
        seconds=round(time.monotonic() - started, 1),
    )


def stored_mid_counts(data_dir: Path) -> dict[str, int]:
    """Read the store file directly, not through the API: the check must not trust the server."""
    path = data_dir / "store.duckdb"
    if not path.exists():
        return {}
    con = duckdb.connect(str(path), read_only=True)
    try:
        return dict(con.execute("SELECT mid, count(*) FROM telemetry GROUP BY mid").fetchall())
    finally:
        con.close()


def _stored_mids(data_dir: Path) -> set[str]:
    return set(stored_mid_counts(data_dir))


def pipeline_workers(server: ServerProcess) -> list[psutil.Process]:
    """The server's pipeline worker processes (multiprocessing spawn children)."""
    try:
        children = psutil.Process(server.pid).children()
    except psutil.Error:
        return []
    workers = []
    for child in children:
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                workers.append(child)
        except psutil.Error:
            pass
    return workers


def _kill_a_worker(server: ServerProcess, rng: random.Random, timeout: float = 10.0) -> int:
    """SIGKILL one pipeline worker; wait until the server has a full set again."""
    deadline = time.monotonic() + timeout
    workers = pipeline_workers(server)
    while not workers and time.monotonic() < deadline:
        time.sleep(0.01)
        workers = pipeline_workers(server)
    if not workers:
        return 0
    victim = rng.choice(workers)
    victim.send_signal(signal.SIGKILL)
    return 1
