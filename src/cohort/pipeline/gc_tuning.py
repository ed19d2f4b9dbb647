"""Garbage-collector settings for processes that parse many events.

Parsing a batch allocates thousands of dicts; with the default gen-0 threshold
(700) the cyclic collector runs over them again and again and costs as much as
the parse itself (measured: orjson 4.0 → 2.3 µs per event, see PERFORMANCE.md).
Events hold no reference cycles, so collecting rarely loses nothing. Freezing
moves start-up objects (modules, compiled validators) out of every later scan.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")

GEN0_THRESHOLD = 50_000


def tune_gc() -> None:
    gc.freeze()
    gc.set_threshold(GEN0_THRESHOLD, 20, 100)


@contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic collection while a batch is worked on: its events are freed by reference counting
    when the batch is done, and a collection in the middle only walks them (py-spy on `cohort worker`:
    8 % of its samples in the collector with the tuned threshold). Whatever survives is collected at
    the next allocation after the batch, when little is alive."""
    paused = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


def call_with_collector_paused(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` under `collector_paused`: module-level, so a process pool can run it."""
    with collector_paused():
        return fn(*args, **kwargs)
