"""Ids a client sends once per request cannot bloat the store once per event (storage amplification).

`params.msgid` and the X-Channel-Id / X-App-Id / X-Device-Id headers are kept with what the request
stored, so their size is multiplied by whatever the pipeline keeps them with. A 2 MB request carrying
a 60 KB msgid and 10,000 tiny events once stored about 600 MB. Real Sunbird ids are UUID- or md5-sized;
anything beyond the bound (256 characters by default) is refused with 400 ERR_FIELD_TOO_LONG, naming
the field and the bound, before anything is written.
"""

from __future__ import annotations

import orjson
import pytest

from support import app_client, envelope, metric_values

BOUND = 256  # the default of COHORT_MAX_MSGID_CHARS and COHORT_MAX_ID_HEADER_CHARS
ID_HEADERS = ["X-Channel-Id", "X-App-Id", "X-Device-Id"]


def refused_as_too_long(response, field: str, size: int) -> None:
    assert response.status_code == 400, response.text
    params = response.json()["params"]
    assert params["err"] == "ERR_FIELD_TOO_LONG"
    assert field in params["errmsg"] and str(BOUND) in params["errmsg"] and str(size) in params["errmsg"]
    assert response.json()["responseCode"] == "CLIENT_ERROR"


REJECTED = 'cohort_ingest_rejected_total{code="ERR_FIELD_TOO_LONG"}'


def received_events(client) -> int:
    return client.app.state.node.log.stats().received_events


def test_the_amplification_request_is_refused_and_nothing_is_written(shared_client):
    client = shared_client  # the module's other tests write too: what this request wrote is the difference
    tiny = [{"eid": "INTERACT", "mid": f"{i}"} for i in range(10_000)]
    body = envelope(tiny, msgid="m" * 60_000)
    assert len(body) < 2_000_000
    received_before, rejected_before = received_events(client), metric_values(client).get(REJECTED, 0)
    response = client.post("/v1/telemetry", content=body)
    refused_as_too_long(response, "params.msgid", 60_000)
    assert response.json()["params"]["msgid"] is None  # not echoed back either
    assert received_events(client) == received_before
    assert metric_values(client)[REJECTED] == rejected_before + 1


@pytest.mark.parametrize("size", [BOUND + 1, 60_000])
def test_a_msgid_over_the_bound_is_refused(shared_client, size):
    refused_as_too_long(shared_client.post("/v1/telemetry", content=envelope([{"eid": "START"}], msgid="é" * size)),
                        "params.msgid", size)


def test_a_msgid_at_the_bound_is_acked_and_echoed(shared_client):
    msgid = "é" * BOUND  # characters, not bytes: a non-ASCII id is not cut short
    response = shared_client.post("/v1/telemetry", content=envelope([{"eid": "START"}], msgid=msgid))
    assert response.status_code == 200 and response.json()["params"]["msgid"] == msgid


@pytest.mark.parametrize("header", ID_HEADERS)
def test_an_id_header_over_the_bound_is_refused(shared_client, header):
    received_before = received_events(shared_client)
    response = shared_client.post("/v1/telemetry", content=envelope([{"eid": "START"}]),
                                  headers={header: "d" * 10_000})
    refused_as_too_long(response, header, 10_000)
    assert received_events(shared_client) == received_before


@pytest.mark.parametrize("header", ID_HEADERS)
def test_an_id_header_at_the_bound_is_acked(shared_client, header):
    response = shared_client.post("/v1/telemetry", content=envelope([{"eid": "START"}]), headers={header: "d" * BOUND})
    assert response.status_code == 200, response.text


def test_bounds_are_settings(tmp_path):
    from cohort.settings import Settings

    settings = Settings(data_dir=tmp_path / "d", max_msgid_chars=8, max_id_header_chars=4)
    with app_client(settings) as small:
        body = envelope([{"eid": "START"}], msgid="123456789")
        assert small.post("/v1/telemetry", content=body).json()["params"]["err"] == "ERR_FIELD_TOO_LONG"
        body = envelope([{"eid": "START"}], msgid="12345678")
        assert small.post("/v1/telemetry", content=body, headers={"X-App-Id": "abcd"}).status_code == 200
        response = small.post("/v1/telemetry", content=body, headers={"X-App-Id": "abcde"})
        assert response.json()["params"]["err"] == "ERR_FIELD_TOO_LONG" and "X-App-Id" in response.text


def test_other_headers_are_not_kept_so_not_bounded_here(shared_client):
    # Only the three id headers are copied into what is stored; others are bounded by the header section size.
    response = shared_client.post("/v1/telemetry", content=envelope([{"eid": "START"}]), headers={"X-Other": "o" * 5_000})
    assert response.status_code == 200
    assert orjson.loads(response.content)["params"]["status"] == "successful"
