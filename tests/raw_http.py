"""HTTP/1.1 over a raw socket, for tests that must send what no well-behaved client library would.

Framing tricks (two lengths, bare LF, folded headers), trickled bytes and abandoned uploads can only be
sent byte for byte; the answers are read back just as raw, so a second (smuggled) response or a
connection the server kept open is visible to the test.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field

import orjson


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    closed: bool  # the server closed the connection after this response
    extra: bytes = b""  # anything the server sent after the first response (a smuggled request's answer)
    raw: bytes = field(default=b"", repr=False)

    @property
    def err(self) -> str | None:
        try:
            return orjson.loads(self.body)["params"]["err"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return None

    @property
    def errmsg(self) -> str:
        try:
            return orjson.loads(self.body)["params"]["errmsg"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return ""


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def read_response(sock: socket.socket, timeout: float = 5.0, linger: float = 0.5) -> RawResponse | None:
    """Read one response (by Content-Length), then up to `linger` seconds more to see what else comes.

    Returns None when the server closed the connection without answering.
    """
    data = b""
    deadline = time.monotonic() + timeout
    closed = False
    head_end = -1
    length = None
    while time.monotonic() < deadline:
        head_end = data.find(b"\r\n\r\n")
        if head_end >= 0:
            length = _content_length(data[:head_end])
            if length is not None and len(data) >= head_end + 4 + length:
                break
        chunk = _recv(sock, deadline - time.monotonic())
        if chunk is None:
            break
        if chunk == b"":
            closed = True
            break
        data += chunk
    if head_end < 0:
        if not data:
            return None
        raise AssertionError(f"incomplete response: {data[:200]!r}")
    end = head_end + 4 + (length or 0)
    extra = data[end:]
    if not closed:
        linger_until = time.monotonic() + linger
        while time.monotonic() < linger_until:
            chunk = _recv(sock, linger_until - time.monotonic())
            if chunk is None:
                break
            if chunk == b"":
                closed = True
                break
            extra += chunk
    status_line, *header_lines = data[:head_end].decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawResponse(status=int(status_line.split()[1]), headers=headers, body=data[head_end + 4:end],
                       closed=closed, extra=extra, raw=data)


def exchange(port: int, raw: bytes, timeout: float = 5.0, linger: float = 0.5) -> RawResponse | None:
    """Send `raw` on a fresh connection and read what comes back."""
    with connect(port, timeout) as sock:
        sock.sendall(raw)
        return read_response(sock, timeout, linger)


def wait_closed(sock: socket.socket, timeout: float) -> tuple[bool, bytes]:
    """Wait up to `timeout` for the server to close the connection; return (closed, bytes received)."""
    received = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        chunk = _recv(sock, deadline - time.monotonic())
        if chunk is None:
            continue
        if chunk == b"":
            return True, received
        received += chunk
    return False, received


def request(method: str, path: str, headers: dict[str, str] | list[tuple[str, str]], body: bytes = b"") -> bytes:
    """A well-formed request, for the parts of a test that are not the trick."""
    pairs = list(headers.items()) if isinstance(headers, dict) else list(headers)
    if not any(name.lower() == "host" for name, _ in pairs):
        pairs.insert(0, ("Host", "127.0.0.1"))
    if body and not any(name.lower() in ("content-length", "transfer-encoding") for name, _ in pairs):
        pairs.append(("Content-Length", str(len(body))))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{n}: {v}\r\n" for n, v in pairs) + "\r\n"
    return head.encode("latin-1") + body


def _content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


def _recv(sock: socket.socket, timeout: float) -> bytes | None:
    """Some bytes, b"" when the peer closed (or reset), None when nothing came within `timeout`."""
    sock.settimeout(max(timeout, 0.001))
    try:
        return sock.recv(65536)
    except socket.timeout:
        return None
    except (ConnectionResetError, BrokenPipeError):
        return b""
