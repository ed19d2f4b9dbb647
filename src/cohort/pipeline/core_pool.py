"""Where `prepare_batch` runs: in worker processes, or inline.

The prepare half of the core (parse, validate, shape into Arrow) is most of the
CPU per event and needs no state, so it runs in a pool of processes and the
pipeline uses every core; the server process keeps the order, the dedup state
and the store. Records go to a worker as raw bytes and come back as one Arrow
table, so crossing the process boundary costs little. Inline mode (0 workers)
runs it in the calling thread, for tests and the smallest machines.

With pseudonymisation (the embedded node always has it), each worker opens its own
identity vault connection in its initializer, from the source the server hands it
(settings and the secrets it loaded), and every core call it runs gets that
pseudonymiser as `pseudonyms`; inline mode uses the server's own.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Callable

import pyarrow as pa

from cohort.core.completed_future import completed_future
from cohort.core.process_batch import PreparedBatch
from cohort.core.telemetry_schema import compile_all
from cohort.pipeline.gc_tuning import call_with_collector_paused, tune_gc
from cohort.pipeline.pseudonymisation import LazyPseudonymiser, PseudonymiserSource

PR_SET_PDEATHSIG = 1  # linux/prctl.h


WORKER_NICENESS = 10
_worker_pseudonyms: LazyPseudonymiser | None = None  # in a worker process: its own vault connection


def _init_worker(parent_pid: int, pseudonyms: PseudonymiserSource | None = None) -> None:
    global _worker_pseudonyms
    _die_with_parent(parent_pid)
    # Acks are what clients wait on; the pipeline has a durable backlog to absorb a delay.
    # So when the CPU is contended, the API process goes first.
    os.nice(WORKER_NICENESS)
    # Arrow's default pool (mimalloc) keeps what a batch freed for the next one: a worker stayed 30-45 MB larger
    # than with the C allocator, for no measurable gain (each batch's table is built once and pickled away)
    pa.set_memory_pool(pa.system_memory_pool())
    compile_all()
    tune_gc()
    if pseudonyms is not None:
        _worker_pseudonyms = LazyPseudonymiser(pseudonyms)
        with contextlib.suppress(Exception):  # not now (a disk fault): its first batch fails as a fault, retried
            _worker_pseudonyms.open_now()


def _call_with_worker_pseudonyms(fn: Callable[..., PreparedBatch], args: tuple, kwargs: dict) -> PreparedBatch:
    assert _worker_pseudonyms is not None, "a pool with pseudonyms initialises every worker with them"
    return call_with_collector_paused(fn, *args, pseudonyms=_worker_pseudonyms.get(), **kwargs)


def _die_with_parent(parent_pid: int) -> None:
    """A worker must not outlive a server that was SIGKILLed: ask the kernel to kill it too,
    and watch the parent as a fallback where that is not available."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="cohort-parent-watch", daemon=True).start()


def _ready() -> bool:
    return True


class CorePool:
    def __init__(self, workers: int, pseudonyms: LazyPseudonymiser | None = None):
        """`pseudonyms`: the caller's own (used inline); workers open theirs from its source."""
        self.workers = workers
        self._pseudonyms = pseudonyms
        self._pool: ProcessPoolExecutor | None = None
        if workers:
            self._start()

    def _start(self) -> None:
        source = self._pseudonyms.source if self._pseudonyms is not None else None
        self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_init_worker, initargs=(os.getpid(), source))
        # Start every worker now (the pool spawns lazily): the first events should not wait ~1 s
        # for interpreters to start and schemas to compile.
        warm = [self._pool.submit(_ready) for _ in range(self.workers)]
        for future in warm:
            try:
                future.result(timeout=60)
            except Exception:  # a worker that cannot start shows up on the first real batch
                break

    @property
    def depth(self) -> int:
        """Batches worth keeping in flight: enough that no worker waits for the next one."""
        return max(1, 2 * self.workers)

    def submit(self, fn: Callable[..., Any], *args, **kwargs) -> Future:
        """Run a core function (module-level, so it pickles) on a worker, or inline; with pseudonyms, the
        function gets the pseudonymiser of the process it runs in (`pseudonyms=`)."""
        if self._pool is None:
            return completed_future(self._call_inline, fn, args, kwargs)
        if self._pseudonyms is not None:
            return self._pool.submit(_call_with_worker_pseudonyms, fn, args, kwargs)
        return self._pool.submit(call_with_collector_paused, fn, *args, **kwargs)

    def _call_inline(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        if self._pseudonyms is not None:  # opening it may fail (a disk fault): the call's failure, as in a worker
            kwargs = {**kwargs, "pseudonyms": self._pseudonyms.get()}
        return call_with_collector_paused(fn, *args, **kwargs)

    def restart(self) -> None:
        """After a worker died (the pool is broken) or hung on an input, start fresh ones. Workers
        still running are killed: a pool shut down normally would wait for a hung one forever."""
        if self._pool is not None:
            for process in list(getattr(self._pool, "_processes", {}).values()):
                with contextlib.suppress(Exception):
                    process.kill()
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._start()

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the workers; one still busy after `timeout_s` (hung on an input) is killed, so that
        stopping the server never waits on it."""
        if self._pool is None:
            return
        processes = list(getattr(self._pool, "_processes", {}).values())
        self._pool.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + timeout_s
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
        self._pool = None
