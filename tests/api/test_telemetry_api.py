"""POST /v1/telemetry in-process: acks, coded errors, gzip, limits, backpressure, log faults."""

from __future__ import annotations

import gzip

import orjson
import pytest

from cohort.ingest.log import LogUnavailable
from support import app_client, envelope, metric_values, query, scalar, wait_for


def stored_count(client) -> int:
    return scalar(client, "SELECT count(*) FROM telemetry")


def test_ack_has_sunbird_shape_and_echoes_msgid(client, sample_events):
    response = client.post("/v1/telemetry", content=envelope(sample_events[:10], msgid="batch-42"),
                           headers={"X-Channel-Id": "ch", "X-App-Id": "prod.diksha.app", "X-Device-Id": "d1"})
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == "api.telemetry" and body["ver"] == "3.0" and body["responseCode"] == "SUCCESS"
    assert body["params"]["msgid"] == "batch-42" and body["params"]["status"] == "successful"
    assert isinstance(body["ets"], int)
    assert wait_for(lambda: stored_count(client) == 10)
    trace = orjson.loads(query(client, "SELECT trace FROM telemetry LIMIT 1")[0]["trace"])
    [request] = query(client, "SELECT msgid, headers FROM ingest_batches WHERE log_offset = $o",
                      {"o": trace["log_offset"]})
    assert request["msgid"] == "batch-42"
    kept = orjson.loads(request["headers"])
    device = kept.pop("x-device-id")  # a device id is stored as its pseudonym only (docs/SECURITY.md)
    assert kept == {"x-channel-id": "ch", "x-app-id": "prod.diksha.app"}
    assert device.startswith("d:") and len(device) == 34  # d: and 128 random bits, nothing of "d1"
    assert trace["source"] == "/v1/telemetry" and trace["config_version"].startswith("telemetry-3.0:")
    assert set(trace["stages"]) >= {"extract", "validate", "dedup", "denorm", "transform"}


def test_gzip_body_is_accepted(client, sample_events):
    response = client.post("/v1/telemetry", content=gzip.compress(envelope(sample_events[:25])),
                           headers={"Content-Encoding": "gzip"})
    assert response.status_code == 200, response.text
    assert wait_for(lambda: stored_count(client) == 25)


@pytest.mark.parametrize("body, headers, status, code", [
    (b"{not json", {}, 400, "ERR_MALFORMED_JSON"),
    (b"[1, 2]", {}, 400, "ERR_ENVELOPE"),
    (b'{"id": "api.sunbird.telemetry"}', {}, 400, "ERR_ENVELOPE"),
    (b'{"events": {"eid": "START"}}', {}, 400, "ERR_ENVELOPE"),
    (b'{"id": "something.else", "events": [{}]}', {}, 400, "ERR_ENVELOPE"),
    (b'{"events": []}', {}, 400, "ERR_EMPTY_BATCH"),
    (b"\x1f\x8b\x08garbage", {"Content-Encoding": "gzip"}, 400, "ERR_BAD_GZIP"),
    (gzip.compress(b'{"events": [1]}', mtime=0)[:-6], {"Content-Encoding": "gzip"}, 400, "ERR_BAD_GZIP"),
    (b'{"events": [1]}', {"Content-Encoding": "br"}, 415, "ERR_UNSUPPORTED_ENCODING"),
    (gzip.compress(b'{"events": [1]}', mtime=0) + b"junk", {"Content-Encoding": "gzip"}, 400, "ERR_BAD_GZIP"),
    (b'{"events": [' + b"[" * 200 + b"]" * 200 + b"]}", {}, 400, "ERR_TOO_DEEP"),
    (b'{"params": {"msgid": "' + b"m" * 300 + b'"}, "events": [1]}', {}, 400, "ERR_FIELD_TOO_LONG"),
    (b'{"events": [1]}', {"X-Device-Id": "d" * 300}, 400, "ERR_FIELD_TOO_LONG"),
    (gzip.compress(b'{"events": [1]}', mtime=0), {}, 400, "ERR_MALFORMED_JSON"),
])
def test_bad_requests_get_coded_errors(shared_client, body, headers, status, code):
    client = shared_client  # refused before the log: nothing here changes what the next test sees
    response = client.post("/v1/telemetry", content=body, headers=headers)
    assert response.status_code == status
    params = response.json()["params"]
    assert params["status"] == "failed" and params["err"] == code and params["errmsg"]
    assert response.json()["responseCode"] == "CLIENT_ERROR"
    assert client.get("/health").status_code == 200


def test_gzip_of_several_members_is_one_body(client, sample_events):
    body = envelope(sample_events[:25])
    response = client.post("/v1/telemetry", content=gzip.compress(body[:1000]) + gzip.compress(body[1000:]),
                           headers={"Content-Encoding": "gzip"})
    assert response.status_code == 200, response.text
    assert wait_for(lambda: stored_count(client) == 25)


def test_a_body_with_a_utf8_bom_is_acked_and_stored_not_quarantined(client, sample_events):
    response = client.post("/v1/telemetry", content=b"\xef\xbb\xbf" + envelope(sample_events[:10]),
                           headers={"Content-Type": "application/json; charset=utf-8"})
    assert response.status_code == 200, response.text
    assert wait_for(lambda: stored_count(client) == 10)
    assert scalar(client, "SELECT count(*) FROM failed_events") == 0


def test_content_type_is_not_checked(client, sample_events):
    for content_type in ("text/plain", "application/x-www-form-urlencoded", ""):
        response = client.post("/v1/telemetry", content=envelope(sample_events[:1], msgid=content_type or "none"),
                               headers={"Content-Type": content_type})
        assert response.status_code == 200, (content_type, response.text)


