"""GET /v1/metrics/{name}: a learning metric over the caller's tenant and scope, by time bucket and group, or
a learning report (a ranking or list of rows: analytics/reports.py) over the same window, tenant and scope.

The parameters are checked on the event loop (cheap, cohort.analytics.metric_query); everything else runs
on the query executor, the threads queries run on, under the same admission (429 beyond it): the SQL,
the suppression of small cells for roles not entitled to individual records, and the audit. Like a
query, every metric request is recorded in the audit log (action `metric`: the metric and its parameters,
never a figure) before its answer goes out, and one that cannot be recorded gets 503 and no figures.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any, cast

from starlette.requests import Request
from starlette.responses import Response

from cohort.analytics.metric_answer import QueryBounds, answer_metric
from cohort.analytics.metric_query import MetricQuery, parse_metric_query
from cohort.analytics.metrics import METRICS, Metric, find_metric
from cohort.analytics.report_answer import answer_report
from cohort.analytics.report_query import Report, ReportQuery, parse_report_query
from cohort.analytics.reports import REPORTS, find_report
from cohort.analytics.small_cells import suppression_applies
from cohort.api.access import caller_identity
from cohort.api.query import QueryService, admission_key
from cohort.api.responses import failure, status_for, success
from cohort.core.errors import CohortError, ErrorCode, first_line
from cohort.security.audit_log import AuditLogUnavailable
from cohort.security.identity import Identity
from cohort.settings import Settings
from cohort.store.base import QueryTimeout, Store

API_ID = "api.metrics.read"
MAX_NAME_CHARS = 64
_STATUS = {ErrorCode.METRIC_UNKNOWN: 404, ErrorCode.METRIC_TOO_LARGE: 413}


async def get_metric(request: Request) -> Response:
    service: QueryService = request.app.state.queries
    settings = service.settings
    try:
        identity = caller_identity(request)
    except CohortError as exc:
        return _failure(exc.code, exc.message, settings)
    name = request.path_params.get("name", "")
    sent = list(request.query_params.multi_items())[:8]  # as sent, bounded; replaced by the checked ones
    request_detail: dict[str, Any] = {"metric": name[:MAX_NAME_CHARS], "params": {k[:32]: v[:80] for k, v in sent}}
    target: Metric | Report | None = None
    query: MetricQuery | ReportQuery | None = None
    try:
        target, query = checked_request(name, list(request.query_params.multi_items()), identity)
        request_detail["params"] = query.as_params()
        release = service.admission.admit(admission_key(request, identity))
    except CohortError as exc:
        if exc.code == ErrorCode.TOO_MANY_QUERIES:  # not run, so not audited: nothing was read
            return _failure(exc.code, exc.message, settings)
        # a refusal is audited too (off the event loop: the audit log writes to disk), without a query slot
        refused = _failure(exc.code, exc.message, settings)
        tenant = query.tenant if query is not None else identity.tenant
        return await asyncio.to_thread(_audited, service, identity, refused, request_detail, tenant, time.monotonic())
    store: Store = request.app.state.node.store
    try:
        job = service.submit(_answer, service, store, identity, target, query, request_detail, release)
    except BaseException:
        release()
        raise
    return await asyncio.wrap_future(job)  # if the request is cancelled, the job keeps its slot until it ends


def checked_request(name: str, params: list[tuple[str, str]],
                    identity: Identity) -> tuple[Metric, MetricQuery] | tuple[Report, ReportQuery]:
    """The metric or report `name` and the checked request for it (CohortError: unknown name, bad parameter,
    another tenant); what the metric endpoint and the metric lineage both answer for."""
    report = find_report(name)
    if report is not None:
        return report, parse_report_query(report, params, identity, datetime.now(UTC))
    metric = find_metric(name)
    if metric is None:
        raise CohortError(ErrorCode.METRIC_UNKNOWN, f"no metric {name[:MAX_NAME_CHARS]!r}; the metrics are "
                          f"{', '.join([*METRICS, *REPORTS])}")
    query = parse_metric_query(params, identity, datetime.now(UTC))
    _check_supported(metric, query)
    return metric, query


def _answer(service: QueryService, store: Store, identity: Identity, target: Metric | Report,
            query: MetricQuery | ReportQuery, detail: dict[str, Any], release) -> Response:
    """On a query thread: compute, then audit; the answer goes out only once audited."""
    started = time.monotonic()
    try:
        response = _compute(store, identity, target, query, service.settings, detail)
    finally:
        release()
    return _audited(service, identity, response, detail, query.tenant, started)


def _audited(service: QueryService, identity: Identity, response: Response, detail: dict[str, Any],
             tenant: str | None, started: float) -> Response:
    """`response`, once the audit log has the request; 503 without the answer when it cannot be recorded."""
    detail.update(status=response.status_code, ms=round((time.monotonic() - started) * 1000))
    outcome = "ok" if response.status_code == 200 else "refused" if response.status_code < 500 else "error"
    if service.audit is not None:
        try:
            service.audit.append(identity, "metric", "/v1/metrics", outcome, detail, tenant=tenant)
        except AuditLogUnavailable as exc:
            return _failure(ErrorCode.AUDIT_UNAVAILABLE, f"the request could not be audited, so its answer is "
                            f"withheld: {exc}", service.settings)
    return response


def _compute(store: Store, identity: Identity, target: Metric | Report, query: MetricQuery | ReportQuery,
             settings: Settings, detail: dict[str, Any]) -> Response:
    bounds = QueryBounds(row_limit=settings.query_row_limit, timeout_s=settings.query_timeout_seconds,
                         max_result_bytes=settings.query_max_result_bytes,
                         max_memory_bytes=settings.query_max_memory_mb * 1024 * 1024)
    suppressed, k, now = suppression_applies(identity), settings.min_cell_learners, datetime.now(UTC)
    try:
        if isinstance(query, ReportQuery):  # checked_request pairs a report with a ReportQuery
            result = answer_report(store, cast(Report, target), query, suppressed=suppressed, k=k, bounds=bounds,
                                   now=now)
        else:
            result = answer_metric(store, cast(Metric, target), query, suppressed=suppressed, k=k, bounds=bounds,
                                   now=now)
    except CohortError as exc:
        return _failure(exc.code, exc.message, settings)
    except QueryTimeout as exc:
        return _failure(ErrorCode.QUERY_TIMEOUT, str(exc), settings)
    except Exception as exc:  # noqa: BLE001 (a fault of ours or the store's: coded, and audited as an error)
        return _failure(ErrorCode.INTERNAL, f"the metric could not be computed: {first_line(exc)}", settings)
    if "rows" in result:
        detail["suppressed_rows"] = result["suppression"]["suppressed_rows"]
        detail["rows"] = len(result["rows"])
    else:
        detail["suppressed_cells"] = result["suppression"]["suppressed_cells"]
        detail["cells"] = len(result["series"])
    return success(API_ID, result=result, ver="1.0")


def _check_supported(metric: Metric, query: MetricQuery) -> None:
    if query.granularity not in metric.granularities:
        raise CohortError(ErrorCode.METRIC_PARAM, f"{metric.name} comes by {', '.join(metric.granularities)}, not "
                          f"{query.granularity}")
    if query.by not in metric.group_bys:
        raise CohortError(ErrorCode.METRIC_PARAM, f"{metric.name} can be grouped by {', '.join(metric.group_bys)}, "
                          f"not {query.by}")


def _failure(code: ErrorCode, message: str, settings: Settings) -> Response:
    headers = {"Retry-After": str(settings.retry_after_seconds)} if code == ErrorCode.TOO_MANY_QUERIES else None
    return failure(API_ID, code, message, _STATUS.get(code) or status_for(code), headers=headers, ver="1.0")
