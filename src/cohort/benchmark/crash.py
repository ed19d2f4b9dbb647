"""The crash harness: SIGKILL the server at random moments under load, then prove nothing was lost.

Clients behave like real Sunbird apps: a batch (with its msgid and channel) is kept until it is
acknowledged and re-sent after a failure, so the server sees retries of batches it may already
have made durable. The harness keeps its own record of which batches were acked; at the end it
reads the store directly, after every process stopped, and checks per mid that every acked event
is stored exactly once and nothing is stored twice; it also checks the ledger the server publishes.

Both footprints:
- embedded: one `cohort serve`; the target is the server (then restarted) or one of its pipeline
  worker processes (the server replaces it). The store is the DuckDB file.
- scaleout: `cohort serve` (which runs the store writer: it owns the chdb store) and N `cohort worker`s
  on Kafka and Redis; the target is `serve` (then restarted; its store writer dies with it) or one of
  the workers (a new one is started, as a supervisor would). The store is read in a child process,
  since the embedded ClickHouse engine is opened by one process per path.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import duckdb
import httpx
import orjson
import psutil

from cohort.benchmark.server_process import ServerProcess, scrape_metrics
from cohort.synthetic import TelemetryGenerator

FOOTPRINTS = ("embedded", "scaleout")
TARGETS = ("server", "worker")
SEND_DEADLINE_S = 600.0  # the last life: every batch left must be acked within this


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
    footprint: str = "embedded"
    workers: int = 0  # scale-out: `cohort worker` processes running side by side
    quarantined_rows: int = 0  # the generator's events are valid: any row in failed_events is a fault
    ledger: dict[str, float] = field(default_factory=dict)  # the server's /metrics once drained
    at_kills: list[dict[str, int]] = field(default_factory=list)  # per kill: events stored, acked and not yet

    @property
    def ok(self) -> bool:
        drained = self.ledger.get("in_flight", -1) == 0 and self.ledger.get("stored", -1) == self.stored_rows
        return (not self.lost_mids and not self.duplicated_mids and not self.unexpected_mids
                and self.unaccounted == 0 and self.stored_rows == self.events_acked and self.quarantined_rows == 0
                and drained)

    def as_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok, "lost": len(self.lost_mids), "duplicated": len(self.duplicated_mids)}


Batch = tuple[bytes, dict[str, str], list[str]]  # body, headers, mids


class _Outbox:
    """Batches not yet acknowledged, shared by the sender threads."""

    def __init__(self, batches: list[Batch]):
        self._queue = deque(batches)
        self._lock = threading.Lock()
        self.acked_mids: set[str] = set()
        self.acked_batches = 0
        self.failures = 0

    def take(self) -> Batch | None:
        with self._lock:
            return self._queue.popleft() if self._queue else None

    def give_back(self, batch: Batch) -> None:
        with self._lock:
            self._queue.append(batch)
            self.failures += 1

    def acked(self, mids: list[str]) -> None:
        with self._lock:
            self.acked_mids.update(mids)
            self.acked_batches += 1

    def __len__(self) -> int:
        return len(self._queue)


def _send_until_stopped(target, outbox: _Outbox, stop: threading.Event) -> None:
    """Send what the outbox holds to `target` (its url, as its admin: `headers`) until told to stop."""
    with httpx.Client(base_url=target.url, headers=target.headers, timeout=10) as client:
        while not stop.is_set():
            batch = outbox.take()
            if batch is None:
                return
            body, headers, mids = batch
            try:
                response = client.post("/v1/telemetry", content=body,
                                       headers={"Content-Type": "application/json", **headers})
            except httpx.HTTPError:
                outbox.give_back(batch)  # unknown outcome: a real app re-sends later
                return
            if response.status_code == 200:
                outbox.acked(mids)
            else:
                outbox.give_back(batch)
                if response.status_code != 503:
                    return
                time.sleep(0.05)  # busy, or an engine is coming back: retry shortly, as an app would


class _Footprint(Protocol):
    """What a crash cycle needs of a deployment."""

    processes_killed: int
    at_kills: list[dict[str, int]]  # per kill: {"stored": …, "unprocessed": …} (acked, not yet stored)

    @property
    def url(self) -> str: ...
    def start(self) -> None: ...
    def kill(self, target: str, rng: random.Random) -> None: ...
    def recover(self, target: str, acked_mids: set[str]) -> None: ...
    def drain(self) -> dict[str, float]: ...
    def stop(self) -> None: ...
    def stored(self) -> tuple[dict[str, int], int]: ...
    def diagnostics(self) -> str: ...


def run_crash_cycles(work_dir: Path, *, cycles: int, events: int, batch_size: int = 100, senders: int = 4,
                     seed: int = 0, kill_after_acks: tuple[int, int] = (5, 30), target: str = "server",
                     footprint: str = "embedded", kafka_bootstrap: str | None = None, redis_url: str | None = None,
                     name: str | None = None, workers: int = 2,
                     progress: Callable[[int, int], None] | None = None) -> CrashReport:
    """Each cycle: load the server and SIGKILL, right after a random number of acks, either the server
    (`target="server"`: `cohort serve`, then restart it) or a pipeline worker process (`target="worker"`: on
    the embedded footprint one of the server's, which the server must replace; on the scale-out footprint
    one of the `cohort worker`s, and a new one is started).

    Scale-out only: the engines (`kafka_bootstrap`, `redis_url`; each one missing is started on 127.0.0.1
    under `work_dir`), `name` (prefix of the run's topics and consumer groups; random by default), `workers`
    (`cohort worker` processes). The ClickHouse store is the embedded engine in `work_dir/scaleout/clickhouse`.
    The Redis database must hold no Cohort keys: the intake ledger is one per database."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}")
    if footprint not in FOOTPRINTS:
        raise ValueError(f"footprint must be one of {FOOTPRINTS}")
    rng = random.Random(seed)
    started = time.monotonic()
    work_dir = Path(work_dir)
    batches = [(orjson.dumps(env), headers, [e["mid"] for e in env["events"]])
               for env, headers in TelemetryGenerator(seed=seed).batches_with_headers(events, batch_size)]
    generated = {mid for _, _, mids in batches for mid in mids}
    outbox = _Outbox(batches)

    engines: list = []  # what this run started and must stop
    deployment: _Footprint
    if footprint == "embedded":
        deployment = _Embedded(work_dir / "data")
    else:
        kafka_bootstrap, redis_url = _scaleout_engines(work_dir / "engines", kafka_bootstrap, redis_url, engines)
        deployment = _Scaleout(work_dir / "scaleout", kafka_bootstrap, redis_url,
                               name or f"cohort-crash-{uuid.uuid4().hex[:10]}", workers)
    try:
        deployment.start()
        for cycle in range(cycles):
            stop = threading.Event()
            threads = [threading.Thread(target=_send_until_stopped, args=(deployment, outbox, stop), daemon=True)
                       for _ in range(senders)]
            for thread in threads:
                thread.start()
            goal = outbox.acked_batches + rng.randint(*kill_after_acks)
            while outbox.acked_batches < goal and len(outbox) and any(t.is_alive() for t in threads):
                time.sleep(0.001)
            deployment.kill(target, rng)
            stop.set()
            for thread in threads:
                thread.join()
            deployment.recover(target, outbox.acked_mids)
            if progress:
                progress(cycle + 1, cycles)

        # last life: send what is left (retries included), let the pipeline drain, stop cleanly
        deadline = time.monotonic() + SEND_DEADLINE_S
        while len(outbox):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(outbox)} batches still not acknowledged: {deployment.diagnostics()}")
            _send_until_stopped(deployment, outbox, threading.Event())
        metrics = deployment.drain()
    finally:  # also on a failure: the caller may remove the work dir next, so nothing may hold it
        deployment.stop()
        for engine in reversed(engines):
            engine.stop()

    counts, quarantined = deployment.stored()  # every process stopped: read the store itself
    failed = sum(v for k, v in metrics.items() if k.startswith("cohort_events_failed_total"))
    return CrashReport(
        cycles=cycles,
        events_generated=len(generated),
        events_acked=len(outbox.acked_mids),
        send_failures=outbox.failures,
        stored_rows=sum(counts.values()),
        lost_mids=sorted(outbox.acked_mids - counts.keys()),
        duplicated_mids=sorted(mid for mid, n in counts.items() if n > 1),
        unexpected_mids=sorted(counts.keys() - generated),
        acked_unprocessed_at_kill=sum(kill["unprocessed"] for kill in deployment.at_kills),
        target=target,
        processes_killed=deployment.processes_killed,
        unaccounted=metrics.get("cohort_events_unaccounted", -1.0),
        seconds=round(time.monotonic() - started, 1),
        footprint=footprint,
        workers=workers if footprint == "scaleout" else 0,
        quarantined_rows=quarantined,
        ledger={"received": metrics.get("cohort_events_received_total", -1.0),
                "stored": metrics.get("cohort_events_stored_total", -1.0), "failed": failed,
                "duplicate": metrics.get("cohort_events_duplicate_total", -1.0),
                "duplicate_requests": metrics.get("cohort_requests_duplicate_total", -1.0),
                "in_flight": metrics.get("cohort_events_in_flight", -1.0),
                "unaccounted": metrics.get("cohort_events_unaccounted", -1.0)},
        at_kills=deployment.at_kills,
    )


