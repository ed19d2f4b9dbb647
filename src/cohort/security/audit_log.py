"""The audit log: who did what, to what, when, with what outcome; tamper-evident by a hash chain.

Every entry carries `prev_hash` (the previous entry's `hash`; 64 zeros for entry 1) and `hash`, the
SHA-256 of the entry's canonical encoding (orjson, sorted keys) including `prev_hash` but not `hash`.
Sequence numbers start at 1 and have no gaps. The latest (seq, hash), the *head*, is also kept in a
second place: `audit.head` beside `audit.sqlite` (mode 0600, replaced atomically after each append) or
the key `cohort:audit:head` in Redis (written by the same Lua script as the entry).

`verify()` detects, and names the first bad sequence number of:
- an edited entry (any field, its detail included): its hash no longer matches its content;
- an edited entry whose hash was recomputed too: the next entry's `prev_hash` no longer matches;
- a deleted entry (a gap in the sequence) and entries swapped or reordered;
- a truncated tail (the last entries deleted): the log ends before the head says it does;
- a head that disagrees with the entry it names;
- entries appended at the end without moving the head (more than the one a crash can leave behind).

It cannot detect, because nothing here holds a secret:
- someone able to write both the log and the head rewriting the whole chain from some entry on (or
  appending forged entries at the end) with freshly computed hashes and a matching head. Record `cohort audit verify`'s
  printed head somewhere they cannot write (a ticket, another system's log) and compare it later;
- a log and head both deleted (an empty log verifies) or a whole log replaced by an older copy of both.

Entries hold no secrets and no clear learner ids: the actor is named by its key id or JWT subject, the
detail is bounded (`MAX_DETAIL_BYTES`) and keys that name secrets or learners are redacted.

Appends serialise so the chain never forks: SQLite by an exclusive file lock around `BEGIN IMMEDIATE`
(threads and processes alike, also covering the head file), Redis by a Lua compare-and-append on the
head (several `serve` replicas may append at once; a loser retries on the new head).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import orjson

from cohort.core.errors import CohortError, ErrorCode, TransientFault
from cohort.owner_only_files import create_owner_only, restrict_sqlite_side_files, sync_path
from cohort.security.identity import Identity, check_tenant_id
from cohort.settings import Settings

GENESIS_HASH = "0" * 64
HEAD_LAG_TOLERATED = 1  # SQLite writes the head just after its commit: a crash in between leaves it one behind
MAX_DETAIL_BYTES = 4096  # a detail encoded larger is replaced by a note saying how large it was
MAX_DETAIL_KEYS = 32
MAX_DETAIL_DEPTH = 3
MAX_TEXT_CHARS = 256  # one detail string, a target
MAX_LIST_ITEMS = 32
MAX_ENTRIES_PAGE = 10_000
READ_PAGE_ENTRIES = 1000  # entries read per round trip while verifying or scanning
REDACTED = "[redacted]"
_TOKEN = re.compile(r"^[a-z][a-z0-9_.:-]{0,63}$")  # an action or an outcome: `query`, `key.create`, `denied`
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# detail keys whose values are never written: secrets, and learners or devices in clear
_SENSITIVE_KEY = re.compile(r"secret|password|passwd|token|authorization|api_?key|key_text|bearer|cookie|"
                            r"private|credential|learner|actor[._]?id|user[._]?id|device|student|child|email|phone|"
                            r"(?:^|[^a-z])(?:u?uid|did|sid)(?:$|[^a-z])", re.IGNORECASE)
# values that look like credentials wherever they appear: an API key, a JWT
_SECRET_VALUE = re.compile(r"ck_[A-Za-z0-9]{12}_[A-Za-z0-9_-]{20,}|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")
SYSTEM_SUBJECT = "system"  # the actor of entries made by Cohort itself (no identity)

Clock = Callable[[], float]


class AuditLogUnavailable(TransientFault):
    """The audit log cannot be read or written now (a disk error, Redis away): the action it would record
    should be refused (503), since an unrecorded privileged action is what the log exists to prevent."""


@dataclass(frozen=True)
class AuditEntry:
    """One recorded action. `tenant` is the tenant the action concerns (None: platform-wide)."""

    seq: int
    at: str  # ISO-8601 UTC with microseconds
    tenant: str | None
    actor_subject: str
    actor_via: str
    actor_role: str | None
    actor_tenant: str | None
    action: str
    target: str
    outcome: str
    detail: dict[str, Any] = field(default_factory=dict)
    prev_hash: str = GENESIS_HASH
    hash: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def computed_hash(self) -> str:
        """SHA-256 of the canonical encoding of every field but `hash` itself."""
        body = self.as_dict()
        del body["hash"]
        return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AuditEntry:
        return cls(**{name: data[name] for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Verification:
    """What `verify()` found. `first_bad_seq` is None when intact, or when the head alone is wrong."""

    ok: bool
    checked: int
    first_bad_seq: int | None
    reason: str
    head_seq: int = 0
    head_hash: str = GENESIS_HASH

    def __iter__(self) -> Iterator[Any]:  # (ok, checked, first_bad_seq, reason) = log.verify()
        return iter((self.ok, self.checked, self.first_bad_seq, self.reason))


class AuditLog(Protocol):
    def append(self, actor: Identity | None, action: str, target: str, outcome: str,
               detail: dict[str, Any] | None = None, tenant: str | None = None) -> AuditEntry:
        """Record one action; the stored entry (its seq, time and hashes filled in). AuditLogUnavailable
        means the action must not proceed (the entry may still have been stored: an attempt is recorded)."""
        ...

    def entries(self, tenant: str | None = None, since_seq: int = 0, limit: int = 1000) -> list[AuditEntry]:
        """Entries with seq > since_seq, oldest first, at most `limit`; only `tenant`'s when given."""
        ...

    def verify(self) -> Verification: ...

    def close(self) -> None: ...


