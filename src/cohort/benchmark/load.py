"""The load benchmark: drive a real server over HTTP and measure ack and end-to-end rates.

Bodies are generated before the clock starts (a pool of distinct batches whose
mids are re-prefixed per round, so every event sent is unique without paying
for generation during the run). In the same run the parse-only rate — orjson
over the same bodies on one core — is measured, so the result can be read as a
ratio that holds on noisy machines.

With a hostile configuration, a hostile-query client (benchmark/hostile.py) runs beside the
load for the whole run: the figures then say what hostile queries do to ingest and memory.
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import orjson
import psutil

from cohort.benchmark.hostile import HostileConfig, HostileProcess, acceptance, require_loopback
from cohort.benchmark.server_process import ServerProcess, scrape_metrics
from cohort.synthetic import TelemetryGenerator


@dataclass
class LoadConfig:
    duration_s: float = 20.0
    max_events: int = 10_000_000
    batch_size: int = 500
    concurrency: int = 4
    pool_batches: int = 200
    seed: int = 0
    rate: float = 0.0  # offered events/s across all senders; 0 = as fast as acks come back
    drain_timeout_s: float = 600.0
    hostile: HostileConfig | None = None  # a hostile-query client beside the load, for the whole run
    rss_guard_mb: float = 4096.0  # SIGKILL a server the bench started once its RSS passes this (0: never)
    acks_only: bool = False  # measure the ingest path alone: no wait for the pipeline (nothing may process)


@dataclass
class LoadResult:
    config: dict
    events_acked: int = 0
    requests_acked: int = 0
    requests_refused: dict[str, int] = field(default_factory=dict)
    send_seconds: float = 0.0
    drain_seconds: float = 0.0
    acked_per_s: float = 0.0
    stored_per_s: float = 0.0
    ack_latency_ms: dict[str, float] = field(default_factory=dict)  # as the load generator saw it
    # as the server measured it (its cohort_ingest_ack_seconds histogram over the run, quantiles
    # interpolated within buckets as Prometheus' histogram_quantile does): without the client's own delays
    server_ack_latency_ms: dict[str, float | None] = field(default_factory=dict)
    max_lag_events: int = 0
    max_lag_seconds: float = 0.0
    server_peak_rss_mb: float = 0.0  # the server process and its pipeline workers together
    main_process_peak_rss_mb: float = 0.0  # the server process alone (store, dedup window, API)
    server_cpu_percent: float = 0.0
    mean_event_bytes: float = 0.0
    parse_only_per_s: float = 0.0
    server_cpu_us_per_acked_event: float = 0.0  # the server's CPU (its pipeline included, unless acks only)
    ratio_end_to_end_to_parse_only: float = 0.0
    stored: int | None = 0  # None (and below): the server was gone at the end, so unknown
    failed: int | None = 0
    duplicate: int | None = 0
    unaccounted: float | None = 0.0
    server_exit: str = ""  # why the server was gone before the end, if it was
    hostile: dict = field(default_factory=dict)  # what the hostile client sent and got, and the acceptance figures

    def as_dict(self) -> dict:
        return asdict(self)


class BodyPool:
    """Distinct batch bodies, made unique per round by rewriting the mid and msgid prefixes (a body sent
    again with its msgid would be a client's retry, dropped whole by batch dedup)."""

    def __init__(self, config: LoadConfig):
        generator = TelemetryGenerator(seed=config.seed)
        self.bodies: list[bytes] = []
        self.counts: list[int] = []
        self.headers: list[dict[str, str]] = []
        for envelope, headers in generator.batches_with_headers(config.pool_batches * config.batch_size,
                                                                config.batch_size):
            self.bodies.append(orjson.dumps(envelope))
            self.counts.append(len(envelope["events"]))
            self.headers.append({**headers, "Content-Type": "application/json"})
        total_events = sum(self.counts)
        self.mean_event_bytes = sum(map(len, self.bodies)) / total_events
        self._next = 0
        self._lock = threading.Lock()

    def take(self) -> tuple[bytes, int, dict[str, str]]:
        with self._lock:
            i = self._next
            self._next += 1
        round_, slot = divmod(i, len(self.bodies))
        body = self.bodies[slot]
        if round_:
            body = body.replace(b'"mid":"', b'"mid":"r%d.' % round_).replace(b'"msgid":"', b'"msgid":"r%d.' % round_)
        return body, self.counts[slot], self.headers[slot]


def parse_only_rate(pool: BodyPool, min_seconds: float = 2.0) -> float:
    """Events/s that orjson alone parses from the same bodies: the ceiling of any Python ingest."""
    events = 0
    started = time.perf_counter()
    while time.perf_counter() - started < min_seconds:
        for body, count in zip(pool.bodies, pool.counts):
            orjson.loads(body)
            events += count
    return events / (time.perf_counter() - started)


class _ServerWatch:
    """Samples the server's RSS (server and workers) and its store lag while the run goes on.

    RSS is sampled by psutil in its own thread, so a server too busy to answer /metrics is still
    measured. With `kill_over_bytes`, a server whose RSS passes it is SIGKILLed (a run that would
    otherwise take the machine's memory from everyone on it); the run then ends early."""

    def __init__(self, url: str, pid: int | None, interval: float = 0.25, rss_interval: float = 0.1,
                 kill_over_bytes: int = 0):
        self.url, self.interval, self.rss_interval = url, interval, rss_interval
        self.process = psutil.Process(pid) if pid else None
        self.kill_over_bytes = kill_over_bytes
        self.peak_rss = 0
        self.peak_main_rss = 0
        self.max_lag_events = 0
        self.exit_reason = ""
        self.gone = threading.Event()  # the server process is no more
        self._client = httpx.Client(timeout=10)
        self._children: list[psutil.Process] = []
        self._children_listed_at = 0.0
        self.stop_event = threading.Event()
        self._threads = [threading.Thread(target=self._every, args=(self.sample_rss, rss_interval), daemon=True),
                         threading.Thread(target=self._every, args=(self.sample_lag, interval), daemon=True)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        for thread in self._threads:
            thread.join(15)
        self._client.close()

    def _every(self, sample, interval: float) -> None:
        while not self.stop_event.is_set() and not self.gone.is_set():
            sample()
            self.stop_event.wait(interval)

    def sample_rss(self) -> None:
        if not self.process:
            return
        try:
            if self.process.status() == psutil.STATUS_ZOMBIE:
                raise psutil.NoSuchProcess(self.process.pid)
            rss = self.process.memory_info().rss
            self.peak_main_rss = max(self.peak_main_rss, rss)
            if time.monotonic() - self._children_listed_at > 1.0:  # listing reads all of /proc: once a second
                self._children = self.process.children(recursive=True)
                self._children_listed_at = time.monotonic()
            for child in self._children:
                try:
                    rss += child.memory_info().rss
                except psutil.Error:
                    pass
            self.peak_rss = max(self.peak_rss, rss)
            if self.kill_over_bytes and rss > self.kill_over_bytes:
                self.process.kill()
                self.exit_reason = (f"killed by the harness at {rss / 2**20:,.0f} MB RSS "
                                    f"(guard {self.kill_over_bytes / 2**20:,.0f} MB)")
                self.gone.set()
        except psutil.NoSuchProcess:
            self.exit_reason = self.exit_reason or "the server process exited during the run"
            self.gone.set()
        except psutil.Error:
            pass

    def sample_lag(self) -> None:
        try:
            lag = scrape_metrics(self.url, self._client).get("cohort_events_in_flight", 0)
            self.max_lag_events = max(self.max_lag_events, int(lag))
        except httpx.HTTPError:
            pass


def _scrape(url: str) -> dict[str, float] | None:
    """/metrics, or None when the server does not answer in time (it may be busy with hostile queries)."""
    try:
        return scrape_metrics(url)
    except httpx.HTTPError:
        return None


def run_load(url: str, config: LoadConfig, server_pid: int | None = None, pool: BodyPool | None = None,
             kill_over_mb: float = 0.0, auth: dict[str, str] | None = None) -> LoadResult:
    """`auth`: the Authorization header the load and the hostile client send (kept out of the result)."""
    auth = auth or {}
    if config.hostile is not None:
        require_loopback(url)
        server_pid = server_pid or pid_listening_on(url)
    pool = pool or BodyPool(config)
    result = LoadResult(config=asdict(config), mean_event_bytes=round(pool.mean_event_bytes, 1))
    result.parse_only_per_s = round(parse_only_rate(pool))

    before = scrape_metrics(url)
    latencies: list[float] = []
    refused: dict[str, int] = {}
    lock = threading.Lock()
    acked = [0, 0]  # events, requests
    watch = _ServerWatch(url, server_pid, kill_over_bytes=int(kill_over_mb * 2**20))
    deadline = time.monotonic() + config.duration_s

    def sender() -> None:
        interval = config.batch_size * config.concurrency / config.rate if config.rate else 0.0
        next_send = time.monotonic()
        with httpx.Client(base_url=url, timeout=60) as client:
            while time.monotonic() < deadline and not watch.gone.is_set():
                if interval:  # open loop: a fixed schedule, whatever the server's pace
                    next_send += interval
                    pause = next_send - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)
                with lock:
                    if acked[0] >= config.max_events:
                        return
                body, count, headers = pool.take()
                started = time.perf_counter()
                try:
                    response = client.post("/v1/telemetry", content=body, headers={**headers, **auth})
                except httpx.HTTPError as exc:
                    with lock:
                        refused[type(exc).__name__] = refused.get(type(exc).__name__, 0) + 1
                    continue
                elapsed = time.perf_counter() - started
                with lock:
                    if response.status_code == 200:
                        acked[0] += count
                        acked[1] += 1
                        latencies.append(elapsed)
                    else:
                        code = _error_code(response)
                        refused[code] = refused.get(code, 0) + 1
                if response.status_code == 503:
                    time.sleep(float(response.headers.get("Retry-After", "1")) / 10)

    cpu_before = _cpu_seconds(watch.process)
    watch.start()
    hostile = HostileProcess(url, config.hostile, deadline, auth) if config.hostile is not None else None
    started = time.monotonic()
    if hostile:
        hostile.start()
    threads = [threading.Thread(target=sender, daemon=True) for _ in range(config.concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sent_at = time.monotonic()
    if hostile:
        hostile.stop()
    target = before.get("cohort_events_received_total", 0) + acked[0]
    while not config.acks_only and time.monotonic() - sent_at < config.drain_timeout_s and not watch.gone.is_set():
        metrics = _scrape(url)
        if metrics and metrics.get("cohort_events_in_flight", 1) == 0 \
                and metrics["cohort_events_received_total"] >= target:
            break
        time.sleep(0.05)
    drained_at = time.monotonic()
    cpu_after = _cpu_seconds(watch.process)
    watch.stop()

    result.events_acked, result.requests_acked = acked
    result.requests_refused = refused
    result.send_seconds = round(sent_at - started, 2)
    result.drain_seconds = round(drained_at - sent_at, 2)
    result.acked_per_s = round(acked[0] / (sent_at - started))
    result.stored_per_s = 0 if config.acks_only else round(acked[0] / (drained_at - started))
    if latencies:
        latencies.sort()
        result.ack_latency_ms = {
            "p50": round(statistics.median(latencies) * 1000, 2),
            "p95": round(latencies[int(len(latencies) * 0.95) - 1] * 1000, 2),
            "p99": round(latencies[max(int(len(latencies) * 0.99) - 1, 0)] * 1000, 2),
            "max": round(latencies[-1] * 1000, 2),
        }
    result.max_lag_events = watch.max_lag_events
    result.max_lag_seconds = round(watch.max_lag_events / result.stored_per_s, 2) if result.stored_per_s else 0.0
    result.server_peak_rss_mb = round(watch.peak_rss / 2**20, 1)
    result.main_process_peak_rss_mb = round(watch.peak_main_rss / 2**20, 1)
    result.server_exit = watch.exit_reason
    if cpu_before is not None and cpu_after is not None:
        result.server_cpu_percent = round(100 * (cpu_after - cpu_before) / (drained_at - started), 1)
        if acked[0]:
            result.server_cpu_us_per_acked_event = round(1e6 * (cpu_after - cpu_before) / acked[0], 2)
    result.ratio_end_to_end_to_parse_only = round(result.stored_per_s / result.parse_only_per_s, 3)
    if hostile:
        result.hostile = {**hostile.report(),
                          "acceptance": acceptance(result.ack_latency_ms.get("p99"), result.server_peak_rss_mb,
                                                   server_survived=not watch.gone.is_set())}
    after = None if watch.gone.is_set() else _scrape(url)
    if after is None:  # the server is gone or not answering: what it stored is unknown
        result.stored = result.failed = result.duplicate = result.unaccounted = None
        return result
    result.server_ack_latency_ms = {f"p{round(q * 100)}": histogram_quantile(q, ACK_HISTOGRAM, before, after)
                                    for q in (0.5, 0.95, 0.99)}
    if result.hostile:
        result.hostile["acceptance"]["server_ack_p99_ms"] = result.server_ack_latency_ms["p99"]
    failed_now = sum(v for k, v in after.items() if k.startswith("cohort_events_failed_total"))
    failed_before = sum(v for k, v in before.items() if k.startswith("cohort_events_failed_total"))
    result.stored = int(after["cohort_events_stored_total"] - before.get("cohort_events_stored_total", 0))
    result.failed = int(failed_now - failed_before)
    result.duplicate = int(after["cohort_events_duplicate_total"] - before.get("cohort_events_duplicate_total", 0))
    result.unaccounted = after["cohort_events_unaccounted"]
    return result


ACK_HISTOGRAM = "cohort_ingest_ack_seconds"


def histogram_quantile(q: float, name: str, before: dict[str, float], after: dict[str, float]) -> float | None:
    """The q-quantile, in ms, of what histogram `name` observed between two scrapes (None: nothing observed).

    Linear within the bucket holding it, as Prometheus' histogram_quantile; in the last finite bucket's
    overflow, that bucket's bound (a floor)."""
    prefix = name + '_bucket{le="'
    buckets = sorted((float(key[len(prefix):-2]), value - before.get(key, 0.0))
                     for key, value in after.items() if key.startswith(prefix))
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return round(lower_bound * 1000, 2)
            share = (rank - lower_count) / (count - lower_count) if count > lower_count else 1.0
            return round((lower_bound + (bound - lower_bound) * share) * 1000, 2)
        lower_bound, lower_count = bound, count
    return None


def _error_code(response: httpx.Response) -> str:
    try:
        return response.json().get("params", {}).get("err") or str(response.status_code)
    except ValueError:
        return str(response.status_code)


def pid_listening_on(url: str) -> int | None:
    """The local process serving `url`, so its RSS can be sampled when the bench did not start it."""
    port = httpx.URL(url).port or 80
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return conn.pid
    except psutil.Error:
        pass
    return None


def _cpu_seconds(process: psutil.Process | None) -> float | None:
    if process is None:
        return None
    try:
        times = process.cpu_times()
        return times.user + times.system + sum(
            c.cpu_times().user + c.cpu_times().system for c in process.children(recursive=True))
    except psutil.Error:
        return None


def run_against_own_scaleout(work_dir: Path, config: LoadConfig, workers: int = 2,
                             env: dict[str, str] | None = None) -> LoadResult:
    """Start the scale-out footprint in `work_dir` (`cohort engines`' Redis and broker unless `env` points at
    engines, `cohort serve` with the embedded ClickHouse engine, `workers` × `cohort worker`), load it, stop it.
    The RSS figures are `serve`'s; the workers', Redis' and the broker's CPU share the same cores."""
    from cohort.benchmark.local_engines import LocalEngines
    from cohort.benchmark.scaleout_deployment import ScaleoutDeployment

    pool = BodyPool(config)
    engines = None if env else LocalEngines(Path(work_dir) / "engines").start()
    try:
        settings = env or engines.settings_env()  # type: ignore[union-attr]
        extra = {"COHORT_PIPELINE_BATCH_EVENTS": "5000", "COHORT_KAFKA_PARTITIONS": "12"}  # as shipped
        if config.acks_only:  # the ingest replica alone: no store writer in it, and no workers
            extra, workers = {**extra, "COHORT_SERVE_STORE_WRITER": "off"}, 0
        deployment = ScaleoutDeployment(Path(work_dir) / "scaleout", settings["COHORT_KAFKA_BOOTSTRAP_SERVERS"],
                                        settings["COHORT_REDIS_URL"], "cohort-bench", workers=workers,
                                        env=extra).start()
        try:
            return run_load(deployment.url, config, server_pid=deployment.server.pid, pool=pool,
                            auth=deployment.headers,
                            kill_over_mb=config.rss_guard_mb)
        finally:
            deployment.stop()
    finally:
        if engines is not None:
            engines.stop()


def run_against_own_server(work_dir: Path, config: LoadConfig) -> LoadResult:
    """Start `cohort serve` on a fresh data dir, load it, stop it."""
    pool = BodyPool(config)  # before the server starts, so generation does not compete with it
    server = ServerProcess(Path(work_dir) / "data").start()
    try:
        return run_load(server.url, config, server_pid=server.pid, pool=pool, kill_over_mb=config.rss_guard_mb,
                        auth=server.headers)
    finally:
        server.stop()
