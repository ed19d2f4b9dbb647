"""The forget service over real parts (DuckDB store, RocksDB dedup index, SQLite vault): its order makes every
failure safe to retry, it waits for the pipeline, and a learner the vault does not hold is answered, not
invented."""

from __future__ import annotations

import time

import orjson
import pytest

from cohort.core.errors import CohortError, ErrorCode
from cohort.core.log_record import LogRecord
from cohort.core.process_batch import process_batch
from cohort.core.pseudonyms import DEVICE, LEARNER
from cohort.pipeline.forget import forget_learner
from cohort.security.secrets import load_or_create_secrets
from cohort.settings import Settings
from cohort.state.mid_window import MidWindow
from cohort.state.rocksdb_dedup import DiskDedupIndex
from cohort.state.sqlite_identity_vault import SqliteIdentityVault
from cohort.store.duckdb_store import DuckDbStore

TENANT = "t-forget"
NOW_MS = int(time.time() * 1000)


class Target:
    """A node's forget view over real parts; `processed` says whether the pipeline has caught up."""

    def __init__(self, store, dedup):
        self.store, self.mid_dedup = store, dedup
        self.processed = True
        self.marks: list[int] = []

    def acked_mark(self) -> int:
        self.marks.append(len(self.marks))
        return self.marks[-1]

    def processed_through(self, mark: int) -> bool:
        return self.processed


@pytest.fixture
def parts(tmp_path):
    store = DuckDbStore(tmp_path / "store.duckdb")
    dedup = DiskDedupIndex(tmp_path / "dedup-mid", 7 * 86400, cache_bytes=16 << 20)
    vault = SqliteIdentityVault(tmp_path / "vault.sqlite", load_or_create_secrets(Settings(data_dir=tmp_path)))
    yield Target(store, dedup), vault
    vault.close()
    dedup.close()
    store.close()


def store_events_of(target: Target, vault, sample_events, learner: str, tag: str, offset: int) -> list[str]:
    pseudonym = vault.pseudonyms(TENANT, LEARNER, [learner])[learner]
    events = [dict(e, mid=f"{tag}-{i}", actor={"id": pseudonym, "type": "User"},
                   context={**e["context"], "channel": TENANT}) for i, e in enumerate(sample_events[1:4])]
    record = LogRecord(payload=orjson.dumps({"events": events}), event_count=len(events), offset=offset,
                       received_at_ms=NOW_MS)
    outcome = process_batch([record], MidWindow(3600), now_ms=NOW_MS, config_version="test")
    target.store.write_batch(outcome, failed_at_ms=NOW_MS)
    target.mid_dedup.add(outcome.stored_mids, NOW_MS)
    return outcome.stored_mids


def test_forget_deletes_rows_keys_and_entry_of_one_learner(parts, sample_events):
    target, vault = parts
    mids_a = store_events_of(target, vault, sample_events, "A", "a", 1)
    mids_b = store_events_of(target, vault, sample_events, "B", "b", 2)
    device = vault.pseudonyms(TENANT, DEVICE, ["A"])["A"]  # a device with the same id: not the learner
    pa = vault.pseudonym_of(TENANT, LEARNER, "A")

    report = forget_learner(target, vault, TENANT, "A")

    assert (report.held, report.pseudonym, report.telemetry_rows, report.dedup_keys, report.vault_entry) == \
        (True, pa, 3, 3, True)
    assert "A" not in str(report.detail().values()).replace(pa or "", "")
    assert target.mid_dedup.seen(mids_a + mids_b) == set(mids_b)
    assert vault.pseudonym_of(TENANT, LEARNER, "A") is None and vault.pseudonym_of(TENANT, LEARNER, "B")
    assert vault.pseudonym_of(TENANT, DEVICE, "A") == device  # devices are shared: never forgotten
    assert target.store.query("SELECT count(*) FROM telemetry", None, 10, 10).rows == [(3,)]
    assert "3 telemetry rows" in report.summary()


