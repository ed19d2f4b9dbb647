"""`cohort demo`: a working server with synthetic data in it, in one command.

The data is the synthetic learning world (synthetic_cohorts.py): two states (a tenant each) with schools,
classes, course batches and learners over DEMO_DAYS days, sent as the devices upload it (offline devices
days late), so every figure the dashboard and metrics show has a known answer (`CohortWorld.ground_truth`).
"""

from __future__ import annotations

import shlex
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
from rich.console import Console
from rich.progress import Progress

from cohort.api.app import create_app
from cohort.api.http_server import build_server
from cohort.pipeline.data_dir_lock import LOCK_FILE, RESET_MARKER, DataDirLock, database_files
from cohort.security.api_keys import open_key_store
from cohort.security.identity import Role, Scope
from cohort.settings import Settings
from cohort.synthetic_cohorts import CohortWorld

DEMO_SEED = 42
DEMO_DAYS = 90
DEMO_SHAPE: dict[str, Any] = {"states": 2, "districts": 2, "schools": 2, "classes": 2, "learners": 10}
LOADER_IN_FLIGHT = 8  # concurrent requests of the loader

DEMO_MARKER = "cohort-demo"  # written by the demo into its data dir: what a plain re-run may reuse
DEMO_LOADED = "loaded"  # a marker line saying a run loaded a world completely: `loaded seed=… days=… events=…:N`

EXAMPLE_QUERIES = (
    "SELECT eid, count(*) AS events FROM telemetry GROUP BY eid ORDER BY events DESC",
    "SELECT channel, count(DISTINCT did) AS devices, count(DISTINCT actor_id) AS users FROM telemetry GROUP BY channel",
    "SELECT object_id, count(*) AS plays FROM telemetry WHERE eid = 'START' AND env = 'contentplayer' "
    "GROUP BY object_id ORDER BY plays DESC LIMIT 5",
    "SELECT CAST(ets AS DATE) AS day, rollup->>'$.l3' AS school, count(DISTINCT actor_id) AS learners "
    "FROM telemetry GROUP BY ALL ORDER BY day DESC, school LIMIT 10",
    "SELECT error_code, stage, count(*) FROM failed_events GROUP BY ALL",
)


def demo_world(days: int = DEMO_DAYS) -> CohortWorld:
    """The demo's world, ending on the fixed DEFAULT_END (so a re-run is the same data): smaller than
    CohortWorld's default (2 states × 2 districts × 2 schools × 2 classes × 10 learners, some 130 000 events
    over 90 days instead of 400 000), because the demo's server must take it in about a minute."""
    return CohortWorld(seed=DEMO_SEED, days=days, **DEMO_SHAPE)


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
        if reset or not is_demo:  # a reused demo's marker keeps the lines saying what it loaded
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
    tenant: str  # state 1 of the world: the keys below are its
    ingestor: str
    analyst: str
    tenant_admin: str
    batch_educator: str  # an educator of one course batch of state 1
    batch_scope: Scope
    school_educator: str  # an educator of one school of state 1 (context.rollup.l3)
    school_scope: Scope
    tenants: tuple[tuple[str, str], ...] = ()  # (channel, name) of every state


def make_demo_keys(settings: Settings, world: CohortWorld | None = None) -> DemoKeys:
    """A tenant per state of the world (made once) and this run's keys."""
    world = world or demo_world()
    state = world.tenants[0]
    tenant = state.channel
    batch_scope = Scope("batch", (world.batches_of(tenant)[0].id,))
    school_scope = Scope("rollup.l3", (state.schools[0][0],))
    store = open_key_store(settings)
    try:
        for each in world.tenants:
            if not store.tenant_exists(each.channel):
                store.create_tenant(each.channel, f"{each.name} (demo)")

        def key(role: Role, scope: Scope | None = None) -> str:
            return store.create_key(tenant, role, scope, label="cohort demo")[1]

        return DemoKeys(admin=store.create_key(None, Role.ADMIN, label="cohort demo")[1], tenant=tenant,
                        ingestor=key(Role.INGESTOR), analyst=key(Role.ANALYST), tenant_admin=key(Role.TENANT_ADMIN),
                        batch_educator=key(Role.EDUCATOR, batch_scope), batch_scope=batch_scope,
                        school_educator=key(Role.EDUCATOR, school_scope), school_scope=school_scope,
                        tenants=tuple((t.channel, t.name) for t in world.tenants))
    finally:
        store.close()


def run_demo(settings: Settings, *, events: int, batch_size: int, console: Console, reused: bool = False,
             days: int = DEMO_DAYS) -> None:
    """Serve `settings.data_dir` and load the world's first `events` events (0: all of them) into it."""
    base = f"http://{settings.host}:{settings.port}"
    if reused:
        console.print(f"reusing the demo data in {settings.data_dir} (`--reset` to start afresh)")
    world = demo_world(days)
    keys = make_demo_keys(settings, world)
    server = build_server(create_app(settings), settings)
    loader = threading.Thread(target=_load, args=(base, world, events, batch_size, console, keys, settings),
                              daemon=True)
    loader.start()
    server.run()


