"""Where prepare_batch runs: inline, or in worker processes that can die and be replaced."""

from __future__ import annotations

import os
import signal
from concurrent.futures import BrokenExecutor

import orjson
import pytest

from cohort.core.log_record import LogRecord
from cohort.core.process_batch import prepare_batch
from cohort.pipeline.core_pool import CorePool


def records(events, offset=1):
    body = orjson.dumps({"id": "api.sunbird.telemetry", "events": events})
    return [LogRecord(payload=body, event_count=len(events), offset=offset, received_at_ms=1_700_000_000_000)]


def test_inline_pool_prepares_in_the_calling_thread(sample_events):
    pool = CorePool(0)
    prepared = pool.submit(prepare_batch, records(sample_events[:20]), now_ms=1, config_version="v").result()
    assert prepared.rows.num_rows == 20 and prepared.failed == []
    pool.close()


def test_worker_pool_gives_the_same_result_as_inline(sample_events):
    batch = records(sample_events[:50] + [{"eid": "NOPE"}])
    inline = CorePool(0).submit(prepare_batch, batch, now_ms=1, config_version="v").result()
    pool = CorePool(1)
    try:
        remote = pool.submit(prepare_batch, batch, now_ms=1, config_version="v").result(timeout=60)
    finally:
        pool.close()
    # the same rows, apart from the trace, which carries each run's own stage timings
    assert remote.rows.drop_columns(["trace"]).equals(inline.rows.drop_columns(["trace"]))
    assert [(f.code, f.payload) for f in remote.failed] == [(f.code, f.payload) for f in inline.failed]


def test_a_killed_worker_breaks_the_pool_and_restart_brings_a_working_one(sample_events):
    pool = CorePool(1)
    try:
        pool.submit(prepare_batch, records(sample_events[:5]), now_ms=1, config_version="v").result(timeout=60)
        [pid] = pool._pool._processes  # the worker that just ran
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(BrokenExecutor):
            for _ in range(50):  # the pool notices the death on its next use
                pool.submit(prepare_batch, records(sample_events[:5]), now_ms=1, config_version="v").result(timeout=60)
        pool.restart()
        assert pool.submit(prepare_batch, records(sample_events[:5]), now_ms=1, config_version="v").result(timeout=60).rows.num_rows == 5
    finally:
        pool.close()


def hang(seconds: float = 3600.0) -> None:
    """Stands for a core call stuck on an input (module level, so a worker can import it)."""
    import time as clock
    clock.sleep(seconds)


def test_a_hung_worker_is_killed_by_restart_and_close_does_not_wait_for_it(sample_events):
    import time
    from concurrent.futures import TimeoutError as FutureTimeout

    pool = CorePool(1)
    try:
        with pytest.raises(FutureTimeout):
            pool.submit(hang).result(timeout=0.5)
        [hung] = pool._pool._processes.values()
        pool.restart()
        hung.join(5)
        assert not hung.is_alive()
        assert pool.submit(prepare_batch, records(sample_events[:5]), now_ms=1,
                           config_version="v").result(timeout=60).rows.num_rows == 5
        pool.submit(hang)
        time.sleep(0.5)  # let the worker pick it up
        started = time.monotonic()
    finally:
        pool.close(timeout_s=1.0)
    assert time.monotonic() - started < 10
