"""Embedded identity vault: one SQLite file in the data directory (identity-vault.sqlite, mode 0600).

Several processes open it at once (the embedded pipeline's worker processes each do), so get-or-create
runs in one write transaction (`BEGIN IMMEDIATE`: INSERT OR IGNORE the new entries, then SELECT what is
held): whichever process commits first, both read back the same pseudonym. Known ids, the hot path,
are one read (no write lock). WAL with synchronous=FULL: an entry a batch was given survives power loss,
so its pseudonym in the store always has an entry behind it.

`secure_delete` is on and a forget truncates the WAL (checkpoint), so a forgotten entry's bytes are
overwritten in the file rather than left in free pages, where whoever holds the keys could read it.

Layout: `meta` (format, version, fingerprint of the pseudonym key); `entries` keyed by (tenant, lookup)
with a unique index on (tenant, pseudonym), the reverse index used to re-identify and to forget.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, TypeVar

from cohort.core.errors import CohortError, ErrorCode
from cohort.core.pseudonym_cache import TTL_S, PseudonymCache
from cohort.owner_only_files import create_owner_only, restrict_sqlite_side_files
from cohort.security.secrets import Secrets
from cohort.state.vault_entry import (EntrySealer, SealedEntry, VaultUnavailable, check_id, check_ids, check_kind,
                                      check_tenant, is_pseudonym)

log = logging.getLogger(__name__)

FORMAT = "cohort-identity-vault"
FORMAT_VERSION = 1
_CHUNK = 500  # host parameters per statement (SQLite allows 32766; smaller keeps each statement cheap)
_BUSY_TIMEOUT_S = 30.0  # another process's write transaction is milliseconds; beyond this it is a fault
_REKEY_CHUNK = 1000  # entries read (and re-encrypted) a transaction
_T = TypeVar("_T")
_INHERITED: list[sqlite3.Connection] = []  # connections a forked child holds from its parent, left alone

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS entries (
    tenant TEXT NOT NULL,
    lookup BLOB NOT NULL,
    pseudonym TEXT NOT NULL,
    key_id TEXT NOT NULL,
    sealed BLOB NOT NULL,
    PRIMARY KEY (tenant, lookup)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS entries_by_pseudonym ON entries (tenant, pseudonym);
"""


