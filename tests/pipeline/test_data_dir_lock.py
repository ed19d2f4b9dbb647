"""One data directory, one process; only the holder erases it, and a handed-over lock has no gap."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cohort.pipeline.data_dir_lock import DataDirInUse, DataDirLock, DataDirResetUnfinished, database_files
from support import ServerProcess

TAKE_IN_ANOTHER_PROCESS = "import sys; from cohort.pipeline.data_dir_lock import DataDirLock; " \
                          "DataDirLock(sys.argv[1]).acquire()"


def taken_by_another_process(path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", TAKE_IN_ANOTHER_PROCESS, str(path)], capture_output=True, text=True,
                          timeout=60)


def test_a_second_lock_on_the_same_dir_is_refused_with_the_holder(tmp_path):
    first = DataDirLock(tmp_path)
    first.acquire()
    try:
        with pytest.raises(DataDirInUse, match="in use by pid"):
            DataDirLock(tmp_path).acquire()
    finally:
        first.release()
    again = DataDirLock(tmp_path)
    again.acquire()  # free once released
    again.release()


def test_a_handed_over_lock_leaves_no_window_for_another_process(tmp_path):
    """The demo holds the lock from before its reset until its own server holds it."""
    lock = DataDirLock(tmp_path)
    lock.acquire()
    lock.hand_over()
    assert not lock.held
    other = taken_by_another_process(tmp_path)
    assert other.returncode != 0 and "in use by pid" in other.stderr
    server_side = DataDirLock(tmp_path)
    server_side.acquire()  # the same process takes the held lock as is
    assert taken_by_another_process(tmp_path).returncode != 0
    server_side.release()
    assert taken_by_another_process(tmp_path).returncode == 0  # released for good, nothing left handed over


def test_wipe_erases_only_the_named_databases_with_their_side_files(tmp_path):
    log, store = tmp_path / "ingest-log.sqlite", tmp_path / "store.duckdb"
    for path in [*database_files(log)[:3], log, store.with_name("store.duckdb.wal"), store]:
        path.write_text("x")
    (tmp_path / "store.duckdb.tmp").mkdir()
    (tmp_path / "store.duckdb.tmp" / "spill.block").write_text("x")
    (tmp_path / "notes.txt").write_text("not Cohort's")
    lock = DataDirLock(tmp_path)
    with pytest.raises(RuntimeError, match="lock held"):
        lock.wipe([log, store])  # only the holder may erase
    lock.acquire()
    with pytest.raises(ValueError, match="not in"):
        lock.wipe([tmp_path.parent / "store.duckdb"])
    lock.wipe([log, store])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cohort.lock", "notes.txt"]
    assert lock.held
    lock.release()


def test_an_unfinished_wipe_refuses_the_directory_until_it_is_finished(tmp_path):
    (tmp_path / "cohort.reset").write_text("reset started by pid 1\n")
    with pytest.raises(DataDirResetUnfinished, match="--reset"):
        DataDirLock(tmp_path).acquire()
    assert taken_by_another_process(tmp_path).returncode != 0
    finishing = DataDirLock(tmp_path)
    finishing.acquire(finish_reset=True)
    finishing.wipe([tmp_path / "store.duckdb"])
    finishing.release()
    assert not (tmp_path / "cohort.reset").exists()
    assert taken_by_another_process(tmp_path).returncode == 0


@pytest.mark.e2e
def test_a_second_server_on_the_same_data_dir_exits_with_a_clear_error(tmp_path):
    server = ServerProcess(tmp_path / "data").start()
    try:
        result = subprocess.run([sys.executable, "-m", "cohort.cli", "serve", "--data-dir", str(tmp_path / "data"),
                                 "--port", "1"], capture_output=True, text=True, timeout=60)
        assert result.returncode == 2
        assert "in use by pid" in result.stderr
    finally:
        server.stop()
