"""Fuzzed request bodies and headers: never a 5xx, every refusal coded, every ack accounted for."""

from __future__ import annotations

import gzip
import os

import orjson
from hypothesis import HealthCheck, given, settings, strategies as st

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
envelopes = st.fixed_dictionaries(
    {"events": st.lists(event_like | json_values, max_size=8)},
    optional={"id": st.sampled_from(["api.sunbird.telemetry", "x"]) | json_values,
              "params": st.fixed_dictionaries({}, optional={"msgid": st.text(max_size=8) | json_values}) | json_values,
              "ver": json_values, "ets": json_values},
)
bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(orjson.dumps),
    envelopes.map(lambda e: orjson.dumps(e, option=orjson.OPT_NON_STR_KEYS)),
)
header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30)
headers = st.fixed_dictionaries({}, optional={
    "Content-Encoding": st.sampled_from(["gzip", "identity", "br", "GZIP", ""]) | header_text,
    "Content-Type": st.sampled_from(["application/json", "text/plain"]) | header_text,
    "X-Channel-Id": header_text, "X-App-Id": header_text, "X-Device-Id": header_text,
})


def test_fuzzed_telemetry_requests_never_5xx_and_every_ack_is_accounted_for(client):
    requests_sent = []

    @FUZZ
    @given(body=bodies, hdrs=headers, compress=st.booleans())
    def post(body, hdrs, compress):
        if compress:
            body = gzip.compress(body)
            hdrs = {**hdrs, "Content-Encoding": "gzip"}
        response = client.post("/v1/telemetry", content=body, headers=hdrs)
        requests_sent.append(response.status_code)
        assert response.status_code in (200, 400, 413, 415), response.text
        params = response.json()["params"]
        if response.status_code == 200:
            assert params["status"] == "successful"
        else:
            assert params["status"] == "failed" and params["err"].startswith("ERR_") and params["errmsg"]

    post()
    print(f"fuzzed {len(requests_sent)} telemetry requests: "
          f"{requests_sent.count(200)} acked, {len(requests_sent) - requests_sent.count(200)} refused with a code")
    assert len(requests_sent) >= min(EXAMPLES, 100)
    final = wait_for(lambda: (m := metric_values(client))["cohort_events_in_flight"] == 0 and m)
    assert final["cohort_events_received_total"] > 0
    assert final["cohort_events_unaccounted"] == 0
    assert final["cohort_pipeline_healthy"] == 1
    assert client.get("/health").json()["status"] == "ok"


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

