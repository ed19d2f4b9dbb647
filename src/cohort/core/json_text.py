"""JSON text as Cohort reads it: the same bytes at the ack and in the pipeline.

RFC 8259 §8.1 says JSON text has no byte order mark but lets a parser ignore one. Some client
libraries send one; simdjson (the ack path) skips it while orjson (the pipeline) refuses it, so a
body could be acknowledged and then be unreadable. Both sides strip a leading UTF-8 BOM here instead.
"""

from __future__ import annotations

UTF8_BOM = b"\xef\xbb\xbf"


def without_bom(body: bytes) -> bytes:
    """The body without one leading UTF-8 BOM (a BOM anywhere else stays, and is malformed JSON)."""
    return body[3:] if body.startswith(UTF8_BOM) else body
