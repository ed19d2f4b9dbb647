"""Per-request data is stored once per request, not once per event.

A request's msgid and kept headers used to be copied into every stored row's trace: a 2 MB
request of 10,000 tiny events carrying long ids multiplied into hundreds of MB on disk. The
ids are bounded at the API; this checks the other half, that the store keeps them once.
"""

from __future__ import annotations

import time

import orjson

from cohort.core.log_record import LogRecord
from cohort.core.process_batch import process_batch
from cohort.store.duckdb_store import DuckDbStore


class NothingSeen:
    def seen(self, mids):
        return set()


def tiny_events(sample_events, n: int) -> list[dict]:
    base = next(e for e in sample_events if e["eid"] == "INTERACT")
    small = {k: base[k] for k in ("eid", "ets", "ver", "actor", "context", "edata")}
    small["context"] = {k: base["context"][k] for k in ("channel", "env", "pdata", "did", "sid")}
    return [dict(small, mid=f"tiny-{i}") for i in range(n)]


def test_request_ids_and_headers_are_kept_once_per_request(tmp_path, sample_events):
    events = tiny_events(sample_events, 10_000)
    long_id = "m" * 1024  # an id at a generous bound, on each of the kept fields
    headers = {"x-channel-id": long_id, "x-app-id": long_id, "x-device-id": long_id, "msgid": long_id}
    payload = orjson.dumps({"id": "api.sunbird.telemetry", "params": {"msgid": long_id}, "events": events})
    record = LogRecord(payload=payload, event_count=len(events), received_at_ms=int(time.time() * 1000),
                       headers=headers, offset=1)
    outcome = process_batch([record], NothingSeen(), now_ms=int(time.time() * 1000), config_version="v")
    assert outcome.stored == 10_000

    trace_bytes = sum(len(t) for t in outcome.rows.column("trace").to_pylist())
    assert trace_bytes < 10_000 * 600, "the per-event trace must not carry per-request ids"
    assert long_id not in outcome.rows.column("trace")[0].as_py()

    store = DuckDbStore(tmp_path / "store.duckdb")
    try:
        store.write_batch(outcome, failed_at_ms=0)
        [(msgid, channel, count)] = store.query(
            "SELECT msgid, headers->>'$.\"x-channel-id\"', event_count FROM ingest_batches WHERE log_offset = 1",
            None, 10, 10.0).rows
        assert (msgid, channel, count) == (long_id, long_id, 10_000)
    finally:
        store.close()  # closing checkpoints: the file holds everything
    stored_bytes = (tmp_path / "store.duckdb").stat().st_size
    assert stored_bytes < 12 * len(payload), f"{stored_bytes / 2**20:.1f} MB stored for a {len(payload) / 2**20:.1f} MB request"
