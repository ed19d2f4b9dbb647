"""No clear learner or device identifier outside the raw ingest log: every file of the data directory, every
answer of the query API and the server's log are scanned for the identifiers the real sample carries."""

from __future__ import annotations

import httpx
import pytest

from scaleout_deployment import scaleout  # noqa: F401 (fixture)
from support import ServerProcess, envelope

pytestmark = pytest.mark.e2e

DEVICE_HEADER = "0497d741860537b3cdd0e2acb68168922b83df96"  # a real DIKSHA device id, sent as X-Device-Id
RAW_LOG = "ingest-log.sqlite"  # keeps requests as sent until processed and for the retention (docs/SECURITY.md)


def identifiers(events: list[dict]) -> set[str]:
    """The learner and device ids of the sample: what must never be stored in clear."""
    found = {DEVICE_HEADER}
    for event in events:
        context, edata = event.get("context", {}), event.get("edata", {})
        found.update(v for v in (event.get("actor", {}).get("id"), context.get("did"), context.get("uid"),
                                 (edata.get("dspec") or {}).get("id")) if isinstance(v, str))
    # ids are uuids and hex digests; a word ("internal", "anonymous") names no one and is in engine files too
    return {value for value in found if len(value) >= 12 and any(c.isdigit() for c in value)}


def scan(blob: bytes, ids: set[str]) -> set[str]:
    return {value for value in ids if value.encode() in blob or value.encode("utf-16-le") in blob}


def test_no_clear_identifier_in_the_data_dir_the_query_answers_or_the_log(tmp_path, sample_events):
    ids = identifiers(sample_events)
    assert len(ids) > 20  # the sample has many learners and devices: the scan has something to find
    data_dir = tmp_path / "data"
    server = ServerProcess(data_dir).start()
    try:
        with server.client(timeout=30) as client:
            for i in range(0, len(sample_events), 100):
                response = client.post("/v1/telemetry", content=envelope(sample_events[i:i + 100], msgid=f"p-{i}"),
                                       headers={"X-Device-Id": DEVICE_HEADER,
                                                "X-Channel-Id": "505c7c48ac6dc1edc9b08f21db5a571d"})
                assert response.status_code == 200, response.text
            # schema-invalid copies (ets not a number) of ten events: quarantined, with their ids pseudonymised
            broken = [dict(event, ets="yesterday", mid=f"broken-{n}") for n, event in enumerate(sample_events[:10])]
            response = client.post("/v1/telemetry", content=envelope(broken, msgid="p-broken"),
                                   headers={"X-Device-Id": DEVICE_HEADER})
            assert response.status_code == 200, response.text
            metrics = server.wait_drained(60)
            assert metrics["cohort_events_stored_total"] == 500 and metrics["cohort_events_unaccounted"] == 0
            failed = client.post("/v1/query", json={"sql": "SELECT error_code, payload FROM failed_events"})
            assert [row["error_code"] for row in failed.json()["result"]] == ["ERR_VALIDATION_SCHEMA"] * 10
            assert all('"u:' in row["payload"] for row in failed.json()["result"])
            answers = b""
            for table in ("telemetry", "failed_events", "ingest_batches"):
                response = client.post("/v1/query", json={"sql": f"SELECT * FROM {table}"})
                assert response.status_code == 200, response.text
                answers += response.content
            assert scan(answers, ids) == set()
    finally:
        server.stop()  # a clean stop: the store checkpoints, so its file holds what was written
    leaks = {}
    for path in sorted(p for p in data_dir.rglob("*") if p.is_file() and not p.name.startswith(RAW_LOG)):
        found = scan(path.read_bytes(), ids)
        if found:
            leaks[path.name] = sorted(found)[:3]
    assert leaks == {}
    assert scan(server.log_path.read_bytes(), ids) == set()


def test_no_clear_identifier_on_the_scaleout_footprint(scaleout, sample_events):
    """serve + 2 workers on Kafka, Redis and ClickHouse: the store's files (the embedded ClickHouse engine),
    every process's log and the query answers hold pseudonyms only (the raw topic is the raw log here)."""
    ids = identifiers(sample_events)
    with scaleout.client(timeout=30) as client:
        for i in range(0, len(sample_events), 100):
            response = client.post("/v1/telemetry", content=envelope(sample_events[i:i + 100], msgid=f"s-{i}"),
                                   headers={"X-Device-Id": DEVICE_HEADER,
                                            "X-Channel-Id": "505c7c48ac6dc1edc9b08f21db5a571d"})
            assert response.status_code == 200, response.text
        metrics = scaleout.wait_drained(90)
        assert metrics["cohort_events_stored_total"] == 500 and metrics["cohort_events_unaccounted"] == 0, \
            scaleout.logs()
        answers = b"".join(client.post("/v1/query", json={"sql": f"SELECT * FROM {table}"}).content
                           for table in ("telemetry", "failed_events", "ingest_batches"))
    assert b"u:" in answers and scan(answers, ids) == set()
    scaleout.stop()
    leaks = {path.name: sorted(found)[:3] for path in sorted(scaleout.directory.rglob("*"))
             if path.is_file() and (found := scan(path.read_bytes(), ids))}
    assert leaks == {}


def test_the_scan_finds_what_is_there(tmp_path, sample_events):
    """The scan itself can fail: the raw ingest log, which keeps requests as sent, shows the ids."""
    ids = identifiers(sample_events)
    data_dir = tmp_path / "data"
    server = ServerProcess(data_dir, env={"COHORT_PIPELINE_WORKERS": "0"}).start()
    try:
        response = httpx.post(server.url + "/v1/telemetry", content=envelope(sample_events[:50], msgid="raw"),
                              headers=server.headers, timeout=30)
        assert response.status_code == 200
    finally:
        server.kill()  # no truncation of the log: what was acked is in it as sent
    raw = b"".join(p.read_bytes() for p in data_dir.glob(RAW_LOG + "*"))
    assert scan(raw, identifiers(sample_events[:50])) and scan(raw, ids) <= ids
