"""`cohort demo` brings up a working server with the synthetic learning world, and its example queries work;
the keys it prints see what their role and scope allow, and what the metrics say is the world's ground
truth; run again it reuses its data, and only `--reset` erases it."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from cohort.demo import EXAMPLE_QUERIES, demo_world
from support import free_port

pytestmark = pytest.mark.e2e


@contextmanager
def running_demo(tmp_path: Path, data_dir: Path, *flags: str, events: int = 3000):  # events=0: the whole world
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


def printed_keys(output: str) -> dict[str, list[tuple[str, str]]]:
    """role -> [(key, scope printed under it or "")], from the demo's key table."""
    keys: dict[str, list[tuple[str, str]]] = {}
    for role, key, scope in re.findall(r"^  (\w+) +\S+(?: tenant)? +(ck_\S+)\n(?: +scope (\S+))?", output, re.M):
        keys.setdefault(role, []).append((key, scope))
    return keys


def metric_series(url: str, key: str, name: str, world) -> dict[str, float]:
    response = httpx.get(f"{url}/v1/metrics/{name}", timeout=30, headers={"Authorization": f"Bearer {key}"},
                         params={"from": world.start.isoformat(), "to": (world.end + timedelta(days=1)).isoformat()})
    assert response.status_code == 200, response.text
    return {cell["bucket"][:10]: cell["value"] for cell in response.json()["result"]["series"]}


def count(url: str, output: str) -> int:
    response = httpx.post(url + "/v1/query", json={"sql": "SELECT count(*) AS n FROM telemetry"}, timeout=30,
                          headers=key_headers(output))
    return response.json()["result"][0]["n"]


def test_demo_loads_data_and_every_example_query_answers(tmp_path):
    with running_demo(tmp_path, tmp_path / "demo-data") as (url, output):
        assert url in output and "3000 events stored" in output
        dashboard = output[output.index("Dashboard"):]  # ends with the dashboard and keys to sign in with
        assert f"{url}/" in dashboard and re.search(r"as educator of \S+ with ck_\S+", dashboard) \
            and re.search(r"as admin with ck_\S+", dashboard)
        assert httpx.get(f"{url}/", timeout=30).headers["content-type"].startswith("text/html")
        for sql in EXAMPLE_QUERIES:
            response = httpx.post(f"{url}/v1/query", json={"sql": sql}, timeout=30, headers=key_headers(output))
            assert response.status_code == 200, (sql, response.text)
        counts = httpx.post(f"{url}/v1/query", timeout=30, headers=key_headers(output),
                            json={"sql": "SELECT count(DISTINCT channel) AS c, count(DISTINCT eid) AS e FROM telemetry"})
        row = counts.json()["result"][0]
        assert row["c"] > 1 and row["e"] >= 7  # both states, the event mix of a learning app

        keys = printed_keys(output)
        assert {role: len(found) for role, found in keys.items()} == {
            "admin": 1, "tenant_admin": 1, "analyst": 1, "ingestor": 1, "educator": 2}
        world = demo_world()
        state = world.tenants[0]
        assert [scope for _, scope in keys["educator"]] == [f"batch:{world.batches_of(state.channel)[0].id}",
                                                            f"rollup.l3:{state.schools[0][0]}"]
        for role, status in (("analyst", 200), ("tenant_admin", 200), ("educator", 403)):
            response = httpx.post(f"{url}/v1/query", json={"sql": "SELECT count(*) AS n FROM telemetry"}, timeout=30,
                                  headers={"Authorization": f"Bearer {keys[role][0][0]}"})
            assert response.status_code == status, (role, response.text)
        for key, _ in keys["educator"]:
            assert metric_series(url, key, "active_learners", world)  # an educator reads figures of its scope


def test_the_whole_world_loads_and_the_metrics_say_what_its_ground_truth_says(tmp_path):
    """A three-day world, loaded whole (late uploads after later ones): each key's metrics are the truth's."""
    with running_demo(tmp_path, tmp_path / "demo-data", "--days", "3", events=0) as (url, output):
        world = demo_world(3)
        truth = world.ground_truth()
        assert f"{truth.events} events stored" in output and truth.late_uploads > 0
        assert count(url, output) == truth.events
        keys = printed_keys(output)
        tenant = world.tenants[0].channel
        for key, scope in [(keys["tenant_admin"][0][0], None), *keys["educator"]]:
            for name, expected in (("active_learners", truth.active_learners), ("sessions", truth.sessions),
                                   ("content_plays", truth.content_plays), ("time_spent", truth.time_spent)):
                series = metric_series(url, key, name, world)
                assert series == {d.isoformat(): expected(tenant, d, scope or None) for d in truth.days()
                                  if expected(tenant, d, scope or None)}, (name, scope)


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
