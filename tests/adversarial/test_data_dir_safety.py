"""No command destroys data a live process holds, and no reset leaves a directory that starts half-wiped.

The scenario that lost data: a server on data dir D acked and stored 500 events; `cohort demo
--data-dir D` then wiped D before noticing it was in use, and after a restart the store held 0.
These tests run the real server and the real `cohort demo` command as processes.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

import cohort
from cohort.benchmark import crash
from cohort.pipeline.data_dir_lock import DataDirLock, DataDirResetUnfinished
from cohort.settings import Settings
from support import ServerProcess, app_client, envelope, free_port, wait_for

SOURCE = Path(cohort.__file__).parent


def stored(server: ServerProcess) -> int:
    response = httpx.post(server.url + "/v1/query", json={"sql": "SELECT count(*) AS n FROM telemetry"}, timeout=30,
                          headers=server.headers)
    assert response.status_code == 200, response.text
    return response.json()["result"][0]["n"]


def post(server: ServerProcess, events: list[dict], tag: str, size: int = 100) -> None:
    with server.client(timeout=30) as client:
        for i in range(0, len(events), size):
            response = client.post("/v1/telemetry", content=envelope(events[i:i + size], msgid=f"{tag}-{i}"))
            assert response.status_code == 200, response.text


def run_demo(data_dir: Path, *extra: str, timeout: float = 20.0) -> tuple[int | None, str]:
    """Run the real `cohort demo`; a demo that does not refuse keeps serving, so it is stopped after `timeout`."""
    command = [sys.executable, "-m", "cohort.cli", "demo", "--data-dir", str(data_dir), "--port", str(free_port()),
               "--events", "200", "--batch-size", "100", *extra]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
        return proc.returncode, output
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        return None, output  # still running: it did not refuse


def fill(data_dir: Path, sample_events: list[dict]) -> None:
    """A stopped server's data dir holding the 500 sample events."""
    settings = Settings(data_dir=data_dir, pipeline_idle_wait_seconds=0.005)
    with app_client(settings) as client:
        for i in range(0, 500, 100):
            assert client.post("/v1/telemetry", content=envelope(sample_events[i:i + 100], msgid=f"f-{i}")).status_code == 200
        assert wait_for(lambda: client.app.state.node.store.counts().stored == 500, timeout=30)


@pytest.mark.e2e
def test_demo_on_a_live_servers_data_dir_is_refused_and_acked_events_survive(tmp_path, sample_events):
    data_dir = tmp_path / "data"
    server = ServerProcess(data_dir).start()
    try:
        post(server, sample_events, "live")
        assert wait_for(lambda: stored(server) == 500, timeout=30)

        for flags in ((), ("--reset",)):  # even when told to reset
            code, output = run_demo(data_dir, *flags)
            assert code == 2, f"the demo {flags} must refuse a directory a live server holds, got {code}: {output[-2000:]}"
            assert "in use by pid" in output and str(server.pid) in output

        post(server, sample_events[:100], "after", size=100)  # the live server is unharmed and still stores
        server.wait_drained(timeout=30)
    finally:
        server.stop()
    restarted = ServerProcess(data_dir).start()
    try:
        assert stored(restarted) == 500  # the 100 re-sent events are duplicates of stored ones
        metrics = restarted.wait_drained(timeout=30)
        assert metrics["cohort_events_unaccounted"] == 0
        assert metrics["cohort_events_duplicate_total"] == 100
    finally:
        restarted.stop()


@pytest.mark.e2e
def test_demo_keeps_a_stopped_servers_data_unless_asked_to_reset(tmp_path, sample_events):
    data_dir = tmp_path / "data"
    fill(data_dir, sample_events)
    before = sorted(p.name for p in data_dir.iterdir())

    code, output = run_demo(data_dir)
    assert code == 2, output[-2000:]
    assert "--reset" in output  # the message says how to proceed on purpose
    assert sorted(p.name for p in data_dir.iterdir()) == before
    with app_client(Settings(data_dir=data_dir)) as client:
        assert client.app.state.node.store.counts().stored == 500


@pytest.mark.e2e
def test_an_interrupted_reset_never_leaves_a_store_that_starts_empty_beside_an_old_log(tmp_path, sample_events,
                                                                                       monkeypatch):
    """Interrupt the wipe after each deletion in turn: the directory must refuse to start (until the reset
    is finished), and the ingest log must go before the store (a store that starts empty while an old log
    survives would replay part of the old data with counts that no longer reconcile), the dedup indexes
    before the store too (an index beside an empty store would call new events duplicates)."""
    template = tmp_path / "template"
    crashed = ServerProcess(template).start()  # a SIGKILLed server leaves the databases' side files too
    post(crashed, sample_events, "t")
    crashed.wait_drained(timeout=30)
    crashed.kill()
    files = {p.name for p in template.iterdir()} - {"cohort.lock"}
    assert {"ingest-log.sqlite", "ingest-log.sqlite-wal", "store.duckdb", "store.duckdb.wal", "dedup-mid",
            "dedup-msgid"} <= files
    settings = Settings(data_dir=template)
    real_unlink = Path.unlink
    for allowed in range(len(files) + 1):
        data_dir = tmp_path / f"cut-{allowed}"
        subprocess.run(["cp", "-a", str(template), str(data_dir)], check=True)
        deleted: list[str] = []

        def unlink(path: Path, missing_ok: bool = False) -> None:
            if path.name not in ("cohort.reset",) and path.exists():
                if len(deleted) == allowed:
                    raise OSError("interrupted (injected)")
                deleted.append(path.name)
            real_unlink(path, missing_ok=missing_ok)

        databases = [data_dir / path.name for path in settings.embedded_data_paths]
        lock = DataDirLock(data_dir)
        lock.acquire()
        monkeypatch.setattr(Path, "unlink", unlink)
        try:
            lock.wipe(databases)
            interrupted = False
        except OSError:
            interrupted = True
        finally:
            monkeypatch.setattr(Path, "unlink", real_unlink)
            lock.release()
        remaining = {p.name for p in data_dir.iterdir()}
        if (data_dir / "store.duckdb").exists() is False:
            assert not any(name.startswith(("ingest-log.sqlite", "dedup-")) for name in remaining), (allowed, remaining)
        if interrupted:
            with pytest.raises(DataDirResetUnfinished, match="reset"):
                DataDirLock(data_dir).acquire()
            finishing = DataDirLock(data_dir)
            finishing.acquire(finish_reset=True)
            finishing.wipe(databases)
            finishing.release()
        assert {p.name for p in data_dir.iterdir()} == {"cohort.lock"}
        fresh = DataDirLock(data_dir)
        fresh.acquire()  # a finished reset leaves a directory that starts
        fresh.release()
    assert interrupted is False, "the last round lets the reset complete"
    order = deleted.index
    assert order("ingest-log.sqlite-wal") < order("ingest-log.sqlite") < order("store.duckdb.wal") < order("store.duckdb")


