"""Helpers for tests: request bodies, polling, queries, and a real server process."""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

import orjson

from cohort.benchmark.server_process import ServerProcess, admin_key, free_port, parse_metrics  # noqa: F401

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SAMPLE_FILE = FIXTURES / "sunbird" / "telemetry-sample.jsonl"  # 500 real DIKSHA events (MIT, licence beside it)


FRESH = "fresh"  # envelope's default: a new msgid per batch, as Sunbird clients send (a reused one is a retry)


def envelope(events: list, msgid: str | None = FRESH) -> bytes:
    if msgid == FRESH:
        msgid = f"m-{uuid.uuid4()}"
    body = {"id": "api.sunbird.telemetry", "ver": "3.0", "ets": 1_700_000_000_000, "events": events}
    if msgid is not None:
        body["params"] = {"msgid": msgid}
    return orjson.dumps(body)


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def query(client, sql: str, params: dict | None = None) -> list[dict]:
    response = client.post("/v1/query", json={"sql": sql, "params": params})
    assert response.status_code == 200, response.text
    return response.json()["result"]


def scalar(client, sql: str):
    return next(iter(query(client, sql)[0].values()))


def metric_values(client) -> dict[str, float]:
    return parse_metrics(client.get("/metrics").text)


class ExplodingValidator:
    """A schema validator that raises on the events `explodes` picks (fault injection), and is the real one
    otherwise."""

    def __init__(self, real, explodes, error: Exception):
        self._real, self._explodes, self._error = real, explodes, error

    @classmethod
    def around(cls, real, explodes, error: Exception):
        return None if real is None else cls(real, explodes, error)  # an unknown eid stays unknown

    def is_valid(self, event) -> bool:
        if self._explodes(event):
            raise self._error
        return self._real.is_valid(event)

    def explain(self, event) -> str:
        return self._real.explain(event)


def app_settings(data_dir: Path, **overrides):
    """An in-process app's settings: the core runs inline (pipeline_workers=0, a supported mode) and the SQL
    checker starts on the first query (sql_checker_at_start=False), because two worker processes and a checker
    per test cost seconds of CPU; the pool and the checker's start with the server are tested by the pipeline
    and end-to-end tests, which run `cohort serve` as users do."""
    from cohort.settings import Settings

    return Settings(**{"data_dir": data_dir, "pipeline_idle_wait_seconds": 0.005, "pipeline_workers": 0,
                       "sql_checker_at_start": False, **overrides})


def app_client(settings, node=None, **kwargs):
    """The app over `settings` in a TestClient, authenticated as an admin whose key is in the settings' key
    store (made as an operator would, `cohort keys create`); nothing when authentication is off."""
    from starlette.testclient import TestClient

    from cohort.api.app import create_app

    key = admin_key(settings)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return TestClient(create_app(settings, node=node), headers={**headers, **kwargs.pop("headers", {})}, **kwargs)


def cohort_in_process(*args: str, env: dict[str, str | None] | None = None,
                      columns: int = 80) -> subprocess.CompletedProcess:
    """`cohort ARGS` run in this process, answered as the installed script answers (status, stdout, stderr),
    without an interpreter start (~1 s) per call: for tests of what a command does, not of its process (a
    variable set to None in `env` is unset for the call; `columns` is the width the script's output would get
    from COLUMNS, which its consoles read once, at import). An exception the command does not turn into an exit
    status is raised here: as a script it would be a traceback."""
    from typer.testing import CliRunner

    from cohort import cli

    consoles = [(console, console._width) for console in (cli.console, cli.err_console)]
    for console, _ in consoles:
        console.width = columns
    try:
        result = CliRunner().invoke(cli.app, list(args), env=env)
    finally:
        for console, width in consoles:
            console._width = width
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess(["cohort", *args], result.exit_code, result.stdout, result.stderr)
