"""API keys and tenants: random keys shown once, stored as hashes, bound to a tenant, a role and a scope.

A key reads `ck_<key_id>_<secret>`. The key id (12 letters and digits, public) is what lists, revocation
and the audit log name; the secret (32 random bytes, url-safe base64) is never stored: only its SHA-256
is. The secret is random, not a password, so a fast hash is enough (nobody can guess 256 bits however
fast they hash), and it keeps `verify` cheap on the ingest hot path.

Two stores share the rules (`_KeyStoreRules`) and one contract test suite: `SqliteKeyStore` for the
embedded footprint (its own file beside the data, so `cohort keys` works while `cohort serve` holds the
store) and `RedisKeyStore` for scale-out (every `serve` replica shares it). `open_key_store` picks one
from the settings.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sqlite3
import string
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from cohort.core.errors import CohortError, ErrorCode, TransientFault
from cohort.security.identity import Identity, Role, Scope, check_tenant_id
from cohort.owner_only_files import create_owner_only, restrict_sqlite_side_files
from cohort.settings import Settings

KEY_PREFIX = "ck_"
KEY_ID_CHARS = 12  # 62^12 ≈ 2^71: ids never collide in practice (a collision is retried anyway)
_KEY_ID_ALPHABET = string.ascii_letters + string.digits  # no `_`: it separates the id from the secret
SECRET_BYTES = 32
_KEY_TEXT = re.compile(r"^ck_([A-Za-z0-9]{12})_([A-Za-z0-9_-]{43})$")
_KEY_ID = re.compile(r"^[A-Za-z0-9]{12}$")
MAX_TEXT_CHARS = 200  # a key's label, a tenant's name
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
VERIFY_CACHE_SECONDS = 5.0  # a revocation reaches every other process within this
VERIFY_CACHE_ENTRIES = 10_000

Clock = Callable[[], float]  # wall-clock seconds since the epoch (time.time); tests inject their own


@dataclass(frozen=True)
class KeyInfo:
    """What may be shown of a key: never its secret, never its hash."""

    key_id: str
    tenant: str | None
    role: Role
    scope: Scope | None
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    label: str = ""

    def refusal(self, now: float) -> str | None:
        """Why the key cannot be used at `now` (revoked, expired), or None when it can."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at.timestamp():
            return "expired"
        return None

    def identity(self) -> Identity:
        return Identity(subject=self.key_id, role=self.role, tenant=self.tenant, scope=self.scope, via="api_key")


@dataclass(frozen=True)
class TenantInfo:
    tenant_id: str
    name: str
    created_at: datetime


class KeyStoreUnavailable(TransientFault):
    """The key store cannot be read or written now (Redis away, a disk error): the caller answers 503 and
    retries, never 401 (the key may well be valid)."""


class KeyStore(Protocol):
    def create_key(self, tenant: str | None, role: Role, scope: Scope | None = None,
                   expires_at: datetime | None = None, label: str = "") -> tuple[KeyInfo, str]:
        """Make a key; return its info and its full text, which is shown once and stored nowhere."""
        ...

    def verify(self, key_text: str) -> Identity:
        """The identity of a usable key, or CohortError(ERR_AUTH_INVALID) saying why not."""
        ...

    def cached_identity(self, key_text: str) -> Identity | None:
        """The identity of a key verified in the last VERIFY_CACHE_SECONDS, without reading the store; None
        when it is not cached (then `verify`, which may wait on the store)."""
        ...

    def get_key(self, key_id: str) -> KeyInfo | None: ...

    def list_keys(self, tenant: str | None = None) -> list[KeyInfo]: ...

    def revoke(self, key_id: str) -> bool:
        """True if this call revoked the key; False if it is unknown or was revoked already."""
        ...

    def expire(self, key_id: str, at: float) -> bool:
        """Make the key stop working at `at` (now or later: a rotation's overlap) unless it stops by then
        already; True if this call brought its end forward, False if unknown, revoked or ending sooner."""
        ...

    def create_tenant(self, tenant_id: str, name: str = "") -> TenantInfo: ...

    def list_tenants(self) -> list[TenantInfo]: ...

    def tenant_exists(self, tenant_id: str) -> bool: ...

    def has_admin_key(self) -> bool:
        """Whether an admin key is usable now (not revoked, not expired)."""
        ...

    def close(self) -> None: ...


def parse_role(text: str) -> Role:
    try:
        return Role(text)
    except ValueError:
        raise CohortError(ErrorCode.AUTH_INVALID_ROLE, f"role {str(text)[:40]!r} is not one of "
                          f"{', '.join(Role)}") from None


