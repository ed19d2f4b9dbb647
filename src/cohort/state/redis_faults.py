"""What a Redis error means to the pipeline: retry later (transient) or stop and tell the operator (terminal).

Every Redis-backed state (dedup, the intake ledger, the identity vault) maps redis-py's errors the same
way, so the runner's backoff and the health page treat them alike: Redis away, restarting (LOADING),
read-only, out of memory or unable to persist is `RedisStateUnavailable`, a `TransientFault` (each call is
bounded by the socket timeout); a wrong password, missing permissions or foreign data under our keys is
`RedisStateMisconfigured`, a `TerminalFault`.
"""

from __future__ import annotations

import redis

from cohort.core.errors import TerminalFault, TransientFault, first_line

# error replies that mean Redis itself is in trouble for now, not that the command or the setup is wrong
TRANSIENT_REPLIES = ("OOM", "READONLY", "LOADING", "MISCONF", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN",
                     "BUSY", "NOREPLICAS")


class RedisStateUnavailable(TransientFault):
    """Redis cannot answer or take writes right now (away, restarting, read-only, full, disk failing)."""


class RedisStateMisconfigured(TerminalFault):
    """Redis refuses us in a way no retry fixes (credentials, permissions, foreign data in our keys)."""


def redis_fault(exc: redis.RedisError, where: str) -> Exception:
    """The Cohort fault for a redis-py error; `where` says which state on which server, for the message."""
    status = getattr(exc, "status_code", None)  # the reply's code, which redis-py strips from the text
    text = " ".join(part for part in (status, first_line(exc, 300)) if part)
    message = f"Redis {where}: {type(exc).__name__}: {text}"
    if isinstance(exc, (redis.AuthenticationError, redis.exceptions.AuthorizationError,
                        redis.exceptions.NoPermissionError)):
        return RedisStateMisconfigured(message)
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError, redis.exceptions.InvalidResponse)):
        return RedisStateUnavailable(message)  # away, restarting (LOADING), or the stream broke
    if isinstance(exc, redis.ResponseError) and text.upper().startswith(TRANSIENT_REPLIES):
        return RedisStateUnavailable(message)  # read-only, full, failing to persist, busy
    return RedisStateMisconfigured(message)
