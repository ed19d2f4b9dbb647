"""CPU priority for the threads that run user queries, below the threads that acknowledge.

On a small machine one analytical query can keep every core busy for its whole time limit
(a cross join, say), and the event loop that answers acks then waits its turn like any other
thread. Linux schedules threads, not processes, so the threads that execute queries (the query
executor's and the engine's own workers) get a higher niceness: they still use idle cores, but
yield them to acks, group commits and the pipeline. Elsewhere this is a no-op.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Iterator

_TASKS = Path("/proc/self/task")


def lower_current_thread(niceness: int) -> None:
    """Make the calling thread yield the CPU to threads of normal priority."""
    if niceness > 0 and hasattr(os, "setpriority"):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)


@contextlib.contextmanager
def lower_threads_started_within(niceness: int) -> Iterator[None]:
    """Threads the block starts (an engine's worker pool) run at `niceness`."""
    before = _thread_ids()
    yield
    if niceness <= 0 or not hasattr(os, "setpriority"):
        return
    for thread_id in _thread_ids() - before:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, thread_id, niceness)


def _thread_ids() -> set[int]:
    try:
        return {int(name) for name in os.listdir(_TASKS)}
    except OSError:
        return set()