def test_body_over_limit_is_413_both_plain_and_after_gunzip(tmp_path, sample_events):
    from starlette.testclient import TestClient

    from cohort.api.app import create_app
    from cohort.settings import Settings

    settings = Settings(data_dir=tmp_path / "d", max_body_bytes=20_000)
    with app_client(settings) as client:
        big = envelope(sample_events[:40])
        assert len(big) > 20_000
        response = client.post("/v1/telemetry", content=big)
        assert response.status_code == 413 and response.json()["params"]["err"] == "ERR_BODY_TOO_LARGE"
        bomb = gzip.compress(b'{"events": [' + b" " * 5_000_000 + b"1]}")
        assert len(bomb) < 20_000
        response = client.post("/v1/telemetry", content=bomb, headers={"Content-Encoding": "gzip"})
        assert response.status_code == 413 and response.json()["params"]["err"] == "ERR_BODY_TOO_LARGE"
        assert scalar(client, "SELECT count(*) FROM telemetry") == 0


def test_too_many_events_in_one_batch_is_413(tmp_path, sample_events):
    from starlette.testclient import TestClient

    from cohort.api.app import create_app
    from cohort.settings import Settings

    with app_client(Settings(data_dir=tmp_path / "d", max_events_per_batch=5)) as client:
        response = client.post("/v1/telemetry", content=envelope(sample_events[:6]))
        assert response.status_code == 413 and response.json()["params"]["err"] == "ERR_BATCH_TOO_LARGE"


def test_retried_batch_is_acked_again_but_stored_once(client, sample_events):
    body = envelope(sample_events[:50], msgid="retry-me")
    assert client.post("/v1/telemetry", content=body).status_code == 200
    assert client.post("/v1/telemetry", content=body).status_code == 200
    assert wait_for(lambda: scalar(client, "SELECT count(*) FROM telemetry") == 50)
    metrics = wait_for(lambda: (m := metric_values(client))["cohort_events_in_flight"] == 0 and m)
    assert metrics["cohort_events_received_total"] == 100
    assert metrics["cohort_events_stored_total"] == 50
    assert metrics["cohort_events_duplicate_total"] == 50


def test_invalid_events_in_a_good_batch_are_acked_and_quarantined(client, sample_events):
    good = sample_events[:3]
    no_mid = dict(sample_events[3])
    del no_mid["mid"]
    unknown = {**sample_events[4], "eid": "BOGUS"}
    ets_text = {**sample_events[5], "ets": "yesterday"}
    response = client.post("/v1/telemetry", content=envelope(good + [no_mid, unknown, ets_text, 42]))
    assert response.status_code == 200
    assert wait_for(lambda: scalar(client, "SELECT count(*) FROM failed_events") == 4)
    assert scalar(client, "SELECT count(*) FROM telemetry") == 3
    codes = {row["error_code"] for row in query(client, "SELECT error_code FROM failed_events")}
    assert codes == {"ERR_VALIDATION_SCHEMA", "ERR_VALIDATION_UNKNOWN_EID", "ERR_EXTRACT_NOT_OBJECT"}


def test_backpressure_gives_503_with_retry_after_and_accepts_nothing(client, sample_events):
    node = client.app.state.node
    node.runner.stop()  # the pipeline stalls: the backlog can only grow
    node.settings.max_backlog_events = 120
    assert client.post("/v1/telemetry", content=envelope(sample_events[:100])).status_code == 200
    response = client.post("/v1/telemetry", content=envelope(sample_events[100:150]))
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.json()["params"]["err"] == "ERR_BACKPRESSURE"
    assert response.json()["responseCode"] == "SERVER_ERROR"
    assert node.log.stats().received_events == 100  # the refused batch was not written
    node.runner.drain()
    assert client.post("/v1/telemetry", content=envelope(sample_events[100:150])).status_code == 200


def test_unwritable_log_gives_503_never_a_false_ack_and_recovers(client, sample_events, monkeypatch):
    node = client.app.state.node
    real_append = node.log.append_many
    state = {"broken": True}

    def faulty(records):
        if state["broken"]:
            raise LogUnavailable("disk I/O error (injected)")
        return real_append(records)

    monkeypatch.setattr(node.log, "append_many", faulty)
    response = client.post("/v1/telemetry", content=envelope(sample_events[:10]))
    assert response.status_code == 503 and response.headers["Retry-After"]
    assert response.json()["params"]["err"] == "ERR_LOG_UNAVAILABLE"
    assert node.log.stats().received_events == 0
    state["broken"] = False
    assert client.post("/v1/telemetry", content=envelope(sample_events[:10])).status_code == 200
    assert wait_for(lambda: scalar(client, "SELECT count(*) FROM telemetry") == 10)


def test_unknown_route_and_wrong_method_are_coded(shared_client):
    response = shared_client.get("/v2/nothing")
    assert response.status_code == 404 and response.json()["params"]["err"] == "ERR_NOT_FOUND"
    response = shared_client.get("/v1/telemetry")
    assert response.status_code == 405 and response.json()["params"]["err"] == "ERR_METHOD_NOT_ALLOWED"



def test_the_root_url_says_where_to_go(shared_client):
    body = shared_client.get("/v1").json()
    assert body["name"] == "cohort"
    assert body["endpoints"]["ingest"].endswith("/v1/telemetry") and body["endpoints"]["query"].endswith("/v1/query")


def test_the_index_lists_every_api_route(shared_client):
    listed = {text.split(" ", 1)[1].split("/", 3)[-1] for text in shared_client.get("/v1").json()["endpoints"].values()}
    routes = {route.path.lstrip("/") for route in shared_client.app.routes
              if route.path.startswith(("/v1/", "/health", "/metrics"))}
    assert routes <= listed, f"not in GET /v1: {sorted(routes - listed)}"
