"""`cohort demo`: a working server with synthetic data in it, in one command."""

from __future__ import annotations

import shlex
import threading
import time

import httpx
import orjson
import uvicorn
from rich.console import Console
from rich.progress import Progress

from cohort.api.app import create_app
from cohort.settings import Settings

EXAMPLE_QUERIES = (
    "SELECT eid, count(*) AS events FROM telemetry GROUP BY eid ORDER BY events DESC",
    "SELECT channel, count(DISTINCT did) AS devices, count(DISTINCT actor_id) AS users FROM telemetry GROUP BY channel",
    "SELECT object_id, count(*) AS plays FROM telemetry WHERE eid = 'START' AND edata->>'$.type' = 'player' "
    "GROUP BY object_id ORDER BY plays DESC LIMIT 5",
    "SELECT error_code, stage, count(*) FROM failed_events GROUP BY ALL",
)


def run_demo(settings: Settings, *, events: int, batch_size: int, console: Console) -> None:
    base = f"http://{settings.host}:{settings.port}"
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host=settings.host, port=settings.port,
                                           log_level="warning", access_log=False))
    loader = threading.Thread(target=_load, args=(base, events, batch_size, console), daemon=True)
    loader.start()
    server.run()


def _load(base: str, events: int, batch_size: int, console: Console) -> None:
    from cohort.synthetic import TelemetryGenerator

    with httpx.Client(base_url=base, timeout=30) as client:
        _wait_until_up(client)
        sent = 0
        with Progress(console=console) as progress:
            task = progress.add_task("loading synthetic telemetry", total=events)
            for envelope, headers in TelemetryGenerator(seed=42).batches_with_headers(events, batch_size):
                response = client.post("/v1/telemetry", content=orjson.dumps(envelope),
                                       headers={**headers, "Content-Type": "application/json"})
                response.raise_for_status()
                sent += len(envelope["events"])
                progress.update(task, completed=sent)
        stored = _wait_until_stored(client, events)
    console.print(f"\n[bold green]Cohort demo is up[/] at {base}  —  {stored} events stored")
    console.print(f"  health   {base}/health\n  metrics  {base}/metrics\n  ingest   POST {base}/v1/telemetry"
                  f"\n  query    POST {base}/v1/query")
    console.print("\nTry:")
    for sql in EXAMPLE_QUERIES:
        body = shlex.quote(orjson.dumps({"sql": sql}).decode())
        console.print(f"  curl -s {base}/v1/query -H 'Content-Type: application/json' -d {body}",
                      soft_wrap=True, markup=False, highlight=False)
    console.print("\nCtrl-C to stop.")


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


def _wait_until_stored(client: httpx.Client, expected: int, timeout_s: float = 60) -> int:
    deadline = time.monotonic() + timeout_s
    stored = 0
    while time.monotonic() < deadline:
        rows = client.post("/v1/query", json={"sql": "SELECT count(*) AS n FROM telemetry"}).json()["result"]
        stored = rows[0]["n"]
        if stored >= expected:
            break
        time.sleep(0.2)
    return stored
