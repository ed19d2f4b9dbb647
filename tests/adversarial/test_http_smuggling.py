"""Ambiguous HTTP framing is refused, never guessed at (request smuggling behind proxies).

A proxy in front of Cohort and Cohort itself must agree where a request ends. When a request could be
read two ways — both Transfer-Encoding and Content-Length, bare LF line ends, folded headers, odd
lengths, codings other than chunked — a lenient server picks one reading and a proxy may pick the
other; the bytes left over become a second, smuggled request. Each shape here is sent byte for byte to
a real server: the answer must be 400 ERR_BAD_HTTP with the connection closed, and nothing in it
(neither the visible batch nor the smuggled one) may be acknowledged.
"""

from __future__ import annotations

import httpx
import pytest

from raw_http import exchange, request
from support import ServerProcess, envelope, parse_metrics

BATCH = envelope([{"eid": "INTERACT", "mid": "visible"}], msgid="visible")
SMUGGLED_BATCH = envelope([{"eid": "INTERACT", "mid": "smuggled"}], msgid="smuggled")
SMUGGLED = request("POST", "/v1/telemetry", {"Content-Type": "application/json"}, SMUGGLED_BATCH)
N = str(len(BATCH)).encode()
CHUNKED = b"%x\r\n" % len(BATCH) + BATCH + b"\r\n0\r\n\r\n"
POST = b"POST /v1/telemetry HTTP/1.1\r\nHost: 127.0.0.1\r\n"


def post(headers: bytes, body: bytes = BATCH, start: bytes = POST) -> bytes:
    return start + headers + b"\r\n" + body


