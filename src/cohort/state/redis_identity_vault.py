"""Scale-out identity vault: entries in the Redis every process shares, under `cohort:vault:`.

Keys, with the tenant in braces (not a character of tenant ids, so no two tenants' keys can be confused;
and a Redis Cluster hash tag, so one tenant's keys share a slot and a script may touch them together):
- `cohort:vault:{T}:i:<32-byte lookup>` → pseudonym (the blind index: clear id → entry);
- `cohort:vault:{T}:p:<pseudonym>` → hash {k: key id, c: sealed clear id, l: lookup} (the reverse index);
- `cohort:vault:{T}#count` → entries held; `cohort:vault:#meta` → format and key fingerprint.

Round trips per `pseudonyms` call, whatever the number of ids: one MGET of the index (all known: done),
then, if some are new, one pipelined write of Lua scripts that each set index and entry only where no
index key is held yet (atomic in Redis: two processes racing get the one pseudonym that was set first).
Clear ids are sealed in this process; Redis never sees one in clear.

Faults: Redis away, loading, read-only, out of memory or failing to persist raise `VaultUnavailable` (a
TransientFault, retried by the pipeline); credentials or permissions `VaultMisconfigured` (terminal).
Redis must keep what it acknowledged (AOF, appendfsync always, as for the dedup state) and never evict
the vault's keys (a `maxmemory-policy` of allkeys-* is refused). A forgotten entry leaves Redis's memory at once, but its AOF keeps the old commands until the next AOF
rewrite (BGREWRITEAOF), as RDB snapshots keep it until they are replaced.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from typing import Any, Callable, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cohort.core.errors import CohortError, ErrorCode, TerminalFault, TransientFault
from cohort.core.pseudonym_cache import TTL_S, PseudonymCache
from cohort.security.secrets import Secrets
from cohort.state.redis_faults import redis_fault
from cohort.state.vault_entry import (EntrySealer, SealedEntry, VaultUnavailable, check_id, check_ids, check_kind,
                                      check_tenant, is_pseudonym)

FORMAT = "cohort-identity-vault"
FORMAT_VERSION = 1
PREFIX = b"cohort:vault:"
_META_KEY = PREFIX + b"#meta"
_MGET_KEYS = 10_000  # index keys per MGET
_SCRIPT_IDS = 1000  # new ids per script: each script holds Redis ≈ 1 ms per 1,000
_REKEY_SCAN = 1000
_T = TypeVar("_T")

# KEYS: count, then index and entry key of each id; ARGV: pseudonym, key id, sealed, lookup of each id.
# Returns each id's pseudonym: the one held, or the one given when it was set now ("" if its entry key was
# taken, a 2^-128 pseudonym collision: the caller retries).
_CREATE = b"""
local out, created = {}, 0
for i = 2, #KEYS, 2 do
  local a = (i - 2) * 2
  local held = redis.call('GET', KEYS[i])
  if held then
    out[#out + 1] = held
  elseif redis.call('EXISTS', KEYS[i + 1]) == 1 then
    out[#out + 1] = ''
  else
    redis.call('SET', KEYS[i], ARGV[a + 1])
    redis.call('HSET', KEYS[i + 1], 'k', ARGV[a + 2], 'c', ARGV[a + 3], 'l', ARGV[a + 4])
    out[#out + 1] = ARGV[a + 1]
    created = created + 1
  end
end
if created > 0 then redis.call('INCRBY', KEYS[1], created) end
return out
"""
# KEYS: count, index key; ARGV: entry key prefix. Deletes the index and its entry.
_FORGET = b"""
local p = redis.call('GET', KEYS[2])
if not p then return 0 end
redis.call('DEL', KEYS[2], ARGV[1] .. p)
redis.call('DECR', KEYS[1])
return 1
"""
# KEYS: count, entry key; ARGV: index key prefix, pseudonym. Deletes the entry and the index naming it.
_FORGET_PSEUDONYM = b"""
local l = redis.call('HGET', KEYS[2], 'l')
if not l then return 0 end
if redis.call('GET', ARGV[1] .. l) == ARGV[2] then redis.call('DEL', ARGV[1] .. l) end
redis.call('DEL', KEYS[2])
redis.call('DECR', KEYS[1])
return 1
"""
# KEYS: entry key; ARGV: old key id, new key id, new sealed. Only an entry still held under the old key.
_RESEAL = b"""
if redis.call('HGET', KEYS[1], 'k') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'k', ARGV[2], 'c', ARGV[3])
return 1
"""


class VaultMisconfigured(CohortError, TerminalFault):
    """Redis refuses the vault in a way no retry fixes (credentials, permissions, foreign data)."""

    def __init__(self, message: str):
        super().__init__(ErrorCode.CONFIG_INVALID, message)


class RedisIdentityVault:
    """The IdentityVault contract on Redis (see the module docstring). Nothing is sent before the first
    call, so opening never fails; the first call checks the vault was made with these keys."""

    def __init__(self, url: str, secrets_: Secrets, *, socket_timeout_s: float = 5.0,
                 cache_ttl_s: float = TTL_S):
        if not url:
            raise CohortError(ErrorCode.CONFIG_INVALID, "the scale-out identity vault needs COHORT_REDIS_URL")
        self._sealer = EntrySealer(secrets_)
        # the transform stage's memory of this vault's answers; forgets drop from it
        self.cache = PseudonymCache(ttl_s=cache_ttl_s)
        self._client = redis.Redis.from_url(
            url, socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s,
            retry=Retry(NoBackoff(), 0), health_check_interval=0, client_name="cohort-identity-vault")
        kwargs = self._client.connection_pool.connection_kwargs
        self._where = f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"
        self._checked = False

    # -- the contract --------------------------------------------------------------------------
    def pseudonyms(self, tenant: str, kind: str, clear_ids: Collection[str]) -> Mapping[str, str]:
        tenant, kind, unique = check_tenant(tenant), check_kind(kind), check_ids(clear_ids, "clear id")
        if not unique:
            return {}
        lookups = self._sealer.lookups(tenant, kind, unique)
        index_keys = [_index_prefix(tenant) + lookup for lookup in lookups]
        held = self._call(lambda: self._mget(index_keys))
        result = {clear_id: p.decode() for clear_id, p in zip(unique, held) if p is not None}
        missing = [i for i, p in enumerate(held) if p is None]
        if missing:
            new = {i: self._sealer.new_entry(tenant, kind, unique[i]) for i in missing}
            created = self._call(lambda: self._create(tenant, [(index_keys[i], lookups[i], new[i]) for i in missing]))
            if any(not p for p in created):
                raise VaultUnavailable(f"identity vault on Redis {self._where}: a new pseudonym was taken; retry")
            result.update((unique[i], p.decode()) for i, p in zip(missing, created))
        return result

    def reidentify(self, tenant: str, pseudonyms: Collection[str]) -> dict[str, str]:
        tenant = check_tenant(tenant)
        wanted = [p for p in check_ids(pseudonyms, "pseudonym") if is_pseudonym(p)]
        if not wanted:
            return {}

        def read() -> list[Any]:
            pipe = self._client.pipeline(transaction=False)
            for pseudonym in wanted:
                pipe.hmget(_entry_key(tenant, pseudonym), "k", "c")
            return pipe.execute()

        rows = self._call(read)
        return {p: self._sealer.open(tenant, SealedEntry(p, k.decode(), c))
                for p, (k, c) in zip(wanted, rows) if k is not None and c is not None}

    def forget(self, tenant: str, kind: str, clear_id: str) -> bool:
        tenant, kind = check_tenant(tenant), check_kind(kind)
        lookup = self._sealer.lookups(tenant, kind, [check_id(clear_id, "clear id")])[0]
        keys = [_count_key(tenant), _index_prefix(tenant) + lookup]
        try:
            return bool(self._call(lambda: self._client.execute_command("EVAL", _FORGET, 2, *keys,
                                                                        _entry_prefix(tenant))))
        finally:  # after the delete, so a batch resolving meanwhile cannot put the old pseudonym back
            self.cache.forget_id(tenant, kind, clear_id)

    def forget_pseudonym(self, tenant: str, pseudonym: str) -> bool:
        tenant = check_tenant(tenant)
        if not is_pseudonym(check_id(pseudonym, "pseudonym")):
            return False
        keys = [_count_key(tenant), _entry_key(tenant, pseudonym)]
        try:
            return bool(self._call(lambda: self._client.execute_command("EVAL", _FORGET_PSEUDONYM, 2, *keys,
                                                                        _index_prefix(tenant), pseudonym)))
        finally:
            self.cache.forget_pseudonym(tenant, pseudonym)

    def rekey(self, tenant: str) -> int:
        tenant = check_tenant(tenant)
        current = self._sealer.secrets.vault_current
        done, cursor = 0, 0
        pattern = _entry_prefix(tenant) + b"*"
        while True:
            cursor, keys = self._call(lambda: self._client.scan(cursor, match=pattern, count=_REKEY_SCAN))
            done += self._reseal(tenant, [key if isinstance(key, bytes) else key.encode() for key in keys], current)
            if cursor == 0:
                return done

    def tenants(self) -> list[str]:
        found: set[str] = set()
        cursor = 0
        while True:  # one count key per tenant; a SCAN walks the keyspace, as a rekey does anyway
            cursor, keys = self._call(lambda: self._client.scan(cursor, match=PREFIX + b"{*}#count",
                                                                count=_REKEY_SCAN))
            for key in keys:
                raw = key if isinstance(key, bytes) else key.encode()
                found.add(raw[len(PREFIX) + 1:-len(b"}#count")].decode())
            if cursor == 0:
                return sorted(found)

    def count(self, tenant: str) -> int:
        tenant = check_tenant(tenant)
        return int(self._call(lambda: self._client.get(_count_key(tenant))) or 0)

    def close(self) -> None:
        self._client.close()

    # -- commands ------------------------------------------------------------------------------
    def _mget(self, keys: list[bytes]) -> list[bytes | None]:
        pipe = self._client.pipeline(transaction=False)
        for start in range(0, len(keys), _MGET_KEYS):
            pipe.mget(keys[start:start + _MGET_KEYS])
        return [value for reply in pipe.execute() for value in reply]

    def _create(self, tenant: str, new: list[tuple[bytes, bytes, SealedEntry]]) -> list[bytes]:
        pipe = self._client.pipeline(transaction=False)
        for start in range(0, len(new), _SCRIPT_IDS):
            part = new[start:start + _SCRIPT_IDS]
            keys: list[bytes] = [_count_key(tenant)]
            args: list[bytes | str] = []
            for index_key, lookup, entry in part:
                keys += [index_key, _entry_key(tenant, entry.pseudonym)]
                args += [entry.pseudonym, entry.key_id, entry.sealed, lookup]
            pipe.execute_command("EVAL", _CREATE, len(keys), *keys, *args)
        return [p for reply in pipe.execute() for p in reply]

    def _reseal(self, tenant: str, keys: list[bytes], current: str) -> int:
        if not keys:
            return 0

        def read() -> list[Any]:
            pipe = self._client.pipeline(transaction=False)
            for key in keys:
                pipe.hmget(key, "k", "c")
            return pipe.execute()

        prefix = len(_entry_prefix(tenant))
        stale = [(key[prefix:].decode(), k.decode(), c) for key, (k, c) in zip(keys, self._call(read))
                 if k is not None and c is not None and k.decode() != current]
        if not stale:
            return 0
        pipe = self._client.pipeline(transaction=False)
        for pseudonym, key_id, sealed in stale:
            clear_id = self._sealer.open(tenant, SealedEntry(pseudonym, key_id, sealed))
            fresh = self._sealer.seal(tenant, pseudonym, clear_id)
            pipe.execute_command("EVAL", _RESEAL, 1, _entry_key(tenant, pseudonym), key_id, fresh.key_id, fresh.sealed)
        return sum(self._call(pipe.execute))

    # -- the vault's identity and faults ------------------------------------------------------------
    def _check_meta(self) -> None:
        expected = {"format": FORMAT, "version": FORMAT_VERSION,
                    "key_fingerprint": self._sealer.secrets.key_fingerprint()}
        self._client.set(_META_KEY, json.dumps(expected), nx=True)
        raw = self._client.get(_META_KEY)
        try:
            held = json.loads(raw) if raw is not None else {}
        except ValueError:
            held = {}
        if not isinstance(held, dict) or held.get("format") != FORMAT or held.get("version") != FORMAT_VERSION:
            raise VaultMisconfigured(f"Redis {self._where}: {_META_KEY.decode()} is not a Cohort identity vault "
                                     f"of version {FORMAT_VERSION}")
        if held.get("key_fingerprint") != expected["key_fingerprint"]:
            raise VaultMisconfigured(f"identity vault on Redis {self._where} was made with another pseudonym master "
                                     "key than the secrets file holds: give every process the file it was made with")
        self._check_no_eviction()
        self._checked = True

    def _check_no_eviction(self) -> None:
        """An evicted entry is a learner forgotten by accident (its stored pseudonym linked to nobody, a new
        one issued): refuse a Redis that may evict keys without an expiry. `volatile-*` policies evict only
        keys with one (the dedup state's), never the vault's."""
        try:
            policy = str(self._client.info("memory").get("maxmemory_policy", "noeviction"))
        except redis.ResponseError:  # INFO not permitted (some managed services): the operator's word
            return
        if policy.startswith("allkeys"):
            raise VaultMisconfigured(f"Redis {self._where} has maxmemory-policy {policy}: it may evict identity "
                                     "vault entries (learners forgotten by accident); use noeviction or volatile-*")

    def _call(self, work: Callable[[], _T]) -> _T:
        try:
            if not self._checked:
                self._check_meta()
            return work()
        except redis.RedisError as exc:
            raise self._fault(exc) from exc

    def _fault(self, exc: redis.RedisError) -> CohortError:
        """Classified as every Redis-backed state's faults are (state/redis_faults.py), with the vault's codes."""
        fault = redis_fault(exc, f"{self._where} (identity vault)")
        if isinstance(fault, TransientFault):
            return VaultUnavailable(str(fault))
        return VaultMisconfigured(str(fault))

    def pseudonym_of(self, tenant: str, kind: str, clear_id: str) -> str | None:
        """The id's pseudonym if an entry is held, else None; never creates one (forget looks up with it)."""
        tenant, kind = check_tenant(tenant), check_kind(kind)
        lookup = self._sealer.lookups(tenant, kind, [check_id(clear_id, "clear id")])[0]
        held = self._call(lambda: self._client.get(_index_prefix(tenant) + lookup))
        return held.decode() if isinstance(held, bytes) else held


def _tenant_prefix(tenant: str) -> bytes:
    return PREFIX + b"{" + tenant.encode() + b"}"


def _index_prefix(tenant: str) -> bytes:
    return _tenant_prefix(tenant) + b":i:"


def _entry_prefix(tenant: str) -> bytes:
    return _tenant_prefix(tenant) + b":p:"


def _entry_key(tenant: str, pseudonym: str) -> bytes:
    return _entry_prefix(tenant) + pseudonym.encode()


def _count_key(tenant: str) -> bytes:
    return _tenant_prefix(tenant) + b"#count"
