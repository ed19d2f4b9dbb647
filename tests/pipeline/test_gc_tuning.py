"""The collector pauses for a batch and comes back after it, whatever the batch did."""

from __future__ import annotations

import gc
import weakref

import pytest

from cohort.pipeline.gc_tuning import call_with_collector_paused, collector_paused


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


def test_paused_during_the_batch_and_enabled_after_even_when_it_fails():
    assert gc.isenabled()
    with pytest.raises(ValueError):
        with collector_paused():
            assert not gc.isenabled()
            raise ValueError("a failed batch")
    assert gc.isenabled()
    assert call_with_collector_paused(gc.isenabled) is False and gc.isenabled()


def test_a_collector_switched_off_by_someone_else_stays_off():
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_cycles_made_during_the_batch_are_collected_after_it_without_being_asked():
    with collector_paused():
        node = Node()
        alive = weakref.ref(node)
        del node
        batch = [[] for _ in range(10 * gc.get_threshold()[0])]  # would have set the collector off
        assert alive() is not None
    del batch
    after = [[] for _ in range(10 * gc.get_threshold()[0])]
    assert alive() is None and after
