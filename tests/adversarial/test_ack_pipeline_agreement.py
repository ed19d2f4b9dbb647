"""What the ack accepts, the pipeline reads: the ack path and extract never disagree about a body.

The ack path checks a body with simdjson (orjson where simdjson refuses) and stores it; extract parses
the stored bytes with orjson, later, in a worker. Any body one accepts and the other cannot read is an
acknowledged batch quarantined whole — a UTF-8 BOM once did exactly that. These tests take bodies the
two parsers are known to treat differently (BOMs, nesting depth, big numbers, lone surrogates, invalid
UTF-8, NUL bytes, repeated keys, trailing bytes, gzip members) and check, example by example and as a
hypothesis property, that every body the ack path accepts is extracted into exactly the acked number
of events.
"""

from __future__ import annotations

import gzip
import json
import zlib

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from cohort.api.request_body import gunzip
from cohort.core.errors import CohortError, ErrorCode
from cohort.core.log_record import LogRecord
from cohort.core.stages.extract import extract
from cohort.core.telemetry_batch import parse_telemetry_batch
from cohort.settings import Settings

DEFAULTS = Settings()
MAX_DEPTH = DEFAULTS.max_json_depth
MAX_BYTES = 1_000_000
BOM = b"\xef\xbb\xbf"
REFUSALS = {ErrorCode.MALFORMED_JSON, ErrorCode.ENVELOPE, ErrorCode.EMPTY_BATCH, ErrorCode.BATCH_TOO_LARGE,
            ErrorCode.TOO_DEEP, ErrorCode.FIELD_TOO_LONG}


def ack(body: bytes, max_events: int = 1000):
    """The ack path's decision over an (already decoded) body: the batch it would acknowledge."""
    return parse_telemetry_batch(body, max_events, max_depth=MAX_DEPTH, max_msgid_chars=DEFAULTS.max_msgid_chars)


def assert_extracted_as_acked(body: bytes) -> int | None:
    """If the ack path accepts `body`, extract must yield exactly the acked events; returns the count."""
    try:
        batch = ack(body)
    except CohortError as error:
        assert error.code in REFUSALS, error
        return None
    record = LogRecord(payload=batch.payload, event_count=batch.event_count, offset=1)
    items, failed = extract([record])
    assert not [f for f in failed if f.code == ErrorCode.EXTRACT_PAYLOAD], (body[:200], failed[:1])
    assert len(items) + sum(f.event_count for f in failed) == batch.event_count
    return batch.event_count


def nested(depth: int, leaf: bytes = b"1") -> bytes:
    """A JSON value `depth` containers deep (alternating arrays and objects)."""
    opens = b"".join(b"[" if i % 2 else b'{"k":' for i in range(depth))
    closes = b"".join(b"]" if i % 2 else b"}" for i in reversed(range(depth)))
    return opens + leaf + closes


def batch_with(event: bytes, extra: bytes = b"") -> bytes:
    return b'{"id":"api.sunbird.telemetry","params":{"msgid":"m"' + extra + b'},"events":[' + event + b"]}"


# -- the known disagreements, one by one ------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    BOM + batch_with(b'{"eid":"START"}'),
    BOM + b' \n' + batch_with(b'{"eid":"START"}'),
], ids=["bom", "bom then whitespace"])
def test_a_leading_bom_is_acked_and_extracted(body):
    assert assert_extracted_as_acked(body) == 1
    assert not ack(body).payload.startswith(BOM)  # stored as the pipeline reads it


@pytest.mark.parametrize("body", [
    b" " + BOM + batch_with(b"{}"),
    BOM + BOM + batch_with(b"{}"),
    batch_with(b'"' + BOM + b'"') + BOM,
    b"\xfe\xff" + batch_with(b"{}"),  # a UTF-16 BOM is not JSON text here
], ids=["bom after whitespace", "two boms", "trailing bom", "utf-16 bom"])
def test_a_bom_anywhere_else_is_malformed(body):
    with pytest.raises(CohortError) as info:
        ack(body)
    assert info.value.code == ErrorCode.MALFORMED_JSON


def test_nesting_up_to_the_bound_is_acked_and_extracted():
    # envelope (1) + events array (2) + an event of MAX_DEPTH - 2 levels = MAX_DEPTH
    assert assert_extracted_as_acked(batch_with(nested(MAX_DEPTH - 2))) == 1


