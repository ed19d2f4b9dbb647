"""Read a request body within a size limit, un-gzipping it if the client compressed it.

The limit applies to both the bytes on the wire and the bytes after gunzip, so a
small compressed bomb cannot blow up memory. A client that goes away mid-body is an
everyday event on mobile networks, not a server error: it costs one log line.
"""

from __future__ import annotations

import logging
import zlib

from starlette.requests import ClientDisconnect, Request

from cohort.api.http_server import REFUSED
from cohort.core.errors import CohortError, ErrorCode

log = logging.getLogger("cohort.api")


class RefusedByServer(CohortError):
    """The HTTP server refused this request mid-body (and answered, logged and counted it): nothing to add."""

# Concatenated members (RFC 1952 §2.2) come from appending compressed chunks; BGZF-style writers use
# one per 64 KiB. More than this in one body is a flood of tiny members, each costing a decompressor.
MAX_GZIP_MEMBERS = 1000


async def read_body(request: Request, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise CohortError(ErrorCode.BODY_TOO_LARGE, f"body of {declared} bytes is over the {max_bytes}-byte limit")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise CohortError(ErrorCode.BODY_TOO_LARGE, f"body is over the {max_bytes}-byte limit")
            chunks.append(chunk)
    except ClientDisconnect:
        raise _abandoned(request, size, declared) from None
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding in ("gzip", "x-gzip"):
        return gunzip(body, max_bytes)
    raise CohortError(ErrorCode.UNSUPPORTED_ENCODING, f"Content-Encoding {encoding!r:.40} is not supported; use gzip")


def _abandoned(request: Request, size: int, declared: str | None) -> CohortError:
    """The request ended before its body did: log it once (unless the server refused it and said so)."""
    refused = request.scope.get("extensions", {}).get(REFUSED)
    if refused:
        return RefusedByServer(*refused)
    client = request.client
    who = f"{client.host}:{client.port}" if client else "client"
    path = request.scope.get("raw_path", b"").decode("latin-1")  # still %-encoded: one line, whatever was sent
    log.info("%s %s: %s went away after %d of %s body bytes; nothing was acknowledged",
             request.method, path, who, size, declared if declared and declared.isdigit() else "?")
    return CohortError(ErrorCode.CLIENT_DISCONNECTED, "the client went away before sending the whole body")


def gunzip(body: bytes, max_bytes: int) -> bytes:
    """All members of a gzip body, concatenated (RFC 1952); anything after the last member is refused."""
    parts: list[bytes] = []
    size = 0
    rest = body
    for member in range(MAX_GZIP_MEMBERS):
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out = inflater.decompress(rest, max_bytes - size + 1)
        except zlib.error as exc:
            raise _bad_gzip(member, rest, str(exc)) from None
        size += len(out)
        if size > max_bytes or inflater.unconsumed_tail:
            raise CohortError(ErrorCode.BODY_TOO_LARGE, f"body is over the {max_bytes}-byte limit once decompressed")
        if not inflater.eof:
            raise _bad_gzip(member, rest, "truncated")
        rest = inflater.unused_data
        if not rest:
            return out if not parts else b"".join((*parts, out))
        parts.append(out)
    raise CohortError(ErrorCode.BAD_GZIP, f"gzip body has more than {MAX_GZIP_MEMBERS} members")


def _bad_gzip(member: int, rest: bytes, problem: str) -> CohortError:
    if member == 0:
        return CohortError(ErrorCode.BAD_GZIP, f"body is not valid gzip: {problem}")
    return CohortError(ErrorCode.BAD_GZIP, f"{len(rest)} bytes after the gzip stream are not a complete gzip member "
                                           f"({problem})")
