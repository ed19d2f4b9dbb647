"""Poison input cannot stop the pipeline: what fails the same way twice is isolated and quarantined.

A poison record sits in the durable log, so a pipeline that only retries would retry it
forever (across restarts too) while every later event waits behind it. These tests put such
records in a real SQLite log and check that the runner isolates the offending events, stores
the rest, keeps every count reconciled, and shows a stall while one lasts.
"""

from __future__ import annotations

import os
import time

import duckdb
import orjson
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from cohort.core.log_record import LogRecord
from cohort.ingest.sqlite_log import SqliteLog
from cohort.pipeline.embedded_dedup import open_dedup_states
from cohort.pipeline.runner import PipelineRunner
from cohort.store.duckdb_store import DuckDbStore
from support import ExplodingValidator, wait_for

DAY_S = 86_400.0


NEST = "__nested__"


def nested_json(depth: int) -> bytes:
    return b'{"a":' * depth + b'"leaf"' + b"}" * depth


def to_json(value, depth: int = 0) -> bytes:
    """orjson, with the NEST placeholder replaced by `depth` levels of objects (deeper than orjson writes)."""
    return orjson.dumps(value).replace(orjson.dumps(NEST), nested_json(depth))


class Files:
    def __init__(self, data_dir):
        self.data_dir = data_dir
        self.log = SqliteLog(data_dir / "ingest-log.sqlite")
        self.store = DuckDbStore(data_dir / "store.duckdb")
        self.dedup = open_dedup_states(self.store, 7 * DAY_S, mid_path=data_dir / "dedup-mid",
                                       msgid_path=data_dir / "dedup-msgid", cache_bytes=8 << 20)

    def runner(self, **kwargs) -> PipelineRunner:
        options = dict(batch_events=1000, retention_s=DAY_S, idle_wait_s=0.005)
        options.update(kwargs)
        return PipelineRunner(self.log, self.store, **self.dedup, **options)

    def append(self, batches: list[list], depth: int = 0) -> list[int]:
        records = [LogRecord(payload=to_json({"id": "api.sunbird.telemetry", "params": {"msgid": f"m{i}"},
                                              "events": events}, depth),
                             event_count=len(events), received_at_ms=int(time.time() * 1000))
                   for i, events in enumerate(batches)]
        return self.log.append_many(records)

    def rows(self, sql: str) -> list[tuple]:
        return self.store.query(sql, None, 10_000, 10.0).rows

    def run_until_drained(self, runner: PipelineRunner) -> None:
        """Run the background loop until it has committed everything in the log."""
        runner.start()
        try:
            assert wait_for(lambda: runner.offset == self.log.stats().last_offset, timeout=20), runner.last_error
        finally:
            runner.stop()

    def reconciled(self) -> bool:
        counts = self.store.counts()
        stats = self.log.stats(after=counts.last_offset)
        return stats.received_events == counts.stored + counts.failed + counts.duplicate + stats.events_after

    def close(self) -> None:
        for state in self.dedup.values():
            state.close()
        self.store.close()
        self.log.close()


@pytest.fixture
def files(tmp_path):
    files = Files(tmp_path / "data")
    yield files
    files.close()


def deep_interact(sample_events) -> dict:
    """A schema-valid INTERACT whose edata.extra nests deeply (the depth is given to `append`):
    such events were acked before the ack path bounded nesting, and may come from other sources."""
    event = next(dict(e) for e in sample_events if e["eid"] == "INTERACT")
    event["mid"] = "poison-deep"
    event["edata"] = dict(event["edata"], extra=NEST)
    return event


def test_a_deeply_nested_event_is_quarantined_and_its_batch_mates_are_stored(files, sample_events):
    poison = deep_interact(sample_events)
    files.append([sample_events[:20] + [poison] + sample_events[20:40], sample_events[40:60]], depth=300)
    runner = files.runner()
    assert runner.drain() == 61
    assert files.rows("SELECT count(*) FROM telemetry") == [(60,)]
    failed = files.rows("SELECT error_code, stage, mid, event_count, length(payload) FROM failed_events")
    assert len(failed) == 1
    code, stage, mid, count, payload_length = failed[0]
    assert (code, stage, mid, count) == ("ERR_EVENT_TOO_DEEP", "route", "poison-deep", 1)
    assert payload_length > 300 * 6  # the original event, kept whole for replay
    assert files.reconciled()


