"""GET /v1/metrics: the learning metrics there are, read from the registry at request time, so a client
(the dashboard) draws whatever metrics the server has instead of a list of its own that goes stale."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from cohort.analytics.metrics import METRICS
from cohort.api.access import caller_identity
from cohort.api.responses import failure, status_for, success
from cohort.core.errors import CohortError

API_ID = "api.metrics.catalog"


async def list_metrics(request: Request) -> Response:
    try:
        caller_identity(request)
    except CohortError as exc:
        return failure(API_ID, exc.code, exc.message, status_for(exc.code), ver="1.0")
    metrics = [{"name": metric.name, "description": metric.description, "unit": metric.unit,
                "granularities": list(metric.granularities), "group_bys": list(metric.group_bys),
                "sources": list(metric.sources)}
               for metric in METRICS.values()]
    return success(API_ID, result={"metrics": metrics}, ver="1.0")
