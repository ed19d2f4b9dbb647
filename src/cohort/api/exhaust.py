"""Placeholder: being built (issue 10)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from cohort.api.responses import failure
from cohort.core.errors import ErrorCode

API_ID = "api.exhaust"


async def export_dataset(request: Request) -> Response:
    return failure(API_ID, ErrorCode.NOT_FOUND, "not built yet", 404)