@pytest.mark.parametrize("depth", [254, 255, 600, 1000])
def test_nesting_at_every_parser_limit_is_stored_or_quarantined_never_stuck(files, sample_events, depth):
    files.append([[deep_interact(sample_events)] + sample_events[:5]], depth=depth)
    runner = files.runner()
    files.run_until_drained(runner)
    counts = files.store.counts()
    assert counts.stored + counts.failed == 6 and counts.stored >= 5
    assert files.reconciled()


def test_an_event_that_crashes_a_stage_is_isolated_with_its_exception(files, sample_events, monkeypatch):
    import cohort.core.stages.validate as validate_stage

    real = validate_stage.validator_for

    def validator_for(eid):
        return ExplodingValidator.around(real(eid), lambda event: event.get("mid") == sample_events[3]["mid"],
                                 RuntimeError("validator blew up on this event"))

    monkeypatch.setattr(validate_stage, "validator_for", validator_for)
    files.append([sample_events[:10]])
    runner = files.runner()
    assert runner.drain() == 10
    assert files.rows("SELECT count(*) FROM telemetry") == [(9,)]
    [(code, stage, message, mid)] = files.rows("SELECT error_code, stage, message, mid FROM failed_events")
    assert (code, stage, mid) == ("ERR_PIPELINE_POISON", "validate", sample_events[3]["mid"])
    assert "RuntimeError" in message and "blew up" in message
    assert files.reconciled()


def test_a_record_that_fails_the_core_every_time_is_isolated_after_a_retry(files, sample_events, monkeypatch):
    """A failure no per-event guard catches (say, a worker dying on the input): the runner retries once,
    then processes the batch one record at a time, and quarantines what still fails, event by event."""
    import cohort.pipeline.runner as runner_module

    offsets = files.append([sample_events[:10], sample_events[10:20], sample_events[20:30]])
    poison_offset = offsets[1]
    real_prepare = runner_module.prepare_batch
    attempts = []

    def prepare_batch(records, **kwargs):
        attempts.append([r.offset for r in records])
        if any(r.offset == poison_offset for r in records):
            raise MemoryError("the core ran out of memory on this record")
        return real_prepare(records, **kwargs)

    monkeypatch.setattr(runner_module, "prepare_batch", prepare_batch)
    runner = files.runner(workers=0)
    files.run_until_drained(runner)
    assert files.rows("SELECT count(*) FROM telemetry") == [(20,)]
    failed = files.rows("SELECT error_code, event_count, log_offset FROM failed_events ORDER BY payload")
    assert {row[0] for row in failed} == {"ERR_PIPELINE_POISON"}
    assert sum(row[1] for row in failed) == 10 and {row[2] for row in failed} == {poison_offset}
    assert runner.isolated_records == 1
    assert files.reconciled()
    assert runner.last_error is None


def test_a_store_that_refuses_one_record_every_time_gets_it_quarantined(files, sample_events, monkeypatch):
    offsets = files.append([sample_events[:10], sample_events[10:20], sample_events[20:30]])
    real_write = files.store.write_batch
    bad_mid = sample_events[15]["mid"]

    def write_batch(outcome, **kwargs):
        if bad_mid in outcome.stored_mids:
            raise duckdb.ConversionException("Conversion Error: malformed JSON (injected)")
        return real_write(outcome, **kwargs)

    monkeypatch.setattr(files.store, "write_batch", write_batch)
    runner = files.runner(workers=0)
    files.run_until_drained(runner)
    assert files.rows("SELECT count(*) FROM telemetry") == [(20,)]
    failed = files.rows("SELECT error_code, stage, event_count, log_offset FROM failed_events")
    assert failed == [("ERR_STORE_REJECTED", "store", 10, offsets[1])]
    assert files.reconciled()


