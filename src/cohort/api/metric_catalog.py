"""GET /v1/metrics: the learning metrics there are, read from the registry at request time, so a client
(the dashboard) draws whatever metrics the server has instead of a list of its own that goes stale.

Series metrics (kind `series`) are listed under `metrics`, reports (kind `report`: rows, not a series;
analytics/reports.py) under `reports`, with their columns and options, so a client that draws series
never meets a report it cannot draw."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from cohort.analytics.metrics import METRICS
from cohort.analytics.report_query import ReportOption
from cohort.analytics.reports import REPORTS
from cohort.api.access import caller_identity
from cohort.api.responses import failure, status_for, success
from cohort.core.errors import CohortError

API_ID = "api.metrics.catalog"


async def list_metrics(request: Request) -> Response:
    try:
        caller_identity(request)
    except CohortError as exc:
        return failure(API_ID, exc.code, exc.message, status_for(exc.code), ver="1.0")
    metrics = [{"name": metric.name, "kind": "series", "description": metric.description, "unit": metric.unit,
                "granularities": list(metric.granularities), "group_bys": list(metric.group_bys),
                "sources": list(metric.sources)}
               for metric in METRICS.values()]
    reports = [{"name": report.name, "kind": "report", "description": report.description,
                "individual": report.individual,
                "columns": [{"name": c.name, "unit": c.unit, "description": c.description} for c in report.columns],
                "options": [_option(option) for option in report.options], "sources": list(report.sources)}
               for report in REPORTS.values()]
    return success(API_ID, result={"metrics": metrics, "reports": reports}, ver="1.0")


def _option(option: ReportOption) -> dict[str, object]:
    return {"name": option.name, "type": {int: "integer", float: "number"}.get(option.kind, "string"),
            "description": option.description, "default": option.default, "minimum": option.minimum,
            "maximum": option.maximum, "required": option.required, "choices": list(option.choices) or None}
