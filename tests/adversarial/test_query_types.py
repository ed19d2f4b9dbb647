"""Fault 6: `SELECT current_time`, `::HUGEINT`, `::UHUGEINT` and sums wider than 64 bits gave 5xx while the
response was written. Every type the store can return must serialise, as documented in docs/API.md."""

from __future__ import annotations

import json

import orjson
import pytest

CASES = [
    # (expression, expected JSON value; None for "any string")
    ("current_time", None),
    ("CAST('12:30:00+02' AS TIMETZ)", "12:30:00+02"),
    ("170141183460469231731687303715884105727::HUGEINT", 2**127 - 1),
    ("'-170141183460469231731687303715884105728'::HUGEINT", -(2**127)),
    ("340282366920938463463374607431768211455::UHUGEINT", 2**128 - 1),
    ("(SELECT sum(x) FROM (VALUES (9223372036854775807), (9223372036854775807)) t(x))", 2 * (2**63 - 1)),
    ("18446744073709551615::UBIGINT", 2**64 - 1),
    ("12345678901234567890123456789012345678901234567890::BIGNUM", 12345678901234567890123456789012345678901234567890),
    ("1::VARINT", 1),
    ("123.4500::DECIMAL(10, 4)", "123.4500"),  # exact digits (compared as text below)
    ("INTERVAL 1 MONTH + INTERVAL 36 HOUR", "1 month 36:00:00"),
    ("'3b0b22ea-43c8-78e0-0aeb-51b03beca77f'::UUID", "3b0b22ea-43c8-78e0-0aeb-51b03beca77f"),
    ("'10110'::BIT", "10110"),
    ("'ab\\x00'::BLOB", "ab\\x00"),
    ("CAST('b' AS ENUM('a', 'b'))", "b"),
    ("[1, 2, NULL]", [1, 2, None]),
    ("{'a': 1, 'b': [current_date - current_date]}", {"a": 1, "b": [0]}),
    ("MAP {1: 'one', 2: 'two'}", {"1": "one", "2": "two"}),
    ("'infinity'::DATE", "infinity"),
    ("'-infinity'::TIMESTAMP", "-infinity"),
    ("'infinity'::TIMESTAMPTZ", "infinity"),
    ("'2024-02-29 23:59:59.123456'::TIMESTAMP", "2024-02-29 23:59:59.123456"),
    ("'2024-02-29 23:59:59.123456789'::TIMESTAMP_NS", "2024-02-29 23:59:59.123456789"),
    ("'NaN'::DOUBLE", None),
    ("'inf'::DOUBLE", None),
    ("'-inf'::FLOAT", None),
    ("['NaN'::DOUBLE, 1.5]", [None, 1.5]),
    ("'{\"k\": [1, 2]}'::JSON", '{"k": [1, 2]}'),
    ("NULL", None),
]


@pytest.mark.parametrize("expression, expected", CASES)
def test_every_type_serialises(shared_client, expression, expected):
    response = shared_client.post("/v1/query", json={"sql": f"SELECT {expression} AS v"})
    assert response.status_code == 200, response.text
    orjson.loads(response.content)  # strict JSON: no NaN, no Infinity
    value = json.loads(response.content)["result"][0]["v"]  # exact big integers
    if "DECIMAL" in expression:
        assert b'"v":123.4500' in response.content
    elif expected is None and expression in ("current_time",):
        assert isinstance(value, str) and value[2] == ":"
    else:
        assert value == expected


def test_the_sample_types_of_the_tables_serialise(client, sample_events):
    from support import envelope, wait_for

    client.post("/v1/telemetry", content=envelope(sample_events[:20]))
    assert wait_for(lambda: client.post("/v1/query", json={"sql": "SELECT count(*) AS n FROM telemetry"})
                    .json()["result"][0]["n"] == 20)
    for table in ("telemetry", "failed_events", "ingest_batches"):
        response = client.post("/v1/query", json={"sql": f"SELECT * FROM {table}"})
        assert response.status_code == 200, response.text
    row = client.post("/v1/query", json={"sql": "SELECT ets, ingested_at, rollup, edata FROM telemetry LIMIT 1"}) \
        .json()["result"][0]
    assert row["ets"][:2] == "20" and row["ets"][10] == " "  # DuckDB's timestamp text
    assert isinstance(orjson.loads(row["edata"]), dict)  # JSON columns come back as their text
