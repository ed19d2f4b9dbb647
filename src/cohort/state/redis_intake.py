"""The received side of the scale-out ledger: which raw-log messages were acknowledged, with how many events.

On the embedded footprint the ingest log itself says how many events were received and how many
wait after the store's offset. A Kafka topic counts messages, not events, and the counts live in
several processes, so the scale-out footprint keeps them here, in Redis:

- `cohort:intake:<partition>`: a sorted set of the raw messages not yet known to be stored
  (score = offset, member = "<offset>:<events>:<received at, epoch ms>");
- `cohort:intake:total`: events received, all partitions; `cohort:intake:requests`: messages;
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

from dataclasses import dataclass
from typing import Iterable

import redis

from cohort.state.redis_faults import redis_fault

PREFIX = "cohort:intake"
TOTAL_KEY = f"{PREFIX}:total"
REQUESTS_KEY = f"{PREFIX}:requests"

# ARGV: partition, offset, events, received_ms, partition, ...  → events newly counted
_REGISTER = """
local added, messages = 0, 0
for i = 1, #ARGV, 4 do
  local p, offset, events = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local trimmed = tonumber(redis.call('GET', 'cohort:intake:trimmed:' .. p) or '-1')
  if offset > trimmed and redis.call('ZRANGEBYSCORE', 'cohort:intake:' .. p, offset, offset)[1] == nil then
    redis.call('ZADD', 'cohort:intake:' .. p, offset, offset .. ':' .. events .. ':' .. ARGV[i + 3])
    added = added + events
    messages = messages + 1
  end
end
if messages > 0 then
  redis.call('INCRBY', 'cohort:intake:total', added)
  redis.call('INCRBY', 'cohort:intake:requests', messages)
end
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


@dataclass(frozen=True, slots=True)
class InFlight:
    events: int  # acknowledged events of messages above the store's positions
    messages: int
    oldest_received_ms: int | None  # when the oldest of them was received (None: none waits)


@dataclass(frozen=True, slots=True)
class IntakeSnapshot:
    received: int  # events, all partitions
    received_requests: int
    waiting: InFlight
    overtaken: bool  # entries above the positions given were let go meanwhile: the store moved; read again


class RedisIntake:
    def __init__(self, url: str, *, socket_timeout_s: float = 5.0):
        self._redis = redis.Redis.from_url(url, socket_timeout=socket_timeout_s,
                                           socket_connect_timeout=socket_timeout_s)
        self._register = self._redis.register_script(_REGISTER)
        self._trim = self._redis.register_script(_TRIM)

    def register(self, messages: Iterable[tuple[int, int, int, int]]) -> int:
        """Record (partition, offset, events, received_ms) of acknowledged messages; return the events newly
        counted. A message registered before keeps its first entry (the same offset is the same message)."""
        args: list[int] = []
        for partition, offset, events, received_ms in messages:
            args += [partition, offset, events, received_ms]
        if not args:
            return 0
        return int(self._call(lambda: self._register(args=args)))

    def let_go(self, partition: int, upto: int) -> int:
        """The store holds `partition` up to `upto`: drop those entries (their events are in its counters)."""
        return int(self._call(lambda: self._trim(args=[partition, upto])))

    def received(self) -> int:
        return int(self._call(lambda: self._redis.get(TOTAL_KEY)) or 0)

    def received_requests(self) -> int:
        return int(self._call(lambda: self._redis.get(REQUESTS_KEY)) or 0)

    def in_flight(self, positions: dict[int, int]) -> int:
        """Events of entries above the store's position in each partition (-1: nothing stored yet)."""
        return self.waiting(positions).events

    def waiting(self, positions: dict[int, int]) -> InFlight:
        """The messages above the store's position in each partition: their events, count and oldest arrival."""
        return self.snapshot(positions).waiting

    def snapshot(self, positions: dict[int, int]) -> IntakeSnapshot:
        """Totals and what waits above `positions` (the store's, read just before), in one transaction.

        If the store wrote more after its positions were read, the writer may have let go of entries above
        them: `overtaken` says so, and the caller reads the store and this again."""
        partitions = sorted(self._partitions() | set(positions))

        def read() -> list:
            pipe = self._redis.pipeline(transaction=True)
            pipe.get(TOTAL_KEY)
            pipe.get(REQUESTS_KEY)
            for partition in partitions:
                pipe.get(f"{PREFIX}:trimmed:{partition}")
                pipe.zrangebyscore(f"{PREFIX}:{partition}", f"({positions.get(partition, -1)}", "+inf")
            return pipe.execute()

        replies = self._call(read)
        events = messages = 0
        oldest: int | None = None
        overtaken = False
        for index, partition in enumerate(partitions):
            trimmed, members = replies[2 + 2 * index], replies[3 + 2 * index]
            overtaken |= int(trimmed or -1) > positions.get(partition, -1)
            for member in members:
                _, count, received_ms = member.split(b":")
                events += int(count)
                messages += 1
                oldest = int(received_ms) if oldest is None else min(oldest, int(received_ms))
        return IntakeSnapshot(received=int(replies[0] or 0), received_requests=int(replies[1] or 0),
                              waiting=InFlight(events, messages, oldest), overtaken=overtaken)

    def close(self) -> None:
        self._redis.close()

    def _partitions(self) -> set[int]:
        keys = self._call(lambda: list(self._redis.scan_iter(match=f"{PREFIX}:[0-9]*", count=1000)))
        return {int(key.rsplit(b":", 1)[1]) for key in keys}

    def _call(self, fn):
        try:
            return fn()
        except redis.RedisError as exc:
            raise redis_fault(exc, "(intake ledger)") from exc