"""Files only their owner may read (keys, secrets, the vault, the audit log), written so they survive a crash.

One place for the few file operations those stores share: create a file with mode 0600 before a database
opens it (so there is no moment with a wider mode), narrow one found wider, narrow SQLite's -wal and -shm
beside it, and fsync a file or a directory (the directory entry of a file created, renamed or deleted).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

OWNER_ONLY = 0o600


def create_owner_only(path: Path, *, refuse_symlink: bool = False) -> int | None:
    """Create `path` (and its parents) with mode 0600, or narrow an existing one; return the mode it had
    when it had to be narrowed. `refuse_symlink`: a symlink at `path` is an OSError, not followed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_RDWR | os.O_CREAT | (getattr(os, "O_NOFOLLOW", 0) if refuse_symlink else 0)
    os.close(os.open(path, flags, OWNER_ONLY))
    return restrict_to_owner(path)


def restrict_to_owner(path: Path) -> int | None:
    """Narrow a file's mode to 0600; return the mode it had when it was another (None: absent or 0600)."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return None
    if mode == OWNER_ONLY:
        return None
    os.chmod(path, OWNER_ONLY)
    return mode


def restrict_sqlite_side_files(path: Path) -> dict[str, int]:
    """Narrow the -wal and -shm files SQLite keeps beside `path`; return those that had another mode."""
    narrowed = {}
    for side in ("-wal", "-shm"):
        mode = restrict_to_owner(path.with_name(path.name + side))
        if mode is not None:
            narrowed[side] = mode
    return narrowed


def sync_path(path: Path) -> None:
    """fsync a file or a directory (so a file created, renamed or deleted in it survives power loss)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
