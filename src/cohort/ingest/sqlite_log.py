"""The embedded ingest log: one SQLite file in WAL mode with synchronous=FULL.

WAL with FULL sync makes each commit durable with one fsync of the WAL file, and
lets the pipeline read while the API appends. Offsets are AUTOINCREMENT row ids, so
they never go back, even after old records are truncated.

Why the WAL is checkpointed on a thread of its own: SQLite checkpoints in the commit that crosses its
threshold, so every few MB one acknowledgement waited for the WAL's pages to be copied into the database
file and that file to be synced (it grows, so the sync commits the file system's journal, behind whatever
else is waiting to be written). The checkpointer copies them a second at a time beside the appends; the
commit's own threshold stays, far higher, only for when the checkpointer falls behind.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

import orjson

from cohort.core.log_record import LogRecord
from cohort.ingest.log import LogStats, LogUnavailable

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    offset INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at INTEGER NOT NULL,
    source TEXT NOT NULL,
    headers BLOB NOT NULL,
    event_count INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS consumers (name TEXT PRIMARY KEY, offset INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS totals (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO totals VALUES ('received_events', 0), ('received_records', 0);
"""
CHECKPOINT_EVERY_S = 1.0
COMMIT_CHECKPOINT_PAGES = 16_384  # 64 MB of WAL: the commit checkpoints only when the checkpointer is this far behind

log = logging.getLogger(__name__)


class SqliteLog:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = self._connect()
        self._writer.executescript(_SCHEMA)
        self._writer.execute(f"PRAGMA wal_autocheckpoint={COMMIT_CHECKPOINT_PAGES}")
        self._reader = self._connect()
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._closing = threading.Event()
        self._checkpointer = threading.Thread(target=self._checkpoint_loop, name="cohort-log-checkpoint", daemon=True)
        self._checkpointer.start()

    def _checkpoint_loop(self) -> None:
        """Copy the WAL into the database file every CHECKPOINT_EVERY_S without blocking appends (PASSIVE)."""
        conn = self._connect()
        try:
            while not self._closing.wait(CHECKPOINT_EVERY_S):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:  # the next round tries again; the commit's threshold is the backstop
                    log.warning("ingest log checkpoint failed: %s", exc)
        finally:
            conn.close()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    def append_many(self, records: list[LogRecord]) -> list[int]:
        with self._write_lock:
            conn = self._writer
            try:
                conn.execute("BEGIN IMMEDIATE")
                offsets: list[int] = []
                for record in records:
                    cursor = conn.execute(
                        "INSERT INTO records (received_at, source, headers, event_count, payload) VALUES (?,?,?,?,?)",
                        (record.received_at_ms, record.source, orjson.dumps(record.headers),
                         record.event_count, record.payload),
                    )
                    offsets.append(cursor.lastrowid or 0)  # an INSERT always sets it
                conn.execute("UPDATE totals SET value = value + ? WHERE name = 'received_events'",
                             (sum(r.event_count for r in records),))
                conn.execute("UPDATE totals SET value = value + ? WHERE name = 'received_records'", (len(records),))
                conn.execute("COMMIT")
            except BaseException as exc:
                _rollback(conn)
                if isinstance(exc, sqlite3.Error):
                    raise LogUnavailable(f"ingest log append failed: {exc}") from exc
                raise
        return offsets

    def read(self, after: int, max_events: int) -> list[LogRecord]:
        records: list[LogRecord] = []
        events = 0
        with self._read_lock:
            cursor = self._reader.execute(
                "SELECT offset, received_at, source, headers, event_count, payload FROM records "
                "WHERE offset > ? ORDER BY offset LIMIT ?", (after, max(1, max_events)))
            for offset, received_at, source, headers, event_count, payload in cursor:
                if records and events + event_count > max_events:
                    break
                records.append(LogRecord(payload=payload, event_count=event_count, source=source,
                                         received_at_ms=received_at, headers=orjson.loads(headers), offset=offset))
                events += event_count
            cursor.close()
        return records

    def commit(self, consumer: str, offset: int) -> None:
        with self._write_lock:
            self._writer.execute(
                "INSERT INTO consumers VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET offset = excluded.offset",
                (consumer, offset))

    def committed(self, consumer: str) -> int:
        with self._read_lock:
            row = self._reader.execute("SELECT offset FROM consumers WHERE name = ?", (consumer,)).fetchone()
        return row[0] if row else 0

    def first_received_at(self, after: int) -> int | None:
        with self._read_lock:
            row = self._reader.execute("SELECT received_at FROM records WHERE offset > ? ORDER BY offset LIMIT 1",
                                       (after,)).fetchone()
        return row[0] if row else None

    def advance_to(self, offset: int) -> None:
        with self._write_lock:
            self._writer.execute("BEGIN IMMEDIATE")
            try:
                self._writer.execute("INSERT OR IGNORE INTO sqlite_sequence (name, seq) VALUES ('records', 0)")
                self._writer.execute("UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'records'", (offset,))
                self._writer.execute("COMMIT")
            except BaseException:
                _rollback(self._writer)
                raise

    def truncate(self, consumer: str, older_than_ms: int) -> int:
        committed = self.committed(consumer)
        with self._write_lock:
            cursor = self._writer.execute(
                "DELETE FROM records WHERE offset <= ? AND received_at < ?", (committed, older_than_ms))
        return cursor.rowcount

    def stats(self, after: int = 0) -> LogStats:
        with self._read_lock:
            conn = self._reader
            conn.execute("BEGIN")  # one read snapshot, so the figures reconcile with each other
            try:
                totals = dict(conn.execute("SELECT name, value FROM totals").fetchall())
                last = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'records'").fetchone()
                backlog = conn.execute(
                    "SELECT coalesce(sum(event_count), 0) FROM records WHERE offset > ?", (after,)).fetchone()[0]
            finally:
                conn.execute("COMMIT")
        return LogStats(received_events=totals["received_events"], received_records=totals["received_records"],
                        last_offset=last[0] if last else 0, events_after=backlog)

    def close(self) -> None:
        self._closing.set()
        self._checkpointer.join()
        with self._write_lock, self._read_lock:
            self._reader.close()
            self._writer.close()


def _rollback(conn: sqlite3.Connection) -> None:
    """Leave no transaction open after a failed append, so the next append can start clean."""
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass
