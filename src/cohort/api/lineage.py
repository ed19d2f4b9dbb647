"""GET /v1/lineage/event/{mid} and GET /v1/lineage/metric/{name}: where an event and a figure come from.

Event lineage reads the store (the caller's tenant only, within its scope), so it runs like a query: on the
query executor under the same admission (429 beyond it), within the query time limit, and audited (action
`lineage.event`) before its answer goes out; one that cannot be audited gets 503 and no answer. A mid the
caller may not see is answered exactly as one that does not exist (404 ERR_LINEAGE_NOT_FOUND), so lineage
cannot probe other tenants; a role that reads published figures only (viewer) sees no event, so it gets the
same 404 for every mid. Scoped identities see stored events in their scope only, never the quarantine
(its rows are payloads as sent, which a scope cannot be checked against); request headers (raw sender data)
are shown to admins only.

Metric lineage reads nothing of the store: it says what the metric (or report) reads and returns the statement
the metric endpoint would run for the same parameters and caller, without running it. It is audited too
(action `lineage.metric`), off the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Any, cast

from starlette.requests import Request
from starlette.responses import Response

from cohort.analytics.lineage import (MAX_COPIES, MAX_REQUEST_ROWS, check_mid, event_lineage as lineage_of_event,
                                      metric_lineage as lineage_of_metric, quarantined_copies_sql,
                                      report_lineage as lineage_of_report, requests_sql, stored_copies_sql)
from cohort.analytics.metric_query import MetricQuery
from cohort.analytics.metrics import Metric
from cohort.analytics.report_query import Report
from cohort.analytics.small_cells import suppression_applies
from cohort.api.access import caller_identity
from cohort.api.learning_metrics import checked_request
from cohort.api.query import QueryService, admission_key
from cohort.api.responses import failure, status_for, success
from cohort.core.errors import CohortError, ErrorCode, first_line
from cohort.core.telemetry_schema import schema_version
from cohort.security.audit_log import AuditLogUnavailable
from cohort.security.identity import Identity, Role, check_tenant_id
from cohort.settings import Settings
from cohort.store.base import QueryTimeout, Store

API_ID = "api.lineage"
MAX_NAME_CHARS = 64
_STATUS = {ErrorCode.LINEAGE_NOT_FOUND: 404, ErrorCode.METRIC_UNKNOWN: 404}
EVENT_PARAMETERS = ("tenant",)
# Roles entitled to an event's lineage (row-level: one event's times, stages and request). A role that reads
# published figures only (viewer) may see no event, so every mid is answered as absent, without a read.
EVENT_READERS = frozenset({Role.ADMIN, Role.TENANT_ADMIN, Role.ANALYST, Role.EDUCATOR})


async def event_lineage(request: Request) -> Response:
    service: QueryService = request.app.state.queries
    settings = service.settings
    try:
        identity = caller_identity(request)
    except CohortError as exc:
        return _failure(exc.code, exc.message, settings)
    mid = request.path_params.get("mid", "")
    detail: dict[str, Any] = {"mid": mid[:128]}
    tenant = identity.tenant
    try:
        check_mid(mid)
        tenant = _event_tenant(list(request.query_params.multi_items()), identity)
        detail["tenant"] = tenant
        release = service.admission.admit(admission_key(request, identity))
    except CohortError as exc:
        refused = _failure(exc.code, exc.message, settings)
        if exc.code == ErrorCode.TOO_MANY_QUERIES:  # not run, so not audited: nothing was read
            return refused
        return await asyncio.to_thread(_audited, service, identity, refused, detail, tenant, time.monotonic(),
                                       "lineage.event")
    store: Store = request.app.state.node.store
    try:
        job = service.submit(_answer_event, service, store, identity, mid, tenant, detail, release)
    except BaseException:
        release()
        raise
    return await asyncio.wrap_future(job)  # if the request is cancelled, the job keeps its slot until it ends


async def metric_lineage(request: Request) -> Response:
    service: QueryService = request.app.state.queries
    settings = service.settings
    try:
        identity = caller_identity(request)
    except CohortError as exc:
        return _failure(exc.code, exc.message, settings)
    store: Store = request.app.state.node.store
    params = list(request.query_params.multi_items())
    return await asyncio.to_thread(_answer_metric, service, store, identity, request.path_params.get("name", ""),
                                   params)


def _answer_event(service: QueryService, store: Store, identity: Identity, mid: str, tenant: str | None,
                  detail: dict[str, Any], release) -> Response:
    """On a query thread: read, then audit; the answer goes out only once audited."""
    started = time.monotonic()
    try:
        response = _event_response(store, identity, mid, tenant, service.settings, detail)
    finally:
        release()
    return _audited(service, identity, response, detail, tenant, started, "lineage.event")


def _event_response(store: Store, identity: Identity, mid: str, tenant: str | None, settings: Settings,
                    detail: dict[str, Any]) -> Response:
    try:
        body = _read_event(store, identity, mid, tenant, settings)
    except CohortError as exc:
        return _failure(exc.code, exc.message, settings)
    except QueryTimeout as exc:
        return _failure(ErrorCode.QUERY_TIMEOUT, str(exc), settings)
    except Exception as exc:  # noqa: BLE001 (a fault of ours or the store's: coded, and audited as an error)
        return _failure(ErrorCode.INTERNAL, f"the lineage could not be read: {first_line(exc)}", settings)
    if body is None:
        detail["found"] = None
        return _failure(ErrorCode.LINEAGE_NOT_FOUND, f"no event with mid {mid!r} that you may see", settings)
    detail.update(found=body["status"], stored=len(body["stored"]), quarantined=len(body["quarantined"]))
    return success(API_ID + ".event", result=body, ver="1.0")


def _read_event(store: Store, identity: Identity, mid: str, tenant: str | None,
                settings: Settings) -> dict[str, Any] | None:
    """The three reads of an event's lineage, sharing the query time limit."""
    if identity.role not in EVENT_READERS:
        return None
    dialect = store.capabilities.sql_dialect
    deadline = time.monotonic() + settings.query_timeout_seconds

    def run(statement, row_limit: int) -> list[tuple[Any, ...]]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise QueryTimeout(f"the lineage took longer than {settings.query_timeout_seconds:g} s")
        return store.query(statement.sql, statement.params, row_limit, remaining,
                           max_result_bytes=settings.query_max_result_bytes,
                           max_memory_bytes=settings.query_max_memory_mb * 1024 * 1024).rows

    stored = run(stored_copies_sql(mid, tenant, identity.scope, dialect), MAX_COPIES + 1)
    # the quarantine cannot be narrowed to a scope (table_catalog: failed_events has no scope column)
    quarantined = run(quarantined_copies_sql(mid, tenant, dialect), MAX_COPIES + 1) if identity.scope is None else []
    if not stored and not quarantined:
        return None
    offsets = [row[4] for row in stored[:MAX_COPIES]] + [row[6] for row in quarantined[:MAX_COPIES]]
    lookup = requests_sql(offsets, dialect)
    requests = run(lookup, MAX_REQUEST_ROWS) if lookup is not None else []
    return lineage_of_event(mid, tenant, stored, quarantined, requests, with_headers=identity.role is Role.ADMIN)


