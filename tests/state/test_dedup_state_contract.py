"""One suite over every DedupState implementation: a new backend proves itself by passing it.

Each entry of IMPLEMENTATIONS opens a state on `tmp_path` (the same path reopens the same state)
with the given period; it may use other fixtures through `request` (a Redis server, say).
"""

from __future__ import annotations

import time

import pytest

from cohort.state.dedup_state import DedupState

DAY_MS = 86_400_000


def _open(kind: str, request, tmp_path, period_s: float) -> DedupState:
    return IMPLEMENTATIONS[kind](request, tmp_path, period_s)


# name → opener(request, tmp_path, period_s); implementations add themselves here
IMPLEMENTATIONS: dict = {}


def _open_disk_index(request, tmp_path, period_s: float) -> DedupState:
    from cohort.state.rocksdb_dedup import DiskDedupIndex

    return DiskDedupIndex(tmp_path / "dedup-mid", period_s, cache_bytes=16 << 20)


IMPLEMENTATIONS["rocksdb"] = _open_disk_index


def _open_redis(request, tmp_path, period_s: float) -> DedupState:
    from cohort.state.redis_dedup import RedisDedupState

    # reopening is a new client on the same URL: the test's own database of the session's server
    return RedisDedupState(request.getfixturevalue("redis_url"), period_s, "mid", socket_timeout_s=5.0)


IMPLEMENTATIONS["redis"] = _open_redis


@pytest.fixture(params=sorted(IMPLEMENTATIONS) or [pytest.param(None, marks=pytest.mark.skip("none yet"))])
def kind(request) -> str:
    return request.param


@pytest.fixture
def state(kind, request, tmp_path):
    opened = _open(kind, request, tmp_path, 7 * 86400)
    yield opened
    opened.close()


def _now_ms() -> int:
    return int(time.time() * 1000)


def test_only_added_keys_are_seen(state):
    assert state.seen(["a", "b"]) == set()
    state.add(["a"], _now_ms())
    assert state.seen(["a", "b", "a"]) == {"a"}
    assert state.seen([]) == set()
    state.add([], _now_ms())


def test_a_key_inside_the_period_is_seen_and_one_older_is_not(state):
    now = _now_ms()
    period_ms = int(state.period_s * 1000)
    state.add(["inside"], now - period_ms + 60_000)
    state.add(["older"], now - period_ms - 60_000)
    assert state.seen(["inside", "older"]) == {"inside"}


def test_a_key_expires_when_its_period_ends(kind, request, tmp_path):
    state = _open(kind, request, tmp_path, 1.0)
    try:
        state.add(["k"], _now_ms())
        assert state.seen(["k"]) == {"k"}
        time.sleep(1.3)
        assert state.seen(["k"]) == set()
    finally:
        state.close()


def test_adding_again_keeps_the_first_time(kind, request, tmp_path):
    state = _open(kind, request, tmp_path, 2.0)
    try:
        state.add(["k"], _now_ms() - 1500)  # half a second left
        state.add(["k"], _now_ms())  # a later add must not extend it
        time.sleep(0.8)
        assert state.seen(["k"]) == set()
    finally:
        state.close()


def test_many_keys_at_once_and_odd_keys(state):
    keys = [f"mid-{i:08d}" for i in range(20_000)]
    odd = ["", "ü-ключ-🙂", "x" * 256, "with space", "a:b:c", "\\n"]
    state.add(keys[::2] + odd, _now_ms())
    seen = state.seen(keys + odd)
    assert seen == set(keys[::2]) | set(odd)


def test_what_was_added_survives_closing_and_reopening(kind, request, tmp_path):
    state = _open(kind, request, tmp_path, 7 * 86400)
    state.add(["kept"], _now_ms())
    state.close()
    again = _open(kind, request, tmp_path, 7 * 86400)
    try:
        assert again.seen(["kept", "new"]) == {"kept"}
    finally:
        again.close()


def test_reach_is_within_the_period(state):
    state.add(["a"], _now_ms())
    assert 0 < state.reach_seconds() <= state.period_s


def test_forget_drops_keys_so_they_are_new_again(state):
    now = _now_ms()
    long_key = "m" * 300  # held by hash on Redis: forgotten by the same name
    state.add(["gone-1", "gone-2", "kept", long_key], now)
    assert state.forget(["gone-1", "gone-2", long_key, "never-added", "gone-1"]) == 3
    assert state.seen(["gone-1", "gone-2", "kept", long_key]) == {"kept"}
    assert state.forget(["gone-1"]) == 0 and state.forget([]) == 0
    state.add(["gone-1"], now + 1)  # added again after forget: held again, from the new time
    assert state.seen(["gone-1", "gone-2"]) == {"gone-1"}


def test_forget_survives_reopen(kind, request, tmp_path):
    state = _open(kind, request, tmp_path, 7 * 86400)
    try:
        state.add(["a", "b"], _now_ms())
        state.seen(["a", "c"])  # leaves a memo of keys not held on the disk index
        assert state.forget(["a"]) == 1
        state.add(["c"], _now_ms())
    finally:
        state.close()
    reopened = _open(kind, request, tmp_path, 7 * 86400)
    try:
        assert reopened.seen(["a", "b", "c"]) == {"b", "c"}
    finally:
        reopened.close()
