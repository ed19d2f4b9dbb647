"""Owner-only files: created 0600 from the start, narrowed when found wider, a symlink refused where asked."""

from __future__ import annotations

import os
import stat

import pytest

from cohort.owner_only_files import create_owner_only, restrict_sqlite_side_files, sync_path


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_new_file_is_owner_only_and_a_wider_one_is_narrowed(tmp_path):
    path = tmp_path / "a" / "keys.sqlite"
    assert create_owner_only(path) is None and mode(path) == 0o600
    os.chmod(path, 0o644)
    assert create_owner_only(path) == 0o644 and mode(path) == 0o600


def test_sqlite_side_files_are_narrowed_and_reported(tmp_path):
    path = tmp_path / "db.sqlite"
    (tmp_path / "db.sqlite-wal").write_bytes(b"")
    os.chmod(tmp_path / "db.sqlite-wal", 0o640)
    assert restrict_sqlite_side_files(path) == {"-wal": 0o640}  # the absent -shm is left alone
    assert mode(tmp_path / "db.sqlite-wal") == 0o600


def test_a_symlink_is_refused_where_asked(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_bytes(b"")
    os.chmod(target, 0o644)
    (tmp_path / "vault.sqlite").symlink_to(target)
    with pytest.raises(OSError):
        create_owner_only(tmp_path / "vault.sqlite", refuse_symlink=True)
    assert mode(target) == 0o644
    sync_path(tmp_path)  # a directory can be synced
