"""Redis dedup state beyond the contract suite: what Redis itself can do to it (restart, crash, hang,
read-only, full, evicting, flushed) and what the scale-out footprint relies on (one round trip per
chunk, namespaces apart, several workers sharing one Redis)."""

from __future__ import annotations

import hashlib
import os
import signal
import time

import pytest
import redis
from engines import RedisServer
from redis._parsers.base import BaseParser

from cohort.core.errors import TerminalFault, TransientFault
from cohort.state.redis_dedup import RedisDedupState
from cohort.state.redis_faults import RedisStateMisconfigured, RedisStateUnavailable

WEEK_S = 7 * 86400


def _now_ms() -> int:
    return int(time.time() * 1000)


@pytest.fixture
def own_redis(tmp_path):
    """A server of this test's own, for faults that would disturb the session's."""
    server = RedisServer(tmp_path / "own-redis").start()
    yield server
    if server.proc and server.proc.poll() is None:
        os.kill(server.proc.pid, signal.SIGCONT)  # in case a test left it stopped
    server.stop(kill=True)


@pytest.mark.parametrize("kill", [False, True], ids=["shutdown", "kill-9"])
def test_keys_and_reach_survive_a_redis_restart(redis_server, redis_url, kill):
    state = RedisDedupState(redis_url, WEEK_S, "mid", socket_timeout_s=5.0)
    try:
        state.add(["before-restart"], _now_ms())  # acked by Redis after fsync: appendfsync always
        reach_before = state.reach_seconds()
        redis_server.restart(kill=kill)
        assert state.seen(["before-restart", "new"]) == {"before-restart"}  # the old client reconnects
        fresh = RedisDedupState(redis_url, WEEK_S, "mid")
        assert fresh.seen(["before-restart"]) == {"before-restart"}
        # restarted from its AOF, nothing lost: the reach goes on from where it was
        assert fresh.reach_seconds() >= reach_before
        assert fresh.reach_resets == 0 and state.reach_seconds() >= reach_before
        fresh.close()
    finally:
        state.close()


def test_redis_down_is_a_transient_fault_and_the_state_works_again_after(redis_server, redis_url):
    state = RedisDedupState(redis_url, WEEK_S, "mid", socket_timeout_s=1.0)
    try:
        state.add(["kept"], _now_ms())
        assert issubclass(RedisStateUnavailable, state.transient_errors)
        redis_server.stop()
        for call in (lambda: state.seen(["kept"]), lambda: state.add(["x"], _now_ms()), state.reach_seconds):
            started = time.monotonic()
            with pytest.raises(RedisStateUnavailable) as caught:
                call()
            assert time.monotonic() - started < 5.0  # refused: answered at once, no retry loop of redis-py's
            assert isinstance(caught.value, TransientFault) and "127.0.0.1" in str(caught.value)
        redis_server.start()
        assert state.seen(["kept", "x"]) == {"kept"}
        state.add(["x"], _now_ms())
        assert state.seen(["x"]) == {"x"}
    finally:
        state.close()


def test_a_hung_redis_answers_with_a_transient_fault_within_the_socket_timeout(own_redis):
    state = RedisDedupState(own_redis.url, WEEK_S, "mid", socket_timeout_s=0.5)
    try:
        state.add(["kept"], _now_ms())
        os.kill(own_redis.proc.pid, signal.SIGSTOP)  # alive, holding the port, answering nothing
        try:
            for call in (lambda: state.seen(["kept"]), lambda: state.add(["y"], _now_ms())):
                started = time.monotonic()
                with pytest.raises(RedisStateUnavailable, match="Timeout"):
                    call()
                assert time.monotonic() - started < 3.0  # bounded by the 0.5 s timeout, not hanging
        finally:
            os.kill(own_redis.proc.pid, signal.SIGCONT)
        assert state.seen(["kept", "y"]) == {"kept"}  # the connection that timed out was dropped, not reused
    finally:
        state.close()


def test_a_read_only_redis_is_a_transient_fault_until_it_takes_writes_again(own_redis, tmp_path):
    admin = redis.Redis.from_url(own_redis.url)
    state = RedisDedupState(own_redis.url, WEEK_S, "mid", socket_timeout_s=2.0)
    try:
        state.add(["kept"], _now_ms())
        admin.replicaof("127.0.0.1", 1)  # a replica of nothing: reads work, writes are refused
        with pytest.raises(RedisStateUnavailable, match="READONLY"):
            state.add(["refused"], _now_ms())
        assert state.seen(["kept", "refused"]) == {"kept"}
        admin.replicaof("NO", "ONE")
        state.add(["refused"], _now_ms())
        assert state.seen(["kept", "refused"]) == {"kept", "refused"}
    finally:
        state.close()
        admin.close()


