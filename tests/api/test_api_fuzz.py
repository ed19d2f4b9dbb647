"""Fuzzed request bodies and headers: never a 5xx, every refusal coded, every ack accounted for.

Telemetry bodies include what once split the ack path from the pipeline or bloated the store: deep
nesting (around and far past the bound), huge msgids and id headers, BOMs, gzip members with trailing
bytes. Every acknowledged body must be readable by the pipeline (no ERR_EXTRACT_PAYLOAD quarantines).
"""

from __future__ import annotations

import gzip
import os
import re

import orjson
from hypothesis import HealthCheck, given, settings, strategies as st

import pytest

from scaleout_deployment import scaleout_client, scaleout_settings  # noqa: F401 (fixtures)
from support import metric_values, wait_for

EXAMPLES = int(os.environ.get("COHORT_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
event_like = st.fixed_dictionaries(
    {},
    optional={
        "eid": st.sampled_from(["START", "END", "INTERACT", "IMPRESSION", "BOGUS", ""]) | json_values,
        "ets": st.integers(0, 5_000_000_000_000) | st.floats() | json_values,
        "ver": st.sampled_from(["3.0", "3.1", "2.0"]),
        "mid": st.text(min_size=0, max_size=12) | json_values,
        "actor": st.fixed_dictionaries({"id": st.text(max_size=5), "type": st.sampled_from(["User", "System"])})
        | json_values,
        "context": st.fixed_dictionaries({"channel": st.text(max_size=5), "env": st.text(max_size=5),
                                          "pdata": st.fixed_dictionaries({"id": st.text(max_size=5)})}) | json_values,
        "edata": st.dictionaries(st.sampled_from(["type", "id", "duration", "pageid", "mode"]), json_values)
        | json_values,
    },
)
def nested(depth: int) -> bytes:
    opens = b"".join(b"[" if level % 2 else b'{"k":' for level in range(depth))
    return opens + b"1" + b"".join(b"]" if level % 2 else b"}" for level in reversed(range(depth)))


def with_deep_values(text: bytes) -> bytes:
    """orjson writes at most 254 levels: deep values are placeholders, spliced in as text."""
    return re.sub(rb'"__deep_(\d+)__"', lambda m: nested(int(m.group(1))), text)


deep_values = st.integers(1, 300).map(lambda depth: f"__deep_{depth}__")  # the bound is 128, envelope included
huge_text = st.integers(200, 5000).map(lambda n: "i" * n)  # ids are bounded at 256 characters
envelopes = st.fixed_dictionaries(
    {"events": st.lists(event_like | json_values | deep_values, max_size=8)},
    optional={"id": st.sampled_from(["api.sunbird.telemetry", "x"]) | json_values,
              "params": st.fixed_dictionaries({}, optional={"msgid": st.text(max_size=8) | json_values | huge_text})
              | json_values,
              "ver": json_values, "ets": json_values | deep_values},
)
bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(orjson.dumps),
    envelopes.map(lambda e: with_deep_values(orjson.dumps(e, option=orjson.OPT_NON_STR_KEYS))),
)
BOM = b"\xef\xbb\xbf"
framings = st.sampled_from(["plain", "bom", "bom after space", "gzip", "gzip members", "gzip + trailing",
                            "gzip without its header", "bom inside gzip"])
header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30)
id_header = header_text | st.integers(200, 3000).map(lambda n: "h" * n)
headers = st.fixed_dictionaries({}, optional={
    "Content-Encoding": st.sampled_from(["gzip", "identity", "br", "GZIP", ""]) | header_text,
    "Content-Type": st.sampled_from(["application/json", "text/plain"]) | header_text,
    "X-Channel-Id": id_header, "X-App-Id": id_header, "X-Device-Id": id_header,
})


