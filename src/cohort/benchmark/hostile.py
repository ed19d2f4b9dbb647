"""The hostile-query client: what a careless or malicious analyst sends to /v1/query while apps ingest.

It runs beside the load benchmark for the whole run, from several connections, and sends queries
that take memory, CPU, huge statements, huge results and many slots at once. What it measures is
whether the ingest path (ack latency) and the server (RSS) hold up, so the client itself must never
be the thing that fails: every request has a deadline, huge answers are read and thrown away (and
cut off beyond a bound), the client stops by itself, and it talks only to a server on this machine.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import orjson

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
ACK_P99_TARGET_MS = 100.0  # acceptance: ack p99 under hostile queries at 10,000 events/s ...
RSS_TARGET_MB = 1536.0  # ... and server RSS (server + pipeline workers)
_ERROR_CODE = re.compile(rb'"err"\s*:\s*"([A-Z0-9_]+)"')


@dataclass
class HostileConfig:
    threads: int = 4  # connections sending the catalogue, each starting at a different query
    burst: int = 40  # slow queries sent at once, again and again, by one more sender
    request_timeout_s: float = 30.0  # the whole request, answer included
    connect_timeout_s: float = 5.0
    max_response_bytes: int = 256 * 2**20  # read and thrown away up to here; beyond, the client hangs up
    range_size: int = 100_000_000  # SELECT len(range(n))
    repeat_bytes: int = 100_000  # repeat('x', n) × 10,000 rows
    statement_bytes: int = 256_000  # the chained-CTE statement
    nesting: int = 50_000  # parentheses deep
    # The client stands for a party on another machine. Sharing the server's cores here, it runs at this
    # CPU niceness so that its own work (a thread per request, an HTTP client, ≈ 1 core when flooding
    # refusals) is not taken from the server; 0 makes it compete as an equal.
    niceness: int = 10
    only: tuple[str, ...] = ()  # catalogue names to send (empty: all); to find which one hurts


def hostile_queries(config: HostileConfig) -> dict[str, str]:
    """The catalogue, by name: memory, huge results, CPU, huge and deep statements, unbounded recursion."""
    depth = config.nesting
    return {
        "memory_range": f"SELECT len(range({config.range_size})) AS n",
        "huge_values": f"SELECT repeat('x', {config.repeat_bytes}) AS x FROM telemetry LIMIT 10000",
        "string_agg": "SELECT string_agg(event, '') AS everything FROM telemetry",
        "cross_join": SLOW_QUERY,
        "chained_ctes": chained_ctes(config.statement_bytes),
        "deep_parentheses": "SELECT " + "(" * depth + "1" + ")" * depth + " AS x",
        "recursive_cte": "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) AS n FROM r",
    }


# CPU-bound whatever the memory bounds: every pair of rows, compared as text.
SLOW_QUERY = "SELECT count(*) AS n FROM telemetry a CROSS JOIN telemetry b WHERE a.did || b.did = 'x'"


def chained_ctes(size: int) -> str:
    """One statement of at most `size` bytes: thousands of CTEs, each reading the one before."""
    parts = ["WITH c0 AS (SELECT 1 AS x)"]
    length = len(parts[0])
    i = 0
    while True:
        part = f", c{i + 1} AS (SELECT x FROM c{i})"
        if length + len(part) + len(f" SELECT x FROM c{i + 1}") > size:
            break
        i += 1
        parts.append(part)
        length += len(part)
    parts.append(f" SELECT x FROM c{i}")
    return "".join(parts)


def require_loopback(url: str) -> None:
    host = httpx.URL(url).host
    if host not in LOOPBACK_HOSTS:
        raise ValueError(f"the hostile client only targets a server on this machine (127.0.0.1), not {host!r}")


@dataclass
class _Tally:
    sent: Counter = field(default_factory=Counter)
    status: dict[str, Counter] = field(default_factory=dict)
    errors: dict[str, Counter] = field(default_factory=dict)
    max_seconds: dict[str, float] = field(default_factory=dict)
    max_bytes: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def record(self, kind: str, status: str, error: str | None, seconds: float, size: int) -> None:
        with self._lock:
            self.sent[kind] += 1
            self.status.setdefault(kind, Counter())[status] += 1
            if error:
                self.errors.setdefault(kind, Counter())[error] += 1
            self.max_seconds[kind] = max(self.max_seconds.get(kind, 0.0), seconds)
            self.max_bytes[kind] = max(self.max_bytes.get(kind, 0), size)


class HostileClient:
    """Sends the catalogue from `threads` connections and bursts of slow queries, until `deadline`."""

    def __init__(self, url: str, config: HostileConfig, deadline: float, auth: dict[str, str] | None = None):
        require_loopback(url)
        self.url, self.config, self.deadline = url, config, deadline
        self.auth = auth or {}  # a key of its own: an authenticated analyst gone bad, the hardest case
        self.bodies = {name: orjson.dumps({"sql": sql}) for name, sql in hostile_queries(config).items()
                       if not config.only or name in config.only}
        self.burst_body = orjson.dumps({"sql": SLOW_QUERY})
        self.stop_event = threading.Event()
        self._tally = _Tally()
        self._threads: list[threading.Thread] = []
        self._started = 0.0
        self._finished = 0.0
        self.unfinished_threads = 0

    # -- running ---------------------------------------------------------------
    def start(self) -> None:
        self._started = time.monotonic()
        names = list(self.bodies)
        for i in range(self.config.threads):
            order = names[i % len(names):] + names[:i % len(names)]
            self._threads.append(threading.Thread(target=self._cycle, args=(order,), daemon=True,
                                                  name=f"hostile-{i}"))
        if self.config.burst:
            self._threads.append(threading.Thread(target=self._bursts, daemon=True, name="hostile-burst"))
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop sending; wait for requests in flight at most their deadline, then give up on them."""
        self.stop_event.set()
        give_up_at = time.monotonic() + self.config.request_timeout_s + 5
        for thread in self._threads:
            thread.join(max(0.0, give_up_at - time.monotonic()))
        self.unfinished_threads = sum(t.is_alive() for t in self._threads)
        self._finished = time.monotonic()

    def _running(self) -> bool:
        return not self.stop_event.is_set() and time.monotonic() < self.deadline

    def _cycle(self, order: list[str]) -> None:
        with self._client() as client:
            while self._running():
                for name in order:
                    if not self._running():
                        return
                    self._send(client, name, self.bodies[name])

    def _bursts(self) -> None:
        # one client per slot, kept across waves: a client costs a TLS context to build, which is the
        # bench's CPU, not the server's, and on a 2-core machine the bench shares the server's cores
        clients = [self._client() for _ in range(self.config.burst)]
        try:
            while self._running():
                wave = [threading.Thread(target=self._send, args=(client, "many_at_once", self.burst_body),
                                         daemon=True) for client in clients]
                for thread in wave:
                    thread.start()
                give_up_at = time.monotonic() + self.config.request_timeout_s + 5
                for thread in wave:
                    thread.join(max(0.0, give_up_at - time.monotonic()))
        finally:
            for client in clients:
                client.close()

    def _client(self) -> httpx.Client:
        timeout = httpx.Timeout(self.config.request_timeout_s, connect=self.config.connect_timeout_s)
        return httpx.Client(base_url=self.url, timeout=timeout,
                            headers={"Content-Type": "application/json", **self.auth})

    def _send(self, client: httpx.Client, name: str, body: bytes) -> None:
        started = time.monotonic()
        size, head, status, error = 0, b"", "no answer", None
        try:
            with client.stream("POST", "/v1/query", content=body) as response:
                status = str(response.status_code)
                for chunk in response.iter_raw():
                    size += len(chunk)
                    if len(head) < 4096:
                        head += chunk[:4096 - len(head)]
                    if size > self.config.max_response_bytes:
                        error = "client hung up: answer over the byte bound"
                        break
                    if time.monotonic() - started > self.config.request_timeout_s:
                        error = "client hung up: answer slower than the deadline"
                        break
            if error is None and response.status_code != 200:
                match = _ERROR_CODE.search(head)
                error = match.group(1).decode() if match else f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            error = type(exc).__name__
        self._tally.record(name, status, error, time.monotonic() - started, size)

    # -- what happened ---------------------------------------------------------
    def report(self) -> dict:
        tally = self._tally
        by_status: Counter = sum(tally.status.values(), Counter())
        by_error: Counter = sum(tally.errors.values(), Counter())
        sent = sum(tally.sent.values())
        return {
            "threads": self.config.threads,
            "burst": self.config.burst,
            "seconds": round((self._finished or time.monotonic()) - self._started, 1),
            "sent": sent,
            "answered": sent - by_status.get("no answer", 0),
            "by_status": dict(sorted(by_status.items())),
            "by_error": dict(by_error.most_common()),
            "by_query": {
                name: {
                    "sent": tally.sent[name],
                    "by_status": dict(sorted(tally.status[name].items())),
                    "by_error": dict(tally.errors.get(name, Counter()).most_common()),
                    "max_seconds": round(tally.max_seconds[name], 2),
                    "max_answer_mb": round(tally.max_bytes[name] / 2**20, 2),
                } for name in sorted(tally.sent)
            },
            "unfinished_threads": self.unfinished_threads,
        }


