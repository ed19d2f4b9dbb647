"""`cohort demo` brings up a working server with data, and its example queries work; run again it
reuses its data, and only `--reset` erases it."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from cohort.demo import EXAMPLE_QUERIES
from support import free_port

pytestmark = pytest.mark.e2e


@contextmanager
def running_demo(tmp_path: Path, data_dir: Path, *flags: str, events: int = 3000):
    """Start the real `cohort demo`; yield (url, output so far) once it says it is up; stop it after."""
    port = free_port()
    log_path = tmp_path / f"demo-{port}.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "cohort.cli", "demo", "--port", str(port), "--events",
                                 str(events), "--batch-size", "100", "--data-dir", str(data_dir), *flags],
                                stdout=log_file, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while "Ctrl-C to stop" not in log_path.read_text(errors="replace"):  # printed last, after the keys
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}", log_path.read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def key_headers(output: str) -> dict[str, str]:
    """The demo's admin key, from the `export COHORT_KEY=…` line it prints."""
    match = re.search(r"export COHORT_KEY=(\S+)", output)
    assert match, output
    return {"Authorization": f"Bearer {match.group(1)}"}


def count(url: str, output: str) -> int:
    response = httpx.post(url + "/v1/query", json={"sql": "SELECT count(*) AS n FROM telemetry"}, timeout=30,
                          headers=key_headers(output))
    return response.json()["result"][0]["n"]


def test_demo_loads_data_and_every_example_query_answers(tmp_path):
    with running_demo(tmp_path, tmp_path / "demo-data") as (url, output):
        assert url in output and "3000 events stored" in output
        for sql in EXAMPLE_QUERIES:
            response = httpx.post(f"{url}/v1/query", json={"sql": sql}, timeout=30, headers=key_headers(output))
            assert response.status_code == 200, (sql, response.text)
        counts = httpx.post(f"{url}/v1/query", timeout=30, headers=key_headers(output),
                            json={"sql": "SELECT count(DISTINCT channel) AS c, count(DISTINCT eid) AS e FROM telemetry"})
        row = counts.json()["result"][0]
        assert row["c"] > 1 and row["e"] >= 7


def test_a_second_demo_reuses_its_data_and_only_reset_erases_it(tmp_path):
    data_dir = tmp_path / "demo-data"
    with running_demo(tmp_path, data_dir, events=500) as (url, output):
        httpx.post(url + "/v1/telemetry", timeout=30, headers=key_headers(output), content=b'{"id":"api.sunbird.telemetry","ver":"3.0",'
                   b'"params":{"msgid":"mine"},"events":[{"eid":"TELEPORT","mid":"kept-1"}]}').raise_for_status()
        serve = subprocess.run([sys.executable, "-m", "cohort.cli", "serve", "--data-dir", str(data_dir),
                                "--port", str(free_port())], capture_output=True, text=True, timeout=60)
        assert serve.returncode == 2 and "in use by pid" in serve.stderr  # the demo holds its directory

    with running_demo(tmp_path, data_dir, events=500) as (url, output):
        assert "reusing the demo data" in output and "500 events stored" in output
        assert count(url, output) == 500
        failed = httpx.post(url + "/v1/query", json={"sql": "SELECT mid FROM failed_events"}, timeout=30,
                            headers=key_headers(output))
        assert failed.json()["result"] == [{"mid": "kept-1"}]  # what was there before is still there

    with running_demo(tmp_path, data_dir, "--reset", events=300) as (url, output):
        # the same seeded events as before, stored again: the reset erased the dedup indexes with the store
        assert "reusing" not in output and "300 events stored" in output
        assert count(url, output) == 300
        failed = httpx.post(url + "/v1/query", json={"sql": "SELECT count(*) AS n FROM failed_events"}, timeout=30,
                            headers=key_headers(output))
        assert failed.json()["result"] == [{"n": 0}]