def frame(body: bytes, hdrs: dict, framing: str, trailing: bytes) -> tuple[bytes, dict]:
    gz = {**hdrs, "Content-Encoding": "gzip"}
    if framing == "bom":
        return BOM + body, hdrs
    if framing == "bom after space":
        return b" " + BOM + body, hdrs
    if framing == "gzip":
        return gzip.compress(body), gz
    if framing == "gzip members":
        half = len(body) // 2
        return gzip.compress(body[:half]) + gzip.compress(body[half:]), gz
    if framing == "gzip + trailing":
        return gzip.compress(body) + trailing, gz
    if framing == "gzip without its header":
        return gzip.compress(body), {k: v for k, v in hdrs.items() if k != "Content-Encoding"}
    if framing == "bom inside gzip":
        return gzip.compress(BOM + body), gz
    return body, hdrs


@pytest.fixture(params=["embedded", "scaleout"])
def footprint_client(request):
    """The API on each footprint: embedded (one process), scale-out (Kafka, Redis, ClickHouse, a worker)."""
    return request.getfixturevalue("client" if request.param == "embedded" else "scaleout_client")


def test_fuzzed_telemetry_requests_never_5xx_and_every_ack_is_accounted_for(footprint_client):
    client = footprint_client
    requests_sent = []

    @FUZZ
    @given(body=bodies, hdrs=headers, framing=framings, trailing=st.binary(min_size=1, max_size=8))
    def post(body, hdrs, framing, trailing):
        body, hdrs = frame(body, hdrs, framing, trailing)
        response = client.post("/v1/telemetry", content=body, headers=hdrs)
        requests_sent.append(response.status_code)
        assert response.status_code in (200, 400, 413, 415), response.text
        params = response.json()["params"]
        if response.status_code == 200:
            assert params["status"] == "successful"
            assert framing not in ("gzip + trailing", "bom after space")
        else:
            assert params["status"] == "failed" and params["err"].startswith("ERR_") and params["errmsg"]
            if params["err"] == "ERR_FIELD_TOO_LONG":
                assert "256" in params["errmsg"]

    post()
    print(f"fuzzed {len(requests_sent)} telemetry requests: "
          f"{requests_sent.count(200)} acked, {len(requests_sent) - requests_sent.count(200)} refused with a code")
    assert len(requests_sent) >= min(EXAMPLES, 100)
    final = wait_for(lambda: (m := metric_values(client))["cohort_events_in_flight"] == 0 and m, timeout=60)
    assert final["cohort_events_received_total"] > 0
    assert final["cohort_events_unaccounted"] == 0
    assert final["cohort_pipeline_healthy"] == 1
    assert client.get("/health").json()["status"] == "ok"
    unreadable = client.post("/v1/query", json={
        "sql": "SELECT count(*) AS n FROM failed_events WHERE error_code = 'ERR_EXTRACT_PAYLOAD'"}).json()
    assert unreadable["result"][0]["n"] == 0, "an acknowledged body was unreadable to the pipeline"


@FUZZ
@given(doc=st.one_of(
    st.fixed_dictionaries({"sql": st.text(max_size=80)}, optional={"params": json_values}),
    st.fixed_dictionaries({"sql": st.sampled_from([
        "SELECT * FROM telemetry", "SELECT eid, count(*) FROM telemetry GROUP BY 1", "SELECT $a",
        "SELECT * FROM failed_events WHERE mid = $m"])}, optional={"params": st.dictionaries(
            st.sampled_from(["a", "m", "x"]), json_values, max_size=2)}),
    json_values,
), hdrs=headers, raw=st.booleans(), garbage=st.binary(max_size=200))
def test_fuzzed_queries_never_5xx(client, doc, hdrs, raw, garbage):
    body = garbage if raw else orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS)
    response = client.post("/v1/query", content=body, headers=hdrs)
    assert response.status_code in (200, 400, 403, 408, 413, 415), response.text
    if response.status_code != 200:
        assert response.json()["params"]["err"].startswith("ERR_")

