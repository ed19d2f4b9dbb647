"""A body refused for its size is not read: the server answers 413 and closes the connection,
so a client flooding large bodies cannot make the event loop receive and discard them."""

from __future__ import annotations

import pytest

from raw_http import connect, read_response, request, wait_closed


@pytest.mark.e2e
@pytest.mark.parametrize("path, size", [("/v1/query", 1_000_000), ("/v1/telemetry", 50_000_000)])
def test_a_body_over_the_limit_gets_413_and_the_connection_closes(server, path, size):
    sock = connect(server.port)
    try:
        sock.sendall(request("POST", path, {**server.headers, "Content-Type": "application/json",
                                            "Content-Length": str(size)})
                     + b"{" + b" " * 1000)
        response = read_response(sock, linger=0.2)
        assert response is not None and response.status == 413 and response.err == "ERR_BODY_TOO_LARGE"
        assert response.headers.get("connection", "").lower() == "close"
        closed, _ = wait_closed(sock, timeout=5)
        assert closed or response.closed
    finally:
        sock.close()
