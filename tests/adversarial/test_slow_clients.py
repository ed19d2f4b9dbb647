"""Slow and greedy clients cannot hold the server: headers and bodies have time limits, headers a size.

A client that opens a connection and trickles a byte now and then holds a socket, a buffer and (once
headers are in) a request task for as long as it likes unless the server times it out; a few hundred
such clients starve everyone else. Each test here drives a real server over raw sockets with short
limits (1 s) and checks that tricklers are cut off within the limit while a normal client's ack is not
held up, that huge header sections are refused with 431, and that an abandoned upload costs one log
line, not a traceback.
"""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from raw_http import connect, read_response, request, wait_closed
from support import ServerProcess, envelope, parse_metrics, wait_for

TIMEOUT_S = 1.0
SLACK_S = 2.0  # scheduling on a busy 2-core machine; the limit itself is TIMEOUT_S
LIMITS = {
    "COHORT_HTTP_HEADER_TIMEOUT_SECONDS": str(TIMEOUT_S),
    "COHORT_HTTP_BODY_TIMEOUT_SECONDS": str(TIMEOUT_S),
    "COHORT_HTTP_BODY_MIN_BYTES_PER_SECOND": "1000",
    "COHORT_HTTP_MAX_HEADER_BYTES": "16384",
    # the limits are the HTTP server's, applied before any route: authentication off, so that a request that
    # beat them would be acked and the tests would see it (tests/api/test_access.py covers authentication)
    "COHORT_AUTH": "off",
}
BATCH = envelope([{"eid": "INTERACT", "mid": "m-1"}])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process = ServerProcess(tmp_path_factory.mktemp("slow") / "data", env=LIMITS).start()
    yield process
    process.stop()


def received(server) -> float:
    return parse_metrics(httpx.get(server.url + "/metrics").text)["cohort_events_received_total"]


def refused(server, code: str) -> float:
    metrics = parse_metrics(httpx.get(server.url + "/metrics").text)
    return metrics.get(f'cohort_ingest_rejected_total{{code="{code}"}}', 0)


