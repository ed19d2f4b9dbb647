"""The `cohort` command line."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from rich.console import Console

from cohort.settings import Settings

if TYPE_CHECKING:
    from cohort.pipeline.data_dir_lock import DataDirLock
    from cohort.security.api_keys import KeyStore
    from cohort.security.audit_log import AuditLog

app = typer.Typer(help="Cohort: lossless learning-analytics for Sunbird telemetry.", no_args_is_help=True,
                  add_completion=False)
console = Console()
err_console = Console(stderr=True, soft_wrap=True)


def _take_data_dir(data_dir: Path, hint: str = "", *, prefix: str = "", exit_code: int = 2) -> "DataDirLock":
    """The data directory's lock, held, for a command that works on it offline; a directory another process
    holds is a clear error (`prefix`, the reason, `hint`) and exit `exit_code`, never a traceback."""
    from rich.markup import escape

    from cohort.pipeline.data_dir_lock import DataDirInUse, DataDirLock

    lock = DataDirLock(data_dir)
    try:
        lock.acquire()
    except DataDirInUse as exc:
        err_console.print(f"[bold red]error:[/] {prefix}{escape(str(exc))}{escape(hint)}", highlight=False)
        raise typer.Exit(exit_code) from None
    return lock


def _outside_data_dirs(path: Path | None) -> Path | None:
    """Output files never go into a Cohort data directory: a name there may be the log's or the store's."""
    from cohort.pipeline.data_dir_lock import LOCK_FILE

    if path is not None and str(path) != "-" and (path.resolve().parent / LOCK_FILE).exists():
        raise typer.BadParameter(f"{path.parent} is a Cohort data directory; write the output elsewhere")
    return path


def _settings(data_dir: Path | None, host: str | None = None, port: int | None = None) -> Settings:
    overrides: dict[str, object] = {k: v for k, v in {"data_dir": data_dir, "host": host, "port": port}.items()
                                    if v is not None}
    from pydantic import ValidationError

    try:
        return Settings.model_validate(overrides)
    except ValidationError as exc:  # a tired operator's typo gets one line per setting, not a traceback
        for error in exc.errors():
            name = "COHORT_" + "_".join(str(part) for part in error["loc"]).upper()
            err_console.print(f"[bold red]error:[/] {name}={error.get('input')!r}: {error['msg']}", markup=True,
                              highlight=False)
        raise typer.Exit(2) from None


@app.command()
def serve(
    data_dir: Path = typer.Option(None, help="Data directory (default ./cohort-data or COHORT_DATA_DIR)."),
    host: str = typer.Option(None, help="Interface to bind (default 127.0.0.1)."),
    port: int = typer.Option(None, help="Port (default 8000)."),
) -> None:
    """Run the ingest and query API: on the embedded footprint (default) with the pipeline and the store in this
    process; with COHORT_FOOTPRINT=scaleout over Kafka, Redis and ClickHouse (run `cohort worker`s beside it)."""
    from cohort.api.app import create_app
    from cohort.api.http_server import CannotListen, build_server, listen_socket
    from cohort.pipeline.gc_tuning import tune_gc

    settings = _settings(data_dir, host, port)
    tune_gc()
    _log_setup()
    if settings.footprint == "scaleout":
        _check_scaleout(settings)
        where = (f"Kafka {settings.kafka_bootstrap_servers}, Redis, ClickHouse "
                 f"{_without_password(settings.clickhouse_dsn)}")
    else:
        probe = _take_data_dir(settings.data_dir)  # fail with a clear message, not a traceback from the store
        probe.hand_over()  # the server's node takes the lock as held: no window for another process
        where = f"data: {settings.data_dir}"
    try:
        sock = listen_socket(settings.host, settings.port)  # bound before anything says "serving"
    except CannotListen as exc:
        err_console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None
    _announce_access(settings)
    console.print(f"[bold]cohort[/] serving http://{settings.host}:{settings.port} ({where})", soft_wrap=True)
    build_server(create_app(settings), settings).run(sockets=[sock])


def _announce_access(settings: Settings) -> None:
    """Before serving: say loudly when authentication is off; on a key store without a usable admin key
    (a fresh data dir), make one and show it this once."""
    from cohort.security.identity import Role

    if settings.auth == "off":
        err_console.print(f"[bold red]WARNING: authentication is OFF (COHORT_AUTH=off): anyone who reaches "
                          f"http://{settings.host}:{settings.port} is admin of every tenant and reads every "
                          "learner's data. Local development only.[/]")
        return
    with _key_store(settings) as store:
        if store.has_admin_key():
            return
        info, key = store.create_key(None, Role.ADMIN, label="bootstrap")
    console.rule(f"[bold yellow]bootstrap admin key {info.key_id}: store it now: it is not shown again")
    typer.echo(key)
    console.rule("[bold yellow]make tenants and their keys with it (cohort keys create --help)")


def _log_setup() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")


def _without_password(dsn: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(dsn)
    return dsn.replace(f":{parts.password}@", ":***@") if parts.password else dsn


def _check_scaleout(settings: Settings) -> None:
    from cohort.pipeline.scaleout_roles import ScaleoutMisconfigured, require_engines

    try:
        require_engines(settings)
    except ScaleoutMisconfigured as exc:
        err_console.print(f"[bold red]error:[/] {exc.message}")
        raise typer.Exit(2) from None


def _run_role(settings: Settings, name: str, build) -> None:
    """Build a scale-out role, serve its /metrics if asked, and run it until SIGTERM/SIGINT."""
    from cohort.api.role_metrics import serve_role_metrics
    from cohort.core.errors import CohortError
    from cohort.pipeline.gc_tuning import tune_gc
    from cohort.pipeline.scaleout_roles import RoleThread, run_until_signalled

    tune_gc()  # as `serve` does: measured 30 % less worker CPU per event (python -m cohort.benchmark.scaleout_roles)
    _log_setup()
    _check_scaleout(settings)
    if settings.footprint != "scaleout":
        err_console.print(f"[bold red]error:[/] `cohort {name}` runs on the scale-out footprint: set "
                          "COHORT_FOOTPRINT=scaleout (the embedded `cohort serve` runs its own pipeline)")
        raise typer.Exit(2)
    try:
        role = build()
    except CohortError as exc:
        err_console.print(f"[bold red]error:[/] {exc.message}")
        raise typer.Exit(2) from None
    thread = RoleThread(role, name)
    server = None
    if settings.metrics_port:
        try:
            server, _ = serve_role_metrics(role, name.replace("-", "_"), lambda: thread.alive, settings.host,
                                           settings.metrics_port)
        except OSError as exc:
            role.close()
            err_console.print(f"[bold red]error:[/] cannot serve /metrics on {settings.host}:{settings.metrics_port}: "
                              f"{exc.strerror or exc}")
            raise typer.Exit(2) from None
    metrics = f", /metrics on http://{settings.host}:{settings.metrics_port}/metrics" if server else ""
    console.print(f"[bold]cohort {name}[/] running (Kafka {settings.kafka_bootstrap_servers}{metrics})",
                  soft_wrap=True)
    status = run_until_signalled(thread, on_stop=server.shutdown if server else None)
    raise typer.Exit(status)


@app.command()
def worker() -> None:
    """Run one pipeline worker of the scale-out footprint (run N: they share the raw topic's partitions).

    Settings come from the environment: COHORT_FOOTPRINT=scaleout, COHORT_KAFKA_BOOTSTRAP_SERVERS, COHORT_REDIS_URL,
    COHORT_CLICKHOUSE_DSN, COHORT_METRICS_PORT (see docs/OPERATIONS.md)."""
    from cohort.pipeline.scaleout_roles import build_worker

    settings = _settings(None)
    _run_role(settings, "worker", lambda: build_worker(settings))


@app.command("store-writer")
def store_writer() -> None:
    """Run a store writer of the scale-out footprint: prepared batches into ClickHouse, deduplicated on Redis.

    Only with a ClickHouse server (http(s):// DSN) and COHORT_SERVE_STORE_WRITER=off; with the embedded engine
    (chdb://) `cohort serve` runs it, since one process must own the store."""
    from cohort.pipeline.scaleout_roles import build_store_writer, serve_runs_store_writer

    settings = _settings(None)
    if settings.clickhouse_dsn.startswith("chdb:"):
        err_console.print("[bold red]error:[/] the embedded ClickHouse engine (chdb://) is opened by one process: "
                          "`cohort serve` runs the store writer for it")
        raise typer.Exit(2)
    if serve_runs_store_writer(settings):
        console.print("note: COHORT_SERVE_STORE_WRITER is on, so `cohort serve` writes too: the writers share the "
                      "processed topic's partitions", style="dim")
    _run_role(settings, "store-writer", lambda: build_store_writer(settings))


@app.command()
def engines(
    directory: Path = typer.Option(Path("./cohort-engines"), "--dir", help="Where Redis and the ClickHouse engine "
                                                                          "keep their data."),
    redis_port: int = typer.Option(6379, help="Redis port on 127.0.0.1 (0: any free port)."),
    kafka_port: int = typer.Option(9092, help="Kafka-protocol broker port on 127.0.0.1 (0: any free port)."),
) -> None:
    """Run the scale-out engines on this machine (Redis; a Kafka-protocol broker with memory storage) until
    Ctrl-C, and write the COHORT_* settings for `cohort serve` and `cohort worker` to <dir>/cohort.env.

    For trying the scale-out footprint on one machine: the broker keeps topics in memory only, so stopping it
    loses what waits in them. Production uses a Kafka cluster, Redis with AOF and a ClickHouse server."""
    import signal
    import threading

    from cohort.benchmark.local_engines import LocalEngines

    running = LocalEngines(directory, redis_port=redis_port or None, kafka_port=kafka_port or None)
    try:
        running.start()
    except (RuntimeError, OSError) as exc:
        err_console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None
    env = running.settings_env()
    env_file = directory / "cohort.env"
    env_file.write_text("".join(f"{name}={value}\n" for name, value in env.items()))
    console.print(f"[bold]cohort engines[/] running: Redis {running.redis.url}, Kafka protocol "
                  f"{running.kafka.bootstrap} (memory storage), ClickHouse engine {env['COHORT_CLICKHOUSE_DSN']}",
                  soft_wrap=True)
    console.print(f"settings for every cohort process in {env_file}; in each shell: "
                  f"set -a; . {env_file}; set +a", soft_wrap=True, highlight=False)
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    try:
        while not stopping.wait(0.5):
            if not running.running:
                err_console.print("[bold red]error:[/] an engine exited; stopping the other")
                raise typer.Exit(1)
    finally:
        running.stop()


@app.command()
def generate(
    events: int = typer.Option(10_000, "--events", "-n", help="How many events."),
    seed: int = typer.Option(0, help="Seed: the same seed gives the same events."),
    output: Path = typer.Option(Path("-"), "--output", "-o", help="JSONL file (- for stdout).",
                                callback=_outside_data_dirs),
    batch_size: int = typer.Option(0, help="Write Sunbird batch envelopes of this many events instead of events."),
) -> None:
    """Write synthetic DIKSHA-like telemetry (JSON lines)."""
    import orjson

    from cohort.synthetic import TelemetryGenerator

    generator = TelemetryGenerator(seed=seed)
    items = generator.batches(events, batch_size) if batch_size else generator.events(events)
    out = sys.stdout.buffer if str(output) == "-" else open(output, "wb")
    try:
        for item in items:
            out.write(orjson.dumps(item) + b"\n")
    finally:
        if out is not sys.stdout.buffer:
            out.close()
            console.print(f"wrote {events} events to {output}", style="dim")


@app.command()
def demo(
    data_dir: Path = typer.Option(Path("./cohort-demo-data"),
                                  help="Data directory: created if missing; a previous demo's data is reused."),
    port: int = typer.Option(8000, help="Port."),
    events: int = typer.Option(0, help="Load at most this many events of the synthetic world (0: all of it)."),
    days: int = typer.Option(90, min=1, help="Days of the synthetic learning world (ending 2026-06-30)."),
    batch_size: int = typer.Option(200, help="Events per request."),
    reset: bool = typer.Option(False, help="Erase the data directory's Cohort data first (refused while a "
                                           "server runs on it)."),
    keep: bool = typer.Option(False, hidden=True, help="No effect: data is kept unless --reset."),
) -> None:
    """Start a server on a data dir, load a synthetic learning world, print where to look and keys."""
    from cohort.demo import DemoDirRefused, claim_demo_dir, run_demo
    from cohort.pipeline.data_dir_lock import DataDirInUse

    settings = _settings(data_dir, "127.0.0.1", port)
    try:
        reused = claim_demo_dir(settings, reset=reset)  # holds the directory's lock from here on
    except (DataDirInUse, DemoDirRefused, OSError) as exc:
        err_console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None
    run_demo(settings, events=events, batch_size=batch_size, console=console, reused=reused, days=days)


@app.command()
def bench(
    duration: float = typer.Option(20.0, help="Seconds of load."),
    events: int = typer.Option(10_000_000, help="Stop after this many acked events, if sooner."),
    batch_size: int = typer.Option(500, help="Events per request."),
    concurrency: int = typer.Option(4, help="Concurrent client connections."),
    rate: float = typer.Option(0.0, help="Offered load in events/s (0: as fast as the server acks)."),
    hostile: bool = typer.Option(False, help="Run a hostile-query client beside the load for the whole run "
                                             "(memory, CPU, huge statements and results, many at once)."),
    hostile_threads: int = typer.Option(4, help="With --hostile: connections cycling through the hostile queries."),
    hostile_burst: int = typer.Option(40, help="With --hostile: slow queries sent at once, wave after wave."),
    hostile_niceness: int = typer.Option(10, help="With --hostile: CPU niceness of the hostile client, which stands "
                                                  "for a party on another machine (0: it competes for the "
                                                  "server's cores as an equal)."),
    url: str = typer.Option(None, help="Drive a running server instead of starting one on a temp dir "
                                       "(with --hostile: on this machine only)."),
    key: str = typer.Option(None, envvar="COHORT_KEY", help="With --url: the API key (or JWT) the load sends "
                                                             "(an ingestor's, or an admin's for --hostile)."),
    footprint: str = typer.Option("embedded", help="Without --url: the footprint to start, embedded (one "
                                                   "`cohort serve`) or scaleout (`cohort engines`, `serve` and "
                                                   "--workers × `cohort worker` on this machine)."),
    workers: int = typer.Option(2, help="With --footprint scaleout: `cohort worker` processes."),
    acks_only: bool = typer.Option(False, help="Measure the ingest path alone (acks, their latency, the server's "
                                               "CPU per acked event); with --footprint scaleout, `serve` runs "
                                               "without store writer or workers."),
    output: Path = typer.Option(None, help="Result JSON (default bench/results/load-<time>.json, or "
                                            "hostile-<time>.json with --hostile).", callback=_outside_data_dirs),
) -> None:
    """Measure acked and end-to-end events/s, ack latency, lag, RSS and the parse-only ceiling."""
    if footprint not in ("embedded", "scaleout"):
        raise typer.BadParameter("--footprint must be embedded or scaleout")
    import json
    import tempfile

    from rich.table import Table

    from cohort.benchmark.hostile import HostileConfig, require_loopback
    from cohort.benchmark.load import LoadConfig, run_against_own_scaleout, run_against_own_server, run_load

    config = LoadConfig(duration_s=duration, max_events=events, batch_size=batch_size, concurrency=concurrency,
                        rate=rate, acks_only=acks_only, hostile=HostileConfig(threads=hostile_threads, burst=hostile_burst, niceness=hostile_niceness) if hostile
                        else None)
    if hostile and url:
        try:
            require_loopback(url)
        except ValueError as exc:
            err_console.print(f"[bold red]error:[/] {exc}")
            raise typer.Exit(2) from None
    with console.status("running load…" + (" with hostile queries" if hostile else "")):
        if url:
            result = run_load(url, config, auth={"Authorization": f"Bearer {key}"} if key else None)
        else:
            with tempfile.TemporaryDirectory(prefix="cohort-bench-") as work:
                result = (run_against_own_scaleout(Path(work), config, workers=workers) if footprint == "scaleout"
                          else run_against_own_server(Path(work), config))
    data = {"footprint": "as found at --url" if url else footprint, **result.as_dict()}
    output = _write_result(data, output, "hostile" if hostile else ("scaleout-load" if footprint == "scaleout"
                                                                     else "load"))
    offered = f", offered {rate:g} events/s" if rate else ""
    table = Table(title=f"cohort bench ({duration:g} s, batch {batch_size}, concurrency {concurrency}{offered})")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in data.items():
        if key not in ("config", "hostile", "footprint"):
            table.add_row(key, str(value))
    console.print(table)
    if hostile:
        report = data["hostile"]
        console.print("hostile client: " + json.dumps({k: v for k, v in report.items() if k != "by_query"}),
                      markup=False, highlight=False)
        for name, figures in report["by_query"].items():
            console.print(f"  {name}: {json.dumps(figures)}", markup=False, highlight=False)
        met = report["acceptance"]["met"]
        console.print(("[green]acceptance met[/]" if met else "[bold red]acceptance not met[/]") +
                      f": ack p99 {report['acceptance']['ack_p99_ms']} ms as the client saw it, "
                      f"{report['acceptance'].get('server_ack_p99_ms')} ms as the server measured it "
                      f"(target ≤ 100), server peak RSS "
                      f"{report['acceptance']['server_peak_rss_mb']} MB (target ≤ 1,536)"
                      + ("" if report["acceptance"]["server_survived"] else f"; server gone: {data['server_exit']}"))
    console.print(f"result written to {output}")


@app.command("crash-test")
def crash_test(
    cycles: int = typer.Option(20, help="How many times to SIGKILL a process under load."),
    events: int = typer.Option(100_000, help="Events the clients must get acknowledged in total."),
    batch_size: int = typer.Option(100, help="Events per request."),
    senders: int = typer.Option(4, help="Concurrent clients."),
    seed: int = typer.Option(0, help="Seed for data and kill moments."),
    target: str = typer.Option("server", help="What to SIGKILL: 'server' (`cohort serve`, then restart it) or "
                                              "'worker' (a pipeline worker: embedded, one of the server's processes, "
                                              "which it must replace; scale-out, a `cohort worker`, and a new one "
                                              "is started)."),
    footprint: str = typer.Option("embedded", help="'embedded' or 'scaleout' (`cohort serve` + `cohort worker`s on "
                                                   "Kafka, Redis and a chdb store of the run's own; the engines of "
                                                   "COHORT_KAFKA_BOOTSTRAP_SERVERS / COHORT_REDIS_URL, each unset "
                                                   "one started on 127.0.0.1 for the run)."),
    workers: int = typer.Option(2, min=1, help="Scale-out: `cohort worker` processes running side by side."),
    output: Path = typer.Option(None, help="Result JSON (default bench/results/crash-<time>.json).",
                                callback=_outside_data_dirs),
) -> None:
    """SIGKILL a real server (or its pipeline workers) right after acks; verify 0 lost, 0 duplicated."""
    import json
    import tempfile

    from rich.progress import Progress

    from cohort.benchmark.crash import FOOTPRINTS, TARGETS, run_crash_cycles

    if target not in TARGETS:
        raise typer.BadParameter(f"one of {', '.join(TARGETS)}", param_hint="--target")
    if footprint not in FOOTPRINTS:
        raise typer.BadParameter(f"one of {', '.join(FOOTPRINTS)}", param_hint="--footprint")
    kafka_bootstrap = redis_url = None  # scale-out: the engines to run on; each one unset is started for the run
    if footprint == "scaleout":
        settings = Settings()
        kafka_bootstrap, redis_url = settings.kafka_bootstrap_servers or None, settings.redis_url or None
    with tempfile.TemporaryDirectory(prefix="cohort-crash-") as work, Progress(console=console) as progress:
        task = progress.add_task("crash cycles", total=cycles)
        try:
            report = run_crash_cycles(Path(work), cycles=cycles, events=events, batch_size=batch_size,
                                      senders=senders, seed=seed, target=target, footprint=footprint,
                                      kafka_bootstrap=kafka_bootstrap, redis_url=redis_url, workers=workers,
                                      progress=lambda done, _: progress.update(task, completed=done))
        except ValueError as exc:  # e.g. a Redis database a deployment uses
            err_console.print(f"[bold red]error:[/] {exc}")
            raise typer.Exit(2) from None
        except RuntimeError as exc:  # an engine or a process that would not start (with its log)
            err_console.print(f"[bold red]error:[/] {exc}")
            raise typer.Exit(1) from None
    data = report.as_dict()
    summary = {k: v for k, v in data.items() if not k.endswith("_mids")}
    kind = f"crash-{target}" if footprint == "embedded" else f"crash-scaleout-{target}"
    output = _write_result(data, output, kind)
    console.print_json(json.dumps(summary))
    if not report.ok:
        console.print("[bold red]LOSS OR DUPLICATION DETECTED[/]")
        raise typer.Exit(1)
    console.print(f"[green]ok[/]: every acked event stored exactly once ({output})")


def _write_result(data: dict, output: Path | None, kind: str) -> Path:
    """Harness results go to bench/results/<kind>-<time>.json unless a path is given."""
    import json

    output = output or Path("bench/results") / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(data, indent=2))
    return output


keys_app = typer.Typer(help="API keys: create (the key is shown once), list, revoke. Embedded: in "
                       "<data dir>/auth.sqlite (COHORT_AUTH_DB), also while `cohort serve` runs; scale-out: in Redis.",
                       no_args_is_help=True)
tenants_app = typer.Typer(help="Tenants (a state or board: its Sunbird channel id): create, list.",
                          no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(tenants_app, name="tenants")
_DATA_DIR_HELP = "Data directory (default ./cohort-data or COHORT_DATA_DIR)."


@contextmanager
def _key_store(settings: Settings) -> Iterator[KeyStore]:
    """The footprint's key store; a refusal or an unreachable store is one line on stderr, not a traceback."""
    from cohort.core.errors import CohortError
    from cohort.security.api_keys import KeyStoreUnavailable, open_key_store

    try:
        store = open_key_store(settings)
    except (CohortError, KeyStoreUnavailable) as exc:
        _fail(exc)
    try:
        yield store
    except (CohortError, KeyStoreUnavailable) as exc:
        _fail(exc)
    finally:
        store.close()


def _audited(settings: Settings, action: str, target: str, tenant: str | None) -> None:
    """Record an operator's change in the audit log (the actor is the operator at this machine: `system`);
    raise AuditLogUnavailable when it cannot be written, so the caller can refuse or undo the change."""
    from cohort.security.audit_log import open_audit_log

    log = open_audit_log(settings)
    try:
        log.append(None, action, target, "ok", {"via": "cli"}, tenant=tenant)
    finally:
        log.close()


def _fail(exc: Exception) -> NoReturn:
    from rich.markup import escape

    from cohort.core.errors import CohortError

    from cohort.security.api_keys import KeyStoreUnavailable

    from cohort.state.vault_entry import VaultUnavailable

    what = ("key store" if isinstance(exc, KeyStoreUnavailable)
            else "identity vault" if isinstance(exc, VaultUnavailable) else "audit log")
    text = f"{exc.code}: {exc.message}" if isinstance(exc, CohortError) else f"{what} unavailable: {exc}"
    err_console.print(f"[bold red]error:[/] {escape(text)}", highlight=False)
    raise typer.Exit(2 if isinstance(exc, CohortError) else 1)


@keys_app.command("create")
def keys_create(
    data_dir: Path = typer.Option(None, help=_DATA_DIR_HELP),
    tenant: str = typer.Option(None, help="Tenant (channel) of the key; omitted only for --role admin."),
    role: str = typer.Option(..., help="admin, tenant_admin, ingestor, analyst, educator or viewer."),
    scope: str = typer.Option(None, help="Narrow the key to part of its tenant: kind:value[,value…], kind one of "
                                         "batch, course, rollup.l1…rollup.l4."),
    expires: str = typer.Option(None, help="Expiry: a duration (30d, 12h, 90m, 2w) or an ISO-8601 date or time "
                                           "(UTC unless it says). Default: never."),
    label: str = typer.Option("", help="A note for lists (who or what holds the key)."),
) -> None:
    """Make an API key and print it (the last word of the output): it is shown this once, stored as a hash."""
    from cohort.security.api_keys import parse_expiry, parse_role
    from cohort.security.identity import Scope

    from cohort.security.audit_log import AuditLogUnavailable

    settings = _settings(data_dir)
    with _key_store(settings) as store:
        expiry = parse_expiry(expires, time.time()) if expires else None
        info, key = store.create_key(tenant, parse_role(role), Scope.parse(scope) if scope else None, expiry, label)
        try:
            _audited(settings, "key.create", f"key {info.key_id} {info.role}", info.tenant)
        except AuditLogUnavailable as exc:  # a key no audit entry speaks of must not work
            store.revoke(info.key_id)
            _fail(exc)
    scoped = f", scope {info.scope}" if info.scope else ""
    until = f", expires {info.expires_at:%Y-%m-%d %H:%M UTC}" if info.expires_at else ""
    console.print(f"created {info.role} key {info.key_id} for {info.tenant or 'every tenant'}{scoped}{until}; "
                  "store it now: it is not shown again:", soft_wrap=True, highlight=False, markup=False)
    typer.echo(key)


@keys_app.command("list")
def keys_list(
    data_dir: Path = typer.Option(None, help=_DATA_DIR_HELP),
    tenant: str = typer.Option(None, help="Only this tenant's keys."),
) -> None:
    """List keys (ids, never secrets): tenant, role, scope, created, expires, revoked."""
    from rich.table import Table

    with _key_store(_settings(data_dir)) as store:
        keys = store.list_keys(tenant)
    table = Table(title=f"API keys{f' of {tenant}' if tenant else ''}")
    table.add_column("key id", no_wrap=True, min_width=12)
    for name in ("tenant", "role", "scope", "created", "expires", "revoked", "label"):
        table.add_column(name)
    moment = "{:%Y-%m-%d %H:%M}".format
    for info in keys:
        table.add_row(info.key_id, info.tenant or "(all)", str(info.role), str(info.scope or ""),
                      moment(info.created_at), moment(info.expires_at) if info.expires_at else "never",
                      moment(info.revoked_at) if info.revoked_at else "", info.label)
    _wide_console().print(table, markup=False, highlight=False)


def _wide_console() -> Console:
    """Tables read by scripts (not a terminal) are printed whole rather than cut to 80 columns."""
    return console if console.is_terminal else Console(width=240)


@keys_app.command("revoke")
def keys_revoke(
    key_id: str = typer.Argument(..., help="The key's id (the part after ck_, as `cohort keys list` shows it)."),
    data_dir: Path = typer.Option(None, help=_DATA_DIR_HELP),
) -> None:
    """Revoke a key: refused at once by this machine's processes, within 5 s by every other."""
    from cohort.core.errors import CohortError, ErrorCode

    from cohort.security.audit_log import AuditLogUnavailable

    settings = _settings(data_dir)
    with _key_store(settings) as store:
        revoked = store.revoke(key_id)  # first: a revocation stands even if it cannot be recorded
        known = revoked or store.get_key(key_id) is not None
        if revoked:
            revoked_key = store.get_key(key_id)
            try:
                _audited(settings, "key.revoke", f"key {key_id}", revoked_key.tenant if revoked_key else None)
            except AuditLogUnavailable as exc:
                _fail(exc)
    if not known:
        _fail(CohortError(ErrorCode.NOT_FOUND, f"no key {key_id[:40]!r} (cohort keys list shows the ids)"))
    console.print(f"revoked key {key_id}" if revoked else f"key {key_id} was revoked already", markup=False)


@keys_app.command("rotate")
def keys_rotate(
    key_id: str = typer.Argument(..., help="The id of the key to replace (as `cohort keys list` shows it)."),
    data_dir: Path = typer.Option(None, help=_DATA_DIR_HELP),
    overlap: str = typer.Option("1d", help="How long the old key keeps working beside the new one (30m, 12h, 1d, "
                                           "…; 0: it stops now, e.g. when it leaked)."),
    expires: str = typer.Option(None, help="Expiry of the new key (as for `keys create`). Default: never."),
) -> None:
    """Replace a key: a new key with the same tenant, role, scope and label (printed as the last word, shown
    once), and the old one ending after the overlap, so clients can move over without an outage."""
    from cohort.core.errors import CohortError, ErrorCode
    from cohort.security.api_keys import parse_expiry

    from cohort.security.audit_log import AuditLogUnavailable

    settings = _settings(data_dir)
    with _key_store(settings) as store:
        old = store.get_key(key_id)
        now = time.time()
        if old is None or old.refusal(now) is not None:
            why = "no such key" if old is None else f"it is {old.refusal(now)} already"
            _fail(CohortError(ErrorCode.NOT_FOUND, f"cannot rotate key {key_id[:40]!r}: {why} "
                              "(cohort keys list shows the ids)"))
        ends = now if overlap.strip() in ("0", "0s", "0m", "0h", "0d") else parse_expiry(overlap, now).timestamp()
        expiry = parse_expiry(expires, now) if expires else None
        info, key = store.create_key(old.tenant, old.role, old.scope, expiry, old.label)
        try:
            _audited(settings, "key.rotate", f"key {old.key_id} -> {info.key_id} {info.role}", info.tenant)
        except AuditLogUnavailable as exc:  # a key no audit entry speaks of must not work; the old one stays
            store.revoke(info.key_id)
            _fail(exc)
        store.expire(old.key_id, ends)
    when = "now" if ends <= now else f"at {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(ends))}"
    console.print(f"rotated {old.role} key {old.key_id} -> {info.key_id} for {info.tenant or 'every tenant'}; the "
                  f"old key stops {when}; store the new one now: it is not shown again:", soft_wrap=True,
                  highlight=False, markup=False)
    typer.echo(key)


@tenants_app.command("create")
def tenants_create(
    tenant: str = typer.Argument(..., help="Tenant id: the state's or board's Sunbird channel id."),
    name: str = typer.Option("", help="A readable name, e.g. the state's."),
    data_dir: Path = typer.Option(None, help=_DATA_DIR_HELP),
) -> None:
    """Register a tenant, so that keys can be made for it."""
    from cohort.security.audit_log import AuditLogUnavailable

    settings = _settings(data_dir)
    with _key_store(settings) as store:
        info = store.create_tenant(tenant, name)
        try:
            _audited(settings, "tenant.create", f"tenant {info.tenant_id}", info.tenant_id)
        except AuditLogUnavailable as exc:
            _fail(exc)
    console.print(f"created tenant {info.tenant_id}" + (f" ({info.name})" if info.name else ""), markup=False)


@tenants_app.command("list")
def tenants_list(data_dir: Path = typer.Option(None, help=_DATA_DIR_HELP)) -> None:
    """List tenants."""
    from rich.table import Table

    with _key_store(_settings(data_dir)) as store:
        tenants = store.list_tenants()
    table = Table(title="tenants")
    table.add_column("tenant", no_wrap=True)
    table.add_column("name")
    table.add_column("created")
    for info in tenants:
        table.add_row(info.tenant_id, info.name, f"{info.created_at:%Y-%m-%d %H:%M}")
    _wide_console().print(table, markup=False, highlight=False)


secrets_app = typer.Typer(help="The deployment's keys (secrets.json: pseudonym key, vault keys): rotate the vault key.",
                          no_args_is_help=True)
vault_app = typer.Typer(help="The identity vault (learners' and devices' clear ids, encrypted): rekey.",
                        no_args_is_help=True)
app.add_typer(secrets_app, name="secrets")
app.add_typer(vault_app, name="vault")


@secrets_app.command("rotate")
def secrets_rotate(data_dir: Path = typer.Option(None, help=_DATA_DIR_HELP)) -> None:
    """Add a new vault key and make it current (old ones stay, so old entries stay readable). New vault
    entries are sealed under it at once by processes that read the file again (restart them); running
    processes read it again by themselves when they meet an entry sealed under a key they do not know.
    Then run `cohort vault rekey` to re-encrypt the older entries, after which old key ids may be removed."""
    from cohort.core.errors import CohortError
    from cohort.security.audit_log import AuditLogUnavailable
    from cohort.security.secrets import rotate_vault_key, secrets_path

    settings = _settings(data_dir)
    path = secrets_path(settings)
    try:
        new_id = rotate_vault_key(path)
        _audited(settings, "secrets.rotate", f"vault key {new_id}", None)
    except (CohortError, AuditLogUnavailable) as exc:
        _fail(exc)
    console.print(f"vault key {new_id} is now current in {path}; restart Cohort's processes, then run "
                  "`cohort vault rekey`", markup=False, highlight=False, soft_wrap=True)


@vault_app.command("rekey")
def vault_rekey(
    data_dir: Path = typer.Option(None, help=_DATA_DIR_HELP),
    tenant: list[str] = typer.Option(None, help="Only this tenant (repeatable). Default: every tenant in the vault."),
) -> None:
    """Re-encrypt vault entries under the current vault key (safe while servers run: entries are rewritten
    one chunk a transaction, pseudonyms unchanged). Prints how many entries each tenant had re-encrypted."""
    from cohort.core.errors import CohortError
    from cohort.security.audit_log import AuditLogUnavailable
    from cohort.security.secrets import load_or_create_secrets
    from cohort.state.identity_vault import VaultUnavailable, open_identity_vault

    settings = _settings(data_dir)
    try:
        vault = open_identity_vault(settings, load_or_create_secrets(settings))
    except (CohortError, VaultUnavailable) as exc:
        _fail(exc)
    try:
        tenants = list(tenant) if tenant else vault.tenants()
        total = 0
        for name in tenants:
            done = vault.rekey(name)
            total += done
            console.print(f"{name}: {done} entries re-encrypted", markup=False, highlight=False)
        _audited(settings, "vault.rekey", f"{len(tenants)} tenants, {total} entries", None)
    except (CohortError, VaultUnavailable, AuditLogUnavailable) as exc:
        _fail(exc)
    finally:
        vault.close()
    console.print(f"rekeyed {total} entries of {len(tenants)} tenants", markup=False, highlight=False)


audit_app = typer.Typer(help="The audit log (who did what, when, with what outcome; a hash chain): verify, list. "
                        "Embedded: <data dir>/audit.sqlite and audit.head; scale-out: in Redis.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


@contextmanager
def _audit_log(settings: Settings) -> Iterator[AuditLog]:
    """The footprint's audit log, never created by reading it: bad input exits 2, an unreadable log 3."""
    from cohort.core.errors import CohortError, ErrorCode
    from cohort.security.audit_log import AuditLogUnavailable, open_audit_log

    try:
        if settings.footprint == "embedded" and not settings.data_dir.is_dir():
            raise CohortError(ErrorCode.NOT_FOUND, f"no data directory {settings.data_dir}")
        log = open_audit_log(settings)
    except CohortError as exc:
        _fail(exc)
    except AuditLogUnavailable as exc:
        err_console.print(f"[bold red]error:[/] audit log unavailable: {exc}", markup=True, highlight=False)
        raise typer.Exit(3) from None
    try:
        yield log
    except CohortError as exc:
        _fail(exc)
    except AuditLogUnavailable as exc:
        err_console.print(f"[bold red]error:[/] audit log unavailable: {exc}", markup=True, highlight=False)
        raise typer.Exit(3) from None
    finally:
        log.close()


@audit_app.command("verify")
def audit_verify(data_dir: Path = typer.Option(None, help=_DATA_DIR_HELP)) -> None:
    """Recompute the hash chain: exit 0 if intact (printing the head to keep elsewhere), 1 naming the first bad
    entry and why, 2 for bad input, 3 if the log cannot be read."""
    with _audit_log(_settings(data_dir)) as log:
        result = log.verify()
    if result.ok:
        console.print(f"audit log intact: {result.checked} entries; head {result.head_seq} {result.head_hash}",
                      markup=False, highlight=False)
        return
    where = f"first bad entry {result.first_bad_seq}" if result.first_bad_seq is not None else "head"
    console.print(f"audit log TAMPERED ({where}; {result.checked} entries verified before it): {result.reason}",
                  markup=False, highlight=False)
    raise typer.Exit(1)


@audit_app.command("list")
def audit_list(
    data_dir: Path = typer.Option(None, help=_DATA_DIR_HELP),
    tenant: str = typer.Option(None, help="Only entries concerning this tenant."),
    since: int = typer.Option(0, help="Only entries after this sequence number."),
    limit: int = typer.Option(100, help="At most this many entries (1…10000)."),
) -> None:
    """List entries, oldest first: sequence, time, tenant, actor (key id or JWT subject, via, role), action,
    target, outcome, detail."""
    from rich.table import Table

    with _audit_log(_settings(data_dir)) as log:
        entries = log.entries(tenant=tenant, since_seq=since, limit=limit)
    table = Table(title=f"audit log{f' of {tenant}' if tenant else ''}")
    for name in ("seq", "at", "tenant", "actor", "action", "target", "outcome", "detail"):
        table.add_column(name, no_wrap=name in ("seq", "at"))
    for entry in entries:
        actor = f"{entry.actor_subject} ({entry.actor_via}, {entry.actor_role or '-'})"
        detail = ", ".join(f"{k}={v}" for k, v in entry.detail.items())
        table.add_row(str(entry.seq), entry.at, entry.tenant or "(all)", actor, entry.action, entry.target,
                      entry.outcome, detail)
    _wide_console().print(table, markup=False, highlight=False)


@app.command()
def summarise(
    input: Path = typer.Option(None, "--input", exists=True, dir_okay=False, readable=True,
                               help="File mode: raw telemetry, JSON lines of events, Sunbird batches {\"events\": "
                                    "[...]} or {\"event\": {...}} wrappers (.jsonl, .log)."),
    output: Path = typer.Option(None, "--output", dir_okay=False, callback=_outside_data_dirs,
                                help="Where to write the summaries, one ME_WORKFLOW_SUMMARY JSON object a line "
                                     "(needed with --input; with --from/--to, optional)."),
    presorted: bool = typer.Option(False, help="With --input: the file is in event-time order: stream it through "
                                   "the incremental summariser instead of sorting it on disk first."),
    lateness: int = typer.Option(0, min=0, help="With --presorted: seconds an event may lag its device's newest "
                                 "event and still be put in order."),
    from_: str = typer.Option(None, "--from", help="Store mode: first day (YYYY-MM-DD, UTC) whose summaries (and "
                                                   "rollups) are recomputed from the stored events."),
    to: str = typer.Option(None, help="Store mode: the day after the last (exclusive), YYYY-MM-DD."),
    tenant: str = typer.Option(None, help="Store mode: only this tenant's days (default every tenant)."),
    data_dir: Path = typer.Option(None, help="Store mode, embedded: the data directory of a stopped server "
                                             "(default ./cohort-data or COHORT_DATA_DIR)."),
) -> None:
    """Workflow summaries (app, session, player, editor spans with time spent, interactions, pages, item
    responses), by production's rules. File mode (--input, --output): of a raw telemetry file, no server or data
    directory needed. Store mode (--from, --to): recompute the stored summaries and rollups of those days; embedded,
    offline on --data-dir under its lock (refused while a server runs: its refresher keeps them current); scale-out
    (COHORT_FOOTPRINT=scaleout), directly on the ClickHouse store, beside running store writers."""
    from rich.markup import escape

    from cohort.analytics.workflow_file import summarise_file

    if from_ is not None or to is not None:
        if input is not None:
            raise typer.BadParameter("--input (a file) and --from/--to (the store) are two modes: give one")
        _summarise_store(from_, to, tenant, data_dir, output)
        return
    if input is None or output is None:
        raise typer.BadParameter("give --input FILE --output FILE (a raw file), or --from DAY --to DAY (the store)")
    try:
        report = summarise_file(input, output, presorted=presorted, lateness_ms=lateness * 1000)
    except OSError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(1) from None
    stats = report.stats
    typer.echo(f"lines read: {report.lines_read}; events found: {report.events_found}; events used: "
               f"{stats.events_used}")
    for reason, count in sorted({**report.skipped_lines, **stats.skipped}.items()):
        typer.echo(f"skipped: {count} ({reason})")
    if stats.late_events:
        typer.echo(f"late events (measured at their device's last time): {stats.late_events}")
    by_type = ", ".join(f"{kind} {count}" for kind, count in sorted(stats.summaries.items()))
    typer.echo(f"summaries written: {report.summaries_written} ({by_type or 'none'}) to {output}")


def _summarise_store(from_: str | None, to: str | None, tenant: str | None, data_dir: Path | None,
                     output: Path | None) -> None:
    """Store mode of `cohort summarise`: recompute the days [from, to) (with their neighbours, by the slice rule
    of analytics/summary_table.py), print the summaries they hold by type, and write them to `output`."""
    from datetime import date, timedelta

    from rich.markup import escape

    from cohort.analytics.rollup_refresh import RollupRefresher
    from cohort.pipeline.data_dir_lock import DataDirLock

    if from_ is None or to is None:
        raise typer.BadParameter("--from and --to go together (YYYY-MM-DD; --to is the day after the last)")
    try:
        start, end = date.fromisoformat(from_), date.fromisoformat(to)
    except ValueError as exc:
        raise typer.BadParameter(f"--from/--to must be YYYY-MM-DD: {exc}") from None
    if end <= start:
        raise typer.BadParameter(f"--to ({end}) must be after --from ({start}): it is the day after the last")
    if end - start > timedelta(days=3660):
        raise typer.BadParameter("at most ten years at once")
    settings = _settings(data_dir)
    lock: DataDirLock | None = None
    if settings.footprint == "scaleout":
        from cohort.store.clickhouse_store import ClickHouseStore

        store: Any = ClickHouseStore(settings.clickhouse_dsn, database=settings.clickhouse_database)
    else:
        from cohort.store.duckdb_store import DuckDbStore

        if not settings.store_path.exists():
            err_console.print(f"[bold red]error:[/] no store in {escape(str(settings.data_dir))}", highlight=False)
            raise typer.Exit(2)
        lock = _take_data_dir(settings.data_dir, "; a running server's refresher keeps the summaries current (stop "
                              "it to recompute a range)")
        store = DuckDbStore(settings.store_path, memory_limit=settings.store_memory_limit)
    try:
        refresher = RollupRefresher(store)
        started = time.monotonic()
        slices = refresher.recompute(tenant, start, end - timedelta(days=1))
        counts = _summaries_by_type(store, tenant, start, end)
        written = _write_summaries(store, tenant, start, end, output) if output is not None else None
    finally:
        store.close()
        if lock is not None:
            lock.release()
    by_type = ", ".join(f"{kind} {n}" for kind, n in sorted(counts.items()))
    typer.echo(f"recomputed {slices} tenant-days in {time.monotonic() - started:.1f} s; summaries of {start} to "
               f"{end - timedelta(days=1)}{f' of {tenant}' if tenant else ''}: {sum(counts.values())} "
               f"({by_type or 'none'})")
    if written is not None:
        typer.echo(f"summaries written: {written} to {output}")


def _range_params(tenant: str | None, start, end) -> dict[str, object]:
    return {"start": start, "end": end, **({"tenant": tenant} if tenant is not None else {})}


def _summaries_by_type(store, tenant: str | None, start, end) -> dict[str, int]:
    from cohort.analytics.summary_table import TABLE

    clickhouse = store.capabilities.sql_dialect == "clickhouse"
    if clickhouse:
        who = "" if tenant is None else " AND tenant = {tenant:String}"
        sql = (f"SELECT type, count() FROM {TABLE} FINAL WHERE day >= {{start:Date}} AND day < {{end:Date}}{who} "
               "GROUP BY type")
    else:
        who = "" if tenant is None else " AND tenant = $tenant"
        sql = f"SELECT type, count(*) FROM {TABLE} WHERE day >= $start AND day < $end{who} GROUP BY type"
    result = store.query(sql, _range_params(tenant, start, end), 10_000, 600.0)
    return {str(kind): int(n) for kind, n in result.rows}


def _write_summaries(store, tenant: str | None, start, end, output: Path) -> int:
    """The range's summaries as JSON lines, written beside `output` and renamed onto it when complete."""
    import os

    from cohort.analytics.summary_table import range_sql

    partial = output.with_name(f".{output.name}.part-{os.getpid()}")
    written = 0
    try:
        with open(partial, "wb") as handle:
            for batch in store.stream_rows(range_sql(store.capabilities.sql_dialect, tenant),
                                           _range_params(tenant, start, end), batch_rows=10_000,
                                           timeout_s=3600.0):
                for text in batch.column(0).to_pylist():
                    handle.write(text.encode() if isinstance(text, str) else bytes(text))
                    handle.write(b"\n")
                    written += 1
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, output)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return written


@app.command()
def forget(
    tenant: str = typer.Option(None, help="Tenant (channel) of the learner; a tenant admin's key may leave it out."),
    learner: str = typer.Option(..., help="The learner's id as the apps send it (actor.id)."),
    url: str = typer.Option(None, envvar="COHORT_URL", help="A running server's URL: forget through its API."),
    key: str = typer.Option(None, envvar="COHORT_KEY", help="With --url: a tenant_admin or admin key (or JWT)."),
    data_dir: Path = typer.Option(None, help="Without --url: the data directory of a stopped embedded server "
                                             "(default ./cohort-data or COHORT_DATA_DIR)."),
    compact: bool = typer.Option(False, help="With --data-dir: then rewrite the store file with its live rows only, "
                                             "so no byte of the deleted rows stays in it (takes a while on a big store)."),
) -> None:
    """Forget a learner (right to be forgotten): delete their stored and quarantined events, their events' dedup
    keys and their identity vault entry, so their pseudonym is linked to nobody. Through a server's API (--url),
    or on a stopped embedded data directory (--data-dir). Prints one line with the counts; audited."""
    import json as json_
    import urllib.error
    import urllib.request

    from rich.markup import escape

    if url:
        body = json_.dumps({"learner": learner, **({"tenant": tenant} if tenant else {})}).encode()
        request = urllib.request.Request(url.rstrip("/") + "/v1/forget", data=body, method="POST",
                                         headers={"Content-Type": "application/json",
                                                  **({"Authorization": f"Bearer {key}"} if key else {})})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:  # noqa: S310 - the operator's URL
                answer = json_.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                params = json_.loads(exc.read()).get("params", {})
                text = f"{params.get('err')}: {params.get('errmsg')}"
            except ValueError:
                text = f"HTTP {exc.code}"
            err_console.print(f"[bold red]error:[/] {escape(text)}", highlight=False)
            raise typer.Exit(2 if exc.code < 500 else 1) from None
        except (urllib.error.URLError, OSError) as exc:
            err_console.print(f"[bold red]error:[/] cannot reach {escape(url)}: {escape(str(exc))}", highlight=False)
            raise typer.Exit(1) from None
        console.print(answer["result"]["summary"], markup=False, highlight=False)
        return
    if not tenant:
        err_console.print("[bold red]error:[/] --tenant is required with --data-dir")
        raise typer.Exit(2)
    settings = _settings(data_dir)
    console.print(_forget_offline(settings, tenant, learner), markup=False, highlight=False)
    if compact:
        _compact_offline(settings)


def _compact_offline(settings: Settings) -> None:
    """Rewrite the stopped data directory's store file (its lock held throughout)."""
    from cohort.store.duckdb_store import compact_store_file

    lock = _take_data_dir(settings.data_dir, prefix="store not compacted: ", exit_code=1)
    try:
        before = settings.store_path.stat().st_size
        compact_store_file(settings.store_path)
        console.print(f"store compacted: {before:,} → {settings.store_path.stat().st_size:,} bytes", markup=False,
                      highlight=False)
    finally:
        lock.release()


def _forget_offline(settings: Settings, tenant: str, learner: str) -> str:
    """Forget on a stopped embedded data directory: its lock taken as `serve` takes it (refused while a server
    holds it), the pipeline drained first (events acknowledged before the stop are stored, then forgotten), the
    action audited as the operator's before anything is deleted."""
    from cohort.core.errors import CohortError
    from cohort.pipeline.embedded import EmbeddedNode
    from cohort.pipeline.forget import forget_learner
    from cohort.security.audit_log import AuditLogUnavailable, open_audit_log
    from cohort.security.secrets import load_or_create_secrets
    from cohort.state.identity_vault import open_identity_vault

    if settings.footprint == "scaleout":
        err_console.print("[bold red]error:[/] on the scale-out footprint, forget through a server: --url URL --key KEY")
        raise typer.Exit(2)
    if not settings.data_dir.is_dir():
        err_console.print(f"[bold red]error:[/] no data directory {settings.data_dir}", highlight=False)
        raise typer.Exit(2)
    probe = _take_data_dir(settings.data_dir, "; while a server runs, forget through it: cohort forget --url URL "
                                              "--key KEY")
    probe.hand_over()  # the node takes the lock as held
    node = EmbeddedNode(settings)
    try:
        vault = open_identity_vault(settings, load_or_create_secrets(settings))
        audit = open_audit_log(settings)
        try:
            audit.append(None, "forget", "cli", "requested", {"via": "cli"}, tenant=tenant)
            node.runner.drain()
            try:
                report = forget_learner(node, vault, tenant, learner)
            except CohortError as exc:
                audit.append(None, "forget", "cli", "error", {"via": "cli", "error": str(exc.code)}, tenant=tenant)
                raise
            audit.append(None, "forget", "cli", "ok" if report.held else "not_held", {"via": "cli", **report.detail()},
                         tenant=tenant)
        finally:
            audit.close()
            vault.close()
    except CohortError as exc:
        _fail(exc)
    except AuditLogUnavailable as exc:
        err_console.print(f"[bold red]error:[/] audit log unavailable, so nothing was forgotten: {exc}", highlight=False)
        raise typer.Exit(3) from None
    finally:
        node.close()
    return report.summary()



@app.command("export")
def export_command(
    dataset: str = typer.Option("telemetry", help="The dataset: telemetry (by event time) or failed_events (by "
                                                  "quarantine time)."),
    from_: str = typer.Option(None, "--from", help="Start, ISO date or date-time (UTC unless it has an offset); "
                                                   "default 7 days before --to."),
    to: str = typer.Option(None, help="End, exclusive; default the end of today (UTC)."),
    fmt: str = typer.Option("parquet", "--format", help="parquet or csv."),
    output: Path = typer.Option(..., help="The file to write (written beside it first, renamed when complete).",
                                callback=_outside_data_dirs),
    tenant: str = typer.Option(None, help="An admin's key: the tenant to export (default every tenant)."),
    url: str = typer.Option(None, envvar="COHORT_URL", help="The server's URL."),
    key: str = typer.Option(None, envvar="COHORT_KEY", help="An API key (or JWT) that may export."),
) -> None:
    """Export a dataset's rows over a time range through a server's API (GET /v1/exhaust), showing bytes and rows
    as they arrive. The file appears only once complete (Parquet footer or CSV end line checked): a download cut
    short exits 1 and leaves no file."""
    import os

    import httpx
    from rich.markup import escape
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    from cohort.analytics.exports import csv_end_rows

    if not url:
        err_console.print("[bold red]error:[/] --url (or COHORT_URL) is required")
        raise typer.Exit(2)
    params = {k: v for k, v in {"from": from_, "to": to, "format": fmt, "tenant": tenant}.items() if v is not None}
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    partial = output.with_name(f".{output.name}.part-{os.getpid()}")
    rows = 0
    try:
        with httpx.stream("GET", url.rstrip("/") + f"/v1/exhaust/{dataset}", params=params, headers=headers,
                          timeout=httpx.Timeout(30.0, read=600.0)) as response:
            if response.status_code != 200:
                response.read()
                try:
                    body = response.json().get("params", {})
                    text = f"{body.get('err')}: {body.get('errmsg')}"
                except ValueError:
                    text = f"HTTP {response.status_code}"
                err_console.print(f"[bold red]error:[/] {escape(text)}", highlight=False)
                raise typer.Exit(2 if response.status_code < 500 else 1)
            total = int(response.headers["content-length"]) if "content-length" in response.headers else None
            with open(partial, "wb") as handle, Progress(
                    TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TextColumn("{task.fields[rows]}"), console=err_console, transient=False) as progress:
                task = progress.add_task(dataset, total=total, rows="")
                for chunk in response.iter_bytes():
                    handle.write(chunk)
                    if fmt == "csv":
                        rows += chunk.count(b"\n")
                    progress.update(task, advance=len(chunk),
                                    rows=f"~{max(rows - 1, 0):,} rows" if fmt == "csv" else "rows: at the end")
                handle.flush()
                os.fsync(handle.fileno())
    except httpx.HTTPError as exc:
        partial.unlink(missing_ok=True)
        err_console.print(f"[bold red]error:[/] the download was cut short ({escape(type(exc).__name__)}: "
                          f"{escape(str(exc))}); no file written", highlight=False)
        raise typer.Exit(1) from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    counted = _complete_export_rows(partial, fmt, csv_end_rows)
    if counted is None:
        partial.unlink(missing_ok=True)
        err_console.print("[bold red]error:[/] the download is incomplete (no Parquet footer / CSV end line); "
                          "no file written")
        raise typer.Exit(1)
    os.replace(partial, output)
    console.print(f"{dataset}: {counted:,} rows, {output.stat().st_size:,} bytes → {output}", markup=False,
                  highlight=False)


def _complete_export_rows(path: Path, fmt: str, csv_end_rows) -> int | None:
    """The rows of a complete export file, or None when it was cut short."""
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(path).metadata.num_rows
        except (pa.ArrowInvalid, OSError):
            return None
    size = path.stat().st_size
    with open(path, "rb") as handle:
        handle.seek(max(0, size - 128))
        return csv_end_rows(handle.read())


lake_app = typer.Typer(help="The Parquet lake: the store's telemetry as Hive-partitioned Parquet "
                            "(<output>/telemetry/tenant=<channel>/day=<YYYY-MM-DD>/part-<n>.parquet).",
                       no_args_is_help=True)
app.add_typer(lake_app, name="lake")


@lake_app.command("export")
def lake_export(
    data_dir: Path = typer.Option(None, help="The data directory of a stopped embedded server "
                                             "(default ./cohort-data or COHORT_DATA_DIR)."),
    output: Path = typer.Option(..., help="The lake's directory.", callback=_outside_data_dirs),
    from_: str = typer.Option(None, "--from", help="First day (YYYY-MM-DD, by event time, UTC); default the first."),
    to: str = typer.Option(None, help="Day after the last (exclusive); default after the last."),
) -> None:
    """Write the store's telemetry into the lake, one directory per tenant and day, each day replaced whole
    (run it again for the same days: they are rewritten, not doubled). Offline: takes the data directory's lock,
    as a server would, so it is refused while one runs."""
    from datetime import date

    from rich.markup import escape
    from rich.progress import Progress

    from cohort.analytics.lake import export_lake
    from cohort.store.duckdb_store import DuckDbStore

    try:
        start = date.fromisoformat(from_) if from_ else None
        end = date.fromisoformat(to) if to else None
    except ValueError as exc:
        raise typer.BadParameter(f"--from/--to must be YYYY-MM-DD: {exc}") from None
    settings = _settings(data_dir)
    if settings.footprint == "scaleout":
        err_console.print("[bold red]error:[/] the lake is written from an embedded data directory")
        raise typer.Exit(2)
    if not settings.store_path.exists():
        err_console.print(f"[bold red]error:[/] no store in {escape(str(settings.data_dir))}", highlight=False)
        raise typer.Exit(2)
    lock = _take_data_dir(settings.data_dir)
    try:
        store = DuckDbStore(settings.store_path, memory_limit=settings.store_memory_limit)
        try:
            with Progress(console=err_console) as progress:
                task = progress.add_task("tenant days", total=None)

                def advance(tenant: str, day: str, rows: int) -> None:
                    progress.update(task, advance=1, description=f"{tenant} {day}: {rows:,} rows")

                report = export_lake(store, output, start, end, progress=advance)
        finally:
            store.close()
    finally:
        lock.release()
    console.print(f"lake: {report.days} tenant-days, {report.files} files, {report.rows:,} rows, "
                  f"{report.bytes:,} bytes → {output}/telemetry", markup=False, highlight=False)

if __name__ == "__main__":
    app()
