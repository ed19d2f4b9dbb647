"""One data directory, one process."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cohort.pipeline.data_dir_lock import DataDirInUse, DataDirLock
from support import ServerProcess


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