def new_key_text() -> tuple[str, str, str]:
    """(key_id, secret, full key text) of a fresh random key."""
    key_id = "".join(secrets.choice(_KEY_ID_ALPHABET) for _ in range(KEY_ID_CHARS))
    secret = secrets.token_urlsafe(SECRET_BYTES)
    return key_id, secret, f"{KEY_PREFIX}{key_id}_{secret}"


def secret_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _invalid(reason: str) -> CohortError:
    return CohortError(ErrorCode.AUTH_INVALID, f"API key {reason}")


def _clean_text(text: str, what: str) -> str:
    """Labels and names are shown in tables and logs: control characters become spaces, length is bounded."""
    if not isinstance(text, str):
        raise CohortError(ErrorCode.FIELD_TOO_LONG, f"{what} must be text")
    if len(text) > MAX_TEXT_CHARS:
        raise CohortError(ErrorCode.FIELD_TOO_LONG, f"{what} over {MAX_TEXT_CHARS} characters")
    return _CONTROL.sub(" ", text).strip()


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _to_datetime(seconds: float | None) -> datetime | None:
    return None if seconds is None else _utc(seconds)


def _expiry_seconds(expires_at: datetime | None, now: float) -> float | None:
    """An expiry as epoch seconds; a naive datetime is UTC. A key born expired is refused."""
    if expires_at is None:
        return None
    if not isinstance(expires_at, datetime):
        raise CohortError(ErrorCode.AUTH_INVALID_EXPIRY, "expiry must be a date and time")
    if expires_at.tzinfo is None:
        expires_at = expires_at.replace(tzinfo=UTC)
    seconds = expires_at.timestamp()
    if seconds <= now:
        raise CohortError(ErrorCode.AUTH_INVALID_EXPIRY, f"expiry {expires_at.isoformat()} is not in the future")
    return seconds


