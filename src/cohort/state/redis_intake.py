"""The received side of the scale-out ledger: which raw-log messages were acknowledged, with how many events.

On the embedded footprint the ingest log itself says how many events were received and how many
wait after the store's offset. A Kafka topic counts messages, not events, and the counts live in
several processes, so the scale-out footprint keeps them here, in Redis:

- `cohort:intake:<partition>`: a sorted set of the raw messages not yet known to be stored
  (score = offset, member = "<offset>:<events>");
- `cohort:intake:total`: events received, all partitions;
- `cohort:intake:trimmed:<partition>`: the highest offset whose entry was let go.

The ingest API registers each message once the broker confirmed it, before it acknowledges; the
worker that reads a message registers it again. Registration is idempotent (a Lua script adds an
entry and its events to the total only if the offset is new and above the trimmed mark), so a crash
between the broker's confirmation and the registration only delays the count until a worker reads
the message. The store writer lets entries go once the store holds their offset.

Then, with the store's counters and positions read first: in flight = the events of entries above
the store's position in each partition, and `received − stored − failed − duplicate − in flight`
is 0 unless an event was lost (see `ledger_snapshot` in the scale-out node).
"""

from __future__ import annotations

from typing import Iterable

import redis

from cohort.core.errors import first_line
from cohort.state.redis_dedup import RedisStateMisconfigured, RedisStateUnavailable

PREFIX = "cohort:intake"
TOTAL_KEY = f"{PREFIX}:total"

# ARGV: partition, offset, events, partition, offset, events, ...  → events newly counted
_REGISTER = """
local added = 0
for i = 1, #ARGV, 3 do
  local p, offset, events = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local trimmed = tonumber(redis.call('GET', 'cohort:intake:trimmed:' .. p) or '-1')
  if offset > trimmed and redis.call('ZADD', 'cohort:intake:' .. p, 'NX', offset, offset .. ':' .. events) == 1 then
    added = added + events
  end
end
if added > 0 then redis.call('INCRBY', 'cohort:intake:total', added) end
return added
"""
# KEYS: none; ARGV: partition, upto  → entries let go
_TRIM = """
local p, upto = ARGV[1], tonumber(ARGV[2])
local trimmed = tonumber(redis.call('GET', 'cohort:intake:trimmed:' .. p) or '-1')
if upto <= trimmed then return 0 end
redis.call('SET', 'cohort:intake:trimmed:' .. p, upto)
return redis.call('ZREMRANGEBYSCORE', 'cohort:intake:' .. p, '-inf', upto)
"""


class RedisIntake:
    def __init__(self, url: str, *, socket_timeout_s: float = 5.0):
        self._redis = redis.Redis.from_url(url, socket_timeout=socket_timeout_s,
                                           socket_connect_timeout=socket_timeout_s)
        self._register = self._redis.register_script(_REGISTER)
        self._trim = self._redis.register_script(_TRIM)

    def register(self, messages: Iterable[tuple[int, int, int]]) -> int:
        """Record (partition, offset, events) of acknowledged messages; return the events newly counted."""
        args: list[int] = []
        for partition, offset, events in messages:
            args += [partition, offset, events]
        if not args:
            return 0
        return int(self._call(lambda: self._register(args=args)))

    def let_go(self, partition: int, upto: int) -> int:
        """The store holds `partition` up to `upto`: drop those entries (their events are in its counters)."""
        return int(self._call(lambda: self._trim(args=[partition, upto])))

    def received(self) -> int:
        return int(self._call(lambda: self._redis.get(TOTAL_KEY)) or 0)

    def in_flight(self, positions: dict[int, int]) -> int:
        """Events of entries above the store's position in each partition (-1: nothing stored yet)."""
        partitions = self._partitions() | set(positions)
        total = 0
        for partition in partitions:
            after = positions.get(partition, -1)
            members = self._call(lambda: self._redis.zrangebyscore(f"{PREFIX}:{partition}", f"({after}", "+inf"))
            total += sum(int(m.rsplit(b":", 1)[1]) for m in members)
        return total

    def close(self) -> None:
        self._redis.close()

    def _partitions(self) -> set[int]:
        keys = self._call(lambda: list(self._redis.scan_iter(match=f"{PREFIX}:[0-9]*", count=1000)))
        return {int(key.rsplit(b":", 1)[1]) for key in keys}

    def _call(self, fn):
        try:
            return fn()
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, redis.ReadOnlyError) as exc:
            raise RedisStateUnavailable(f"Redis (intake ledger): {first_line(exc)}") from exc
        except redis.AuthenticationError as exc:
            raise RedisStateMisconfigured(f"Redis (intake ledger): {first_line(exc)}") from exc
        except redis.ResponseError as exc:
            if str(exc).startswith(("OOM", "MISCONF", "LOADING", "READONLY", "BUSY")):
                raise RedisStateUnavailable(f"Redis (intake ledger): {first_line(exc)}") from exc
            raise RedisStateMisconfigured(f"Redis (intake ledger): {first_line(exc)}") from exc