AMBIGUOUS = {
    "content-length and transfer-encoding": post(b"Content-Length: " + N + b"\r\nTransfer-Encoding: chunked\r\n",
                                                 CHUNKED),
    "transfer-encoding hides a second request": post(b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
                                                     b"0\r\n\r\n" + SMUGGLED),
    "content-length hides a second request": post(b"Content-Length: 0\r\nTransfer-Encoding: chunked\r\n",
                                                  b"%x\r\n" % len(SMUGGLED) + SMUGGLED + b"\r\n0\r\n\r\n"),
    "bare LF everywhere": b"POST /v1/telemetry HTTP/1.1\nHost: 127.0.0.1\nContent-Length: " + N + b"\n\n" + BATCH,
    "bare LF in one header": post(b"X-App-Id: app\nContent-Length: " + N + b"\r\n"),
    "bare CR": post(b"X-App-Id: app\rContent-Length: " + N + b"\r\n"),
    "folded header (space)": post(b"X-Channel-Id: a\r\n b\r\nContent-Length: " + N + b"\r\n"),
    "folded header (tab)": post(b"X-Channel-Id: a\r\n\tb\r\nContent-Length: " + N + b"\r\n"),
    "folded content-length": post(b"Content-Length:\r\n " + N + b"\r\n"),
    "content-length not a number": post(b"Content-Length: abc\r\n"),
    "negative content-length": post(b"Content-Length: -1\r\n"),
    "content-length with a sign": post(b"Content-Length: +" + N + b"\r\n"),
    "hex content-length": post(b"Content-Length: 0x10\r\n"),
    "content-length beyond 64 bits": post(b"Content-Length: 99999999999999999999999999\r\n"),
    "content-length as a list": post(b"Content-Length: " + N + b", " + N + b"\r\n"),
    "content-length twice, same value": post(b"Content-Length: " + N + b"\r\nContent-Length: " + N + b"\r\n"),
    "content-length twice, different values": post(b"Content-Length: " + N + b"\r\nContent-Length: 5\r\n"),
    "space before the colon": post(b"Content-Length : " + N + b"\r\n"),
    "transfer-encoding gzip": post(b"Transfer-Encoding: gzip\r\n", CHUNKED),
    "transfer-encoding gzip, chunked": post(b"Transfer-Encoding: gzip, chunked\r\n", CHUNKED),
    "transfer-encoding chunked, gzip": post(b"Transfer-Encoding: chunked, gzip\r\n", CHUNKED),
    "transfer-encoding identity": post(b"Transfer-Encoding: identity\r\nContent-Length: " + N + b"\r\n"),
    "transfer-encoding xchunked": post(b"Transfer-Encoding: xchunked\r\n", CHUNKED),
    "transfer-encoding twice": post(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", CHUNKED),
    "transfer-encoding with a vertical tab": post(b"Transfer-Encoding:\x0bchunked\r\n", CHUNKED),
    "transfer-encoding in HTTP/1.0": post(b"Transfer-Encoding: chunked\r\n", CHUNKED,
                                          start=b"POST /v1/telemetry HTTP/1.0\r\nHost: 127.0.0.1\r\n"),
    "chunk size not hex": post(b"Transfer-Encoding: chunked\r\n", b"zz\r\n" + BATCH + b"\r\n0\r\n\r\n"),
    "chunk lines with bare LF": post(b"Transfer-Encoding: chunked\r\n", b"%x\n" % len(BATCH) + BATCH + b"\n0\n\n"),
    "chunk size beyond 64 bits": post(b"Transfer-Encoding: chunked\r\n", b"ffffffffffffffffff\r\n" + BATCH),
    "NUL in a header value": post(b"X-App-Id: a\x00b\r\nContent-Length: " + N + b"\r\n"),
    "space in a header name": post(b"X App: a\r\nContent-Length: " + N + b"\r\n"),
    "header line without a colon": post(b"Junk\r\nContent-Length: " + N + b"\r\n"),
    "HTTP/1.1 without Host": b"POST /v1/telemetry HTTP/1.1\r\nContent-Length: " + N + b"\r\n\r\n" + BATCH,
    "two Host headers": post(b"Host: other\r\nContent-Length: " + N + b"\r\n"),
    "HTTP/2.0 request line": post(b"Content-Length: " + N + b"\r\n",
                                  start=b"POST /v1/telemetry HTTP/2.0\r\nHost: 127.0.0.1\r\n"),
    "HTTP/0.9 request line": b"POST /v1/telemetry\r\n\r\n" + BATCH,
}

WELL_FORMED = {
    "content-length": post(b"Content-Length: " + N + b"\r\n"),
    "chunked": post(b"Transfer-Encoding: chunked\r\n", CHUNKED),
    "chunked in capitals": post(b"Transfer-Encoding: Chunked\r\n", CHUNKED),
    "chunk extension": post(b"Transfer-Encoding: chunked\r\n",
                            b"%x;name=value\r\n" % len(BATCH) + BATCH + b"\r\n0\r\n\r\n"),
    "optional whitespace around a value": post(b"Content-Length:  " + N + b" \r\n"),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # Authentication off: the tricks are in the HTTP framing, judged before any route; a smuggled request must
    # be able to succeed if it got through, so that the test sees that it did not (tests/api/test_access.py
    # covers authentication).
    process = ServerProcess(tmp_path_factory.mktemp("smuggling") / "data", env={"COHORT_AUTH": "off"}).start()
    yield process
    process.stop()


def received(server) -> float:
    return parse_metrics(httpx.get(server.url + "/metrics").text)["cohort_events_received_total"]


def refused_bad_http(server) -> float:
    metrics = parse_metrics(httpx.get(server.url + "/metrics").text)
    return metrics.get('cohort_ingest_rejected_total{code="ERR_BAD_HTTP"}', 0)


def log_lines(server) -> list[str]:
    return server.log_path.read_text(errors="replace").splitlines()


@pytest.mark.parametrize("shape", AMBIGUOUS)
def test_ambiguous_framing_is_refused_and_the_connection_closed(server, shape):
    before, refusals, logged = received(server), refused_bad_http(server), len(log_lines(server))
    response = exchange(server.port, AMBIGUOUS[shape])
    assert response is not None, "the server closed without an answer"
    assert response.status == 400, response.raw[:300]
    assert response.err == "ERR_BAD_HTTP" and response.errmsg, response.body
    assert response.closed, "the connection must be closed: what follows cannot be trusted"
    assert response.extra == b"", f"a second response came back: {response.extra[:200]!r}"
    assert received(server) == before, "nothing of an ambiguous request may be acknowledged"
    assert refused_bad_http(server) == refusals + 1  # the operator sees it in /metrics
    new_lines = log_lines(server)[logged:]
    assert len(new_lines) == 1 and "ERR_BAD_HTTP" in new_lines[0], new_lines  # one line, no traceback
    assert httpx.get(server.url + "/health").status_code == 200


@pytest.mark.parametrize("shape", WELL_FORMED)
def test_well_formed_framing_is_still_acked(server, shape):
    before = received(server)
    response = exchange(server.port, WELL_FORMED[shape])
    assert response is not None and response.status == 200, response and response.raw[:300]
    assert not response.closed  # keep-alive stays on for good clients
    assert received(server) == before + 1


def test_pipelined_requests_are_each_answered_in_order(server):
    before = received(server)
    two = post(b"Content-Length: " + N + b"\r\n") + SMUGGLED
    response = exchange(server.port, two, linger=1.0)
    assert response is not None and response.status == 200
    assert response.extra.startswith(b"HTTP/1.1 200 "), response.extra[:200]
    assert received(server) == before + 2