@pytest.mark.parametrize("where", ["event", "params", "big integer beside it", "repeated key beside it"])
def test_nesting_past_the_bound_is_refused_as_too_deep(where):
    deep = nested(MAX_DEPTH - 1)
    body = {
        "event": batch_with(deep),
        "params": batch_with(b"{}", extra=b',"x":' + deep),
        # simdjson refuses big integers; orjson then decides, under the same bound
        "big integer beside it": batch_with(b"123456789012345678901234567890," + deep),
        "repeated key beside it": batch_with(deep).replace(b'"events":', b'"events":[],"events":'),
    }[where]
    with pytest.raises(CohortError) as info:
        ack(body)
    assert info.value.code == ErrorCode.TOO_DEEP
    assert str(MAX_DEPTH) in info.value.message


@pytest.mark.parametrize("depth", [1025, 5000])
def test_nesting_past_every_parser_is_refused_too(depth):
    with pytest.raises(CohortError) as info:
        ack(batch_with(nested(depth)))
    assert info.value.code in (ErrorCode.TOO_DEEP, ErrorCode.MALFORMED_JSON)


def test_real_sunbird_events_are_far_from_the_bound(sample_events):
    body = orjson.dumps({"id": "api.sunbird.telemetry", "events": sample_events})
    assert assert_extracted_as_acked(body) == 500
    assert MAX_DEPTH >= 16 * 7  # the deepest real event nests 7 levels


@pytest.mark.parametrize("body", [
    batch_with(b"123456789012345678901234567890"),
    batch_with(b"18446744073709551616"),
    batch_with(b"-9223372036854775809"),
    batch_with(b"1e400"),
    batch_with(b"1" * 5000),
    batch_with(b'"\\ud800"'),
    batch_with(b'"\\udc00x"'),
    batch_with(b'"\\ud83d\\ude00"'),
    batch_with(b'"a\x00b"'),
    batch_with(b'"\\u0000"'),
    batch_with(b"{}") + b"\x00",
    b"\x00" + batch_with(b"{}"),
    batch_with(b'"\xff"'),
    batch_with(b'"\xed\xa0\x80"'),
    batch_with(b'"\xc0\xaf"'),
    batch_with(b"{}") + b"\xff",
    batch_with(b"{}") + b"{}",
    batch_with(b"{}") + b" \t\r\n",
    batch_with(b"{}") + b"\x0c",
    b'{"events":[1],"events":[1,2,3]}',
    b'{"events":[1,2,3],"events":[1]}',
    b'{"params":{"msgid":"a"},"params":{"msgid":1},"events":[{}]}',
    b'{"params":{"msgid":1,"msgid":"b"},"events":[{}]}',
    b'{"events":[{"a":1,"a":2}]}',
    b'{"events":[1],"data":[1,2]}',
    b'{"events":"x","data":[1,2]}',
    b"[]", b"{}", b"", b" ",
], ids=lambda body: repr(body[:40]))
def test_known_parser_differences_agree(body):
    assert_extracted_as_acked(body)


# -- gzip: what is acked is what was compressed, all of it --------------------------------------------------

def test_concatenated_gzip_members_are_one_body():
    body = batch_with(b'{"eid":"START"},{"eid":"END"}')
    members = gzip.compress(body[:20]) + gzip.compress(body[20:50]) + gzip.compress(body[50:])
    assert gunzip(members, MAX_BYTES) == body
    assert assert_extracted_as_acked(gunzip(members, MAX_BYTES)) == 2


@pytest.mark.parametrize("trailing", [b"x", b"\x00" * 8, b"garbage after the stream", b"\x1f\x8b",
                                      batch_with(b"{}")], ids=["byte", "zeros", "text", "half a header", "json"])
def test_trailing_bytes_after_a_gzip_stream_are_refused(trailing):
    with pytest.raises(CohortError) as info:
        gunzip(gzip.compress(batch_with(b"{}")) + trailing, MAX_BYTES)
    assert info.value.code == ErrorCode.BAD_GZIP
    assert "after" in info.value.message


def test_a_truncated_second_member_is_refused():
    second = gzip.compress(batch_with(b"{}"))
    with pytest.raises(CohortError) as info:
        gunzip(gzip.compress(b"{}") + second[:-4], MAX_BYTES)
    assert info.value.code == ErrorCode.BAD_GZIP