def _load(base: str, world: CohortWorld, events: int, batch_size: int, console: Console, keys: DemoKeys,
          settings: Settings) -> None:
    marker = settings.data_dir / DEMO_MARKER
    wanted = f"{DEMO_LOADED} seed={DEMO_SEED} days={world.days} events={events or 'all'}:"
    with httpx.Client(base_url=base, timeout=30, headers={"Authorization": f"Bearer {keys.admin}"}) as client:
        _wait_until_up(client)
        stored_before = _stored(client)
        done = _loaded_before(marker, wanted)  # a reused demo may hold them all already
        if done is not None and stored_before >= done:
            target = done
        else:
            started = time.monotonic()
            target = _send(client, world, events, batch_size, console)
            console.print(f"sent {target} events in {time.monotonic() - started:.0f} s")
        stored = _wait_until_stored(client, target)
        if stored >= target:
            with open(marker, "a") as note:
                note.write(f"{wanted}{target}\n")
    start, end = world.start.isoformat(), (world.end + timedelta(days=1)).isoformat()
    console.print(f"\n[bold green]Cohort demo is up[/] at {base}  —  {stored} events stored "
                  f"(days {start} to {world.end.isoformat()}, UTC)")
    console.print(f"  health   {base}/health\n  metrics  {base}/metrics\n  ingest   POST {base}/v1/telemetry"
                  f"\n  query    POST {base}/v1/query\n  API      {base}/v1")
    _print_keys(keys, console)
    console.print("\nTry:")
    for sql in EXAMPLE_QUERIES:
        body = shlex.quote(orjson.dumps({"sql": sql}).decode())
        console.print(f"  curl -s {base}/v1/query -H \"Authorization: Bearer $COHORT_KEY\" "
                      f"-H 'Content-Type: application/json' -d {body}", soft_wrap=True, markup=False, highlight=False)
    console.print(f"  curl -s '{base}/v1/metrics/active_learners?from={start}&to={end}&granularity=week' "
                  f"-H \"Authorization: Bearer {keys.batch_educator}\"", soft_wrap=True, markup=False, highlight=False)
    console.print(f"\n[bold]Dashboard[/]  {base}/  — sign in with a key:", soft_wrap=True)
    console.print(f"  sign in as educator of {keys.batch_scope} with {keys.batch_educator}\n"
                  f"  sign in as admin with {keys.admin}",
                  soft_wrap=True, markup=False, highlight=False)
    console.print("\nCtrl-C to stop.")


def _send(client: httpx.Client, world: CohortWorld, events: int, batch_size: int, console: Console) -> int:
    """POST the world's uploads in upload order (late ones after later events), the first `events` (0: all).

    A device upload is small (an online device sends each session, some 40 events, as it ends), so one
    request at a time waits mostly on the server's durable append: LOADER_IN_FLIGHT requests are kept in
    flight, sent in upload order."""
    sent = 0
    in_flight: deque[Future[httpx.Response]] = deque()
    with Progress(console=console) as progress, ThreadPoolExecutor(LOADER_IN_FLIGHT) as pool:
        task = progress.add_task("loading the synthetic learning world", total=events or None)
        for envelope, headers in world.batches_with_headers(batch_size):
            if events and sent + len(envelope["events"]) > events:
                envelope = {**envelope, "events": envelope["events"][:events - sent]}
            in_flight.append(pool.submit(client.post, "/v1/telemetry", content=orjson.dumps(envelope),
                                         headers={**headers, "Content-Type": "application/json"}))
            sent += len(envelope["events"])
            while len(in_flight) >= LOADER_IN_FLIGHT:
                in_flight.popleft().result().raise_for_status()
            progress.update(task, completed=sent, description=f"loading the synthetic learning world: {sent} events")
            if events and sent >= events:
                break
        while in_flight:
            in_flight.popleft().result().raise_for_status()
    return sent


def _loaded_before(marker: Path, wanted: str) -> int | None:
    """How many events an earlier run of the same demo loaded completely, as its marker says."""
    try:
        lines = marker.read_text().splitlines()
    except OSError:
        return None
    counts = [line.removeprefix(wanted) for line in lines if line.startswith(wanted)]
    return int(counts[-1]) if counts and counts[-1].isdigit() else None


def _print_keys(keys: DemoKeys, console: Console) -> None:
    """The demo's keys, shown this once (stored as hashes); `cohort keys list` shows their ids."""
    console.print("\nTenants (one per state):")
    for channel, name in keys.tenants:
        console.print(f"  {name:<10}{channel}", soft_wrap=True, markup=False, highlight=False)
    console.print("\nAPI keys of this demo (shown once; send `Authorization: Bearer <key>`):")
    rows = (("admin", "every tenant", "", keys.admin), ("tenant_admin", keys.tenant, "", keys.tenant_admin),
            ("analyst", keys.tenant, "", keys.analyst), ("ingestor", keys.tenant, "", keys.ingestor),
            ("educator", keys.tenant, f"scope {keys.batch_scope} (a course batch)", keys.batch_educator),
            ("educator", keys.tenant, f"scope {keys.school_scope} (a school)", keys.school_educator))
    for role, tenant, scope, key in rows:
        console.print(f"  {role:<13}{tenant:<34}{key}" + (f"\n  {'':<13}{scope}" if scope else ""),
                      soft_wrap=True, markup=False, highlight=False)
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


def _wait_until_stored(client: httpx.Client, expected: int, timeout_s: float = 600) -> int:
    deadline = time.monotonic() + timeout_s
    stored = 0
    while time.monotonic() < deadline:
        stored = _stored(client)
        if stored >= expected:
            break
        time.sleep(0.2)
    return stored
