"""`cohort demo`: a working server with synthetic data in it, in one command."""

from __future__ import annotations

import shlex
import threading
import time
from dataclasses import dataclass

import httpx
import orjson
from rich.console import Console
from rich.progress import Progress

from cohort.api.app import create_app
from cohort.api.http_server import build_server
from cohort.pipeline.data_dir_lock import LOCK_FILE, RESET_MARKER, DataDirLock, database_files
from cohort.security.api_keys import open_key_store
from cohort.security.identity import Role
from cohort.settings import Settings

DEMO_MARKER = "cohort-demo"  # written by the demo into its data dir: what a plain re-run may reuse

EXAMPLE_QUERIES = (
    "SELECT eid, count(*) AS events FROM telemetry GROUP BY eid ORDER BY events DESC",
    "SELECT channel, count(DISTINCT did) AS devices, count(DISTINCT actor_id) AS users FROM telemetry GROUP BY channel",
    "SELECT object_id, count(*) AS plays FROM telemetry WHERE eid = 'START' AND edata->>'$.type' = 'player' "
    "GROUP BY object_id ORDER BY plays DESC LIMIT 5",
    "SELECT error_code, stage, count(*) FROM failed_events GROUP BY ALL",
)


class DemoDirRefused(RuntimeError):
    """The data directory holds something the demo must not write into or erase without being told."""


def claim_demo_dir(settings: Settings, *, reset: bool) -> bool:
    """Take the data directory for the demo and return whether a previous demo's data is reused.

    The directory's lock is taken before anything is looked at or erased, and handed over to the
    demo's server, so nothing runs on the directory in between. Without `reset` nothing is erased:
    a previous demo's data is reused, other Cohort data is refused. Files Cohort did not write are
    refused even with `reset`: the directory is not a Cohort data directory."""
    data_dir = settings.data_dir
    lock = DataDirLock(data_dir)
    lock.acquire(finish_reset=reset)
    try:
        databases = settings.embedded_data_paths  # the log, dedup indexes, store, vault, secrets, keys
        ours = {LOCK_FILE, RESET_MARKER, DEMO_MARKER, *(p.name for db in databases for p in database_files(db))}
        present = {p.name for p in data_dir.iterdir()} - {LOCK_FILE}
        foreign = sorted(present - ours)
        if foreign:
            raise DemoDirRefused(f"{data_dir} holds files Cohort did not write ({', '.join(foreign[:5])}); "
                                 "choose an empty directory or a Cohort data directory")
        is_demo = (data_dir / DEMO_MARKER).exists()
        if present and not is_demo and not reset:
            raise DemoDirRefused(f"{data_dir} holds Cohort data that is not a demo's; serve it with "
                                 f"`cohort serve --data-dir {data_dir}`, or erase it with "
                                 f"`cohort demo --data-dir {data_dir} --reset`")
        if reset:
            lock.wipe(databases)  # the log first, the store last
        reused = bool(present) and not reset
        (data_dir / DEMO_MARKER).write_text("written by `cohort demo`; `cohort demo --reset` may erase this "
                                            "directory's data\n")
        lock.hand_over()  # the demo's server takes the lock as it is
        return reused
    except BaseException:
        lock.release()
        raise


@dataclass(frozen=True)
class DemoKeys:
    """The keys a demo run made: each run makes new ones (a reused demo's older keys stay valid)."""

    admin: str
    tenant: str  # the demo state: the channel of the synthetic telemetry's first event
    ingestor: str
    analyst: str


def make_demo_keys(settings: Settings) -> DemoKeys:
    from cohort.synthetic import TelemetryGenerator

    tenant = next(TelemetryGenerator(seed=42).events(1))["context"]["channel"]
    store = open_key_store(settings)
    try:
        if not store.tenant_exists(tenant):
            store.create_tenant(tenant, "demo state")
        return DemoKeys(admin=store.create_key(None, Role.ADMIN, label="cohort demo")[1], tenant=tenant,
                        ingestor=store.create_key(tenant, Role.INGESTOR, label="cohort demo")[1],
                        analyst=store.create_key(tenant, Role.ANALYST, label="cohort demo")[1])
    finally:
        store.close()


def run_demo(settings: Settings, *, events: int, batch_size: int, console: Console, reused: bool = False) -> None:
    base = f"http://{settings.host}:{settings.port}"
    if reused:
        console.print(f"reusing the demo data in {settings.data_dir} (`--reset` to start afresh)")
    keys = make_demo_keys(settings)
    server = build_server(create_app(settings), settings)
    loader = threading.Thread(target=_load, args=(base, events, batch_size, console, keys), daemon=True)
    loader.start()
    server.run()


def _load(base: str, events: int, batch_size: int, console: Console, keys: DemoKeys) -> None:
    from cohort.synthetic import TelemetryGenerator

    with httpx.Client(base_url=base, timeout=30, headers={"Authorization": f"Bearer {keys.admin}"}) as client:
        _wait_until_up(client)
        sent = 0 if _stored(client) < events else events  # a reused demo may hold them all already
        with Progress(console=console) as progress:
            task = progress.add_task("loading synthetic telemetry", total=events, completed=sent)
            for envelope, headers in TelemetryGenerator(seed=42).batches_with_headers(events - sent, batch_size):
                response = client.post("/v1/telemetry", content=orjson.dumps(envelope),
                                       headers={**headers, "Content-Type": "application/json"})
                response.raise_for_status()
                sent += len(envelope["events"])
                progress.update(task, completed=sent)
        stored = _wait_until_stored(client, events)
    console.print(f"\n[bold green]Cohort demo is up[/] at {base}  —  {stored} events stored")
    console.print(f"  health   {base}/health\n  metrics  {base}/metrics\n  ingest   POST {base}/v1/telemetry"
                  f"\n  query    POST {base}/v1/query")
    _print_keys(keys, console)
    console.print("\nTry:")
    for sql in EXAMPLE_QUERIES:
        body = shlex.quote(orjson.dumps({"sql": sql}).decode())
        console.print(f"  curl -s {base}/v1/query -H \"Authorization: Bearer $COHORT_KEY\" "
                      f"-H 'Content-Type: application/json' -d {body}", soft_wrap=True, markup=False, highlight=False)
    console.print("\nCtrl-C to stop.")


def _print_keys(keys: DemoKeys, console: Console) -> None:
    """The demo's keys, shown this once (stored as hashes); `cohort keys list` shows their ids."""
    console.print("\nAPI keys of this demo (shown once; send `Authorization: Bearer <key>`):")
    for role, tenant, key in (("admin", "every tenant", keys.admin), ("ingestor", keys.tenant, keys.ingestor),
                              ("analyst", keys.tenant, keys.analyst)):
        console.print(f"  {role:<9}{tenant:<34}{key}", soft_wrap=True, markup=False, highlight=False)
    console.print(f"  export COHORT_KEY={keys.admin}", soft_wrap=True, markup=False, highlight=False)


def _wait_until_up(client: httpx.Client, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if client.get("/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError("server did not come up")


def _stored(client: httpx.Client) -> int:
    return client.post("/v1/query", json={"sql": "SELECT count(*) AS n FROM telemetry"}).json()["result"][0]["n"]


def _wait_until_stored(client: httpx.Client, expected: int, timeout_s: float = 60) -> int:
    deadline = time.monotonic() + timeout_s
    stored = 0
    while time.monotonic() < deadline:
        stored = _stored(client)
        if stored >= expected:
            break
        time.sleep(0.2)
    return stored