_DURATION = re.compile(r"^(\d{1,6})([smhdw])$")
_DURATION_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_expiry(text: str, now: float) -> datetime:
    """`30d`, `12h`, `90m`, `2w`, `3600s` from `now`, or an ISO-8601 date or time (UTC unless it says)."""
    match = _DURATION.match(text.strip())
    if match:
        return _utc(now + int(match.group(1)) * _DURATION_SECONDS[match.group(2)])
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise CohortError(ErrorCode.AUTH_INVALID_EXPIRY, f"expiry {text[:40]!r} is neither a duration (30d, 12h, "
                          "90m, 2w) nor an ISO-8601 date or time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


STALE_GRACE_SECONDS = 600.0  # how long a verified key outlives an unreachable key store


class _VerifiedKeyCache:
    """Keys verified in the last few seconds, by the SHA-256 of their full text (the text itself is not kept).

    Bounded in entries (least recently used go first) and in time: an entry answers for `seconds` (for
    STALE_GRACE_SECONDS while the store is away) and never past the key's expiry; a wall clock stepping
    back empties it. Thread-safe."""

    def __init__(self, seconds: float, entries: int):
        self.seconds = seconds
        self.entries = entries
        self._items: OrderedDict[bytes, tuple[Identity, float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key_text: str, now: float, *, grace: float = 0.0) -> Identity | None:
        """The cached identity while fresh (`seconds`), or, with `grace`, up to that long after it was
        verified (never past the key's expiry): what keeps known keys working while the store is away."""
        if self.seconds <= 0:
            return None
        fingerprint = hashlib.sha256(key_text.encode("utf-8", "replace")).digest()
        with self._lock:
            item = self._items.get(fingerprint)
            if item is None:
                return None
            identity, cached_at, expires = item
            fresh_until = min(cached_at + max(self.seconds, grace), expires)
            if cached_at <= now < fresh_until:
                self._items.move_to_end(fingerprint)
                return identity
            if not cached_at <= now < min(cached_at + STALE_GRACE_SECONDS, expires):
                del self._items[fingerprint]  # of no use any more, even while the store is away
            return None

    def put(self, key_text: str, identity: Identity, now: float, expires: float | None) -> None:
        if self.seconds <= 0:
            return
        fingerprint = hashlib.sha256(key_text.encode()).digest()
        with self._lock:
            self._items[fingerprint] = (identity, now, float("inf") if expires is None else expires)
            self._items.move_to_end(fingerprint)
            while len(self._items) > self.entries:
                self._items.popitem(last=False)

    def forget(self, key_id: str) -> None:
        with self._lock:
            for fingerprint in [f for f, (identity, _, _) in self._items.items() if identity.subject == key_id]:
                del self._items[fingerprint]


class _KeyStoreRules:
    """The rules every key store follows; a store supplies the storage primitives below."""

    def __init__(self, clock: Clock, cache_seconds: float, cache_entries: int):
        self._clock = clock
        self._cache = _VerifiedKeyCache(cache_seconds, cache_entries)

    # -- the contract --------------------------------------------------------------------------
    def create_key(self, tenant: str | None, role: Role, scope: Scope | None = None,
                   expires_at: datetime | None = None, label: str = "") -> tuple[KeyInfo, str]:
        role = parse_role(role)
        if role is Role.ADMIN:
            if tenant is not None:
                raise CohortError(ErrorCode.AUTH_INVALID_TENANT, "an admin key spans every tenant: give no tenant")
            if scope is not None:
                raise CohortError(ErrorCode.AUTH_INVALID_SCOPE, "an admin key spans every tenant: give no scope")
        else:
            if tenant is None:
                raise CohortError(ErrorCode.AUTH_INVALID_TENANT, f"an {role} key needs a tenant" if role[0] in "aeiou"
                                  else f"a {role} key needs a tenant")
            if not self.tenant_exists(check_tenant_id(tenant)):
                raise CohortError(ErrorCode.AUTH_INVALID_TENANT, f"tenant {tenant!r} does not exist; create it "
                                  f"first (cohort tenants create {tenant})")
        if scope is not None and not isinstance(scope, Scope):
            raise CohortError(ErrorCode.AUTH_INVALID_SCOPE, "scope must be a Scope (Scope.parse('kind:v,…'))")
        now = self._clock()
        expires = _expiry_seconds(expires_at, now)
        label = _clean_text(label, "label")
        while True:
            key_id, secret, key_text = new_key_text()
            info = KeyInfo(key_id=key_id, tenant=tenant, role=role, scope=scope, created_at=_utc(now),
                           expires_at=_to_datetime(expires), label=label)
            if self._insert_key(info, secret_digest(secret)):
                return info, key_text

    def verify(self, key_text: str) -> Identity:
        """The identity of a usable key. Verified keys are cached for up to VERIFY_CACHE_SECONDS (5 s), so a
        revocation made by another process takes effect within that; in this process, at once."""
        now = self._clock()
        if not isinstance(key_text, str):
            raise _invalid("malformed")
        identity = self._cache.get(key_text, now)
        if identity is not None:
            return identity
        match = _KEY_TEXT.match(key_text)
        if match is None:
            raise _invalid("malformed (expected ck_<key id>_<secret>)")
        key_id, secret = match.groups()
        try:
            record = self._load_key(key_id)
        except KeyStoreUnavailable:
            # acks must not stop because the key store is away (Redis restarting): a key verified in the last
            # STALE_GRACE_SECONDS still works; a revocation made meanwhile applies once the store is back
            known = self._cache.get(key_text, now, grace=STALE_GRACE_SECONDS)
            if known is None:
                raise
            return known
        # a wrong secret for a real id reads as unknown: the id alone proves nothing and reveals nothing
        if record is None or not hmac.compare_digest(record[1], secret_digest(secret)):
            raise _invalid(f"unknown ({key_id})")
        info = record[0]
        refusal = info.refusal(now)
        if refusal is not None:
            raise _invalid(f"{refusal} ({key_id})")
        identity = info.identity()
        self._cache.put(key_text, identity, now, info.expires_at.timestamp() if info.expires_at else None)
        return identity

    def cached_identity(self, key_text: str) -> Identity | None:
        return self._cache.get(key_text, self._clock()) if isinstance(key_text, str) else None

    def get_key(self, key_id: str) -> KeyInfo | None:
        if not isinstance(key_id, str) or not _KEY_ID.match(key_id):
            return None
        record = self._load_key(key_id)
        return record[0] if record else None

    def list_keys(self, tenant: str | None = None) -> list[KeyInfo]:
        keys = sorted(self._all_keys(), key=lambda info: (info.created_at, info.key_id))
        return [info for info in keys if tenant is None or info.tenant == tenant]

    def revoke(self, key_id: str) -> bool:
        if not isinstance(key_id, str) or not _KEY_ID.match(key_id):
            return False
        revoked = self._mark_revoked(key_id, self._clock())
        self._cache.forget(key_id)
        return revoked

    def expire(self, key_id: str, at: float) -> bool:
        if not isinstance(key_id, str) or not _KEY_ID.match(key_id):
            return False
        now = self._clock()
        if not isinstance(at, (int, float)) or at != at or at < now - 1.0:  # a second's slack: "now" said just before
            raise CohortError(ErrorCode.AUTH_INVALID_EXPIRY, "a key's new expiry must be now or later")
        shortened = self._shorten_expiry(key_id, max(float(at), now))
        self._cache.forget(key_id)
        return shortened

    def create_tenant(self, tenant_id: str, name: str = "") -> TenantInfo:
        tenant = TenantInfo(check_tenant_id(tenant_id), _clean_text(name, "tenant name"), _utc(self._clock()))
        if not self._insert_tenant(tenant):
            raise CohortError(ErrorCode.AUTH_INVALID_TENANT, f"tenant {tenant_id!r} exists already")
        return tenant

    def list_tenants(self) -> list[TenantInfo]:
        return sorted(self._load_tenants(), key=lambda t: t.tenant_id)

    def tenant_exists(self, tenant_id: str) -> bool:
        try:
            check_tenant_id(tenant_id)
        except CohortError:
            return False
        return self._has_tenant(tenant_id)

    def has_admin_key(self) -> bool:
        now = self._clock()
        return any(info.role is Role.ADMIN and info.refusal(now) is None for info in self._all_keys())

    # -- storage primitives --------------------------------------------------------------------
    def _insert_key(self, info: KeyInfo, digest: str) -> bool:
        """Store a new key; False if its id is taken."""
        raise NotImplementedError

    def _load_key(self, key_id: str) -> tuple[KeyInfo, str] | None:
        raise NotImplementedError

    def _all_keys(self) -> list[KeyInfo]:
        raise NotImplementedError

    def _mark_revoked(self, key_id: str, at: float) -> bool:
        raise NotImplementedError

    def _shorten_expiry(self, key_id: str, at: float) -> bool:
        """Set an unrevoked key's expiry to `at` unless it expires at or before `at` already."""
        raise NotImplementedError

    def _insert_tenant(self, tenant: TenantInfo) -> bool:
        """Store a new tenant; False if it exists."""
        raise NotImplementedError

    def _load_tenants(self) -> list[TenantInfo]:
        raise NotImplementedError

    def _has_tenant(self, tenant_id: str) -> bool:
        raise NotImplementedError


def _scope_text(scope: Scope | None) -> str | None:
    return None if scope is None else str(scope)


def _scope_from(text: str | None) -> Scope | None:
    return Scope.parse(text) if text else None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS tenants (
    tenant_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY,
    secret_sha256 TEXT NOT NULL,
    tenant_id TEXT REFERENCES tenants(tenant_id),
    role TEXT NOT NULL,
    scope TEXT,
    label TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL,
    revoked_at REAL
) WITHOUT ROWID;
"""
_KEY_COLUMNS = "key_id, tenant_id, role, scope, created_at, expires_at, revoked_at, label"


class SqliteKeyStore(_KeyStoreRules):
    """Keys and tenants in one SQLite file (WAL) of mode 0600, its -wal and -shm too (SQLite gives them the
    database file's mode). Several processes may open it at once: `cohort keys` beside `cohort serve`."""

    def __init__(self, path: Path, *, clock: Clock = time.time, cache_seconds: float = VERIFY_CACHE_SECONDS,
                 cache_entries: int = VERIFY_CACHE_ENTRIES):
        super().__init__(clock, cache_seconds, cache_entries)
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            create_owner_only(self.path)
            self._db = sqlite3.connect(self.path, timeout=5.0, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # a created key or a revocation survives power loss
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)
            restrict_sqlite_side_files(self.path)
        except (OSError, sqlite3.Error) as exc:
            raise KeyStoreUnavailable(f"key store {self.path} cannot be opened: {exc}") from exc

    @contextmanager
    def _sql(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._db
            except sqlite3.IntegrityError:
                raise
            except sqlite3.Error as exc:
                raise KeyStoreUnavailable(f"key store {self.path}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _insert_key(self, info: KeyInfo, digest: str) -> bool:
        try:
            with self._sql() as db:
                db.execute(f"INSERT INTO api_keys ({_KEY_COLUMNS}, secret_sha256) VALUES (?,?,?,?,?,?,?,?,?)",
                           (info.key_id, info.tenant, str(info.role), _scope_text(info.scope),
                            info.created_at.timestamp(), info.expires_at.timestamp() if info.expires_at else None,
                            None, info.label, digest))
        except sqlite3.IntegrityError:
            return False
        return True

    def _load_key(self, key_id: str) -> tuple[KeyInfo, str] | None:
        with self._sql() as db:
            row = db.execute(f"SELECT {_KEY_COLUMNS}, secret_sha256 FROM api_keys WHERE key_id = ?",
                             (key_id,)).fetchone()
        return None if row is None else (_key_from_row(row), row[8])

    def _all_keys(self) -> list[KeyInfo]:
        with self._sql() as db:
            return [_key_from_row(row) for row in db.execute(f"SELECT {_KEY_COLUMNS} FROM api_keys")]

    def _mark_revoked(self, key_id: str, at: float) -> bool:
        with self._sql() as db:
            cursor = db.execute("UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
                                (at, key_id))
        return cursor.rowcount == 1

    def _shorten_expiry(self, key_id: str, at: float) -> bool:
        with self._sql() as db:
            cursor = db.execute("UPDATE api_keys SET expires_at = ? WHERE key_id = ? AND revoked_at IS NULL "
                                "AND (expires_at IS NULL OR expires_at > ?)", (at, key_id, at))
        return cursor.rowcount == 1

    def _insert_tenant(self, tenant: TenantInfo) -> bool:
        try:
            with self._sql() as db:
                db.execute("INSERT INTO tenants (tenant_id, name, created_at) VALUES (?,?,?)",
                           (tenant.tenant_id, tenant.name, tenant.created_at.timestamp()))
        except sqlite3.IntegrityError:
            return False
        return True

    def _load_tenants(self) -> list[TenantInfo]:
        with self._sql() as db:
            return [TenantInfo(row[0], row[1], _utc(row[2]))
                    for row in db.execute("SELECT tenant_id, name, created_at FROM tenants")]

    def _has_tenant(self, tenant_id: str) -> bool:
        with self._sql() as db:
            return db.execute("SELECT 1 FROM tenants WHERE tenant_id = ?", (tenant_id,)).fetchone() is not None


def _key_from_row(row: tuple) -> KeyInfo:
    return KeyInfo(key_id=row[0], tenant=row[1], role=Role(row[2]), scope=_scope_from(row[3]),
                   created_at=_utc(row[4]), expires_at=_to_datetime(row[5]),
                   revoked_at=_to_datetime(row[6]), label=row[7])


REDIS_PREFIX = "cohort:auth:"
_INSERT_IF_NEW = """
if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[2], unpack(ARGV, 2))
return 1
"""
_REVOKE = """
if redis.call('HEXISTS', KEYS[1], 'secret_sha256') == 0 then return 0 end
if redis.call('HEXISTS', KEYS[1], 'revoked_at') == 1 then return 0 end
redis.call('HSET', KEYS[1], 'revoked_at', ARGV[1])
return 1
"""
_SHORTEN_EXPIRY = """
if redis.call('HEXISTS', KEYS[1], 'secret_sha256') == 0 then return 0 end
if redis.call('HEXISTS', KEYS[1], 'revoked_at') == 1 then return 0 end
local expires = redis.call('HGET', KEYS[1], 'expires_at')
if expires and tonumber(expires) <= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'expires_at', ARGV[1])
return 1
"""


class RedisKeyStore(_KeyStoreRules):
    """Keys and tenants in Redis under `cohort:auth:`, shared by every `serve` replica: a hash per key
    (`cohort:auth:key:<id>`) and per tenant (`cohort:auth:tenant:<id>`), and a set of each's ids. Writes
    that must not half-happen run as Lua scripts (atomic in Redis)."""

    def __init__(self, url: str, *, socket_timeout_s: float = 5.0, clock: Clock = time.time,
                 cache_seconds: float = VERIFY_CACHE_SECONDS, cache_entries: int = VERIFY_CACHE_ENTRIES):
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        super().__init__(clock, cache_seconds, cache_entries)
        self._errors = (redis.RedisError,)
        self._client: Any = redis.Redis.from_url(url, socket_timeout=socket_timeout_s, decode_responses=True,
                                            socket_connect_timeout=socket_timeout_s, retry=Retry(NoBackoff(), 0),
                                            client_name="cohort-auth")
        self._insert_if_new = self._client.register_script(_INSERT_IF_NEW)
        self._revoke = self._client.register_script(_REVOKE)
        self._shorten = self._client.register_script(_SHORTEN_EXPIRY)

    @contextmanager
    def _redis(self) -> Iterator[object]:
        try:
            yield self._client
        except self._errors as exc:
            raise KeyStoreUnavailable(f"key store (Redis) unavailable: {exc}") from exc

    def close(self) -> None:
        self._client.close()

    def _insert_key(self, info: KeyInfo, digest: str) -> bool:
        fields = {"secret_sha256": digest, "role": str(info.role), "label": info.label,
                  "created_at": repr(info.created_at.timestamp())}
        optional = {"tenant": info.tenant, "scope": _scope_text(info.scope),
                    "expires_at": repr(info.expires_at.timestamp()) if info.expires_at else None}
        fields.update({name: value for name, value in optional.items() if value is not None})
        with self._redis():
            return bool(self._insert_if_new(keys=[REDIS_PREFIX + "keys", REDIS_PREFIX + f"key:{info.key_id}"],
                                            args=[info.key_id, *(x for pair in fields.items() for x in pair)]))

    def _load_key(self, key_id: str) -> tuple[KeyInfo, str] | None:
        with self._redis():
            fields = self._client.hgetall(REDIS_PREFIX + f"key:{key_id}")
        return (_key_from_fields(key_id, fields), fields["secret_sha256"]) if fields else None

    def _all_keys(self) -> list[KeyInfo]:
        with self._redis():
            key_ids = sorted(self._client.smembers(REDIS_PREFIX + "keys"))
            pipe = self._client.pipeline(transaction=False)
            for key_id in key_ids:
                pipe.hgetall(REDIS_PREFIX + f"key:{key_id}")
            rows = pipe.execute()
        return [_key_from_fields(key_id, fields) for key_id, fields in zip(key_ids, rows) if fields]

    def _mark_revoked(self, key_id: str, at: float) -> bool:
        with self._redis():
            return bool(self._revoke(keys=[REDIS_PREFIX + f"key:{key_id}"], args=[repr(at)]))

    def _shorten_expiry(self, key_id: str, at: float) -> bool:
        with self._redis():
            return bool(self._shorten(keys=[REDIS_PREFIX + f"key:{key_id}"], args=[repr(at)]))

    def _insert_tenant(self, tenant: TenantInfo) -> bool:
        with self._redis():
            return bool(self._insert_if_new(
                keys=[REDIS_PREFIX + "tenants", REDIS_PREFIX + f"tenant:{tenant.tenant_id}"],
                args=[tenant.tenant_id, "name", tenant.name, "created_at", repr(tenant.created_at.timestamp())]))

    def _load_tenants(self) -> list[TenantInfo]:
        with self._redis():
            tenant_ids = sorted(self._client.smembers(REDIS_PREFIX + "tenants"))
            pipe = self._client.pipeline(transaction=False)
            for tenant_id in tenant_ids:
                pipe.hgetall(REDIS_PREFIX + f"tenant:{tenant_id}")
            rows = pipe.execute()
        return [TenantInfo(tenant_id, fields.get("name", ""), _utc(float(fields.get("created_at", 0))))
                for tenant_id, fields in zip(tenant_ids, rows)]

    def _has_tenant(self, tenant_id: str) -> bool:
        with self._redis():
            return bool(self._client.sismember(REDIS_PREFIX + "tenants", tenant_id))


def _key_from_fields(key_id: str, fields: dict[str, str]) -> KeyInfo:
    def seconds(name: str) -> float | None:
        return float(fields[name]) if name in fields else None

    return KeyInfo(key_id=key_id, tenant=fields.get("tenant"), role=Role(fields["role"]),
                   scope=_scope_from(fields.get("scope")), created_at=_utc(float(fields["created_at"])),
                   expires_at=_to_datetime(seconds("expires_at")), revoked_at=_to_datetime(seconds("revoked_at")),
                   label=fields.get("label", ""))


def auth_db_path(settings: Settings) -> Path:
    return settings.auth_db or settings.data_dir / "auth.sqlite"


def open_key_store(settings: Settings, *, clock: Clock = time.time) -> KeyStore:
    """The key store of this footprint: SQLite beside the embedded data, Redis for scale-out."""
    if settings.footprint == "scaleout":
        if not settings.redis_url:
            raise CohortError(ErrorCode.CONFIG_INVALID, "scale-out keeps API keys in Redis: set COHORT_REDIS_URL")
        return RedisKeyStore(settings.redis_url, socket_timeout_s=settings.redis_socket_timeout_seconds, clock=clock)
    return SqliteKeyStore(auth_db_path(settings), clock=clock)