def test_a_full_redis_refuses_writes_as_a_transient_fault_and_never_drops_keys(own_redis):
    admin = redis.Redis.from_url(own_redis.url)
    state = RedisDedupState(own_redis.url, WEEK_S, "mid", socket_timeout_s=2.0)
    try:
        state.add(["first"], _now_ms())
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", admin.info("memory")["used_memory"] + 200_000)
        with pytest.raises(RedisStateUnavailable, match="OOM"):
            for start in range(0, 200_000, 5000):
                state.add([f"k{i}" for i in range(start, start + 5000)], _now_ms())
        assert state.seen(["first"]) == {"first"}
        assert state.reach_resets == 0  # refused, not evicted: what was held is still held
        admin.config_set("maxmemory", 0)
        state.add(["after"], _now_ms())
        assert state.seen(["first", "after"]) == {"first", "after"}
    finally:
        state.close()
        admin.close()


@pytest.mark.parametrize("restart_first", [False, True], ids=["running", "after-a-restart"])
def test_keys_evicted_by_redis_move_the_reach_to_now(own_redis, restart_first):
    admin = redis.Redis.from_url(own_redis.url)
    state = RedisDedupState(own_redis.url, WEEK_S, "mid", socket_timeout_s=2.0)
    try:
        state.add(["first"], _now_ms())
        time.sleep(0.2)
        before = state.reach_seconds()
        assert before >= 0.2
        if restart_first:  # Redis's eviction count starts again from 0: evictions since must still count
            own_redis.restart()
        admin.config_set("maxmemory-policy", "volatile-lru")  # managed services' usual default
        admin.config_set("maxmemory", admin.info("memory")["used_memory"] + 2_000_000)  # room for the script itself
        for start in range(0, 40_000, 5000):
            state.add([f"k{i}" for i in range(start, start + 5000)], _now_ms())  # Redis evicts silently
        assert admin.info("stats")["evicted_keys"] > 0
        assert state.reach_seconds() < before
        assert state.reach_resets == 1 and "evicted" in state.last_reset_reason
    finally:
        state.close()
        admin.close()


def test_a_flushed_redis_moves_the_reach_to_now(redis_url):
    state = RedisDedupState(redis_url, WEEK_S, "mid")
    try:
        state.add(["a"], _now_ms())
        time.sleep(0.2)
        assert state.reach_seconds() >= 0.2
        redis.Redis.from_url(redis_url).flushdb()  # an operator's mistake: every key and the marker gone
        assert state.reach_seconds() < 0.2
        assert state.reach_resets == 1 and "flushed" in state.last_reset_reason
        time.sleep(0.1)
        assert state.reach_seconds() >= 0.1  # and grows again from there
    finally:
        state.close()


def test_a_longer_period_than_the_keys_were_written_with_moves_the_reach_to_now(redis_url):
    short = RedisDedupState(redis_url, 3600, "mid")
    short.add(["a"], _now_ms())
    time.sleep(0.2)
    assert short.reach_seconds() >= 0.2
    short.close()
    longer = RedisDedupState(redis_url, WEEK_S, "mid")
    try:
        assert longer.reach_seconds() < 0.2  # keys written with an hour's expiry: a week is not held
        assert "period grew" in longer.last_reset_reason
    finally:
        longer.close()


def test_a_shorter_period_is_exact_although_redis_holds_the_keys_longer(redis_url):
    week = RedisDedupState(redis_url, WEEK_S, "mid")
    two_days_ago = _now_ms() - 2 * 86_400_000
    week.add(["two-days-old"], two_days_ago)
    week.add(["an-hour-old"], _now_ms() - 3_600_000)
    week.close()
    day = RedisDedupState(redis_url, 86400, "mid")
    try:
        # Redis still holds both for five more days; a one-day period must accept the older again
        assert day.seen(["two-days-old", "an-hour-old"]) == {"an-hour-old"}
    finally:
        day.close()


def test_namespaces_do_not_see_each_other_and_workers_share_one(redis_url):
    mid_a = RedisDedupState(redis_url, WEEK_S, "mid")
    mid_b = RedisDedupState(redis_url, WEEK_S, "mid")  # another worker process's client
    msgid = RedisDedupState(redis_url, WEEK_S, "msgid")
    try:
        mid_a.add(["same-text"], _now_ms())
        assert mid_b.seen(["same-text"]) == {"same-text"}
        assert msgid.seen(["same-text"]) == set()
        msgid.add(["batch-1"], _now_ms())
        assert mid_a.seen(["batch-1"]) == set()
    finally:
        for state in (mid_a, mid_b, msgid):
            state.close()


