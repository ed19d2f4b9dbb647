"""A state machine over the embedded log, runner and store: whatever order appends, pipeline steps,
store failures and restarts come in, every acknowledged event ends stored once, quarantined, or
counted as a duplicate — and the counters say so."""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

import orjson
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from cohort.core.log_record import LogRecord
from cohort.ingest.sqlite_log import SqliteLog
from cohort.pipeline.embedded_dedup import open_dedup_states
from cohort.pipeline.runner import PipelineRunner
from support import SAMPLE_FILE

SAMPLE = [orjson.loads(line) for line in SAMPLE_FILE.read_bytes().splitlines()]


class PipelineMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="cohort-stateful-"))
        self.acked_valid_mids: set[str] = set()
        self.acked_events = 0
        self._open()

    def _open(self):
        from cohort.store.duckdb_store import DuckDbStore

        self.log = SqliteLog(self.dir / "log.sqlite")
        self.store = DuckDbStore(self.dir / "store.duckdb")
        self.dedup = open_dedup_states(self.store, 3600, mid_path=self.dir / "dedup-mid",
                                       msgid_path=self.dir / "dedup-msgid", cache_bytes=8 << 20)
        self.runner = PipelineRunner(self.log, self.store, **self.dedup, batch_events=60, retention_s=3600)
        self.acted_since_open = False

    def _close(self):
        for state in self.dedup.values():
            state.close()
        self.store.close()
        self.log.close()

    # few distinct ranges, so re-sent (duplicate) events are common
    @rule(start=st.integers(0, 6).map(lambda i: i * 40), size=st.integers(1, 40), broken=st.integers(0, 3),
          seed=st.integers(0, 99))
    def append(self, start, size, broken, seed):
        """A client batch: real events (re-sent ranges give duplicates), some of them broken."""
        self.acted_since_open = True
        events = [dict(e) for e in SAMPLE[start:start + size]]
        rng = random.Random(seed)
        for event in rng.sample(events, min(broken, len(events))):
            event["ets"] = "not a time"
        for event in events:
            if event["ets"] != "not a time":
                self.acked_valid_mids.add(event["mid"])
        body = orjson.dumps({"id": "api.sunbird.telemetry", "events": events})
        self.log.append_many([LogRecord(payload=body, event_count=len(events), received_at_ms=int(time.time() * 1000))])
        self.runner.acked(len(events))
        self.acked_events += len(events)

    @rule()
    def step(self):
        self.acted_since_open = True
        self.runner.step()

    @rule()
    def store_write_fails_once(self):
        self.acted_since_open = True
        real = self.store.write_batch

        def failing(outcome, **kwargs):
            self.store.write_batch = real
            raise OSError("injected: no space left on device")

        self.store.write_batch = failing
        try:
            self.runner.step()
        except OSError:
            pass
        self.store.write_batch = real

    # only after something happened since the last open: most generated restarts came straight after another
    # (up to 136 of 170 in a run), each reopening what was just reopened, at ~45 ms an open
    @precondition(lambda self: self.acted_since_open)
    @rule()
    def restart(self):
        """The process dies between batches (SIGKILL loses nothing committed): reopen everything."""
        self._close()
        self._open()

    @precondition(lambda self: self.acked_events > 0)
    @rule()
    def drain_and_check(self):
        self.acted_since_open = True
        self.runner.drain()
        counts = self.store.counts()
        assert counts.stored + counts.failed + counts.duplicate == self.acked_events
        stored = self.store.query("SELECT mid, count(*) AS n FROM telemetry GROUP BY mid", None, 10**6, 30).rows
        assert {mid for mid, _ in stored} == self.acked_valid_mids
        assert all(n == 1 for _, n in stored)

    @invariant()
    def counters_reconcile_with_the_log(self):
        counts = self.store.counts()
        stats = self.log.stats(after=counts.last_offset)
        assert stats.received_events == self.acked_events
        assert stats.received_events == counts.stored + counts.failed + counts.duplicate + stats.events_after

    def teardown(self):
        self._close()


PipelineMachine.TestCase.settings = settings(max_examples=30, stateful_step_count=20, deadline=None,
                                             suppress_health_check=[HealthCheck.too_slow])
TestPipelineMachine = PipelineMachine.TestCase