def test_a_transient_store_fault_is_retried_never_quarantined_and_the_stall_is_visible(files, sample_events,
                                                                                      monkeypatch):
    offsets = files.append([sample_events[:10]])
    real_write = files.store.write_batch
    fault = {"on": True}

    def write_batch(outcome, **kwargs):
        if fault["on"]:
            raise duckdb.IOException("IO Error: No space left on device (injected)")
        return real_write(outcome, **kwargs)

    monkeypatch.setattr(files.store, "write_batch", write_batch)
    runner = files.runner(workers=0, stall_after_s=0.3)
    runner.start()
    try:
        assert wait_for(lambda: runner.consecutive_failures >= 3, timeout=20)
        assert wait_for(lambda: runner.status().stalled, timeout=5)
        status = runner.status()
        assert status.stalled and "No space left" in status.last_error
        assert status.oldest_unprocessed_age_s > 0
        assert files.store.counts().failed == 0  # retried, not blamed on the input
        fault["on"] = False
        assert wait_for(lambda: runner.offset == offsets[-1], timeout=20)
        assert wait_for(lambda: not runner.status().stalled, timeout=5)
    finally:
        runner.stop()
    assert files.rows("SELECT count(*) FROM telemetry") == [(10,)]
    assert runner.status().oldest_unprocessed_age_s == 0


def test_poison_left_in_the_log_by_a_crash_is_isolated_after_a_restart(files, sample_events, tmp_path):
    files.append([[deep_interact(sample_events)], sample_events[:10]], depth=400)
    files.close()
    reopened = Files(tmp_path / "data")
    try:
        runner = reopened.runner()
        assert runner.drain() == 11
        assert reopened.rows("SELECT count(*) FROM telemetry") == [(10,)]
        assert reopened.reconciled()
    finally:
        reopened.close()
    files.store = DuckDbStore(tmp_path / "unused.duckdb")  # the fixture closes what it holds
    files.log = SqliteLog(tmp_path / "unused.sqlite")


@settings(max_examples=int(os.environ.get("COHORT_FUZZ_EXAMPLES", "25")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(plan=st.lists(st.tuples(st.integers(0, 12), st.sampled_from(["ok", "deep", "raise", "not-object"]),
                               st.integers(0, 1000)), min_size=1, max_size=6))
def test_any_mix_of_poison_drains_and_reconciles(tmp_path_factory, sample_events, monkeypatch, plan):
    """Records of valid events mixed with events nested at any depth, events that make a stage raise,
    and non-object events: the pipeline always drains, and every event is stored or quarantined."""
    import cohort.core.stages.validate as validate_stage

    real = validate_stage.validator_for

    def validator_for(eid):
        return ExplodingValidator.around(real(eid), lambda event: str(event.get("mid", "")).startswith("raise-"),
                                 ValueError("a stage failed on this event"))

    monkeypatch.setattr(validate_stage, "validator_for", validator_for)
    files = Files(tmp_path_factory.mktemp("data"))
    try:
        expected_stored = 0
        for n, (count, kind, depth) in enumerate(plan):
            events = [dict(e, mid=f"{n}-{i}") for i, e in enumerate(sample_events[n * 13:n * 13 + count])]
            if kind == "deep":
                events.append(dict(deep_interact(sample_events), mid=f"deep-{n}"))
            elif kind == "raise":
                events.append(dict(sample_events[0], mid=f"raise-{n}"))
            elif kind == "not-object":
                events.append(NEST)
            expected_stored += count
            if events:
                files.append([events], depth=depth)
        runner = files.runner(batch_events=25)
        runner.drain()
        counts = files.store.counts()
        assert counts.stored >= expected_stored
        assert files.reconciled()
        assert files.store.counts().last_offset == files.log.stats().last_offset
    finally:
        files.close()


def test_a_record_nested_beyond_the_parser_is_quarantined_whole(files, sample_events):
    files.append([[deep_interact(sample_events)] + sample_events[:3], sample_events[3:6]], depth=1100)
    assert files.runner().drain() == 7
    assert files.rows("SELECT error_code, event_count FROM failed_events") == [("ERR_EXTRACT_PAYLOAD", 4)]
    assert files.rows("SELECT count(*) FROM telemetry") == [(3,)]
    assert files.reconciled()