def _audit_input(message: str) -> CohortError:
    return CohortError(ErrorCode.AUDIT_INPUT, message)


def _token(value: object, what: str) -> str:
    if not isinstance(value, str) or not _TOKEN.match(value):
        raise _audit_input(f"{what} {str(value)[:40]!r} is not a short lower-case token (a-z, 0-9, _.:-; ≤ 64)")
    return value


def _text(value: object, limit: int = MAX_TEXT_CHARS) -> str:
    """Printable, credential-free, at most `limit` characters (cut before the regexes run: huge input is cheap;
    the window is wide enough that a credential starting before the cut is redacted whole)."""
    try:
        text = value if isinstance(value, str) else str(value)
    except Exception:  # noqa: BLE001 (an object whose str() fails is named by its type)
        text = f"<{type(value).__name__}>"
    text = _SECRET_VALUE.sub(REDACTED, _CONTROL.sub(" ", text[: limit + 200]))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _bounded(value: object, depth: int) -> Any:
    """A JSON-safe, size-bounded copy of a detail value."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**63 else _text(value)
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else _text(value)
    if isinstance(value, dict):
        return _bounded_mapping(value, depth + 1) if depth < MAX_DETAIL_DEPTH else "[nested too deep]"
    if isinstance(value, (list, tuple)):
        if depth >= MAX_DETAIL_DEPTH:
            return "[nested too deep]"
        return [_bounded(item, depth + 1) for item in list(value)[:MAX_LIST_ITEMS]]
    return _text(value)


def _bounded_mapping(mapping: dict[Any, Any], depth: int) -> dict[str, Any]:
    bounded: dict[str, Any] = {}
    for key, value in list(mapping.items())[:MAX_DETAIL_KEYS]:
        name = _text(key, 64)
        bounded[name] = REDACTED if _SENSITIVE_KEY.search(name) else _bounded(value, depth)
    if len(mapping) > MAX_DETAIL_KEYS:
        bounded["_omitted_keys"] = len(mapping) - MAX_DETAIL_KEYS
    return bounded


def bound_detail(detail: dict[str, Any] | None) -> dict[str, Any]:
    """What of `detail` is recorded: sensitive keys and credential-like values redacted, strings, lists,
    keys and depth cut, and at most MAX_DETAIL_BYTES encoded (else only a note of the size)."""
    if detail is None:
        return {}
    if not isinstance(detail, dict):
        raise _audit_input("an audit detail must be a mapping")
    bounded = _bounded_mapping(detail, 0)
    size = len(orjson.dumps(bounded))
    return bounded if size <= MAX_DETAIL_BYTES else {"_truncated": True, "_bytes": size}


def _now_text(clock: Clock) -> str:
    return datetime.fromtimestamp(clock(), UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class _Draft:
    """An entry's content before the chain position (seq, prev_hash) is known."""

    fields: dict[str, Any]

    def chained(self, seq: int, prev_hash: str, at: str) -> AuditEntry:
        entry = AuditEntry(seq=seq, at=at, prev_hash=prev_hash, **self.fields)
        return AuditEntry(**{**entry.as_dict(), "hash": entry.computed_hash()})