# -- embedded: one server process, its pipeline workers, the DuckDB file ---------------------------------------

class _Embedded:
    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.server: ServerProcess | None = None
        self.processes_killed = 0
        self.at_kills: list[dict[str, int]] = []

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    @property
    def headers(self) -> dict[str, str]:
        assert self.server is not None
        return self.server.headers

    def start(self) -> None:
        self.server = ServerProcess(self.data_dir, env={"COHORT_FOOTPRINT": "embedded"}).start()

    def kill(self, target: str, rng: random.Random) -> None:
        assert self.server is not None
        if target == "server":
            self.server.kill()
            self.processes_killed += 1
        else:
            self.processes_killed += _kill_a_worker(self.server, rng)

    def recover(self, target: str, acked_mids: set[str]) -> None:
        """After a kill, the senders stopped (so nothing is acked meanwhile): note what the store held."""
        assert self.server is not None
        if target == "server":  # the server is dead: its store file can be read
            stored = _stored_mids(self.data_dir)
            self.at_kills.append({"stored": len(stored), "unprocessed": len(acked_mids - stored)})
            self.start()  # on a new port, as a restarted host may be
        else:
            self.at_kills.append(_ledger_now(self.server.url))  # the server lives on: its ledger says

    def drain(self) -> dict[str, float]:
        assert self.server is not None
        return self.server.wait_drained()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    def stored(self) -> tuple[dict[str, int], int]:
        return stored_mid_counts(self.data_dir), _quarantined(self.data_dir)

    def diagnostics(self) -> str:
        if self.server is None or not self.server.log_path.exists():
            return ""
        return self.server.log_path.read_text()[-3000:]


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