@pytest.mark.e2e
def test_serve_refuses_a_half_reset_directory_with_a_clear_message(tmp_path, sample_events, monkeypatch):
    data_dir = tmp_path / "data"
    fill(data_dir, sample_events)
    lock = DataDirLock(data_dir)
    lock.acquire()
    monkeypatch.setattr(Path, "unlink", lambda *a, **k: (_ for _ in ()).throw(OSError("interrupted (injected)")))
    with pytest.raises(OSError):
        lock.wipe([data_dir / "ingest-log.sqlite", data_dir / "store.duckdb"])
    monkeypatch.undo()
    lock.release()
    result = subprocess.run([sys.executable, "-m", "cohort.cli", "serve", "--data-dir", str(data_dir),
                             "--port", str(free_port())], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "reset" in result.stderr and "--reset" in result.stderr


@pytest.mark.e2e
def test_a_server_that_never_became_healthy_is_not_left_running_on_its_data_dir(tmp_path):
    """Harnesses delete their temporary data dirs after a run: the server must be gone by then."""
    server = ServerProcess(tmp_path / "data")
    with pytest.raises(RuntimeError, match="did not become healthy"):
        server.start(timeout=0.01)
    assert server.proc.poll() is not None, "a server that failed to start must not keep the data dir"


@pytest.mark.e2e
def test_a_crash_run_that_fails_midway_stops_its_server_before_its_data_dir_can_be_removed(tmp_path, monkeypatch):
    def broken_kill(server, rng, timeout=10.0):
        raise RuntimeError("harness failure (injected)")

    monkeypatch.setattr(crash, "_kill_a_worker", broken_kill)
    with pytest.raises(RuntimeError, match="injected"):
        crash.run_crash_cycles(tmp_path, cycles=1, events=200, batch_size=100, senders=1, target="worker")
    lock = DataDirLock(tmp_path / "data")
    lock.acquire()  # free: no server process is left holding the directory
    lock.release()


# A file a writer made itself a moment ago (O_EXCL, a random name) and removes once it has been linked in place.
OWN_TEMPORARIES = {("security/secrets.py", "temporary.unlink(missing_ok=True)"),
                   ("security/audit_log.py", "temporary.unlink(missing_ok=True)"),
                   # `cohort export`'s own partial download, beside an output refused inside a data dir
                   ("cli.py", "partial.unlink(missing_ok=True)"),
                   # the compacted copy a crashed `cohort forget --compact` left, under the data dir's lock
                   ("store/duckdb_store.py", "leftover.unlink(missing_ok=True)")}
# Offline commands that open the store only once they hold the data directory's lock (tested in their own files)
LOCKED_OPENERS = {("cli.py", "store = DuckDbStore(settings.store_path, memory_limit=settings.store_memory_limit)")}


def test_only_the_data_dir_lock_deletes_files_and_only_the_node_opens_the_data_files():
    """The class of fault, not the instance: any new code path that deletes files or opens the log or the
    store for writing must go through the lock (DataDirLock.wipe, EmbeddedNode after acquire)."""
    deleting = re.compile(r"\b(rmtree|unlink|os\.remove|os\.rmdir|rmdir|\.truncate\(\))")
    opening = re.compile(r"\b(SqliteLog|DuckDbStore|DiskDedupIndex)\(")
    # Benchmarks that measure an engine in a directory they made themselves (tempfile), never a data dir.
    own_directories = {"benchmark/dedup_index.py", "benchmark/kafka_log.py", "benchmark/store_write.py",
                       "benchmark/scaleout_roles.py", "benchmark/metrics_latency.py",
                       "analytics/lake.py"}  # the lake's own output directory, refused inside a data dir
    offenders = []
    for path in sorted(SOURCE.rglob("*.py")):
        relative = path.relative_to(SOURCE).as_posix()
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if relative in own_directories:
                continue
            if deleting.search(code) and relative != "pipeline/data_dir_lock.py" \
                    and (relative, code.strip()) not in OWN_TEMPORARIES:
                offenders.append(f"{relative}:{number}: {line.strip()}")
            if opening.search(code) and relative not in ("pipeline/embedded.py", "pipeline/embedded_dedup.py") \
                    and "class " not in code and (relative, code.strip()) not in LOCKED_OPENERS:
                offenders.append(f"{relative}:{number}: {line.strip()}")
    assert offenders == []