def test_long_keys_are_held_by_hash_under_a_prefix_no_clear_key_can_take(redis_url):
    state = RedisDedupState(redis_url, WEEK_S, "mid")
    try:
        long_key = "m" * 100_000
        digest = hashlib.sha256(long_key.encode()).hexdigest()
        state.add([long_key], _now_ms())
        assert state.seen([long_key, long_key[:-1] + "n", digest, "#sha256:" + digest, "m" * 256]) == {long_key}
        keys = redis.Redis.from_url(redis_url).keys("cohort:dedup:mid*")
        assert max(len(key) for key in keys) < 100  # bounded memory, whatever the client sent
    finally:
        state.close()


class _RoundTrips:
    """Counts writes to Redis sockets: a pipelined chunk is one write, answered by one read burst."""

    def __init__(self, monkeypatch):
        self.count = 0
        original = redis.connection.Connection.send_packed_command

        def counted(connection, command, check_health=True):
            self.count += 1
            return original(connection, command, check_health)

        monkeypatch.setattr(redis.connection.Connection, "send_packed_command", counted)


def _command_calls(admin: redis.Redis, command: str) -> int:
    return admin.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0)


@pytest.mark.parametrize("chunk_keys,round_trips,scripts", [(10_000, 2, 8), (20_000, 1, 8), (3_000, 7, 13)])
def test_a_batch_of_20000_keys_is_one_round_trip_per_chunk(redis_url, monkeypatch, chunk_keys, round_trips, scripts):
    admin = redis.Redis.from_url(redis_url)
    state = RedisDedupState(redis_url, WEEK_S, "mid", chunk_keys=chunk_keys, script_keys=2500)
    keys = [f"LP.{_now_ms()}.{i:08d}" for i in range(20_000)]
    try:
        state.add(["warm-up"], _now_ms())  # the namespace marker is read once, on first use
        writes = _RoundTrips(monkeypatch)
        mgets, evals, sets = (_command_calls(admin, command) for command in ("mget", "eval", "set"))
        writes.count = 0
        assert state.seen(keys) == set()
        assert writes.count == round_trips
        assert _command_calls(admin, "mget") - mgets == round_trips  # one MGET per chunk, server side

        writes.count = 0
        state.add(keys, _now_ms())
        assert writes.count == round_trips
        assert _command_calls(admin, "eval") - evals == scripts  # at most 2,500 keys a script
        assert _command_calls(admin, "set") - sets == 20_000  # one SET NX PX a key, inside the scripts
        assert state.seen(keys) == set(keys)
    finally:
        state.close()
        admin.close()


def test_a_wrong_password_is_a_terminal_fault(own_redis):
    admin = redis.Redis.from_url(own_redis.url)
    admin.config_set("requirepass", "the-password")
    url = own_redis.url.replace("redis://", "redis://:not-the-password@")
    state = RedisDedupState(url, WEEK_S, "mid")
    try:
        with pytest.raises(RedisStateMisconfigured) as caught:
            state.seen(["a"])
        assert isinstance(caught.value, TerminalFault)
        assert "not-the-password" not in str(caught.value)  # messages name the server, never the secret
        with pytest.raises(RedisStateMisconfigured):
            RedisDedupState(own_redis.url, WEEK_S, "mid").add(["a"], _now_ms())  # no password at all
    finally:
        state.close()
        admin.close()


@pytest.mark.parametrize("reply,transient", [
    ("LOADING Redis is loading the dataset in memory", True),
    ("READONLY You can't write against a read only replica.", True),
    ("OOM command not allowed when used memory > 'maxmemory'.", True),
    ("MISCONF Errors writing to the AOF file: No space left on device", True),
    ("MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.", True),
    ("WRONGTYPE Operation against a key holding the wrong kind of value", False),
    ("NOPERM User cohort has no permissions to run the 'set' command", False),
    ("ERR unknown command 'SET'", False),
])
def test_redis_error_replies_are_sorted_into_transient_and_terminal(reply, transient):
    state = RedisDedupState("redis://127.0.0.1:1/0", WEEK_S, "mid")
    fault = state._fault(BaseParser.parse_error(reply))  # the exception redis-py raises for that reply
    assert isinstance(fault, RedisStateUnavailable if transient else RedisStateMisconfigured)
    assert reply.split()[0] in str(fault)


def test_bad_configuration_is_refused_at_once():
    with pytest.raises(ValueError, match="COHORT_REDIS_URL"):
        RedisDedupState("", WEEK_S, "mid")
    with pytest.raises(ValueError, match="namespace"):
        RedisDedupState("redis://127.0.0.1:1/0", WEEK_S, "mid:x")
