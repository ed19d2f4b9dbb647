"""Embedded dedup state: two rotating generations of mids."""

from __future__ import annotations

import pytest

from cohort.state.mid_window import MidWindow

PERIOD = 10.0


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def window(clock):
    return MidWindow(PERIOD, clock=clock)


def test_seen_and_add(window):
    assert window.seen(["a", "b"]) == set()
    window.add(["a", "b"])
    window.add(iter(["c"]))  # any iterable, e.g. a generator from the store
    assert window.seen(["a", "c", "z"]) == {"a", "c"}
    assert window.seen([]) == set()
    assert len(window) == 3


def test_seen_does_not_add(window):
    window.seen(["a"])
    assert window.seen(["a"]) == set() and len(window) == 0


def test_remembered_for_at_least_one_period(window, clock):
    start = clock.now
    window.add(["early"])
    clock.now = start + PERIOD - 0.001
    window.add(["late"])  # added just before a rotation
    for t in (PERIOD, PERIOD + 5, 2 * PERIOD - 0.001):
        clock.now = start + t
        assert window.seen(["early", "late"]) == {"early", "late"}


def test_forgotten_after_two_periods_with_steady_traffic(window, clock):
    start = clock.now
    window.add(["a"])
    clock.now = start + PERIOD
    assert window.seen(["a"]) == {"a"}  # rotated into the previous generation
    clock.now = start + 2 * PERIOD
    assert window.seen(["a"]) == set()
    assert len(window) == 0


def test_rotation_keeps_newer_mids(window, clock):
    start = clock.now
    window.add(["a"])
    clock.now = start + PERIOD
    window.add(["b"])
    clock.now = start + 2 * PERIOD
    assert window.seen(["a", "b"]) == {"b"}


def test_uses_wall_clock_by_default():
    window = MidWindow(60)
    window.add(["x"])
    assert window.seen(["x"]) == {"x"}


def test_forgotten_after_an_idle_gap_of_two_periods(window, clock):
    start = clock.now
    window.add(["a"])
    clock.now = start + 2.5 * PERIOD  # no traffic in between
    assert window.seen(["a"]) == set()


def test_never_remembered_longer_than_two_periods(window, clock):
    start = clock.now
    window.add(["a"])
    clock.now = start + 2 * PERIOD - 0.1
    window.seen(["x"])  # first call after the first boundary: rotates now, not at start + PERIOD
    clock.now = start + 3 * PERIOD - 0.2
    assert window.seen(["a"]) == set(), "remembered for 2.98 periods"


def test_memory_is_bounded_the_window_shortens_instead(clock):
    window = MidWindow(PERIOD, clock=clock, max_mids=10)
    window.add([f"a{i}" for i in range(5)])  # the current generation is full: rotates early
    assert window.early_rotations == 1
    clock.now += 1
    window.add([f"b{i}" for i in range(5)])
    assert window.early_rotations == 2
    assert len(window) == 5  # never more than max_mids
    assert window.seen(["a0"]) == set(), "the oldest generation went to keep memory bounded"
    assert window.seen(["b0"]) == {"b0"}
    assert window.window_seconds == pytest.approx(1.0)


def test_window_reaches_the_full_period_when_under_the_cap(window, clock):
    window.add(["a"])
    clock.now += 1.5 * PERIOD
    window.seen([])
    assert window.window_seconds == pytest.approx(PERIOD)
