"""`cohort keys` and `cohort tenants` as scripts run them, and the keys `serve` makes and prints.

The installed `cohort` script runs as a subprocess where a process of its own is the point (the first key and
tenant made, the file's mode; `serve`); the other calls run the same command in this process (`run`), which
spares an interpreter start (~1 s) per call."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from cohort.benchmark.server_process import free_port
from cohort.core.errors import CohortError
from cohort.security.api_keys import RedisKeyStore, SqliteKeyStore
from cohort.security.audit_log import SqliteAuditLog
from cohort.security.identity import Role, Scope
from support import cohort_in_process as run

COHORT = str(Path(sys.executable).parent / "cohort")


def cohort(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([COHORT, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "COLUMNS": "80", **(env or {})})


def last_token(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout.split()[-1]


def verify(data_dir: Path, key: str):
    store = SqliteKeyStore(data_dir / "auth.sqlite")
    try:
        return store.verify(key)
    finally:
        store.close()


def test_keys_create_prints_the_key_last_and_it_verifies(tmp_path):
    data = tmp_path / "data"
    admin = last_token(cohort("keys", "create", "--data-dir", str(data), "--role", "admin"))
    assert verify(data, admin).role is Role.ADMIN
    assert stat.S_IMODE((data / "auth.sqlite").stat().st_mode) == 0o600
    assert "created tenant state-ka" in cohort("tenants", "create", "state-ka", "--name", "Karnataka",
                                               "--data-dir", str(data)).stdout
    result = run("keys", "create", "--data-dir", str(data), "--tenant", "state-ka", "--role", "educator",
                 "--scope", "batch:b1,b2", "--expires", "30d", "--label", "teacher [bold]1")
    assert "not shown again" in result.stdout
    identity = verify(data, last_token(result))
    assert (identity.role, identity.tenant, identity.scope) == (Role.EDUCATOR, "state-ka", Scope("batch", ("b1", "b2")))


def test_list_shows_ids_never_secrets_and_revoke_takes_effect(tmp_path):
    data = str(tmp_path)
    run("tenants", "create", "state-ka", "--data-dir", data)
    key = last_token(run("keys", "create", "--data-dir", data, "--tenant", "state-ka", "--role", "ingestor",
                         "--label", "tablet sync"))
    key_id, secret = key.split("_", 2)[1:]
    listed = run("keys", "list", "--data-dir", data)
    assert listed.returncode == 0 and key_id in listed.stdout and "tablet sync" in listed.stdout
    assert secret[:12] not in listed.stdout
    assert key_id in run("keys", "list", "--tenant", "state-ka", "--data-dir", data).stdout
    assert key_id not in run("keys", "list", "--tenant", "other", "--data-dir", data).stdout
    assert "state-ka" in run("tenants", "list", "--data-dir", data).stdout
    assert run("keys", "revoke", key_id, "--data-dir", data).stdout.strip() == f"revoked key {key_id}"
    assert "revoked already" in run("keys", "revoke", key_id, "--data-dir", data).stdout
    with pytest.raises(CohortError) as info:
        verify(tmp_path, key)
    assert "revoked" in info.value.message
    log = SqliteAuditLog(tmp_path / "audit.sqlite")  # every change by the operator is in the audit log
    try:
        assert [(e.action, e.target, e.tenant, e.actor_subject) for e in log.entries()] == [
            ("tenant.create", "tenant state-ka", "state-ka", "system"),
            ("key.create", f"key {key_id} ingestor", "state-ka", "system"),
            ("key.revoke", f"key {key_id}", "state-ka", "system")]  # the second revoke changed nothing
        assert log.verify().ok
    finally:
        log.close()
    assert run("audit", "verify", "--data-dir", data).returncode == 0


@pytest.mark.parametrize("args, code", [
    (["keys", "create", "--role", "analyst"], "ERR_AUTH_INVALID_TENANT"),  # no tenant
    (["keys", "create", "--role", "analyst", "--tenant", "nowhere"], "ERR_AUTH_INVALID_TENANT"),
    (["keys", "create", "--role", "admin", "--tenant", "state-ka"], "ERR_AUTH_INVALID_TENANT"),
    (["keys", "create", "--role", "root", "--tenant", "state-ka"], "ERR_AUTH_INVALID_ROLE"),
    (["keys", "create", "--role", "educator", "--tenant", "state-ka", "--scope", "school"], "ERR_AUTH_INVALID_SCOPE"),
    (["keys", "create", "--role", "analyst", "--tenant", "state-ka", "--expires", "soon"], "ERR_AUTH_INVALID_EXPIRY"),
    (["keys", "create", "--role", "analyst", "--tenant", "state-ka", "--expires", "2001-01-01"],
     "ERR_AUTH_INVALID_EXPIRY"),
    (["keys", "create", "--role", "analyst", "--tenant", "state-ka", "--label", "x" * 300], "ERR_FIELD_TOO_LONG"),
    (["keys", "revoke", "AAAAAAAAAAAA"], "ERR_NOT_FOUND"),
    (["tenants", "create", "state-ka"], "ERR_AUTH_INVALID_TENANT"),  # exists
    (["tenants", "create", "no spaces"], "ERR_AUTH_INVALID_TENANT"),
])
def test_bad_input_is_one_coded_line_on_stderr_and_status_2(tmp_path, args, code):
    run("tenants", "create", "state-ka", "--data-dir", str(tmp_path))
    result = run(*args, "--data-dir", str(tmp_path))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"error: {code}: "), result.stderr
    assert "Traceback" not in result.stderr


def test_keys_create_works_while_a_server_runs_on_the_data_dir(server):
    run("tenants", "create", "state-ka", "--data-dir", str(server.data_dir))
    key = last_token(run("keys", "create", "--data-dir", str(server.data_dir), "--tenant", "state-ka",
                         "--role", "analyst"))
    assert verify(server.data_dir, key).role is Role.ANALYST
    assert httpx.get(server.url + "/health", timeout=5).status_code == 200  # the server did not mind


def test_scaleout_keys_live_in_redis(tmp_path, redis_url):
    env = {"COHORT_FOOTPRINT": "scaleout", "COHORT_REDIS_URL": redis_url}
    assert run("tenants", "create", "state-ka", env=env).returncode == 0
    key = last_token(run("keys", "create", "--tenant", "state-ka", "--role", "ingestor", env=env))
    store = RedisKeyStore(redis_url)
    assert store.verify(key).tenant == "state-ka"
    result = run("keys", "list", env={**env, "COHORT_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    assert result.returncode == 1 and result.stderr.startswith("error: key store unavailable"), result.stderr


def _serve(data: Path, log: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen([COHORT, "serve", "--data-dir", str(data), "--port", str(port)], stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "100", **env})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, log.read_text()
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError(log.read_text())


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_serve_on_a_fresh_data_dir_prints_a_bootstrap_admin_key_once(tmp_path):
    data = tmp_path / "data"
    proc, output = _serve(data, tmp_path / "first.log", {})
    _stop(proc)
    assert "not shown again" in output
    keys = [word for word in output.split() if word.startswith("ck_")]
    assert len(keys) == 1 and verify(data, keys[0]).role is Role.ADMIN
    proc, output = _serve(data, tmp_path / "second.log", {})
    _stop(proc)
    assert "ck_" not in output and "bootstrap" not in output


def test_serve_with_auth_off_warns_loudly_and_makes_no_key(tmp_path):
    proc, output = _serve(tmp_path / "data", tmp_path / "serve.log", {"COHORT_AUTH": "off"})
    _stop(proc)
    assert "authentication is OFF" in output and "admin of every tenant" in " ".join(output.split())
    assert "ck_" not in output


def test_demo_keys_are_made_in_the_demo_data_dir(tmp_path):
    from cohort.demo import make_demo_keys
    from cohort.settings import Settings

    keys = make_demo_keys(Settings(data_dir=tmp_path))
    assert verify(tmp_path, keys.admin).role is Role.ADMIN
    assert (verify(tmp_path, keys.ingestor).tenant, verify(tmp_path, keys.analyst).role) == (keys.tenant,
                                                                                             Role.ANALYST)
    assert make_demo_keys(Settings(data_dir=tmp_path)).tenant == keys.tenant  # a re-run reuses the tenant


def test_the_demo_may_reuse_and_reset_a_dir_holding_its_keys(tmp_path):
    from cohort.demo import claim_demo_dir, make_demo_keys
    from cohort.pipeline.data_dir_lock import DataDirLock
    from cohort.settings import Settings

    settings = Settings(data_dir=tmp_path)
    for reset in (False, False, True):
        claim_demo_dir(settings, reset=reset)
        lock = DataDirLock(tmp_path)  # take the handed-over lock back, as the demo's server would, and go
        lock.acquire()
        lock.release()
        if not reset:
            make_demo_keys(settings)
    assert not (tmp_path / "auth.sqlite").exists()  # --reset erased the keys with the data


def test_rotate_makes_a_twin_key_and_ends_the_old_one_after_the_overlap(tmp_path):
    data = str(tmp_path)
    assert run("tenants", "create", "state-ka", "--data-dir", data).returncode == 0
    old_key = last_token(run("keys", "create", "--data-dir", data, "--tenant", "state-ka", "--role", "educator",
                             "--scope", "batch:b1,b2", "--label", "school 42"))
    old_id = verify(tmp_path, old_key).subject

    rotated = run("keys", "rotate", old_id, "--data-dir", data, "--overlap", "2h")
    new_key = last_token(rotated)
    new = verify(tmp_path, new_key)
    assert (new.tenant, new.role, str(new.scope)) == ("state-ka", Role.EDUCATOR, "batch:b1,b2")
    assert verify(tmp_path, old_key).subject == old_id  # still works during the overlap
    store = SqliteKeyStore(tmp_path / "auth.sqlite")
    try:
        old_info = store.get_key(old_id)
        assert old_info.expires_at is not None and 7100 < old_info.expires_at.timestamp() - time.time() <= 7200
        assert store.get_key(new.subject).label == "school 42"
    finally:
        store.close()

    leaked = run("keys", "rotate", new.subject, "--data-dir", data, "--overlap", "0")
    newest = last_token(leaked)
    with pytest.raises(CohortError):
        verify(tmp_path, new_key)  # a leaked key stops at once
    assert verify(tmp_path, newest).role == Role.EDUCATOR
    again = run("keys", "rotate", new.subject, "--data-dir", data)
    assert again.returncode == 2 and "ERR_NOT_FOUND" in again.stderr

    log = SqliteAuditLog(tmp_path / "audit.sqlite")
    try:
        assert [e.action for e in log.entries() if e.action == "key.rotate"] == ["key.rotate", "key.rotate"]
        assert log.verify().ok
    finally:
        log.close()
