"""The `cohort` command line."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import typer
from rich.console import Console

from cohort.settings import Settings

app = typer.Typer(help="Cohort: lossless learning-analytics for Sunbird telemetry.", no_args_is_help=True,
                  add_completion=False)
console = Console()


def _settings(data_dir: Path | None, host: str | None = None, port: int | None = None) -> Settings:
    overrides = {k: v for k, v in {"data_dir": data_dir, "host": host, "port": port}.items() if v is not None}
    return Settings(**overrides)


@app.command()
def serve(
    data_dir: Path = typer.Option(None, help="Data directory (default ./cohort-data or COHORT_DATA_DIR)."),
    host: str = typer.Option(None, help="Interface to bind (default 127.0.0.1)."),
    port: int = typer.Option(None, help="Port (default 8000)."),
) -> None:
    """Run the embedded footprint: ingest API, pipeline and query API in one process."""
    import uvicorn

    from cohort.api.app import create_app

    settings = _settings(data_dir, host, port)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    console.print(f"[bold]cohort[/] serving http://{settings.host}:{settings.port} (data: {settings.data_dir})")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="warning",
                access_log=False, timeout_graceful_shutdown=5)


@app.command()
def generate(
    events: int = typer.Option(10_000, "--events", "-n", help="How many events."),
    seed: int = typer.Option(0, help="Seed: the same seed gives the same events."),
    output: Path = typer.Option(Path("-"), "--output", "-o", help="JSONL file (- for stdout)."),
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
    data_dir: Path = typer.Option(Path("./cohort-demo-data"), help="Data directory (wiped first)."),
    port: int = typer.Option(8000, help="Port."),
    events: int = typer.Option(50_000, help="Synthetic events to load."),
    batch_size: int = typer.Option(200, help="Events per request."),
    keep: bool = typer.Option(False, help="Keep an existing data directory instead of wiping it."),
) -> None:
    """Start a server on a fresh data dir, load synthetic telemetry, print where to look."""
    from cohort.demo import run_demo

    if data_dir.exists() and not keep:
        shutil.rmtree(data_dir)
    run_demo(_settings(data_dir, "127.0.0.1", port), events=events, batch_size=batch_size, console=console)


if __name__ == "__main__":
    app()
