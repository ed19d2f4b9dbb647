"""Acceptance on a real server process with the 500 real DIKSHA events."""

from __future__ import annotations

import time

import httpx
import orjson
import pytest

from cohort.benchmark.server_process import ServerProcess
from scaleout_deployment import QUICK_GROUPS, ScaleoutDeployment
from support import envelope, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(params=["embedded", "scaleout"])
def server(request, tmp_path):
    """A real server on each footprint: one `cohort serve` process, or `serve` + 2 `cohort worker`s."""
    if request.param == "embedded":
        process = ServerProcess(tmp_path / "data").start()
    else:
        engines = [request.getfixturevalue(name) for name in ("kafka_bootstrap", "redis_url", "unique_topic")]
        process = ScaleoutDeployment(tmp_path / "scaleout", *engines, env=QUICK_GROUPS).start()
    yield process
    process.stop()


def sql(server, text: str, params: dict | None = None) -> list[dict]:
    response = httpx.post(server.url + "/v1/query", json={"sql": text, "params": params}, timeout=30,
                          headers=server.headers)
    assert response.status_code == 200, response.text
    return response.json()["result"]


def post_in_batches(server, events: list[dict], size: int, tag: str) -> None:
    with server.client(timeout=30) as client:
        for i in range(0, len(events), size):
            response = client.post("/v1/telemetry", content=envelope(events[i:i + size], msgid=f"{tag}-{i}"),
                                   headers={"X-Channel-Id": "505c7c48ac6dc1edc9b08f21db5a571d"})
            assert response.status_code == 200, response.text
            assert response.json()["params"]["status"] == "successful"


def test_all_500_sample_events_are_acked_stored_within_seconds_and_not_twice(server, sample_events):
    # freshness, with room for the suite's other test processes on the same cores (the bench measures it
    # unshared): one process; on scale-out an ack crosses two topics and three processes, each polling
    bound = 10 if isinstance(server, ServerProcess) else 20
    post_in_batches(server, sample_events, 50, "first")
    acked_at = time.monotonic()
    stored = wait_for(lambda: sql(server, "SELECT count(*) AS n FROM telemetry")[0]["n"] == 500, timeout=bound)
    assert stored, f"all 500 must be queryable within {bound} s of the last ack"
    assert time.monotonic() - acked_at < bound
    assert sql(server, "SELECT count(*) AS n FROM failed_events") == [{"n": 0}]
    assert sql(server, "SELECT count(DISTINCT mid) AS n FROM telemetry") == [{"n": 500}]

    post_in_batches(server, sample_events, 100, "again")
    server.wait_drained(timeout=10)
    assert sql(server, "SELECT count(*) AS n FROM telemetry") == [{"n": 500}]
    mix = {r["eid"]: r["n"] for r in sql(server, "SELECT eid, count(*) AS n FROM telemetry GROUP BY eid")}
    assert mix == {"INTERACT": 280, "SEARCH": 67, "IMPRESSION": 57, "INTERRUPT": 33, "END": 21, "START": 20,
                   "AUDIT": 8, "SHARE": 6, "EXDATA": 3, "RESPONSE": 2, "ASSESS": 2, "FEEDBACK": 1}


def without_ids(event: dict) -> dict:
    """The event with the identifiers pseudonymisation replaces set to None (a deep copy)."""
    event = orjson.loads(orjson.dumps(event))
    for path in (("actor", "id"), ("context", "did"), ("context", "uid"), ("devicedata", "devicespec", "id"),
                 ("edata", "dspec", "id")):
        parent = event
        for key in path[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if isinstance(parent, dict) and path[-1] in parent:
            parent[path[-1]] = None
    return event


def test_schema_breaking_events_are_quarantined_with_code_stage_message_and_original(server, sample_events):
    by_eid = {}
    for event in sample_events:
        by_eid.setdefault(event["eid"], event)
    no_mid = dict(by_eid["START"])
    del no_mid["mid"]
    unknown_eid = {**by_eid["IMPRESSION"], "eid": "TELEPORT", "mid": "bad-eid-1"}
    ets_string = {**by_eid["SEARCH"], "ets": "2019-08-19T19:28:31Z", "mid": "bad-ets-1"}
    interact_no_type = {**by_eid["INTERACT"], "mid": "bad-edata-1",
                        "edata": {k: v for k, v in by_eid["INTERACT"]["edata"].items() if k != "type"}}
    end_no_type = {**by_eid["END"], "mid": "bad-edata-2", "edata": {"duration": 3.0}}
    broken = [no_mid, unknown_eid, ets_string, interact_no_type, end_no_type]
    response = httpx.post(server.url + "/v1/telemetry", content=envelope(broken + [by_eid["AUDIT"]]), timeout=10,
                          headers=server.headers)
    assert response.status_code == 200

    server.wait_drained(timeout=10)
    rows = sql(server, "SELECT * FROM failed_events ORDER BY log_offset, mid")
    assert len(rows) == 5
    assert sql(server, "SELECT count(*) AS n FROM telemetry") == [{"n": 1}]
    by_payload = {orjson.dumps(without_ids(orjson.loads(r["payload"])), option=orjson.OPT_SORT_KEYS): r for r in rows}
    for original in broken:
        # the original as sent, but for its learner and device ids, which are pseudonyms in the quarantine too
        row = by_payload[orjson.dumps(without_ids(original), option=orjson.OPT_SORT_KEYS)]
        kept = orjson.loads(row["payload"])
        assert kept["actor"]["id"].startswith("u:") and kept["context"]["did"].startswith("d:")
        assert row["stage"] == "validate" and row["message"]
        assert row["error_code"] in ("ERR_VALIDATION_SCHEMA", "ERR_VALIDATION_UNKNOWN_EID")
    codes = {r["mid"]: (r["error_code"], r["message"]) for r in rows}
    assert codes["bad-eid-1"][0] == "ERR_VALIDATION_UNKNOWN_EID"
    assert codes["bad-ets-1"][0] == "ERR_VALIDATION_SCHEMA" and "ets" in codes["bad-ets-1"][1]
    assert "type" in codes["bad-edata-1"][1]
    assert "type" in codes["bad-edata-2"][1]
    missing_mid = next(r for r in rows if r["mid"] is None)
    assert missing_mid["error_code"] == "ERR_VALIDATION_SCHEMA" and "mid" in missing_mid["message"]


def test_health_and_metrics_on_a_real_server(server):
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and health["pipeline"]["running"] is True
    text = httpx.get(server.url + "/metrics").text
    assert "cohort_events_received_total 0.0" in text and "cohort_events_unaccounted 0.0" in text