def _answer_metric(service: QueryService, store: Store, identity: Identity, name: str,
                   params: list[tuple[str, str]]) -> Response:
    """On a worker thread (the audit log writes to disk): the metric's lineage, audited."""
    started = time.monotonic()
    settings = service.settings
    detail: dict[str, Any] = {"metric": name[:MAX_NAME_CHARS], "params": {k[:32]: v[:80] for k, v in params[:8]}}
    tenant = identity.tenant
    try:
        target, query = checked_request(name, params, identity)
        tenant = query.tenant
        detail["params"] = query.as_params()
        dialect, role, suppressed = store.capabilities.sql_dialect, str(identity.role), suppression_applies(identity)
        if isinstance(query, MetricQuery):  # checked_request pairs a metric with a MetricQuery
            body = lineage_of_metric(cast(Metric, target), query, dialect, config_version=_config_version(), role=role,
                                     suppressed=suppressed, k=settings.min_cell_learners)
        else:
            body = lineage_of_report(cast(Report, target), query, dialect, config_version=_config_version(), role=role,
                                     suppressed=suppressed, k=settings.min_cell_learners)
        response = success(API_ID + ".metric", result=body, ver="1.0")
    except CohortError as exc:
        response = _failure(exc.code, exc.message, settings)
    except Exception as exc:  # noqa: BLE001 (a fault of ours: coded, and audited as an error)
        response = _failure(ErrorCode.INTERNAL, f"the lineage could not be built: {first_line(exc)}", settings)
    return _audited(service, identity, response, detail, tenant, started, "lineage.metric")


@functools.cache
def _config_version() -> str:
    """The processing config version the pipeline records in each trace (a digest of the shipped schemas)."""
    return schema_version()


def _event_tenant(params: list[tuple[str, str]], identity: Identity) -> str | None:
    """Whose events: the caller's tenant; an admin may name one (`tenant`), or none (every tenant). Naming
    another tenant is refused (403) rather than answered with the caller's own."""
    given: dict[str, str] = {}
    for name, value in params[:16]:
        if name not in EVENT_PARAMETERS:
            raise CohortError(ErrorCode.LINEAGE_PARAM, f"unknown parameter {name[:32]!r}; the only parameter is "
                              f"tenant")
        if name in given:
            raise CohortError(ErrorCode.LINEAGE_PARAM, f"parameter {name!r} is given more than once")
        given[name] = value
    if len(params) > 16:
        raise CohortError(ErrorCode.LINEAGE_PARAM, "too many parameters")
    text = given.get("tenant")
    if text is None:
        return identity.tenant
    try:
        tenant = check_tenant_id(text)
    except CohortError as exc:
        raise CohortError(ErrorCode.LINEAGE_PARAM, exc.message) from None
    if identity.tenant is not None and tenant != identity.tenant:
        raise CohortError(ErrorCode.AUTH_FORBIDDEN, "you may read the lineage of your own tenant's events only")
    return tenant


def _audited(service: QueryService, identity: Identity, response: Response, detail: dict[str, Any],
             tenant: str | None, started: float, action: str) -> Response:
    """`response`, once the audit log has the request; 503 without the answer when it cannot be recorded."""
    detail.update(status=response.status_code, ms=round((time.monotonic() - started) * 1000))
    outcome = "ok" if response.status_code == 200 else "refused" if response.status_code < 500 else "error"
    target = "/v1/lineage/event" if action == "lineage.event" else "/v1/lineage/metric"
    if service.audit is not None:
        try:
            service.audit.append(identity, action, target, outcome, detail, tenant=tenant)
        except AuditLogUnavailable as exc:
            return _failure(ErrorCode.AUDIT_UNAVAILABLE, f"the request could not be audited, so its answer is "
                            f"withheld: {exc}", service.settings)
    return response


def _failure(code: ErrorCode, message: str, settings: Settings) -> Response:
    headers = {"Retry-After": str(settings.retry_after_seconds)} if code == ErrorCode.TOO_MANY_QUERIES else None
    return failure(API_ID, code, message, _STATUS.get(code) or status_for(code), headers=headers, ver="1.0")
