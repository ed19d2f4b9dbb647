"""Pseudonymisation through the real embedded pipeline: the node's worker processes open the real
SQLite identity vault, and nothing the store answers holds a clear learner or device id."""

from __future__ import annotations

import copy
import time

import orjson
import pytest

from cohort.core.errors import CohortError, ErrorCode
from cohort.core.log_record import LogRecord
from cohort.core.stages.transform import PseudonymsUnavailable
from cohort.pipeline.embedded import EmbeddedNode
from cohort.security.secrets import secrets_path
from cohort.settings import Settings
from cohort.state.identity_vault import VAULT_FILE_NAME, VaultUnavailable
from cohort.state.sqlite_identity_vault import SqliteIdentityVault


def records(events, per_record=50, device="tablet-serial-0042"):
    return [LogRecord(payload=orjson.dumps({"id": "api.sunbird.telemetry", "params": {"msgid": f"m{i}"},
                                            "events": events[i:i + per_record]}),
                      event_count=len(events[i:i + per_record]), received_at_ms=int(time.time() * 1000),
                      headers={"x-channel-id": events[i]["context"]["channel"], "x-device-id": device})
            for i in range(0, len(events), per_record)]


def clear_ids(events) -> set[str]:
    """The actor ids and device ids of the input (and its device header), tenants' own ids aside."""
    channels = {e["context"]["channel"] for e in events}
    ids = {e["actor"]["id"] for e in events} | {e["context"]["did"] for e in events if e["context"].get("did")}
    return {i for i in ids if len(i) >= 8} - channels | {"tablet-serial-0042"}


def every_text(node: EmbeddedNode) -> list[str]:
    texts = []
    for table in ("telemetry", "ingest_batches"):
        result = node.store.query(f"SELECT * FROM {table}", None, 10_000, 30.0)
        texts += [orjson.dumps(row).decode() for row in result.rows]
    return texts


