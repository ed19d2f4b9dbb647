"""The HTTP server: uvicorn with a strict parser, and time and size limits on every request.

uvicorn's pure-Python parser (h11) accepts requests a proxy in front may frame differently — both
Transfer-Encoding and Content-Length, bare LF line ends, folded headers — which is how requests are
smuggled past proxies; and no uvicorn protocol limits how long a client may take to send its headers
or its body, so a few hundred tricklers hold the server. This module runs uvicorn's llhttp protocol
(httptools: strict framing, and about half h11's CPU per small request, measured) with:

- the framing checks llhttp leaves to the server: Transfer-Encoding only as `chunked` and never in
  HTTP/1.0, HTTP/1.0 or 1.1 only, one Host — each refused with 400 ERR_BAD_HTTP, and every refusal
  closes the connection, since what follows a bad request cannot be trusted;
- a bound on the request line and headers (431 ERR_HEADERS_TOO_LARGE);
- a header timeout, from connecting or from the end of the previous response, and a body deadline
  that each received byte pushes back (`1 / min rate` seconds), so slow but steady uploads finish
  while tricklers are cut off (408 ERR_REQUEST_TIMEOUT; a silent connection is just closed).

Refusals are answered in the API's JSON shape, logged as one line each, and counted with the API's
refusals (`cohort_ingest_rejected_total{code}`).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from cohort.api.responses import failure
from cohort.core.errors import ErrorCode
from cohort.settings import Settings

log = logging.getLogger("cohort.http")

# Scope extension the server sets when it refuses a request the application is still reading (a body too
# slow, chunked framing broken mid-body): (code, message). The reader then knows the client was answered,
# and the refusal logged and counted, already.
REFUSED = "cohort.refused"
API_ID = "api.http"
SUPPORTED_VERSIONS = ("1.0", "1.1")


@dataclass(frozen=True, slots=True)
class HttpLimits:
    header_timeout_s: float
    body_timeout_s: float
    body_min_bytes_per_s: float
    max_header_bytes: int

    @classmethod
    def from_settings(cls, settings: Settings) -> "HttpLimits":
        return cls(header_timeout_s=settings.http_header_timeout_seconds,
                   body_timeout_s=settings.http_body_timeout_seconds,
                   body_min_bytes_per_s=settings.http_body_min_bytes_per_second,
                   max_header_bytes=settings.http_max_header_bytes)


class _Refusal(Exception):
    """Raised from a parser callback to stop parsing and refuse the request."""

    def __init__(self, status: int, code: ErrorCode, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class HardenedHttpProtocol(HttpToolsProtocol):
    """One connection. `limits` and `on_refused` are set on the subclass `protocol_class` makes."""

    limits: HttpLimits
    on_refused: Callable[[ErrorCode], None]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._in_head = True  # between requests, or reading a request line and headers
        self._head_started = False  # some bytes of the next request have come
        self._head_raw_bytes = 0  # bytes received while in the head (may include a body's first bytes)
        self._head_size = 0  # request target and header lines as parsed
        self._body_started_at = self._body_timer_armed_at = 0.0
        self._body_bytes = 0
        self._declared_length: bytes | None = None

    # connection events

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        if self._in_head and data:
            self._head_started = True
            self._head_raw_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            refusal = exc.__context__
            if isinstance(refusal, _Refusal):
                self._refuse(refusal.status, refusal.code, refusal.message)
            else:  # a bug in a callback: still one coded answer, and the traceback once
                log.error("HTTP parser callback failed", exc_info=refusal)
                self._refuse(400, ErrorCode.BAD_HTTP, "malformed HTTP request")
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():  # no endpoint upgrades today; the request is served as plain HTTP
                self.handle_websocket_upgrade()
            return
        except httptools.HttpParserError as exc:
            self._refuse(400, ErrorCode.BAD_HTTP, f"malformed HTTP request: {_reason(exc)}")
            return
        if self._in_head and self._head_raw_bytes > self.limits.max_header_bytes:
            self._refuse(431, ErrorCode.HEADERS_TOO_LARGE, self._too_large_message())

    # parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_started = True
        self._head_size = 0

    def on_url(self, url: bytes) -> None:
        self._head_size += len(url)
        self._check_head_size()
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        self._check_head_size()
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._check_head_size()
        self._check_framing()
        self._in_head = False
        self._head_raw_bytes = 0
        self._cancel(self._header_timer)
        self._header_timer = None
        super().on_headers_complete()
        if self._declared_length not in (None, b"0"):
            self._body_started_at = self.loop.time()
            self._body_bytes = 0
            self._arm_body_timer(self.limits.body_timeout_s)

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._cancel(self._body_timer)
        self._body_timer = None
        self._in_head, self._head_started, self._head_raw_bytes = True, False, 0
        super().on_message_complete()
        if self.cycle is None or self.cycle.response_complete:  # answered before its body ended
            self._arm_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._in_head and not self.transport.is_closing():
            self._arm_header_timer()  # the keep-alive connection's next request starts its clock now

    # checks

    def _check_head_size(self) -> None:
        if self._head_size > self.limits.max_header_bytes:
            raise _Refusal(431, ErrorCode.HEADERS_TOO_LARGE, self._too_large_message())

    def _too_large_message(self) -> str:
        return f"request line and headers are over the {self.limits.max_header_bytes}-byte limit"

    def _check_framing(self) -> None:
        """What llhttp leaves to the server: anything a proxy could frame differently is refused."""
        version = self.parser.get_http_version()
        if version not in SUPPORTED_VERSIONS:
            raise _bad_http(f"HTTP/{version} is not supported; use HTTP/1.1")
        codings = [value for name, value in self.headers if name == b"transfer-encoding"]
        lengths = [value for name, value in self.headers if name == b"content-length"]
        hosts = sum(1 for name, _ in self.headers if name == b"host")
        if codings:
            if len(codings) > 1 or codings[0].strip().lower() != b"chunked":
                raise _bad_http("Transfer-Encoding must be exactly 'chunked' (compress with Content-Encoding)")
            if version == "1.0":
                raise _bad_http("Transfer-Encoding is not allowed in HTTP/1.0")
            if lengths:
                raise _bad_http("both Transfer-Encoding and Content-Length: the body's end is ambiguous")
        if len(lengths) > 1:
            raise _bad_http("more than one Content-Length")
        if lengths and not lengths[0].strip().isdigit():
            raise _bad_http("Content-Length must be a decimal number")
        if version == "1.1" and hosts != 1:
            raise _bad_http("an HTTP/1.1 request needs exactly one Host header")
        self._declared_length = b"chunked" if codings else (lengths[0].strip() if lengths else None)

    # timers

    def _arm_header_timer(self) -> None:
        self._cancel(self._header_timer)
        self._header_timer = self.loop.call_later(self.limits.header_timeout_s, self._on_header_timeout)

    def _on_header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or not self._in_head:
            return
        if (self.cycle is not None and not self.cycle.response_complete) or self.pipeline:
            return  # a response is still being worked on; the clock restarts when it is sent
        if not self._head_started:
            self.transport.close()  # an idle connection: nothing was asked, nothing to answer
            return
        self._refuse(408, ErrorCode.REQUEST_TIMEOUT,
                     f"request headers not complete within {self.limits.header_timeout_s:g} s")

    def _arm_body_timer(self, delay: float) -> None:
        self._cancel(self._body_timer)
        self._body_timer = self.loop.call_later(delay, self._on_body_timeout)
        self._body_timer_armed_at = self.loop.time()

    def _on_body_timeout(self) -> None:
        self._body_timer = None
        if self.transport.is_closing() or self._in_head:
            return
        limits = self.limits
        now = self.loop.time()
        if self.flow.read_paused:  # we stopped reading (a request ahead, or the app is behind): not the client's time
            self._body_started_at += now - self._body_timer_armed_at
            self._arm_body_timer(limits.body_timeout_s)
            return
        deadline = self._body_started_at + limits.body_timeout_s + self._body_bytes / limits.body_min_bytes_per_s
        if now < deadline:
            self._arm_body_timer(deadline - now)
            return
        declared = "?" if self._declared_length in (None, b"chunked") else self._declared_length.decode()
        message = (f"request body too slow: {self._body_bytes} of {declared} bytes in "
                   f"{now - self._body_started_at:.1f} s (allowed: {limits.body_timeout_s:g} s, "
                   f"plus 1 s per {limits.body_min_bytes_per_s:g} bytes received)")
        cycle = self.cycle
        if cycle is not None and cycle.response_started:  # answered already: nothing more to say, stop reading
            log.info("%s: closed, %s", self._peer(), message)
            self.on_refused(ErrorCode.REQUEST_TIMEOUT)
            self.transport.close()
            return
        self._refuse(408, ErrorCode.REQUEST_TIMEOUT, message)

    def _cancel_timers(self) -> None:
        self._cancel(self._header_timer)
        self._cancel(self._body_timer)
        self._header_timer = self._body_timer = None

    @staticmethod
    def _cancel(timer: asyncio.TimerHandle | None) -> None:
        if timer is not None:
            timer.cancel()

    # answers

    def _refuse(self, status: int, code: ErrorCode, message: str) -> None:
        """Answer in the API's shape, close the connection, log one line."""
        if self.transport.is_closing():
            return
        body = failure(API_ID, code, message, status).body
        self.transport.write(b"".join((
            STATUS_LINE[status], b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body), b"connection: close\r\n\r\n", body)))
        self.transport.close()
        self._cancel_timers()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            extensions: dict = cycle.scope.setdefault("extensions", {})
            extensions[REFUSED] = (code, message)
            cycle.disconnected = True  # the application sees the client gone; its own answer is dropped
            cycle.message_event.set()
        self.on_refused(code)
        log.info("%s: %d %s: %s", self._peer(), status, code, message)

    def _peer(self) -> str:
        return "%s:%d" % self.client if self.client else "client"


