"""Placeholder: being built (issue 10)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from cohort.api.responses import failure
from cohort.core.errors import ErrorCode

API_ID = "api.lineage"


async def event_lineage(request: Request) -> Response:
    return failure(API_ID, ErrorCode.NOT_FOUND, "not built yet", 404)


async def metric_lineage(request: Request) -> Response:
    return failure(API_ID, ErrorCode.NOT_FOUND, "not built yet", 404)