def wait_stored(node: EmbeddedNode, n: int, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while node.store.counts().stored + node.store.counts().failed < n:
        assert time.monotonic() < deadline, f"stored {node.store.counts()} of {n}; {node.runner.last_error}"
        time.sleep(0.05)


@pytest.mark.parametrize("workers", [2, 0])
def test_the_sample_is_stored_with_no_clear_actor_or_device_id(tmp_path, sample_events, workers):
    settings = Settings(data_dir=tmp_path / "data", pipeline_workers=workers, pipeline_idle_wait_seconds=0.005,
                        pipeline_batch_events=200)
    node = EmbeddedNode(settings)
    try:
        node.log.append_many(records(sample_events))
        node.runner.acked(500)
        node.start()
        wait_stored(node, 500)
        counts = node.store.counts()
        assert (counts.stored, counts.failed) == (500, 0)
        texts = every_text(node)
        leaks = {i for i in clear_ids(sample_events) if any(i in text for text in texts)}
        assert leaks == set()
        rows = node.store.query("SELECT actor_id, did, trace FROM telemetry", None, 1000, 30.0).rows
        assert all(actor.startswith("u:") for actor, _, _ in rows)
        assert all(did is None or did.startswith("d:") for _, did, _ in rows)
        assert all(orjson.loads(trace)["stages"]["transform"]["ok"] for _, _, trace in rows)
        # an educator's re-identification goes through the vault, which holds every learner
        vault = SqliteIdentityVault(settings.data_dir / VAULT_FILE_NAME, node.pseudonyms.source.secrets)
        try:
            tenant = sample_events[1]["context"]["channel"]
            actor = node.store.query(f"SELECT actor_id FROM telemetry WHERE mid = '{sample_events[1]['mid']}'",
                                     None, 1, 30.0).rows[0][0]
            assert vault.reidentify(tenant, [actor]) == {actor: sample_events[1]["actor"]["id"]}
        finally:
            vault.close()
    finally:
        node.close()
    assert secrets_path(settings).stat().st_mode & 0o077 == 0


def test_the_same_learner_keeps_its_pseudonym_across_batches_processes_and_restarts(tmp_path, sample_events):
    settings = Settings(data_dir=tmp_path / "data", pipeline_workers=2, pipeline_idle_wait_seconds=0.005,
                        pipeline_batch_events=100)
    first, second = sample_events[:250], copy.deepcopy(sample_events[:250])
    for n, event in enumerate(second):
        event["mid"] = f"again-{n}"
    for part in (first, second):
        node = EmbeddedNode(settings)
        try:
            node.log.append_many(records(part))
            node.runner.acked(len(part))
            node.start()
            wait_stored(node, 250 if part is first else 500)
        finally:
            node.close()
    node = EmbeddedNode(settings)
    try:
        rows = node.store.query("SELECT mid, actor_id FROM telemetry", None, 1000, 30.0).rows
    finally:
        node.close()
    by_mid = dict(rows)
    for n, event in enumerate(first):
        assert by_mid[event["mid"]] == by_mid[f"again-{n}"]


def test_a_vault_away_stores_nothing_and_the_batch_waits_for_it(tmp_path, sample_events, monkeypatch):
    settings = Settings(data_dir=tmp_path / "data", pipeline_workers=0, pipeline_idle_wait_seconds=0.005)
    node = EmbeddedNode(settings)
    real = SqliteIdentityVault.pseudonyms
    away = {"on": True}

    def flaky(self, tenant, kind, clear_ids):  # the fault injected: the vault's disk is away for a while
        if away["on"]:
            raise VaultUnavailable("disk I/O error")
        return real(self, tenant, kind, clear_ids)

    monkeypatch.setattr(SqliteIdentityVault, "pseudonyms", flaky)
    try:
        node.log.append_many(records(sample_events[:100]))
        node.runner.acked(100)
        with pytest.raises(PseudonymsUnavailable):
            node.runner.step()
        assert node.store.counts().stored == 0 and node.store.counts().failed == 0
        node.start()
        deadline = time.monotonic() + 10
        while node.runner.consecutive_failures < 3:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert node.store.counts().stored == 0 and node.store.counts().failed == 0
        assert node.runner.isolated_records == 0  # a fault, never blamed on the input
        away["on"] = False
        wait_stored(node, 100)
        assert node.store.counts().stored == 100
    finally:
        node.close()


def test_a_vault_made_with_other_keys_stops_the_start(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", pipeline_workers=0)
    EmbeddedNode(settings).close()
    secrets_path(settings).unlink()  # the keys lost: a new file would give every learner a new pseudonym
    with pytest.raises(CohortError) as refused:
        EmbeddedNode(settings)
    assert refused.value.code is ErrorCode.CONFIG_INVALID
    secrets_path(settings).unlink()
    (settings.data_dir / VAULT_FILE_NAME).unlink()
    EmbeddedNode(settings).close()  # the lock was released: the directory opens again


def test_a_malformed_field_setting_stops_the_start(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", pipeline_workers=0, pseudonymise_fields=["actor.id:robot"])
    with pytest.raises(CohortError) as refused:
        EmbeddedNode(settings)
    assert refused.value.code is ErrorCode.CONFIG_INVALID


def test_a_worker_whose_vault_cannot_open_fails_its_batches_as_a_fault_and_recovers(tmp_path, sample_events):
    from cohort.core.process_batch import prepare_batch
    from cohort.pipeline.core_pool import CorePool
    from cohort.pipeline.pseudonymisation import LazyPseudonymiser, PseudonymiserSource
    from cohort.security.secrets import load_or_create_secrets

    blocked = tmp_path / "vault-dir"
    blocked.write_text("a file where the vault's directory should be")  # the fault: the vault cannot be opened
    settings = Settings(data_dir=blocked)
    secrets = load_or_create_secrets(Settings(data_dir=tmp_path / "keys"))
    pool = CorePool(1, LazyPseudonymiser(PseudonymiserSource(settings, secrets)))
    try:
        batch = records(sample_events[:50])
        with pytest.raises(PseudonymsUnavailable):  # crossed the process boundary as the fault it is
            pool.submit(prepare_batch, batch, now_ms=1, config_version="v").result(timeout=60)
        blocked.unlink()  # the fault passes: the same worker opens its vault on the next batch
        prepared = pool.submit(prepare_batch, batch, now_ms=1, config_version="v").result(timeout=60)
        assert prepared.rows.num_rows == 50
        assert all(a.startswith("u:") for a in prepared.rows.column("actor_id").to_pylist())
    finally:
        pool.close()
