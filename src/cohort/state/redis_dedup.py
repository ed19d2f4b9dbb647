"""Scale-out dedup state: one Redis key per committed key, expiring when its period ends.

Every pipeline worker asks the same Redis, so a mid or msgid committed by one worker is a duplicate
for all of them. A key is `cohort:dedup:<namespace>:<key>` holding the epoch ms it was committed at,
written `SET … NX PX <what is left of its period>`: adding again keeps the first time, and Redis
forgets it when the period ends (no sweeping). `seen` also compares the held time with the period,
so the answer stays exact at the millisecond even when the period was shortened since.

Exactness: keys of up to 256 UTF-8 bytes are stored as they are (injective: never a false duplicate).
Longer ones, which only a broken or hostile client sends, are stored as their SHA-256 under another
prefix (`cohort:dedup:<namespace>#sha256:<hex>`, which no clear key can take): their memory is bounded,
and two different keys would have to collide in SHA-256 — no collision has ever been found, and by the
birthday bound even 10^15 long keys collide with probability below 10^-47, far below the rate of
undetected memory or disk errors that any store lives with. A hostile client cannot aim at another
client's key either: that is a second preimage, 2^256 work.

Round trips: each chunk of `chunk_keys` keys is one write and one read: an MGET for `seen`; for `add`,
the SET NX PX of every key run inside Redis by a small Lua script, `script_keys` keys a call. Pipelined
SETs would cost one reply to parse per key and, under `appendfsync always`, an fsync for every 16 KB
of commands Redis reads (≈ 38 per 5,000 keys); a script is one reply and one fsync, and holds Redis
for milliseconds only (≈ 20 ms for 2,500 keys on the shared 2-core test machine). Commands are packed here: redis-py's pipeline object cost ≈ 10× the worker CPU
(measured: `python -m cohort.benchmark.redis_dedup`). One MGET or script touches many keys, so a
Redis Cluster would need the keys of one call in one hash slot: this is written for one Redis.

The reach (how far back keys are certainly held) comes from a marker key per namespace,
`cohort:dedup:<namespace>#since`, set when the namespace starts being filled. Anything that can make
Redis lose keys moves it to now, so /metrics never claims more than is held: the marker gone (a flush,
a restart without persistence), keys evicted (a `maxmemory-policy` other than `noeviction`), a restart
without AOF (keys since the last snapshot lost), or a longer period than the keys were written with.

Faults: Redis away, restarting (LOADING), read-only, out of memory or unable to persist raise
`RedisStateUnavailable` (a `TransientFault`: the runner backs off and retries; every call is bounded by
the socket timeout, with no retries of its own). Faults no retry can fix (a wrong password, missing
permissions, a key of another type in our namespace) raise `RedisStateMisconfigured` (a `TerminalFault`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from typing import Any, Callable, Iterator, Sequence, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cohort.core.errors import first_line
from cohort.state.redis_faults import RedisStateUnavailable, redis_fault

log = logging.getLogger(__name__)

CLEAR_KEY_MAX_BYTES = 256  # longer keys are held by hash; changing it would lose every longer key held
_NAMESPACE = re.compile(r"[a-z][a-z0-9_]{0,31}")
_T = TypeVar("_T")
# SET NX PX for each key, run by Redis itself: one command (and one AOF fsync) per script instead of
# one reply per key and an fsync per 16 KB of pipelined commands; KEYS are the Redis keys, ARGV the
# commit time (the value) and the milliseconds left of the period (the expiry)
_ADD_SCRIPT = (b"for i = 1, #KEYS do redis.call('SET', KEYS[i], ARGV[1], 'NX', 'PX', ARGV[2]) end "
               b"return #KEYS")


class RedisDedupState:
    """The DedupState contract on Redis (see the module docstring).

    `url` is a redis:// or rediss:// URL (password and database included); `namespace` separates the
    pipeline's key kinds ("mid" for events, "msgid" for requests). Nothing is sent before the first
    call, so opening never fails; a call raises `RedisStateUnavailable` while Redis is away.
    """

    transient_errors: tuple[type[BaseException], ...] = (RedisStateUnavailable,)

    def __init__(self, url: str, period_s: float, namespace: str, *, socket_timeout_s: float = 5.0,
                 chunk_keys: int = 10_000, script_keys: int = 2500, clock: Callable[[], float] = time.time):
        if not url:
            raise ValueError("a Redis URL is needed for the Redis dedup state (COHORT_REDIS_URL)")
        if not _NAMESPACE.fullmatch(namespace):
            raise ValueError(f"dedup namespace must match {_NAMESPACE.pattern}: {namespace!r}")
        if period_s <= 0:
            raise ValueError(f"dedup period must be positive: {period_s}")
        self.period_s = period_s
        self.namespace = namespace
        self._period_ms = max(1, round(period_s * 1000))
        self._chunk_keys = max(1, chunk_keys)
        self._script_keys = max(1, script_keys)
        self._clock = clock
        self._clear_prefix = f"cohort:dedup:{namespace}:".encode()
        self._hashed_prefix = f"cohort:dedup:{namespace}#sha256:".encode()
        self._marker = f"cohort:dedup:{namespace}#since"
        # no retries of redis-py's own (its default backs off for seconds): one bounded attempt per call,
        # the runner decides when to try again
        self._client = redis.Redis.from_url(
            url, socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s,
            retry=Retry(NoBackoff(), 0), health_check_interval=0, client_name=f"cohort-dedup-{namespace}")
        pool_kwargs = self._client.connection_pool.connection_kwargs
        self._where = f"{pool_kwargs.get('host', '?')}:{pool_kwargs.get('port', '?')}/{pool_kwargs.get('db', 0)}"
        self._marker_known = False  # this process has seen (or written) the namespace's marker
        self.reach_resets = 0  # times this process found that Redis lost keys and moved the reach to now
        self.last_reset_reason: str | None = None

    # -- the contract --------------------------------------------------------------------------
    def seen(self, keys: Sequence[str]) -> set[str]:
        unique = list(dict.fromkeys(keys))
        if not unique:
            return set()
        now_ms = int(self._clock() * 1000)
        seen: set[str] = set()
        for chunk in _chunks(unique, self._chunk_keys):
            values = self._round_trip(_pack([b"MGET", *map(self._redis_key, chunk)]), replies=1)[0]
            for key, value in zip(chunk, values):
                if value is not None and self._within_period(value, now_ms):
                    seen.add(key)
        return seen

    def add(self, keys: Sequence[str], at_ms: int) -> None:
        unique = list(dict.fromkeys(keys))
        if not unique:
            return
        self._ensure_marker()
        value = b"%d" % at_ms
        for chunk in _chunks(unique, self._chunk_keys):
            remaining_ms = at_ms + self._period_ms - int(self._clock() * 1000)
            if remaining_ms <= 0:
                return  # the period of these keys has already ended: nothing to remember
            remaining = b"%d" % remaining_ms
            scripts = [_pack([b"EVAL", _ADD_SCRIPT, b"%d" % len(part), *map(self._redis_key, part), value, remaining])
                       for part in _chunks(chunk, self._script_keys)]
            self._round_trip(b"".join(scripts), replies=len(scripts))

    def forget(self, keys: Sequence[str]) -> int:
        """DEL the keys (by the same name `add` gave them, hashed ones too); how many were held."""
        unique = list(dict.fromkeys(keys))
        deleted = 0
        for chunk in _chunks(unique, self._chunk_keys):
            deleted += int(self._round_trip(_pack([b"DEL", *map(self._redis_key, chunk)]), replies=1)[0])
        return deleted

    def reach_seconds(self) -> float:
        since_us = self._refresh_marker()
        held_s = max(0.0, self._clock() - since_us / 1e6)
        return min(self.period_s, held_s)

    def close(self) -> None:
        self._client.close()

    # -- keys ----------------------------------------------------------------------------------
    def _redis_key(self, key: str) -> bytes:
        raw = key.encode("utf-8", "surrogatepass")  # any Python str, one byte string each
        if len(raw) <= CLEAR_KEY_MAX_BYTES:
            return self._clear_prefix + raw
        return self._hashed_prefix + hashlib.sha256(raw).hexdigest().encode()

    def _within_period(self, value: bytes, now_ms: int) -> bool:
        try:
            return int(value) + self._period_ms > now_ms
        except ValueError:
            return True  # not written by us: present is all we know, and forgetting it could store twice

    # -- the marker: since when the namespace is certainly held ----------------------------------
    def _ensure_marker(self) -> None:
        if not self._marker_known:
            self._refresh_marker()

    def _refresh_marker(self) -> int:
        """The marker's `since_us`, after moving it to now if Redis may have lost keys since."""
        raw, info = self._call(lambda: self._read_marker_and_info())
        now_us = int(self._clock() * 1e6)
        marker = _parse_marker(raw)
        fresh = {"since_us": now_us, "period_ms": self._period_ms, "run_id": info.get("run_id", ""),
                 "evicted_keys": int(info.get("evicted_keys", 0))}
        if marker is None:
            if self._marker_known or raw is not None:
                self._reset(fresh, "the marker is gone or unreadable: Redis was flushed or lost its data")
            elif self._call(lambda: self._client.set(self._marker, json.dumps(fresh), nx=True)):
                log.info("dedup state %s on Redis %s starts being filled now", self.namespace, self._where)
            else:
                return self._refresh_marker()  # another process created it just now
            self._marker_known = True
            return fresh["since_us"]
        self._marker_known = True
        reason = _loss_since(marker, fresh, aof_enabled=str(info.get("aof_enabled", "1")) == "1")
        if reason:
            self._reset(fresh, reason)
            return fresh["since_us"]
        # restarted from its AOF (nothing lost, counters restart), or a shorter period than the keys
        # were written with (they are held longer than needed; a longer one later must be noticed)
        updated = dict(marker, run_id=fresh["run_id"] or marker["run_id"],
                       period_ms=min(marker["period_ms"], self._period_ms))
        if marker["run_id"] != updated["run_id"]:
            updated["evicted_keys"] = fresh["evicted_keys"]
        if updated != marker:
            self._call(lambda: self._client.set(self._marker, json.dumps(updated)))
        return int(marker["since_us"])

    def _read_marker_and_info(self) -> tuple[Any, dict[str, Any]]:
        raw = self._client.get(self._marker)
        try:
            info = self._client.info()
        except redis.ResponseError:  # INFO not permitted (some managed services): fewer checks
            info = {}
        return raw, info

    def _reset(self, fresh: dict[str, Any], reason: str) -> None:
        self._call(lambda: self._client.set(self._marker, json.dumps(fresh)))
        self.reach_resets += 1
        self.last_reset_reason = reason
        log.warning("dedup state %s on Redis %s: %s; its reach starts again from now",
                    self.namespace, self._where, reason)

    # -- talking to Redis ----------------------------------------------------------------------
    def _round_trip(self, packed: bytes, replies: int) -> list[Any]:
        """Send pre-packed commands in one write and read their `replies`; a fault drops the connection
        (its remaining replies would answer the next caller)."""
        pool = self._client.connection_pool
        try:
            connection = pool.get_connection()
        except redis.RedisError as exc:
            raise self._fault(exc) from exc
        try:
            connection.send_packed_command([packed], check_health=False)
            return [connection.read_response() for _ in range(replies)]
        except BaseException as exc:
            connection.disconnect()
            if isinstance(exc, redis.RedisError):
                raise self._fault(exc) from exc
            raise
        finally:
            pool.release(connection)

    def _call(self, fn: Callable[[], _T]) -> _T:
        try:
            return fn()
        except redis.RedisError as exc:
            raise self._fault(exc) from exc

    def _fault(self, exc: redis.RedisError) -> Exception:
        return redis_fault(exc, f"{self._where} ({self.namespace} dedup)")