def test_the_size_bound_covers_all_members_together():
    member = gzip.compress(b" " * 600)
    assert len(gunzip(member + member, 1200)) == 1200
    with pytest.raises(CohortError) as info:
        gunzip(member + member + member, 1200)
    assert info.value.code == ErrorCode.BODY_TOO_LARGE


def test_a_flood_of_empty_members_is_refused_not_looped_over():
    with pytest.raises(CohortError) as info:
        gunzip(gzip.compress(b"") * 100_000, 10 * MAX_BYTES)
    assert info.value.code == ErrorCode.BAD_GZIP


# -- the property ---------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=16,
)
envelopes = st.fixed_dictionaries(
    {"events": st.lists(json_values, min_size=0, max_size=6) | json_values},
    optional={"id": st.sampled_from(["api.sunbird.telemetry", "ekstep.telemetry", "x"]) | json_values,
              "params": st.fixed_dictionaries({}, optional={"msgid": st.text(max_size=10) | json_values}) | json_values,
              "data": json_values},
).map(lambda doc: json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode())  # big integers too
# Byte-level edits that move a body across the two parsers' edges.
edits = st.sampled_from([
    lambda b: BOM + b, lambda b: b + BOM, lambda b: b" " + BOM + b, lambda b: b + b"\x00", lambda b: b"\x00" + b,
    lambda b: b + b" \n\t\r", lambda b: b"\x0c" + b, lambda b: b.replace(b'"', b'"\\ud800', 1),
    lambda b: b.replace(b'"', b'"\\udfff\\ud800', 1), lambda b: b.replace(b":", b':"\xff",', 1),
    lambda b: b.replace(b"[", b"[123456789012345678901234567890,", 1), lambda b: b.replace(b"[", b"[1e999,", 1),
    lambda b: b.replace(b"[", b"[18446744073709551615,", 1),
    lambda b: b.replace(b"{", b'{"events":[],', 1), lambda b: b.replace(b"{", b'{"params":{"msgid":"z"},', 1),
    lambda b: b.replace(b'"events":[', b'"events":[' + nested(MAX_DEPTH - 2) + b",", 1),
    lambda b: b.replace(b'"events":[', b'"events":[' + nested(MAX_DEPTH - 1) + b",", 1),
    lambda b: b.replace(b'"events":[', b'"events":[' + nested(MAX_DEPTH + 40) + b",", 1),
    lambda b: b + b"{}", lambda b: b[:-1], lambda b: b.replace(b",", b",,", 1),
    lambda b: b.replace(b'"', b"'", 2), lambda b: b.decode("utf-8", "replace").encode("utf-16"),
    lambda b: zlib.compress(b), lambda b: b,
])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=envelopes, changes=st.lists(edits, max_size=3))
@example(body=batch_with(b"{}"), changes=[lambda b: BOM + b])
def test_any_body_the_ack_path_accepts_is_extracted_into_exactly_the_acked_events(body, changes):
    for change in changes:
        body = change(body)
    assert_extracted_as_acked(body)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=envelopes, cuts=st.lists(st.integers(0, 400), max_size=3), trailing=st.binary(max_size=6))
def test_any_gzip_body_the_ack_path_accepts_is_extracted_into_exactly_the_acked_events(body, cuts, trailing):
    points = sorted({min(cut, len(body)) for cut in cuts})
    parts = [body[a:b] for a, b in zip([0, *points], [*points, len(body)])]
    compressed = b"".join(gzip.compress(part) for part in parts) + trailing
    try:
        decoded = gunzip(compressed, MAX_BYTES)
    except CohortError as error:
        assert error.code == ErrorCode.BAD_GZIP and trailing
        return
    assert decoded == body and not trailing
    assert_extracted_as_acked(decoded)


def test_random_bytes_never_make_the_two_disagree():
    import random

    rng = random.Random(7)
    pieces = [b"{", b"}", b"[", b"]", b'"events"', b":", b",", b'"a"', b"1", b"123456789012345678901",
              b"null", BOM, b"\\ud800", b'"', b"\x00", b"\xff", b" "]
    for _ in range(3000):
        body = b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 30)))
        assert_extracted_as_acked(body)
