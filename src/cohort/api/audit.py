"""GET /v1/audit: the audit log, for those who answer for their tenant (tenant_admin) or the platform (admin).

A tenant admin reads the entries that concern its tenant only; an admin reads every entry or one tenant's
(`?tenant=`). Pages go oldest first from `since` (a sequence number), so a reader can follow the log.
Reading the log is itself recorded (`audit.read`), since who looked at whose activity is part of the
story the log tells. The chain is verified with `cohort audit verify`, which reads the whole log.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from cohort.api.access import caller_identity
from cohort.api.responses import failure, status_for, success
from cohort.core.errors import CohortError, ErrorCode
from cohort.security.audit_log import MAX_ENTRIES_PAGE, AuditLog, AuditLogUnavailable
from cohort.security.identity import Identity, check_tenant_id

API_ID = "api.audit"
DEFAULT_PAGE = 100
_PARAMS = frozenset({"since", "limit", "tenant"})


async def read_audit(request: Request) -> Response:
    try:
        identity = caller_identity(request)
        tenant, since, limit = _page(request, identity)
        log: AuditLog = request.app.state.audit
        entries = await run_in_threadpool(_read_and_record, log, identity, tenant, since, limit)
    except CohortError as exc:
        return failure(API_ID, exc.code, exc.message, status_for(exc.code), ver="1.0")
    except AuditLogUnavailable as exc:
        return failure(API_ID, ErrorCode.AUDIT_UNAVAILABLE, f"the audit log cannot be read now: {exc}", 503,
                       ver="1.0", headers={"Retry-After": "1"})
    next_since = entries[-1].seq if entries else since
    return success(API_ID, ver="1.0", result={"tenant": tenant, "entries": [e.as_dict() for e in entries]},
                   meta={"since": since, "limit": limit, "next_since": next_since, "more": len(entries) == limit})


def _read_and_record(log: AuditLog, identity: Identity, tenant: str | None, since: int, limit: int) -> list:
    entries = log.entries(tenant=tenant, since_seq=since, limit=limit)
    log.append(identity, "audit.read", "/v1/audit", "ok", {"since": since, "limit": limit, "entries": len(entries)},
               tenant=tenant)
    return entries


def _page(request: Request, identity: Identity) -> tuple[str | None, int, int]:
    params = request.query_params
    unknown = sorted(set(params) - _PARAMS)
    if unknown:
        raise CohortError(ErrorCode.AUDIT_INPUT, f"unknown parameter(s) {', '.join(unknown)[:200]}; "
                          f"use {', '.join(sorted(_PARAMS))}")
    since = _whole(params.get("since", "0"), "since", 0, 2**62)
    limit = _whole(params.get("limit", str(DEFAULT_PAGE)), "limit", 1, MAX_ENTRIES_PAGE)
    asked = params.get("tenant")
    if asked is not None:
        check_tenant_id(asked)
    if identity.tenant is None:
        return asked, since, limit
    if asked is not None and asked != identity.tenant:
        raise CohortError(ErrorCode.AUTH_FORBIDDEN, f"this key reads the audit log of tenant {identity.tenant} only")
    return identity.tenant, since, limit


def _whole(text: str, name: str, low: int, high: int) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 19 or not low <= int(text) <= high:
        raise CohortError(ErrorCode.AUDIT_INPUT, f"{name} must be a whole number from {low} to {high}")
    return int(text)
