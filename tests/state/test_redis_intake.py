"""The received side of the scale-out ledger: counted once whoever registers a message, in flight
until the store holds it, and never counted again after it was let go."""

from __future__ import annotations

import pytest

from cohort.state.redis_faults import RedisStateUnavailable
from cohort.state.redis_intake import RedisIntake
from support import wait_for


@pytest.fixture
def intake(redis_url):
    opened = RedisIntake(redis_url)
    yield opened
    opened.close()


def test_a_message_is_counted_once_whoever_registers_it_and_how_often(intake):
    assert intake.register([(0, 5, 100, 1000), (1, 2, 50, 1000)]) == 150  # the ingest API, after the broker's confirmation
    assert intake.register([(0, 5, 100, 1000), (1, 2, 50, 1000), (1, 3, 7, 1000)]) == 7  # a worker reading them (and one more)
    assert intake.received() == 157
    assert intake.in_flight({}) == 157


def test_in_flight_is_what_lies_above_the_stores_position(intake):
    intake.register([(0, offset, 10, 1000) for offset in range(10)] + [(1, 0, 3, 1000)])
    assert intake.in_flight({0: 4}) == 50 + 3  # offsets 5..9 of partition 0, and all of partition 1
    assert intake.in_flight({0: 9, 1: 0}) == 0


def test_what_waits_says_how_many_messages_and_since_when(intake):
    intake.register([(0, 0, 10, 5000), (0, 1, 10, 4000), (2, 0, 1, 7000)])
    assert intake.received_requests() == 3
    waiting = intake.waiting({0: 0})
    assert (waiting.events, waiting.messages, waiting.oldest_received_ms) == (11, 2, 4000)
    assert intake.waiting({0: 1, 2: 0}).oldest_received_ms is None


def test_entries_let_go_are_never_counted_again(intake):
    intake.register([(0, offset, 10, 1000) for offset in range(5)])
    assert intake.let_go(0, 3) == 4
    assert intake.register([(0, 2, 10, 1000), (0, 3, 10, 1000)]) == 0  # a worker re-reading after a rebalance
    assert intake.received() == 50 and intake.in_flight({0: 3}) == 10
    assert intake.let_go(0, 1) == 0  # the mark never moves back


def test_counts_survive_a_redis_restart(redis_server, redis_url):
    intake = RedisIntake(redis_url)
    intake.register([(0, 1, 10, 1000)])
    intake.close()
    redis_server.restart(kill=True)  # AOF always: what was registered is there
    again = RedisIntake(redis_url)
    try:
        assert wait_for(lambda: _answers(again), timeout=10), "Redis did not come back"
        assert again.received() == 10 and again.in_flight({}) == 10
    finally:
        again.close()


def _answers(intake: RedisIntake) -> bool:
    try:
        intake.received()
        return True
    except RedisStateUnavailable:  # still loading its append-only file
        return False


def test_redis_away_is_a_transient_fault_within_the_timeout():
    intake = RedisIntake("redis://127.0.0.1:9/0", socket_timeout_s=0.5)
    with pytest.raises(RedisStateUnavailable):
        intake.register([(0, 1, 1, 1000)])


def test_a_snapshot_taken_after_the_store_moved_on_says_so(intake):
    intake.register([(0, offset, 10, 1000) for offset in range(4)])
    positions = {0: 1}  # what the store said, just before the writer stored up to 2 and let those go
    intake.let_go(0, 2)
    snapshot = intake.snapshot(positions)
    assert snapshot.overtaken
    assert not intake.snapshot({0: 2}).overtaken and intake.snapshot({0: 2}).waiting.events == 10
    assert (snapshot.received, snapshot.received_requests) == (40, 4)