def protocol_class(limits: HttpLimits,
                   on_refused: Callable[[ErrorCode], None] | None = None) -> type[HardenedHttpProtocol]:
    """A protocol class for uvicorn's `http=` carrying these limits."""
    return type("CohortHttpProtocol", (HardenedHttpProtocol,),
                {"limits": limits, "on_refused": staticmethod(on_refused or (lambda code: None))})


def build_server(app, settings: Settings) -> uvicorn.Server:
    """uvicorn with the hardened protocol; refusals are counted with the API's (once it has started)."""

    def count(code: ErrorCode) -> None:
        metrics = getattr(app.state, "metrics", None)
        if metrics is not None:
            metrics.rejected(code)

    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=5, loop=settings.event_loop,
                            http=protocol_class(HttpLimits.from_settings(settings), count))
    return uvicorn.Server(config)


class CannotListen(Exception):
    """The address cannot be bound; the message says why in an operator's words."""


def listen_socket(host: str, port: int) -> socket.socket:
    """Bind the listening socket before anything says 'serving', so a taken port is an error, not a surprise."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise CannotListen(f"cannot listen on {host}:{port}: unknown host ({exc.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        why = {errno.EADDRINUSE: "the port is in use (is another server running there?)",
               errno.EADDRNOTAVAIL: "no such address on this machine",
               errno.EACCES: "permission denied (ports below 1024 need privileges)"}.get(exc.errno or 0, exc.strerror)
        raise CannotListen(f"cannot listen on {host}:{port}: {why}") from None
    return sock


def _bad_http(message: str) -> _Refusal:
    return _Refusal(400, ErrorCode.BAD_HTTP, message)


def _reason(exc: Exception) -> str:
    text = str(exc).strip()
    return text.removeprefix("Invalid ").rstrip(".") or type(exc).__name__