def _quarantined(data_dir: Path) -> int:
    path = data_dir / "store.duckdb"
    if not path.exists():
        return 0
    con = duckdb.connect(str(path), read_only=True)
    try:
        row = con.execute("SELECT count(*) FROM failed_events").fetchone()
        return int(row[0]) if row else 0
    finally:
        con.close()


def _stored_mids(data_dir: Path) -> set[str]:
    return set(stored_mid_counts(data_dir))


def _ledger_now(url: str) -> dict[str, int]:
    """Events stored, and acknowledged but not yet stored, as the server's ledger says."""
    try:
        metrics = scrape_metrics(url)
    except httpx.HTTPError:
        return {"stored": -1, "unprocessed": 0}
    return {"stored": int(metrics.get("cohort_events_stored_total", -1)),
            "unprocessed": int(metrics.get("cohort_events_in_flight", 0))}


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
    """SIGKILL one pipeline worker; the server must replace it."""
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


# -- scale-out: `cohort serve` + N `cohort worker`s, the chdb store ------------------------------------------

class _Scaleout:
    def __init__(self, directory: Path, kafka_bootstrap: str, redis_url: str, name: str, workers: int):
        from cohort.benchmark.scaleout_deployment import ScaleoutDeployment

        self.deployment = ScaleoutDeployment(directory, kafka_bootstrap, redis_url, name, workers=workers)
        self.processes_killed = 0
        self.at_kills: list[dict[str, int]] = []

    @property
    def url(self) -> str:
        return self.deployment.url  # `serve` keeps its port across restarts

    @property
    def headers(self) -> dict[str, str]:
        return self.deployment.headers  # and its key: the key store outlives it

    def start(self) -> None:
        self.deployment.start()
        self.deployment.wait_store_writer()  # so that even the first kill can hit it at work

    def kill(self, target: str, rng: random.Random) -> None:
        if target == "server":
            self.deployment.server.kill()  # its store writer and its ledger reads die with it
        else:
            at_work = self.deployment.assigned_workers()  # ones that hold partitions (see recover)
            if not at_work:
                raise RuntimeError("no `cohort worker` holds partitions: " + self.deployment.logs())
            rng.choice(at_work).kill()
        self.processes_killed += 1

    def recover(self, target: str, acked_mids: set[str]) -> None:
        """After a kill, the senders stopped (so nothing is acked meanwhile): note what the store held, bring
        the killed role back."""
        if target == "server":
            self.deployment.restart_server()
            # nothing stored since the kill (the store writer was in `serve`): the ledger read now is the
            # ledger when `serve` died
            at_kill = _ledger_now(self.url)
            self.at_kills.append(at_kill)
            # the next kill must hit a store writer at work, as the next embedded kill hits a running pipeline:
            # wait until it joined its group (the dead writer's session expires first) and stored a batch
            self.deployment.wait_store_writer()
            self._wait_stored_more_than(at_kill["stored"], unless_idle=at_kill["unprocessed"] == 0)
        else:
            at_kill = _ledger_now(self.url)  # serve and its store writer live on: the ledger says
            self.at_kills.append(at_kill)
            self.deployment.start_worker()  # as a supervisor would; it joins the group when it can
            # the next kill must hit a worker at work: wait until one holds partitions (when the last one
            # was killed, that is the new one, once the group has given up on the dead) and the pipeline
            # moved since the kill (else kills would only ever hit a group busy rebalancing)
            self.deployment.wait_any_assigned()
            self._wait_stored_more_than(at_kill["stored"], unless_idle=at_kill["unprocessed"] == 0)

    def _wait_stored_more_than(self, stored: int, unless_idle: bool, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not unless_idle and _ledger_now(self.url)["stored"] <= stored:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing stored in {timeout:.0f} s after a kill: " + self.deployment.logs())
            time.sleep(0.05)

    def drain(self) -> dict[str, float]:
        metrics = self.deployment.wait_drained(timeout=180)
        if metrics.get("cohort_events_in_flight") != 0:
            raise TimeoutError(f"the pipeline did not drain ({metrics.get('cohort_events_in_flight')} events in "
                               f"flight): {self.deployment.logs()}")
        return metrics

    def stop(self) -> None:
        self.deployment.stop()

    def stored(self) -> tuple[dict[str, int], int]:
        from cohort.benchmark.scaleout_deployment import CLICKHOUSE_DATABASE

        return clickhouse_stored_mid_counts(self.deployment.clickhouse_path, CLICKHOUSE_DATABASE)

    def diagnostics(self) -> str:
        return self.deployment.logs()


_READ_CHDB = """
import json, sys
import clickhouse_connect
client = clickhouse_connect.get_client(dsn="chdb://" + sys.argv[1])
db = sys.argv[2]
if not client.command("EXISTS DATABASE " + db):
    print(json.dumps({"mids": {}, "quarantined": 0}))
else:
    mids = client.query("SELECT mid, toUInt64(count()) FROM " + db + ".telemetry GROUP BY mid").result_rows
    quarantined = client.command("SELECT count() FROM " + db + ".failed_events")
    print(json.dumps({"mids": dict(mids), "quarantined": int(quarantined)}))
"""


def clickhouse_stored_mid_counts(path: Path, database: str, timeout: float = 300.0) -> tuple[dict[str, int], int]:
    """Per mid, the rows in the chdb store at `path`, and the rows in its quarantine: read directly, not
    through the API, in a child process (one process per path, and the caller may hold another path)."""
    done = subprocess.run([sys.executable, "-c", _READ_CHDB, str(path), database], capture_output=True,
                          text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"reading the ClickHouse store at {path} failed: {done.stderr[-3000:]}")
    found = json.loads(done.stdout.strip().splitlines()[-1])
    return {mid: int(n) for mid, n in found["mids"].items()}, int(found["quarantined"])


def _scaleout_engines(directory: Path, kafka_bootstrap: str | None, redis_url: str | None,
                      started: list) -> tuple[str, str]:
    """The engines given, and on 127.0.0.1 each one that is not (appended to `started`, for the caller to stop)."""
    from cohort.benchmark.local_engines import TansuBroker
    from cohort.benchmark.redis_process import RedisProcess

    if not redis_url:
        started.append(RedisProcess(directory / "redis").start())
        redis_url = started[-1].url
    else:
        _require_unused_redis(redis_url)
    if not kafka_bootstrap:
        started.append(TansuBroker().start())
        kafka_bootstrap = started[-1].bootstrap
    assert redis_url is not None and kafka_bootstrap is not None
    return kafka_bootstrap, redis_url


def _require_unused_redis(url: str) -> None:
    """A run counts the whole intake ledger of its Redis database: one a deployment uses would not reconcile
    (and the run would disturb that deployment's ledger)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        if next(iter(client.scan_iter(match="cohort:*", count=1000)), None) is not None:
            where = client.connection_pool.connection_kwargs
            raise ValueError(f"Redis database {where.get('db', 0)} at {where.get('host')}:{where.get('port')} holds "
                             "Cohort keys: give the crash test a database no deployment uses (another /<db> number)")
    finally:
        client.close()
