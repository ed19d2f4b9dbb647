"""One data directory, one Cohort process: the ingest log and the store assume a single writer.

The lock is also the only way to erase a directory's data (`wipe`), so nothing can delete files
a live server holds. A wipe leaves a marker until it has finished: a directory whose wipe was
interrupted refuses to start rather than start half-erased.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import threading
from pathlib import Path
from typing import IO, Sequence

from cohort.owner_only_files import sync_path

LOCK_FILE = "cohort.lock"
RESET_MARKER = "cohort.reset"  # present from the first deletion of a wipe until its last
# What a database engine may leave beside its file: SQLite's WAL, shared memory and rollback
# journal, DuckDB's WAL and spill directory.
SIDE_SUFFIXES = ("-wal", "-shm", "-journal", ".wal", ".tmp")

# Locks held by this process and handed over to the next DataDirLock on the same directory (see hand_over).
_handed_over: dict[Path, IO[str]] = {}
_handed_over_guard = threading.Lock()


class DataDirInUse(RuntimeError):
    """The data directory cannot be taken: another process serves it."""


class DataDirResetUnfinished(DataDirInUse):
    """A wipe of the data directory was interrupted: its data is partly erased."""


def database_files(database: Path) -> list[Path]:
    """A database and its side files, side files first: a WAL left without its database
    would be replayed into the next database created under the same name."""
    return [database.with_name(database.name + suffix) for suffix in SIDE_SUFFIXES] + [database]


class DataDirLock:
    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / LOCK_FILE
        self._file: IO[str] | None = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def acquire(self, *, finish_reset: bool = False) -> None:
        """Take the directory, or raise DataDirInUse naming the holder. A directory whose wipe did not
        finish is refused too (DataDirResetUnfinished), unless the caller is about to finish it."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with _handed_over_guard:
            handle = _handed_over.pop(self.path.resolve(), None)
        if handle is None:
            handle = open(self.path, "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                handle.close()
                raise DataDirInUse(f"data directory {self.data_dir} is in use by pid {holder}; "
                                   "stop it or choose another --data-dir") from None
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()))
            handle.flush()
        self._file = handle
        if not finish_reset and (self.data_dir / RESET_MARKER).exists():
            self.release()
            raise DataDirResetUnfinished(
                f"a reset of data directory {self.data_dir} was interrupted and its data is partly erased; "
                f"finish it with `cohort demo --data-dir {self.data_dir} --reset`, or delete the directory")

    def hand_over(self) -> None:
        """Keep holding the lock for the next DataDirLock on this directory in this process, which takes
        it as is: code that erases a directory and then starts a server on it (which takes the lock
        itself) leaves no moment in which another process could take the directory."""
        if self._file is None:
            raise RuntimeError("hand_over needs the lock held")
        with _handed_over_guard:
            _handed_over[self.path.resolve()] = self._file
        self._file = None

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def wipe(self, databases: Sequence[Path]) -> None:
        """Erase the databases (each with its side files) in the order given, under the lock.

        Give the ingest log before the store: a directory left with the store but no log starts
        consistently (offsets continue after the store's), one with an empty store beside an old
        log would replay part of old data. The marker makes any interrupted wipe refuse to start.
        Only the named files go; the lock file and anything else in the directory stay."""
        if self._file is None:
            raise RuntimeError("wipe needs the lock held")
        marker = self.data_dir / RESET_MARKER
        marker.write_text(f"reset started by pid {os.getpid()}\n")
        sync_path(marker)
        sync_path(self.data_dir)
        for database in databases:
            if Path(database).parent.resolve() != self.data_dir.resolve():
                raise ValueError(f"{database} is not in {self.data_dir}")
            for path in database_files(Path(database)):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
            sync_path(self.data_dir)
        marker.unlink()
        sync_path(self.data_dir)