class SqliteIdentityVault:
    """The IdentityVault contract on a SQLite file (see the module docstring). Thread-safe (one lock);
    a process that forked after opening it opens its own connection."""

    def __init__(self, path: Path | str, secrets_: Secrets, *, busy_timeout_s: float = _BUSY_TIMEOUT_S,
                 cache_ttl_s: float = TTL_S):
        self.path = Path(path)
        self._busy_timeout_s = busy_timeout_s
        self._sealer = EntrySealer(secrets_)
        # the transform stage's memory of this vault's answers; forgets drop from it
        self.cache = PseudonymCache(ttl_s=cache_ttl_s)
        self._lock = threading.Lock()
        self._pid = -1
        self._connection: sqlite3.Connection | None = None
        with self._lock:
            self._guard(self._open)

    # -- the contract --------------------------------------------------------------------------
    def pseudonyms(self, tenant: str, kind: str, clear_ids: Collection[str]) -> Mapping[str, str]:
        tenant, kind, unique = check_tenant(tenant), check_kind(kind), check_ids(clear_ids, "clear id")
        lookups = dict(zip(self._sealer.lookups(tenant, kind, unique), unique))
        with self._lock:
            held = self._guard(lambda: self._pseudonyms_of(tenant, list(lookups)))
            missing = [lookup for lookup in lookups if lookup not in held]
            if missing:
                new = {lookup: self._sealer.new_entry(tenant, kind, lookups[lookup]) for lookup in missing}
                held.update(self._guard(lambda: self._create(tenant, new)))
        return {lookups[lookup]: pseudonym for lookup, pseudonym in held.items()}

    def reidentify(self, tenant: str, pseudonyms: Collection[str]) -> dict[str, str]:
        tenant = check_tenant(tenant)
        wanted = [p for p in check_ids(pseudonyms, "pseudonym") if is_pseudonym(p)]
        with self._lock:
            entries = self._guard(lambda: self._entries_of(tenant, wanted))
        return {entry.pseudonym: self._sealer.open(tenant, entry) for entry in entries}

    def forget(self, tenant: str, kind: str, clear_id: str) -> bool:
        tenant, kind = check_tenant(tenant), check_kind(kind)
        lookup = self._sealer.lookups(tenant, kind, [check_id(clear_id, "clear id")])[0]
        try:
            return self._delete("DELETE FROM entries WHERE tenant = ? AND lookup = ?", (tenant, lookup))
        finally:  # after the delete, so a batch resolving meanwhile cannot put the old pseudonym back
            self.cache.forget_id(tenant, kind, clear_id)

    def forget_pseudonym(self, tenant: str, pseudonym: str) -> bool:
        tenant = check_tenant(tenant)
        if not is_pseudonym(check_id(pseudonym, "pseudonym")):
            return False
        try:
            return self._delete("DELETE FROM entries WHERE tenant = ? AND pseudonym = ?", (tenant, pseudonym))
        finally:
            self.cache.forget_pseudonym(tenant, pseudonym)

    def rekey(self, tenant: str) -> int:
        tenant = check_tenant(tenant)
        current = self._sealer.secrets.vault_current
        done, after = 0, ""
        while True:  # in pseudonym order (the reverse index), a chunk a transaction: linear in the entries
            with self._lock:
                rows = self._guard(lambda: self._db().execute(
                    "SELECT pseudonym, key_id, sealed FROM entries WHERE tenant = ? AND pseudonym > ? "
                    "ORDER BY pseudonym LIMIT ?", (tenant, after, _REKEY_CHUNK)).fetchall())
            if not rows:
                return done
            after = rows[-1][0]
            stale = [SealedEntry(*row) for row in rows if row[1] != current]
            if stale:
                done += self._reseal(tenant, stale)

    def _reseal(self, tenant: str, stale: list[SealedEntry]) -> int:
        """Re-encrypt under the current key; only entries still held under their old key (not forgotten since)."""
        fresh = [self._sealer.seal(tenant, old.pseudonym, self._sealer.open(tenant, old)) for old in stale]
        with self._lock:
            return self._guard(lambda: self._write(lambda db: db.executemany(
                "UPDATE entries SET key_id = ?, sealed = ? WHERE tenant = ? AND pseudonym = ? AND key_id = ?",
                [(new.key_id, new.sealed, tenant, new.pseudonym, old.key_id) for new, old in zip(fresh, stale)]).rowcount))

    def tenants(self) -> list[str]:
        with self._lock:
            rows = self._guard(lambda: self._db().execute("SELECT DISTINCT tenant FROM entries ORDER BY tenant")
                               .fetchall())
        return [tenant for (tenant,) in rows]

    def count(self, tenant: str) -> int:
        tenant = check_tenant(tenant)
        with self._lock:
            row = self._guard(lambda: self._db().execute("SELECT count(*) FROM entries WHERE tenant = ?",
                                                         (tenant,)).fetchone())
        return int(row[0])

    def close(self) -> None:
        with self._lock:
            if self._connection is not None and self._pid == os.getpid():
                self._connection.close()
            self._connection = None

    # -- statements ----------------------------------------------------------------------------
    def _pseudonyms_of(self, tenant: str, lookups: list[bytes]) -> dict[bytes, str]:
        held: dict[bytes, str] = {}
        db = self._db()
        for start in range(0, len(lookups), _CHUNK):
            chunk = lookups[start:start + _CHUNK]
            held.update(db.execute(f"SELECT lookup, pseudonym FROM entries WHERE tenant = ? AND lookup IN "
                                   f"({','.join('?' * len(chunk))})", (tenant, *chunk)).fetchall())
        return held

    def _entries_of(self, tenant: str, pseudonyms: list[str]) -> list[SealedEntry]:
        entries: list[SealedEntry] = []
        db = self._db()
        for start in range(0, len(pseudonyms), _CHUNK):
            chunk = pseudonyms[start:start + _CHUNK]
            rows = db.execute(f"SELECT pseudonym, key_id, sealed FROM entries WHERE tenant = ? AND pseudonym IN "
                              f"({','.join('?' * len(chunk))})", (tenant, *chunk)).fetchall()
            entries.extend(SealedEntry(*row) for row in rows)
        return entries

    def _create(self, tenant: str, new: dict[bytes, SealedEntry]) -> dict[bytes, str]:
        """Insert the entries no process holds yet and read back every one: one pseudonym per id, whoever won."""
        def insert_then_read(db: sqlite3.Connection) -> dict[bytes, str]:
            db.executemany("INSERT OR IGNORE INTO entries (tenant, lookup, pseudonym, key_id, sealed) "
                           "VALUES (?, ?, ?, ?, ?)",
                           [(tenant, lookup, e.pseudonym, e.key_id, e.sealed) for lookup, e in new.items()])
            return self._pseudonyms_of(tenant, list(new))

        held = self._write(insert_then_read)
        if len(held) != len(new):  # a random pseudonym taken already: 2^-128 per pair, but never lose an id
            raise VaultUnavailable(f"identity vault {self.path}: {len(new) - len(held)} new entries were not "
                                   "stored (pseudonym collision); retry")
        return held

    def _delete(self, statement: str, args: tuple[Any, ...]) -> bool:
        with self._lock:
            deleted = self._guard(lambda: self._write(lambda db: db.execute(statement, args).rowcount))
            if deleted:
                self._guard(self._truncate_wal)
        return bool(deleted)

    def _truncate_wal(self) -> None:
        """Checkpoint and empty the WAL, so the deleted entry's old page images leave it. A reader holding an
        old snapshot may keep it from finishing; the next forget or the next checkpoint finishes it."""
        busy, _, _ = self._db().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            log.info("identity vault %s: WAL not truncated after a forget (a reader is active); later", self.path)

    # -- the file and its connection ------------------------------------------------------------
    def _db(self) -> sqlite3.Connection:
        if self._connection is not None and self._pid != os.getpid():
            # inherited through fork: never used nor closed here (closing it could checkpoint or unlock the
            # parent's file), kept referenced so that garbage collection does not close it either
            _INHERITED.append(self._connection)
            self._connection = None
        if self._connection is None:
            self._open()
        assert self._connection is not None
        return self._connection

    def _write(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        with self._transaction() as db:
            return work(db)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.rollback()
            raise
        db.commit()

    def _open(self) -> None:
        """Create the file owner-only before SQLite does (its WAL and shm files copy the file's mode)."""
        _warn_if_narrowed(self.path, create_owner_only(self.path, refuse_symlink=True))
        db = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL").fetchone()
            for pragma in ("synchronous=FULL", "secure_delete=ON", "foreign_keys=OFF"):
                db.execute(f"PRAGMA {pragma}")
            self._connection, self._pid = db, os.getpid()
            self._write(self._check_or_initialise)
            for side, mode in restrict_sqlite_side_files(self.path).items():
                _warn_if_narrowed(Path(f"{self.path}{side}"), mode)
        except BaseException:
            db.close()
            self._connection = None
            raise

    def _check_or_initialise(self, db: sqlite3.Connection) -> None:
        for statement in filter(str.strip, _SCHEMA.split(";")):  # not executescript: it would commit
            db.execute(statement)
        expected = {"format": FORMAT, "version": str(FORMAT_VERSION),
                    "key_fingerprint": self._sealer.secrets.key_fingerprint()}
        db.executemany("INSERT OR IGNORE INTO meta (name, value) VALUES (?, ?)", expected.items())
        held = dict(db.execute("SELECT name, value FROM meta").fetchall())
        if held.get("format") != FORMAT or held.get("version") != str(FORMAT_VERSION):
            raise CohortError(ErrorCode.CONFIG_INVALID, f"{self.path} is not a Cohort identity vault of version "
                              f"{FORMAT_VERSION} (format {held.get('format')!r}, version {held.get('version')!r})")
        if held.get("key_fingerprint") != expected["key_fingerprint"]:
            raise CohortError(ErrorCode.CONFIG_INVALID, f"identity vault {self.path} was made with another "
                              "pseudonym master key than the secrets file holds: restore the secrets file it was "
                              "made with (with these keys every learner would get a new pseudonym)")

    def _guard(self, work: Callable[[], _T]) -> _T:
        """SQLite and OS faults (disk, full, locked too long, I/O) as VaultUnavailable: retried, never partial."""
        try:
            return work()
        except sqlite3.DatabaseError as exc:
            if "file is not a database" in str(exc):
                raise CohortError(ErrorCode.CONFIG_INVALID, f"{self.path} is not a SQLite database: {exc}") from exc
            raise VaultUnavailable(f"identity vault {self.path}: {type(exc).__name__}: {exc}") from exc
        except OSError as exc:
            raise VaultUnavailable(f"identity vault {self.path}: {exc}") from exc

    def pseudonym_of(self, tenant: str, kind: str, clear_id: str) -> str | None:
        """The id's pseudonym if an entry is held, else None; never creates one (forget looks up with it)."""
        tenant, kind = check_tenant(tenant), check_kind(kind)
        lookup = self._sealer.lookups(tenant, kind, [check_id(clear_id, "clear id")])[0]
        with self._lock:
            held = self._guard(lambda: self._pseudonyms_of(tenant, [lookup]))
        return held.get(lookup)


def _warn_if_narrowed(path: Path, mode: int | None) -> None:
    """Say so when a vault file was readable by others (its entries are encrypted; 0600 is defence in depth)."""
    if mode is not None and mode & 0o077:
        log.warning("identity vault file %s had mode %04o: now 0600", path, mode)