def _draft(actor: Identity | None, action: str, target: str, outcome: str, detail: dict[str, Any] | None,
           tenant: str | None) -> _Draft:
    if actor is not None and not isinstance(actor, Identity):
        raise _audit_input("the actor must be an Identity or None (Cohort itself)")
    concerned = tenant if tenant is not None else (actor.tenant if actor else None)
    if concerned is not None:
        check_tenant_id(concerned)
    if not isinstance(target, str):
        raise _audit_input("an audit target must be text")
    return _Draft({
        "tenant": concerned,
        "actor_subject": _text(actor.subject, 128) if actor else SYSTEM_SUBJECT,
        "actor_via": actor.via if actor else SYSTEM_SUBJECT,
        "actor_role": str(actor.role) if actor else None,
        "actor_tenant": actor.tenant if actor else None,
        "action": _token(action, "action"), "target": _text(target), "outcome": _token(outcome, "outcome"),
        "detail": bound_detail(detail)})


def verify_chain(entries: Iterable[AuditEntry], head: tuple[int, str] | None) -> Verification:
    """Recompute the chain over `entries` (in stored order) and compare its end with `head`."""
    expected, previous, checked = 1, GENESIS_HASH, 0
    for entry in entries:
        if entry.seq != expected:
            why = (f"entry {expected} is missing or out of order (entry {entry.seq} is stored in its place)"
                   if entry.seq > expected
                   else f"entries out of order: entry {entry.seq} is stored where entry {expected} belongs")
            return Verification(False, checked, expected, why)
        if entry.computed_hash() != entry.hash:
            return Verification(False, checked, entry.seq, f"entry {entry.seq} was edited: its hash does not "
                                "match its content")
        if entry.prev_hash != previous:
            return Verification(False, checked, entry.seq, f"entry {entry.seq} does not link to entry "
                                f"{entry.seq - 1} (prev_hash differs): an entry before it was replaced")
        if head is not None and entry.seq == head[0] and entry.hash != head[1]:
            return Verification(False, checked, entry.seq, f"entry {entry.seq} differs from the head's hash",
                                *head)
        expected, previous, checked = expected + 1, entry.hash, checked + 1
    return _check_head(checked, previous, head)


def _check_head(last_seq: int, last_hash: str, head: tuple[int, str] | None) -> Verification:
    if head is None:
        if last_seq == 0:
            return Verification(True, 0, None, "empty log")
        return Verification(False, last_seq, None, "the head record is missing (deleted?) while the log holds "
                            f"{last_seq} entries")
    head_seq, head_hash = head
    if head_seq > last_seq:
        return Verification(False, last_seq, last_seq + 1, f"truncated: the log ends at entry {last_seq} but "
                            f"the head says {head_seq}", head_seq, head_hash)
    if head_seq < last_seq - HEAD_LAG_TOLERATED:
        return Verification(False, last_seq, head_seq + 1, f"entries {head_seq + 1}…{last_seq} were appended "
                            f"without moving the head (which says {head_seq}): forged?", head_seq, head_hash)
    lag = "" if head_seq == last_seq else " (the head is one behind: a crash between an append and its head)"
    return Verification(True, last_seq, None, "intact" + lag, last_seq, last_hash)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY, at TEXT NOT NULL, tenant TEXT, actor_subject TEXT NOT NULL,
    actor_via TEXT NOT NULL, actor_role TEXT, actor_tenant TEXT, action TEXT NOT NULL, target TEXT NOT NULL,
    outcome TEXT NOT NULL, detail TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS audit_tenant ON audit (tenant, seq);