def _pack(args: list[bytes]) -> bytes:
    """One command in the Redis protocol (RESP): what redis-py builds, without its per-command cost."""
    return b"*%d\r\n" % len(args) + b"".join([b"$%d\r\n%b\r\n" % (len(arg), arg) for arg in args])


def _chunks(items: list[_T], size: int) -> Iterator[list[_T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _parse_marker(raw: Any) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        marker = json.loads(raw)
        return {"since_us": int(marker["since_us"]), "period_ms": int(marker["period_ms"]),
                "run_id": str(marker.get("run_id", "")), "evicted_keys": int(marker.get("evicted_keys", 0))}
    except (ValueError, TypeError, KeyError):
        return None


def _loss_since(marker: dict[str, Any], now: dict[str, Any], aof_enabled: bool) -> str | None:
    """Why keys written since the marker may no longer all be held, or None."""
    if marker["period_ms"] < now["period_ms"]:
        return (f"the period grew from {marker['period_ms'] / 1000:g} s to {now['period_ms'] / 1000:g} s "
                f"(keys written before expire sooner)")
    restarted = bool(now["run_id"]) and marker["run_id"] != now["run_id"]
    if restarted and not aof_enabled:
        return "Redis restarted without AOF: keys written since its last snapshot may be lost"
    evicted = now["evicted_keys"] - (0 if restarted else marker["evicted_keys"])  # counted from each start
    if evicted > 0:
        return f"Redis evicted {evicted} keys (maxmemory-policy is not noeviction): dedup keys may be among them"
    return None
