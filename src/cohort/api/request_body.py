"""Read a request body within a size limit, un-gzipping it if the client compressed it.

The limit applies to both the bytes on the wire and the bytes after gunzip, so a
small compressed bomb cannot blow up memory.
"""

from __future__ import annotations

import zlib

from starlette.requests import Request

from cohort.core.errors import CohortError, ErrorCode


async def read_body(request: Request, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise CohortError(ErrorCode.BODY_TOO_LARGE, f"body of {declared} bytes is over the {max_bytes}-byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise CohortError(ErrorCode.BODY_TOO_LARGE, f"body is over the {max_bytes}-byte limit")
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding in ("gzip", "x-gzip"):
        return gunzip(body, max_bytes)
    raise CohortError(ErrorCode.UNSUPPORTED_ENCODING, f"Content-Encoding {encoding!r:.40} is not supported; use gzip")


def gunzip(body: bytes, max_bytes: int) -> bytes:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, max_bytes + 1)
    except zlib.error as exc:
        raise CohortError(ErrorCode.BAD_GZIP, f"body is not valid gzip: {exc}") from None
    if len(out) > max_bytes or inflater.unconsumed_tail:
        raise CohortError(ErrorCode.BODY_TOO_LARGE, f"body is over the {max_bytes}-byte limit once decompressed")
    if not inflater.eof:
        raise CohortError(ErrorCode.BAD_GZIP, "gzip body is truncated")
    return out