class HostileProcess:
    """The hostile client in a process of its own, as an attacker is a party of its own.

    In one process with the load generator its fifty threads would share the generator's interpreter
    lock, and the ack latencies the generator measures would include waiting for it. Same interface as
    HostileClient: start, stop, report."""

    def __init__(self, url: str, config: HostileConfig, deadline: float, auth: dict[str, str] | None = None):
        require_loopback(url)
        context = multiprocessing.get_context("spawn")
        self._parent, child = context.Pipe()
        # time.monotonic is the machine's CLOCK_MONOTONIC: a deadline means the same in both processes
        self._process = context.Process(target=_run_hostile_process, args=(url, config, deadline, auth or {}, child),
                                        name="cohort-hostile", daemon=True)
        self._config = config
        self._report: dict | None = None

    def start(self) -> None:
        self._process.start()

    def stop(self) -> None:
        try:
            self._parent.send("stop")
        except OSError:  # the process already ended (its deadline passed): its report is waiting
            pass
        wait_s = self._config.request_timeout_s + 30
        try:
            if self._parent.poll(wait_s):
                self._report = self._parent.recv()
        except (EOFError, OSError):  # the process died without a report: report() says so
            self._report = None
        self._process.join(5)
        if self._process.is_alive():
            self._process.kill()

    def report(self) -> dict:
        if self._report is None:
            return {"threads": self._config.threads, "burst": self._config.burst, "sent": 0, "answered": 0,
                    "by_status": {}, "by_error": {"the hostile process sent no report": 1}, "by_query": {},
                    "unfinished_threads": self._config.threads + (1 if self._config.burst else 0)}
        return self._report


def _run_hostile_process(url: str, config: HostileConfig, deadline: float, auth: dict[str, str], conn) -> None:
    if config.niceness > 0:
        os.nice(config.niceness)
    client = HostileClient(url, config, deadline, auth)
    client.start()
    conn.poll(max(0.0, deadline - time.monotonic()) + 1)  # a stop, or the deadline passed
    client.stop()
    conn.send(client.report())
    conn.close()


def acceptance(ack_p99_ms: float | None, server_peak_rss_mb: float, server_survived: bool) -> dict:
    """The acceptance figures of the hostile run, beside their targets."""
    return {
        "ack_p99_ms": ack_p99_ms,
        "ack_p99_target_ms": ACK_P99_TARGET_MS,
        "server_peak_rss_mb": server_peak_rss_mb,
        "server_rss_target_mb": RSS_TARGET_MB,
        "server_survived": server_survived,
        "met": bool(server_survived and ack_p99_ms is not None and ack_p99_ms <= ACK_P99_TARGET_MS
                    and server_peak_rss_mb <= RSS_TARGET_MB),
    }