def test_a_learner_not_held_is_answered_and_nothing_is_created(parts):
    target, vault = parts
    report = forget_learner(target, vault, TENANT, "never-seen")
    assert not report.held and report.pseudonym is None and "not held" in report.summary()
    assert vault.count(TENANT) == 0


def test_bad_input_is_refused_before_any_wait(parts):
    target, vault = parts
    target.processed = False
    for tenant, learner in (("", "x"), ("bad tenant", "x"), (TENANT, ""), (TENANT, "x" * 1025)):
        with pytest.raises(CohortError) as caught:
            forget_learner(target, vault, tenant, learner, wait_s=5)
        assert caught.value.code == ErrorCode.VAULT_INPUT
    assert target.marks == []


def test_a_pipeline_that_does_not_catch_up_times_out_and_nothing_is_deleted(parts, sample_events):
    target, vault = parts
    store_events_of(target, vault, sample_events, "A", "a", 1)
    target.processed = False
    started = time.monotonic()
    with pytest.raises(CohortError) as caught:
        forget_learner(target, vault, TENANT, "A", wait_s=0.3)
    assert caught.value.code == ErrorCode.FORGET_TIMEOUT and 0.3 <= time.monotonic() - started < 5
    assert vault.pseudonym_of(TENANT, LEARNER, "A") is not None
    assert target.store.query("SELECT count(*) FROM telemetry", None, 10, 10).rows == [(3,)]


def test_the_forget_waits_for_the_pipeline_then_deletes(parts, sample_events):
    target, vault = parts
    store_events_of(target, vault, sample_events, "A", "a", 1)
    target.processed = False
    waited = []

    def sleep(seconds: float) -> None:  # the pipeline catches up after a few polls, storing more of A
        waited.append(seconds)
        if len(waited) == 3:
            store_events_of(target, vault, sample_events, "A", "a-late", 2)
            target.processed = True

    report = forget_learner(target, vault, TENANT, "A", sleep=sleep)
    assert len(waited) == 3 and report.telemetry_rows == 6


def test_a_failure_mid_way_leaves_the_vault_entry_so_a_retry_finishes(parts, sample_events):
    target, vault = parts
    mids = store_events_of(target, vault, sample_events, "A", "a", 1)
    real = target.store

    class FailingStore:  # the dedup keys are deleted, then the store fails before deleting the rows
        def __getattr__(self, name):
            return getattr(real, name)

        def forget_rows(self, tenant, pseudonym):
            raise OSError("disk gone (injected)")

    target.store = FailingStore()
    with pytest.raises(CohortError) as caught:
        forget_learner(target, vault, TENANT, "A")
    assert caught.value.code == ErrorCode.FORGET_UNAVAILABLE and "store" in caught.value.message
    assert target.mid_dedup.seen(mids) == set()
    assert vault.pseudonym_of(TENANT, LEARNER, "A") is not None  # the retry still finds the learner and rows
    target.store = real
    report = forget_learner(target, vault, TENANT, "A")
    assert report.held and report.telemetry_rows == 3 and report.vault_entry
    assert real.query("SELECT count(*) FROM telemetry", None, 10, 10).rows == [(0,)]


def test_keys_of_rows_stored_while_the_forget_runs_go_too(parts, sample_events):
    target, vault = parts
    store_events_of(target, vault, sample_events, "A", "a", 1)
    real = target.store
    late: list[str] = []

    class RacingStore:  # a batch of A lands between the read of the mids and the delete
        def __getattr__(self, name):
            return getattr(real, name)

        def forget_rows(self, tenant, pseudonym):
            late.extend(store_events_of(target, vault, sample_events, "A", "a-late", 2))
            return real.forget_rows(tenant, pseudonym)

    target.store = RacingStore()
    report = forget_learner(target, vault, TENANT, "A")
    assert report.telemetry_rows == 6 and report.dedup_keys == 6 and target.mid_dedup.seen(late) == set()
