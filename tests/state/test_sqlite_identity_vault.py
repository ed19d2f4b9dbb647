"""The embedded identity vault beyond the contract suite: its file (owner-only, erased bytes after a forget,
a foreign file refused), a real lock held too long, and a process that forks after opening it."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from cohort.core.errors import CohortError, ErrorCode, TransientFault
from cohort.core.pseudonyms import LEARNER
from cohort.security.secrets import Secrets, load_or_create_secrets
from cohort.settings import Settings
from cohort.state.identity_vault import SqliteIdentityVault, VaultUnavailable


@pytest.fixture
def secrets(tmp_path) -> Secrets:
    return load_or_create_secrets(Settings(data_dir=tmp_path / "keys"))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_vault_and_its_side_files_are_owner_only(tmp_path, secrets):
    old_umask = os.umask(0o022)  # a usual umask would give 0644
    try:
        vault = SqliteIdentityVault(tmp_path / "data" / "identity-vault.sqlite", secrets)
        vault.pseudonyms("t1", LEARNER, ["a", "b"])
    finally:
        os.umask(old_umask)
    files = sorted(p.name for p in (tmp_path / "data").iterdir())
    assert files == ["identity-vault.sqlite", "identity-vault.sqlite-shm", "identity-vault.sqlite-wal"]
    assert {name: _mode(tmp_path / "data" / name) for name in files} == dict.fromkeys(files, 0o600)
    vault.close()


def test_a_vault_file_others_could_read_is_made_owner_only(tmp_path, secrets):
    path = tmp_path / "identity-vault.sqlite"
    SqliteIdentityVault(path, secrets).close()
    path.chmod(0o644)
    vault = SqliteIdentityVault(path, secrets)
    assert _mode(path) == 0o600
    vault.close()


def test_the_journal_is_wal_with_full_synchronous_and_secure_delete(tmp_path, secrets):
    vault = SqliteIdentityVault(tmp_path / "v.sqlite", secrets)
    db = vault._db()
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert db.execute("PRAGMA secure_delete").fetchone()[0] == 1
    vault.close()


def test_a_forgotten_entry_leaves_no_bytes_in_the_file_or_its_wal(tmp_path, secrets):
    path = tmp_path / "identity-vault.sqlite"
    vault = SqliteIdentityVault(path, secrets)
    held = vault.pseudonyms("t1", LEARNER, [f"child-{i}" for i in range(300)])
    forgotten = held["child-7"]
    sealed = vault._db().execute("SELECT sealed FROM entries WHERE pseudonym = ?", (forgotten,)).fetchone()[0]
    vault.forget("t1", LEARNER, "child-7")
    raw = b"".join(Path(f"{path}{side}").read_bytes() for side in ("", "-wal") if Path(f"{path}{side}").exists())
    assert held["child-8"].encode() in raw  # what is still held is found by the same scan
    assert forgotten.encode() not in raw and sealed not in raw
    vault.close()


def test_a_file_that_is_not_a_vault_is_refused(tmp_path, secrets):
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not a database" * 100)
    garbage.chmod(0o600)
    with pytest.raises(CohortError) as caught:
        SqliteIdentityVault(garbage, secrets)
    assert caught.value.code == ErrorCode.CONFIG_INVALID
    foreign = tmp_path / "foreign.sqlite"
    db = sqlite3.connect(foreign)
    db.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute("INSERT INTO meta VALUES ('format', 'something-else')")
    db.commit()
    db.close()
    with pytest.raises(CohortError) as caught:
        SqliteIdentityVault(foreign, secrets)
    assert caught.value.code == ErrorCode.CONFIG_INVALID and "not a Cohort identity vault" in caught.value.message


def test_a_write_lock_held_too_long_is_a_transient_fault(tmp_path, secrets):
    path = tmp_path / "identity-vault.sqlite"
    vault = SqliteIdentityVault(path, secrets, busy_timeout_s=0.2)
    known = vault.pseudonyms("t1", LEARNER, ["known"])
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process in a long write transaction
    try:
        assert vault.pseudonyms("t1", LEARNER, ["known"]) == known  # reads do not wait for writers (WAL)
        with pytest.raises(VaultUnavailable) as caught:
            vault.pseudonyms("t1", LEARNER, ["known", "new"])
        assert isinstance(caught.value, TransientFault) and "locked" in caught.value.message
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert set(vault.pseudonyms("t1", LEARNER, ["known", "new"])) == {"known", "new"}
    vault.close()


def _use_in_child(vault: SqliteIdentityVault, queue) -> None:
    queue.put((vault.pseudonyms("t1", LEARNER, ["from-parent", "from-child"]), vault._connection is not None))


def test_a_process_forked_after_opening_uses_a_connection_of_its_own(tmp_path, secrets):
    vault = SqliteIdentityVault(tmp_path / "identity-vault.sqlite", secrets)
    parent = vault.pseudonyms("t1", LEARNER, ["from-parent"])
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_use_in_child, args=(vault, queue))
    child.start()
    answer, _ = queue.get(timeout=30)
    child.join(30)
    assert child.exitcode == 0
    assert answer["from-parent"] == parent["from-parent"]
    assert vault.pseudonyms("t1", LEARNER, ["from-child"]) == {"from-child": answer["from-child"]}
    vault.close()
