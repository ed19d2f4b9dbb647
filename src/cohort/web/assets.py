"""GET / (the dashboard page) and GET /static/{path}: the dashboard's files, from this package.

The page holds no data: it is the same for everyone, so it is public, and every figure it shows comes from
an API call carrying the caller's key. Assets are served with a content-security-policy that allows
scripts, styles and connections from this origin only (no inline script, no remote origin), so a value
that reaches the page from the data can never run as code. Asset URLs in the page carry a digest of the
file, so assets can be cached for a year and a new version is still fetched at once.
"""

from __future__ import annotations

import hashlib
import mimetypes
from functools import lru_cache
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response

from cohort.api.responses import failure
from cohort.core.errors import ErrorCode

STATIC_DIR = Path(__file__).parent / "static"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer"}
ASSET_CACHE = "public, max-age=31536000, immutable"
PAGE_CACHE = "no-cache"  # the page names the assets' digests, so it must be revalidated
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".html": "text/html; charset=utf-8", ".md": "text/plain; charset=utf-8", ".svg": "image/svg+xml"}


@lru_cache(maxsize=64)
def _asset(relative: str) -> tuple[bytes, str] | None:
    """(content, digest) of a file under STATIC_DIR, or None: nothing outside it, no hidden files."""
    if not relative or len(relative) > 200 or any(part in ("", ".", "..") or part.startswith(".")
                                                  for part in relative.split("/")):
        return None
    path = (STATIC_DIR / relative).resolve()
    if STATIC_DIR.resolve() not in path.parents or not path.is_file():
        return None
    content = path.read_bytes()
    return content, hashlib.sha256(content).hexdigest()[:12]


@lru_cache(maxsize=1)
def _page() -> bytes:
    """index.html with each `{{asset:path}}` replaced by the asset's URL with its digest."""
    text = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    for relative in sorted({part.split("}}", 1)[0] for part in text.split("{{asset:")[1:]}):
        found = _asset(relative)
        if found is None:
            raise FileNotFoundError(f"the dashboard page names a missing asset: {relative}")
        text = text.replace("{{asset:" + relative + "}}", f"/static/{relative}?v={found[1]}")
    return text.encode("utf-8")


async def dashboard_page(request: Request) -> Response:
    return Response(_page(), media_type="text/html; charset=utf-8",
                    headers={**SECURITY_HEADERS, "Cache-Control": PAGE_CACHE})


async def static_asset(request: Request) -> Response:
    relative = request.path_params.get("path", "")
    found = _asset(relative) if relative != "index.html" else None
    if found is None:
        return failure("api.static", ErrorCode.NOT_FOUND, f"no such file: /static/{relative[:200]}", 404)
    media_type = _TYPES.get(Path(relative).suffix) or mimetypes.guess_type(relative)[0] or "application/octet-stream"
    return Response(found[0], media_type=media_type,
                    headers={**SECURITY_HEADERS, "Cache-Control": ASSET_CACHE, "ETag": f'"{found[1]}"'})