"""
_COLUMNS = ("seq", "at", "tenant", "actor_subject", "actor_via", "actor_role", "actor_tenant", "action",
            "target", "outcome", "detail", "prev_hash", "hash")
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM audit"


def _check_page(tenant: str | None, since_seq: int, limit: int) -> None:
    if tenant is not None:
        check_tenant_id(tenant)
    if not isinstance(since_seq, int) or since_seq < 0:
        raise _audit_input("since_seq must be a whole number ≥ 0")
    if not isinstance(limit, int) or not 1 <= limit <= MAX_ENTRIES_PAGE:
        raise _audit_input(f"limit must be between 1 and {MAX_ENTRIES_PAGE}")


def _entry_from_row(row: tuple[Any, ...]) -> AuditEntry:
    values = dict(zip(_COLUMNS, row))
    values["detail"] = orjson.loads(values["detail"])
    return AuditEntry(**values)


class SqliteAuditLog:
    """The embedded footprint's audit log: `audit.sqlite` (WAL, mode 0600) and its head `audit.head`."""

    def __init__(self, path: Path, *, clock: Clock = time.time):
        self.path = Path(path)
        self.head_path = self.path.with_suffix(".head")
        self._clock = clock
        self._lock = threading.Lock()
        try:
            create_owner_only(self.path)
            lock_path = self.path.with_suffix(".lock")
            create_owner_only(lock_path)
            self._lock_file = open(lock_path, "r+b")  # noqa: SIM115 (held open: the cross-process append lock)
            self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # an acknowledged entry survives power loss
            self._db.executescript(_SCHEMA)
            restrict_sqlite_side_files(self.path)
        except (OSError, sqlite3.Error) as exc:
            raise AuditLogUnavailable(f"audit log {self.path} cannot be opened: {exc}") from exc

    @contextmanager
    def _exclusive(self) -> Iterator[sqlite3.Connection]:
        """One appender at a time across threads and processes, the head write included."""
        with self._lock:
            try:
                fcntl.flock(self._lock_file, fcntl.LOCK_EX)
                try:
                    yield self._db
                finally:
                    fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            except (OSError, sqlite3.Error) as exc:
                raise AuditLogUnavailable(f"audit log {self.path}: {exc}") from exc

    def append(self, actor: Identity | None, action: str, target: str, outcome: str,
               detail: dict[str, Any] | None = None, tenant: str | None = None) -> AuditEntry:
        draft = _draft(actor, action, target, outcome, detail, tenant)
        with self._exclusive() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                last = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
                entry = draft.chained(last[0] + 1 if last else 1, last[1] if last else GENESIS_HASH,
                                      _now_text(self._clock))
                row = entry.as_dict()
                row["detail"] = orjson.dumps(entry.detail, option=orjson.OPT_SORT_KEYS).decode()
                db.execute(f"INSERT INTO audit ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
                           [row[name] for name in _COLUMNS])
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            self._write_head(entry.seq, entry.hash)
        return entry

    def _write_head(self, seq: int, digest: str) -> None:
        temporary = self.head_path.with_name(f"{self.head_path.name}.{os.getpid()}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            os.write(fd, orjson.dumps({"seq": seq, "hash": digest}))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.replace(temporary, self.head_path)
        finally:
            temporary.unlink(missing_ok=True)
        sync_path(self.head_path.parent)

    def _read_head(self) -> tuple[int, str] | None:
        try:
            data = orjson.loads(self.head_path.read_bytes())
            return int(data["seq"]), str(data["hash"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            return (-1, "unreadable")

    def entries(self, tenant: str | None = None, since_seq: int = 0, limit: int = 1000) -> list[AuditEntry]:
        _check_page(tenant, since_seq, limit)
        where, args = ("WHERE seq > ? AND tenant = ?", [since_seq, tenant]) if tenant is not None else (
            "WHERE seq > ?", [since_seq])
        with self._read() as db:
            rows = db.execute(f"{_SELECT} {where} ORDER BY seq LIMIT ?", [*args, limit]).fetchall()
        return [_entry_from_row(row) for row in rows]

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._db
            except sqlite3.Error as exc:
                raise AuditLogUnavailable(f"audit log {self.path}: {exc}") from exc

    def verify(self) -> Verification:
        """Streams the log in pages (memory stays flat however long it is) up to the last entry stored when
        the head was read: appends made meanwhile are left for the next verification."""
        with self._exclusive() as db:  # the head and the end of the log as of one moment
            head = self._read_head()
            last = db.execute("SELECT MAX(seq) FROM audit").fetchone()[0]
        if head == (-1, "unreadable"):
            return Verification(False, 0, None, f"the head record {self.head_path} is unreadable")
        return verify_chain(self._rows_through(last or 0), head)

    def _rows_through(self, last_seq: int) -> Iterator[AuditEntry]:
        after, page = -(2**63), READ_PAGE_ENTRIES  # below any sequence number, a tamperer's negative ones too
        while True:
            with self._read() as db:
                rows = db.execute(f"{_SELECT} WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
                                  (after, last_seq, page)).fetchall()
            yield from _parsed(rows)
            if len(rows) < page:
                return
            after = rows[-1][0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
            self._lock_file.close()


def _parsed(rows: list[tuple[Any, ...]]) -> Iterator[AuditEntry]:
    """Rows as entries; an unreadable row becomes an entry whose hash cannot match (reported as edited)."""
    for row in rows:
        try:
            yield _entry_from_row(row)
        except (ValueError, TypeError):
            yield AuditEntry(seq=row[0], at="", tenant=None, actor_subject="", actor_via="", actor_role=None,
                             actor_tenant=None, action="", target="", outcome="", hash="unreadable")


REDIS_PREFIX = "cohort:audit:"
_ENTRIES_KEY = REDIS_PREFIX + "entries"
_HEAD_KEY = REDIS_PREFIX + "head"
APPEND_ATTEMPTS = 200  # replicas racing for the same head: each loss costs one round trip
# Append only if the head is still the one the entry was chained to; else answer the current head.
_COMPARE_AND_APPEND = """
local head = redis.call('HMGET', KEYS[2], 'seq', 'hash')
local seq = tonumber(head[1]) or 0
local digest = head[2] or ARGV[4]
if seq ~= tonumber(ARGV[1]) or digest ~= ARGV[2] then return {0, seq, digest} end
redis.call('RPUSH', KEYS[1], ARGV[3])
redis.call('HSET', KEYS[2], 'seq', seq + 1, 'hash', ARGV[5])
return {1, seq + 1, ARGV[5]}
"""


class RedisAuditLog:
    """The scale-out audit log: a Redis list `cohort:audit:entries` (entry n at index n-1, JSON) and the head
    hash `cohort:audit:head`, shared by every `serve` replica."""

    def __init__(self, url: str, *, socket_timeout_s: float = 5.0, clock: Clock = time.time):
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self._errors = (redis.RedisError,)
        self._clock = clock
        self._client: Any = redis.Redis.from_url(url, socket_timeout=socket_timeout_s,
                                                 socket_connect_timeout=socket_timeout_s,
                                                 retry=Retry(NoBackoff(), 0), client_name="cohort-audit")
        self._append = self._client.register_script(_COMPARE_AND_APPEND)

    @contextmanager
    def _redis(self) -> Iterator[Any]:
        try:
            yield self._client
        except self._errors as exc:
            raise AuditLogUnavailable(f"audit log (Redis) unavailable: {exc}") from exc

    def _head(self) -> tuple[int, str] | None:
        with self._redis() as client:
            seq, digest = client.hmget(_HEAD_KEY, "seq", "hash")
        return None if seq is None else (int(seq), digest.decode() if digest else "")

    def append(self, actor: Identity | None, action: str, target: str, outcome: str,
               detail: dict[str, Any] | None = None, tenant: str | None = None) -> AuditEntry:
        draft = _draft(actor, action, target, outcome, detail, tenant)
        seq, previous = self._head() or (0, GENESIS_HASH)
        for _ in range(APPEND_ATTEMPTS):
            entry = draft.chained(seq + 1, previous, _now_text(self._clock))
            with self._redis():
                done, seq_now, hash_now = self._append(
                    keys=[_ENTRIES_KEY, _HEAD_KEY],
                    args=[seq, previous, orjson.dumps(entry.as_dict(), option=orjson.OPT_SORT_KEYS),
                          GENESIS_HASH, entry.hash])
            if done:
                return entry
            seq, previous = int(seq_now), hash_now.decode() if isinstance(hash_now, bytes) else str(hash_now)
        raise AuditLogUnavailable(f"audit log (Redis): {APPEND_ATTEMPTS} appends in a row lost the race")

    def _scan(self, since_seq: int = 0, until: int | None = None) -> Iterator[AuditEntry]:
        """Entries from list index `since_seq` on, in pages, up to index `until` (exclusive) when given."""
        start, page = since_seq, READ_PAGE_ENTRIES
        while until is None or start < until:
            stop = start + page - 1 if until is None else min(start + page, until) - 1
            with self._redis() as client:
                raws = client.lrange(_ENTRIES_KEY, start, stop)
            for offset, raw in enumerate(raws):
                yield _entry_from_json(raw, start + offset + 1)
            if len(raws) < stop - start + 1:
                return
            start += len(raws)

    def entries(self, tenant: str | None = None, since_seq: int = 0, limit: int = 1000) -> list[AuditEntry]:
        """Entry n sits at index n-1 while the log is intact; a tenant's are found by scanning from since_seq."""
        _check_page(tenant, since_seq, limit)
        found: list[AuditEntry] = []
        for entry in self._scan(since_seq):
            if tenant is None or entry.tenant == tenant:
                found.append(entry)
                if len(found) == limit:
                    break
        return found

    def verify(self) -> Verification:
        """The list's length and the head are read in one transaction; entries appended after are left for
        the next verification, entries forged past the head are not."""
        with self._redis() as client:
            pipe = client.pipeline(transaction=True)
            pipe.llen(_ENTRIES_KEY)
            pipe.hmget(_HEAD_KEY, "seq", "hash")
            length, (seq, digest) = pipe.execute()
        head = None if seq is None else (int(seq), digest.decode() if digest else "")
        return verify_chain(self._scan(until=length), head)

    def close(self) -> None:
        self._client.close()


def _entry_from_json(raw: bytes, position: int) -> AuditEntry:
    try:
        return AuditEntry.from_dict(orjson.loads(raw))
    except (ValueError, TypeError, KeyError):
        return AuditEntry(seq=position, at="", tenant=None, actor_subject="", actor_via="", actor_role=None,
                          actor_tenant=None, action="", target="", outcome="", hash="unreadable")


def audit_log_path(settings: Settings) -> Path:
    return settings.data_dir / "audit.sqlite"


def open_audit_log(settings: Settings, *, clock: Clock = time.time) -> AuditLog:
    """The audit log of this footprint: SQLite beside the embedded data, Redis for scale-out."""
    if settings.footprint == "scaleout":
        if not settings.redis_url:
            raise CohortError(ErrorCode.CONFIG_INVALID, "scale-out keeps the audit log in Redis: set "
                              "COHORT_REDIS_URL")
        return RedisAuditLog(settings.redis_url, socket_timeout_s=settings.redis_socket_timeout_seconds, clock=clock)
    return SqliteAuditLog(audit_log_path(settings), clock=clock)
