"""A call run in the calling thread, returned as a completed Future.

Why: callers that hand work to a process pool (the pipeline's batches, the workflow summaries) also run it
inline when there is no pool (no workers configured, the pipeline stopped, tests). The caller then waits on
the same kind of object either way, and an exception reaches it through `result()`, as from the pool.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any, Callable


def completed_future(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
    """`fn(*args, **kwargs)` run now; its result, or the exception it raised, in a completed Future."""
    future: Future = Future()
    try:
        future.set_result(fn(*args, **kwargs))
    except Exception as exc:  # noqa: BLE001 - handed to the caller, as a pool's future would hand it
        future.set_exception(exc)
    return future
