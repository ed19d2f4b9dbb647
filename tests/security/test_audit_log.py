"""The audit log: a hash chain on a real SQLite file and a real Redis; every tampering named by its entry."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import stat
import subprocess
import sys
import threading
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cohort.core.errors import CohortError, ErrorCode
from cohort.security.audit_log import (
    MAX_DETAIL_BYTES,
    REDACTED,
    AuditEntry,
    RedisAuditLog,
    SqliteAuditLog,
    bound_detail,
    open_audit_log,
)
from cohort.security.identity import Identity, Role
from cohort.settings import Settings

ADMIN = Identity(subject="adminKey0001", role=Role.ADMIN, tenant=None)
STATE_A = Identity(subject="tadminKey001", role=Role.TENANT_ADMIN, tenant="state-a")
STATE_B = Identity(subject="analystKey01", role=Role.ANALYST, tenant="state-b", via="jwt")


@pytest.fixture
def sqlite_log(tmp_path):
    log = SqliteAuditLog(tmp_path / "audit.sqlite")
    yield log
    log.close()


@pytest.fixture
def redis_log(redis_url):
    log = RedisAuditLog(redis_url)
    yield log
    log.close()


def _fill(log, count: int = 6) -> list[AuditEntry]:
    actors = [ADMIN, STATE_A, STATE_B]
    return [log.append(actors[i % 3], "query", f"statement {i}", "ok", {"rows": i}) for i in range(count)]


def _sql(path: Path, statement: str) -> None:
    db = sqlite3.connect(path)
    db.execute(statement)
    db.commit()
    db.close()


# --- the chain ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["sqlite_log", "redis_log"])
def test_appends_chain_and_verify(backend, request):
    log = request.getfixturevalue(backend)
    assert tuple(log.verify()) == (True, 0, None, "empty log")
    made = _fill(log)
    assert [e.seq for e in made] == [1, 2, 3, 4, 5, 6]
    assert made[0].prev_hash == "0" * 64
    assert all(b.prev_hash == a.hash for a, b in zip(made, made[1:]))
    assert all(e.hash == e.computed_hash() for e in made)
    assert made[1].actor_subject == "tadminKey001" and made[1].actor_role == "tenant_admin"
    assert made[1].tenant == "state-a" and made[2].actor_via == "jwt" and made[0].tenant is None
    assert log.entries() == made
    result = log.verify()
    assert (result.ok, result.checked, result.first_bad_seq) == (True, 6, None)
    assert (result.head_seq, result.head_hash) == (6, made[-1].hash)


@pytest.mark.parametrize("backend", ["sqlite_log", "redis_log"])
def test_tenant_filter_and_paging(backend, request):
    log = request.getfixturevalue(backend)
    _fill(log, 9)
    log.append(ADMIN, "key.create", "key newKey00001", "ok", tenant="state-a")
    of_a = log.entries(tenant="state-a")
    assert [e.seq for e in of_a] == [2, 5, 8, 10] and all(e.tenant == "state-a" for e in of_a)
    assert [e.seq for e in log.entries(tenant="state-a", since_seq=2, limit=2)] == [5, 8]
    assert [e.seq for e in log.entries(since_seq=7)] == [8, 9, 10]
    assert log.entries(tenant="nobody") == []
    for bad in ({"since_seq": -1}, {"limit": 0}, {"limit": 10**6}):
        with pytest.raises(CohortError) as caught:
            log.entries(**bad)
        assert caught.value.code == ErrorCode.AUDIT_INPUT


def test_system_actor_and_bad_input(sqlite_log):
    entry = sqlite_log.append(None, "forget", "learner (pseudonym 4f2a…)", "ok", tenant="state-a")
    assert (entry.actor_subject, entry.actor_via, entry.actor_role) == ("system", "system", None)
    for args in [("Query", "x", "ok"), ("query", "x", "OK!"), ("", "x", "ok"), ("q" * 65, "x", "ok"),
                 ("query", 42, "ok")]:
        with pytest.raises(CohortError) as caught:
            sqlite_log.append(ADMIN, *args)
        assert caught.value.code == ErrorCode.AUDIT_INPUT
    with pytest.raises(CohortError) as caught:
        sqlite_log.append(ADMIN, "query", "x", "ok", tenant="bad tenant!")
    assert caught.value.code == ErrorCode.AUTH_INVALID_TENANT
    with pytest.raises(CohortError):
        sqlite_log.append(ADMIN, "query", "x", "ok", detail=["not", "a", "mapping"])  # type: ignore[arg-type]
    assert sqlite_log.verify().ok and sqlite_log.verify().checked == 1


def test_files_are_private(sqlite_log, tmp_path):
    sqlite_log.append(ADMIN, "query", "x", "ok")
    for name in ("audit.sqlite", "audit.head", "audit.lock", "audit.sqlite-wal"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
    assert orjson.loads((tmp_path / "audit.head").read_bytes())["seq"] == 1


# --- tampering, SQLite -------------------------------------------------------------------------------------

@pytest.mark.parametrize("statement, bad_seq, words", [
    ("UPDATE audit SET outcome = 'denied' WHERE seq = 3", 3, "edited"),
    ("UPDATE audit SET detail = '{\"rows\":99}' WHERE seq = 4", 4, "edited"),
    ("UPDATE audit SET actor_subject = 'someoneElse1' WHERE seq = 1", 1, "edited"),
    ("DELETE FROM audit WHERE seq = 3", 3, "missing"),
    ("DELETE FROM audit WHERE seq = 1", 1, "missing"),
    ("DELETE FROM audit WHERE seq >= 5", 5, "truncated"),
    ("DELETE FROM audit WHERE seq = 6", 6, "truncated"),
    ("UPDATE audit SET detail = 'not json' WHERE seq = 2", 2, "edited"),
])
def test_sqlite_tampering_is_detected(sqlite_log, tmp_path, statement, bad_seq, words):
    _fill(sqlite_log)
    _sql(tmp_path / "audit.sqlite", statement)
    ok, checked, first_bad, reason = sqlite_log.verify()
    assert (ok, first_bad) == (False, bad_seq) and words in reason
    assert checked == bad_seq - 1


def test_sqlite_swapped_entries_are_detected(sqlite_log, tmp_path):
    _fill(sqlite_log)
    path = tmp_path / "audit.sqlite"
    for statement in ("UPDATE audit SET seq = -1 WHERE seq = 3", "UPDATE audit SET seq = 3 WHERE seq = 4",
                      "UPDATE audit SET seq = 4 WHERE seq = -1"):
        _sql(path, statement)
    assert tuple(sqlite_log.verify())[:3] == (False, 2, 3)


def test_sqlite_rehashed_edit_breaks_the_next_link(sqlite_log, tmp_path):
    made = _fill(sqlite_log)
    forged = AuditEntry(**{**made[2].as_dict(), "outcome": "denied", "hash": ""})
    _sql(tmp_path / "audit.sqlite", f"UPDATE audit SET outcome = 'denied', hash = '{forged.computed_hash()}' "
                                    "WHERE seq = 3")
    ok, _, first_bad, reason = sqlite_log.verify()
    assert (ok, first_bad) == (False, 4) and "does not link" in reason


def test_sqlite_head_deleted_or_garbled(sqlite_log, tmp_path):
    _fill(sqlite_log, 3)
    (tmp_path / "audit.head").write_bytes(b"garbage")
    assert not sqlite_log.verify().ok
    (tmp_path / "audit.head").unlink()
    result = sqlite_log.verify()
    assert not result.ok and "head record is missing" in result.reason
    sqlite_log.append(ADMIN, "query", "x", "ok")  # the next append writes the head again
    assert sqlite_log.verify().ok


# --- tampering, Redis --------------------------------------------------------------------------------------

def test_redis_tampering_is_detected(redis_url, redis_log):
    import redis

    client = redis.Redis.from_url(redis_url)
    made = _fill(redis_log)
    edited = {**made[2].as_dict(), "outcome": "denied"}
    client.lset("cohort:audit:entries", 2, orjson.dumps(edited))
    assert tuple(redis_log.verify())[:3] == (False, 2, 3)
    client.lset("cohort:audit:entries", 2, orjson.dumps(made[2].as_dict()))
    assert redis_log.verify().ok
    raw4 = client.lindex("cohort:audit:entries", 3)
    client.lset("cohort:audit:entries", 3, client.lindex("cohort:audit:entries", 2))
    client.lset("cohort:audit:entries", 2, raw4)
    ok, _, first_bad, reason = redis_log.verify()
    assert (ok, first_bad) == (False, 3) and "out of order" in reason
    client.lset("cohort:audit:entries", 2, client.lindex("cohort:audit:entries", 3))
    client.lrem("cohort:audit:entries", 1, client.lindex("cohort:audit:entries", 3))  # drop entry 4 (dup 3 stays)
    assert not redis_log.verify().ok
    client.delete("cohort:audit:entries")
    for entry in made[:4]:
        client.rpush("cohort:audit:entries", orjson.dumps(entry.as_dict()))
    ok, checked, first_bad, reason = redis_log.verify()
    assert (ok, checked, first_bad) == (False, 4, 5) and "truncated" in reason


def test_redis_concurrent_appends_keep_one_chain(redis_url):
    logs = [RedisAuditLog(redis_url) for _ in range(4)]
    threads = [threading.Thread(target=lambda log=log: [log.append(ADMIN, "query", "x", "ok") for _ in range(50)])
               for log in logs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result = logs[0].verify()
    assert (result.ok, result.checked) == (True, 200)
    for log in logs:
        log.close()


# --- concurrency, SQLite -----------------------------------------------------------------------------------

def _append_many(path: str, count: int) -> None:
    log = SqliteAuditLog(Path(path))
    for i in range(count):
        log.append(STATE_A, "query", f"process {os.getpid()} #{i}", "ok")
    log.close()


def test_two_processes_and_threads_keep_one_chain(tmp_path):
    path = str(tmp_path / "audit.sqlite")
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_append_many, args=(path, 100)) for _ in range(2)]
    for process in processes:
        process.start()
    log = SqliteAuditLog(Path(path))
    threads = [threading.Thread(target=lambda: [log.append(ADMIN, "query", "t", "ok") for _ in range(25)])
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0
    result = log.verify()
    assert (result.ok, result.checked, result.head_seq) == (True, 250, 250)
    log.close()


# --- bounded detail ----------------------------------------------------------------------------------------

def test_detail_is_bounded_and_redacted():
    detail = bound_detail({
        "sql": "SELECT 1 -- " + "x" * 1000, "api_key": "ck_abcdefghijkl_" + "s" * 43, "learner_id": "child-42",
        "actor.id": "u1", "did": "device-1", "candidate": "kept", "key_id": "abcdefghijkl",
        "note": "token ck_abcdefghijkl_" + "s" * 43 + " and eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
        "nested": {"a": {"b": {"c": {"d": 1}}}}, "many": list(range(100)), "big": 2**70, "nan": float("nan"),
        "bytes": b"\x00raw"})
    assert len(detail["sql"]) == 256 and detail["api_key"] == REDACTED and detail["learner_id"] == REDACTED
    assert detail["actor.id"] == REDACTED and detail["did"] == REDACTED and detail["candidate"] == "kept"
    assert detail["key_id"] == "abcdefghijkl" and "ck_" not in detail["note"] and "eyJ" not in detail["note"]
    assert detail["nested"]["a"]["b"]["c"] == "[nested too deep]" and len(detail["many"]) == 32
    assert detail["big"] == str(2**70) and detail["nan"] == "nan"
    huge = bound_detail({f"k{i}": "v" * 250 for i in range(100)})
    assert huge == {"_truncated": True, "_bytes": huge["_bytes"]} and huge["_bytes"] > MAX_DETAIL_BYTES
    assert len(orjson.dumps(bound_detail({f"k{i}": i for i in range(100)}))) <= MAX_DETAIL_BYTES


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=300),
                     lambda inner: st.lists(inner, max_size=40) | st.dictionaries(st.text(max_size=70), inner,
                                                                                  max_size=40), max_leaves=60)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(actions=st.lists(st.tuples(st.from_regex(r"\A[a-z][a-z0-9_.:-]{0,20}\Z"), st.text(max_size=400),
                                  st.sampled_from(["ok", "denied", "error"]),
                                  st.dictionaries(st.text(max_size=70), _json, max_size=40)),
                        min_size=1, max_size=5))
def test_random_actions_chain_and_roundtrip(tmp_path_factory, actions):
    log = SqliteAuditLog(tmp_path_factory.mktemp("h") / "audit.sqlite")
    try:
        made = [log.append(STATE_B, action, target, outcome, detail) for action, target, outcome, detail in actions]
        assert log.entries() == made
        assert all(len(e.target) <= 256 and len(orjson.dumps(e.detail)) <= MAX_DETAIL_BYTES for e in made)
        assert log.verify().ok and log.verify().checked == len(made)
    finally:
        log.close()


def test_open_audit_log_by_footprint(tmp_path, redis_url):
    embedded = open_audit_log(Settings(data_dir=tmp_path))
    assert isinstance(embedded, SqliteAuditLog) and embedded.path == tmp_path / "audit.sqlite"
    embedded.close()
    scaled = open_audit_log(Settings(data_dir=tmp_path, footprint="scaleout", redis_url=redis_url))
    assert isinstance(scaled, RedisAuditLog)
    scaled.close()
    with pytest.raises(CohortError) as caught:
        open_audit_log(Settings(data_dir=tmp_path, footprint="scaleout", redis_url=""))
    assert caught.value.code == ErrorCode.CONFIG_INVALID


# --- the CLI -----------------------------------------------------------------------------------------------

def _cohort(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COHORT_")}
    return subprocess.run([sys.executable, "-m", "cohort.cli", "audit", *args], capture_output=True, text=True,
                          timeout=60, env=env)


def test_cli_verify_and_list(tmp_path):
    log = SqliteAuditLog(tmp_path / "audit.sqlite")
    _fill(log)
    log.close()
    intact = _cohort("verify", "--data-dir", str(tmp_path))
    assert intact.returncode == 0 and "intact" in intact.stdout and "6 entries" in intact.stdout
    listed = _cohort("list", "--data-dir", str(tmp_path), "--tenant", "state-a", "--since", "2", "--limit", "5")
    assert listed.returncode == 0 and "tadminKey001" in listed.stdout and "statement 4" in listed.stdout
    assert "statement 1" not in listed.stdout and "adminKey0001" not in listed.stdout
    _sql(tmp_path / "audit.sqlite", "DELETE FROM audit WHERE seq = 4")
    broken = _cohort("verify", "--data-dir", str(tmp_path))
    assert broken.returncode == 1 and "entry 4" in broken.stdout and "missing" in broken.stdout
    bad = _cohort("list", "--data-dir", str(tmp_path), "--limit", "0")
    assert bad.returncode == 2 and "ERR_AUDIT_INPUT" in bad.stderr and "Traceback" not in bad.stderr
    absent = _cohort("verify", "--data-dir", str(tmp_path / "nowhere"))
    assert absent.returncode == 2 and "ERR_NOT_FOUND" in absent.stderr and not (tmp_path / "nowhere").exists()


def _set_head(directory: Path, seq: int, digest: str) -> None:
    (directory / "audit.head").write_bytes(orjson.dumps({"seq": seq, "hash": digest}))


def test_head_lag_forged_appends_and_forged_head(sqlite_log, tmp_path):
    made = _fill(sqlite_log)
    _set_head(tmp_path, 5, made[4].hash)  # a crash between the commit of 6 and its head write
    result = sqlite_log.verify()
    assert result.ok and "one behind" in result.reason
    _set_head(tmp_path, 4, made[3].hash)  # 5 and 6 appended by someone who could not move the head
    assert tuple(sqlite_log.verify())[:3] == (False, 6, 5)
    _set_head(tmp_path, 5, made[3].hash)  # a head that names entry 5 with another hash
    ok, _, first_bad, reason = sqlite_log.verify()
    assert (ok, first_bad) == (False, 5) and "head" in reason
    _set_head(tmp_path, 6, "f" * 64)
    assert tuple(sqlite_log.verify())[:3] == (False, 5, 6)


def test_unavailable_stores_raise_a_transient_fault(tmp_path):
    from cohort.security.audit_log import AuditLogUnavailable

    with pytest.raises(AuditLogUnavailable):
        RedisAuditLog("redis://127.0.0.1:1/0", socket_timeout_s=0.5).append(ADMIN, "query", "x", "ok")
    (tmp_path / "audit.sqlite").mkdir()  # a directory where the database file should be
    with pytest.raises(AuditLogUnavailable):
        SqliteAuditLog(tmp_path / "audit.sqlite")
    log = SqliteAuditLog(tmp_path / "ok" / "audit.sqlite")
    (tmp_path / "ok" / "audit.head").mkdir()  # the head cannot be replaced: the append is refused loudly
    with pytest.raises(AuditLogUnavailable):
        log.append(ADMIN, "query", "x", "ok")
    log.close()


@pytest.mark.parametrize("backend", ["sqlite_log", "redis_log"])
def test_verify_and_entries_across_pages(backend, request, monkeypatch):
    import cohort.security.audit_log as audit_log

    monkeypatch.setattr(audit_log, "READ_PAGE_ENTRIES", 2)
    log = request.getfixturevalue(backend)
    made = _fill(log, 7)
    assert log.verify().checked == 7 and log.entries() == made
    assert [e.seq for e in log.entries(tenant="state-b", limit=1)] == [3]
    if backend == "sqlite_log":
        _sql(log.path, "DELETE FROM audit WHERE seq = 5")
        assert tuple(log.verify())[:3] == (False, 4, 5)


@pytest.mark.parametrize("backend", ["sqlite_log", "redis_log"])
def test_verify_while_others_append_never_cries_wolf(backend, request):
    log = request.getfixturevalue(backend)
    done = threading.Event()

    def keep_appending() -> None:
        while not done.is_set():
            log.append(STATE_A, "query", "x", "ok")

    appender = threading.Thread(target=keep_appending)
    appender.start()
    try:
        results = [log.verify() for _ in range(20)]
    finally:
        done.set()
        appender.join()
    assert all(result.ok for result in results), [r.reason for r in results if not r.ok]
    assert log.verify().ok


def _append_many_redis(url: str, count: int) -> None:
    log = RedisAuditLog(url)
    for i in range(count):
        log.append(STATE_B, "export", f"process {os.getpid()} #{i}", "ok")
    log.close()


def test_two_replicas_processes_keep_one_chain_in_redis(redis_url):
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_append_many_redis, args=(redis_url, 150)) for _ in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0
    log = RedisAuditLog(redis_url)
    result = log.verify()
    assert (result.ok, result.checked, result.head_seq) == (True, 300, 300)
    assert len({e.target for e in log.entries(limit=300)}) == 300
    log.close()


def test_cli_verify_on_scaleout(redis_url, tmp_path):
    import redis

    log = RedisAuditLog(redis_url)
    made = _fill(log, 4)
    log.close()
    env = {"COHORT_FOOTPRINT": "scaleout", "COHORT_REDIS_URL": redis_url}

    def cohort(*args: str) -> subprocess.CompletedProcess[str]:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("COHORT_")}
        return subprocess.run([sys.executable, "-m", "cohort.cli", "audit", *args, "--data-dir", str(tmp_path)],
                              capture_output=True, text=True, timeout=60, env={**clean, **env})

    assert cohort("verify").returncode == 0
    redis.Redis.from_url(redis_url).lset("cohort:audit:entries", 1,
                                         orjson.dumps({**made[1].as_dict(), "target": "something else"}))
    broken = cohort("verify")
    assert broken.returncode == 1 and "entry 2" in broken.stdout
    listed = cohort("list", "--tenant", "state-b")
    assert listed.returncode == 0 and "analystKey01" in listed.stdout
    env["COHORT_REDIS_URL"] = "redis://127.0.0.1:1/0"
    away = cohort("verify")
    assert away.returncode == 3 and "unavailable" in away.stderr and "Traceback" not in away.stderr


def test_hostile_detail_values_and_tenant_filter(sqlite_log):
    class Hostile:
        def __str__(self) -> str:
            raise RuntimeError("no")

    entry = sqlite_log.append(ADMIN, "query", "x" * 5_000_000 + "ck_abcdefghijkl_" + "s" * 43, "ok",
                              {"odd": Hostile(), "long": "y" * 10_000_000, 7: {1, 2}})
    assert entry.detail["odd"] == "<Hostile>" and len(entry.detail["long"]) == 256 and "7" in entry.detail
    assert len(entry.target) == 256 and sqlite_log.verify().ok
    with pytest.raises(CohortError) as caught:
        sqlite_log.entries(tenant="no such tenant!")
    assert caught.value.code == ErrorCode.AUTH_INVALID_TENANT