def trickle(sockets: list[socket.socket], seconds: float, byte: bytes = b"a", every: float = 0.2) -> None:
    """Send one byte to each open socket every `every` seconds, for `seconds`."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        for sock in sockets:
            try:
                sock.sendall(byte)
            except OSError:
                pass
        time.sleep(every)


def assert_cut_off(sock: socket.socket, within: float) -> None:
    closed, answer = wait_closed(sock, within)
    assert closed, "the server kept a trickling client's connection open"
    if answer:  # a client that sent part of a request is told why
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert b'"err":"ERR_REQUEST_TIMEOUT"' in answer, answer[:400]


def test_clients_trickling_headers_are_cut_off_while_others_are_served(server):
    sockets = [connect(server.port) for _ in range(40)]
    for sock in sockets:
        sock.sendall(b"POST /v1/telemetry HTTP/1.1\r\nHost: 127.0.0.1\r\nX-App-Id: ")
    started = time.monotonic()
    with server.client(timeout=10) as client:
        ack = client.post("/v1/telemetry", content=BATCH)
        assert ack.status_code == 200 and time.monotonic() - started < TIMEOUT_S + SLACK_S
    trickle(sockets, TIMEOUT_S * 0.8)
    for sock in sockets:
        assert_cut_off(sock, TIMEOUT_S + SLACK_S - (time.monotonic() - started) + 0.5)
        sock.close()
    assert httpx.get(server.url + "/health").status_code == 200


def test_a_silent_connection_is_closed(server):
    with connect(server.port) as sock:
        closed, answer = wait_closed(sock, TIMEOUT_S + SLACK_S)
        assert closed and answer == b""  # nothing was asked, so nothing is answered


def test_a_keep_alive_connection_trickling_its_next_request_is_cut_off(server):
    with connect(server.port) as sock:
        sock.sendall(request("POST", "/v1/telemetry", {}, BATCH))
        first = read_response(sock, linger=0)
        assert first is not None and first.status == 200 and not first.closed
        sock.sendall(b"POST /v1/telemetry HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        trickle([sock], TIMEOUT_S * 0.8)
        assert_cut_off(sock, TIMEOUT_S + SLACK_S)


def test_a_trickled_body_gets_408_and_nothing_is_acked(server):
    before, timeouts = received(server), refused(server, "ERR_REQUEST_TIMEOUT")
    with connect(server.port) as sock:
        sock.sendall(request("POST", "/v1/telemetry", {"Content-Length": "100000"}) + BATCH[:10])
        started = time.monotonic()
        trickle([sock], TIMEOUT_S * 0.8, byte=b" ")
        answer = read_response(sock, timeout=TIMEOUT_S + SLACK_S)
        assert answer is not None, "closed without telling the client why"
        assert answer.status == 408 and answer.err == "ERR_REQUEST_TIMEOUT", answer.raw[:300]
        assert "bytes" in answer.errmsg
        assert answer.closed and time.monotonic() - started < TIMEOUT_S + SLACK_S
    assert received(server) == before
    assert refused(server, "ERR_REQUEST_TIMEOUT") == timeouts + 1  # counted once, by the server
    assert httpx.get(server.url + "/health").status_code == 200


def test_a_slow_body_above_the_minimum_rate_is_acked(server):
    body = envelope([{"eid": "INTERACT", "mid": f"slow-{i}", "pad": "x" * 40} for i in range(50)])
    assert len(body) > 3000
    with connect(server.port) as sock:
        sock.sendall(request("POST", "/v1/telemetry", {"Content-Length": str(len(body))}))
        for start in range(0, len(body), 250):  # ≈ 2,500 bytes/s, for longer than the 1 s base limit
            sock.sendall(body[start:start + 250])
            time.sleep(0.1)
        answer = read_response(sock)
        assert answer is not None and answer.status == 200, answer and answer.raw[:300]


@pytest.mark.parametrize("headers", [
    [("X-App-Id", "a" * 20_000)],
    [(f"X-Extra-{i}", "v" * 100) for i in range(200)],
], ids=["one huge header", "many headers"])
def test_a_header_section_over_the_bound_gets_431(server, headers):
    refusals = refused(server, "ERR_HEADERS_TOO_LARGE")
    with connect(server.port) as sock:
        try:
            sock.sendall(request("POST", "/v1/telemetry", headers, BATCH))
        except OSError:
            pass  # the server may close before it has read everything
        answer = read_response(sock)
    assert answer is not None and answer.status == 431, answer and answer.raw[:300]
    assert answer.err == "ERR_HEADERS_TOO_LARGE" and "16384" in answer.errmsg
    assert answer.closed
    assert refused(server, "ERR_HEADERS_TOO_LARGE") == refusals + 1


def test_headers_under_the_bound_are_fine(server):
    with connect(server.port) as sock:
        sock.sendall(request("POST", "/v1/telemetry", [(f"X-Extra-{i}", "v" * 100) for i in range(60)], BATCH))
        answer = read_response(sock)
    assert answer is not None and answer.status == 200


def log_lines(server) -> list[str]:
    return server.log_path.read_text(errors="replace").splitlines()


@pytest.mark.parametrize("path, declared, sent", [("/v1/telemetry", 1_000_000, 50_000), ("/v1/query", 60_000, 30_000)])
def test_an_abandoned_upload_logs_one_line(server, path, declared, sent):
    before = len(log_lines(server))
    with connect(server.port) as sock:
        sock.sendall(request("POST", path, {"Content-Length": str(declared)}) + b"x" * sent)
        time.sleep(0.2)
    assert wait_for(lambda: len(log_lines(server)) > before, timeout=5), "an abandoned upload left no trace"
    time.sleep(0.5)  # anything more (a traceback) would be written by now
    new = log_lines(server)[before:]
    assert len(new) == 1, "\n".join(new)
    assert path in new[0] and f"{sent} of {declared}" in new[0], new[0]
    assert httpx.get(server.url + "/health").status_code == 200
