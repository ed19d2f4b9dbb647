"""`cohort demo` brings up a working server with data, and its example queries work."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest

from cohort.demo import EXAMPLE_QUERIES
from support import free_port

pytestmark = pytest.mark.e2e


def test_demo_loads_data_and_every_example_query_answers(tmp_path):
    port = free_port()
    log_path = tmp_path / "demo.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "cohort.cli", "demo", "--port", str(port), "--events", "3000",
                                 "--batch-size", "100", "--data-dir", str(tmp_path / "demo-data")],
                                stdout=log_file, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while "Cohort demo is up" not in log_path.read_text(errors="replace"):
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        output = log_path.read_text()
        assert f"http://127.0.0.1:{port}" in output and "3000 events stored" in output
        for sql in EXAMPLE_QUERIES:
            response = httpx.post(f"http://127.0.0.1:{port}/v1/query", json={"sql": sql}, timeout=30)
            assert response.status_code == 200, (sql, response.text)
        counts = httpx.post(f"http://127.0.0.1:{port}/v1/query", timeout=30,
                            json={"sql": "SELECT count(DISTINCT channel) AS c, count(DISTINCT eid) AS e FROM telemetry"})
        row = counts.json()["result"][0]
        assert row["c"] > 1 and row["e"] >= 7
    finally:
        proc.terminate()
        proc.wait(timeout=30)
