"""POST /v1/forget: forget a learner (the right to be forgotten), for tenant_admin and admin.

Body `{"tenant": "<channel>", "learner": "<clear learner id>"}`: a tenant admin forgets learners of its
own tenant only (it may leave `tenant` out), an admin names the tenant. The work (cohort.pipeline.forget)
waits for the pipeline and deletes from the store, so it runs on a thread of its own, one forget at a
time, never on the event loop. The audit log records the request before anything is deleted (if it
cannot, 503 and nothing is deleted) and the outcome after, with counts and the pseudonym, never the
clear id.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from cohort.api.access import caller_identity
from cohort.api.request_body import read_body
from cohort.api.responses import failure, status_for, success
from cohort.core.errors import CohortError, ErrorCode
from cohort.pipeline.forget import ForgetReport, forget_learner as forget_service
from cohort.security.audit_log import AuditLog, AuditLogUnavailable
from cohort.security.identity import Identity, check_tenant_id
from cohort.state.identity_vault import MAX_ID_CHARS

log = logging.getLogger("cohort.api")

API_ID = "api.forget"
ACTION = "forget"
MAX_FORGET_BODY = 4096  # a tenant (≤ 128) and a learner id (≤ 1024 characters, up to 4 bytes each when escaped)
_FIELDS = frozenset({"tenant", "learner"})
_STATUS = {ErrorCode.FORGET_TIMEOUT: 503, ErrorCode.FORGET_UNAVAILABLE: 503, ErrorCode.VAULT_UNAVAILABLE: 503}
# One forget at a time: each waits for the pipeline and rewrites store data; queued ones wait their turn.
_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cohort-forget")


async def forget_learner(request: Request) -> Response:
    try:
        identity = caller_identity(request)
        tenant, learner = _parse(await read_body(request, MAX_FORGET_BODY), identity)
        state = request.app.state
        report = await asyncio.wrap_future(_executor.submit(_forget, state.node, state.vault, state.audit, identity,
                                                            tenant, learner))
    except CohortError as exc:
        headers = {"Retry-After": "1"} if _status(exc.code) == 503 else None
        return failure(API_ID, exc.code, exc.message, _status(exc.code), ver="1.0", headers=headers)
    except AuditLogUnavailable as exc:
        return failure(API_ID, ErrorCode.AUDIT_UNAVAILABLE, f"the forget could not be audited, so nothing was "
                       f"deleted: {exc}", 503, ver="1.0", headers={"Retry-After": "1"})
    return success(API_ID, ver="1.0", result={"tenant": tenant, **report.detail(), "summary": report.summary()})


def _forget(node: Any, vault: Any, audit: AuditLog, identity: Identity, tenant: str, learner: str) -> ForgetReport:
    """On the forget thread: audit the request (or refuse), forget, audit the outcome."""
    audit.append(identity, ACTION, "/v1/forget", "requested", {"via": "api"}, tenant=tenant)
    try:
        report = forget_service(node, vault, tenant, learner)
    except CohortError as exc:
        _audit_after(audit, identity, tenant, "error", {"via": "api", "error": str(exc.code)})
        raise
    _audit_after(audit, identity, tenant, "ok" if report.held else "not_held", {"via": "api", **report.detail()})
    return report


def _audit_after(audit: AuditLog, identity: Identity, tenant: str, outcome: str, detail: dict[str, Any]) -> None:
    """The outcome's entry: the request's entry stands already, so a failure here is logged, not answered."""
    try:
        audit.append(identity, ACTION, "/v1/forget", outcome, detail, tenant=tenant)
    except AuditLogUnavailable as exc:
        log.error("forget of a learner of tenant %s ended %s but the audit log could not record it: %s",
                  tenant, outcome, exc)


def _parse(body: bytes, identity: Identity) -> tuple[str, str]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise CohortError(ErrorCode.MALFORMED_JSON, f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or set(doc) - _FIELDS:
        raise CohortError(ErrorCode.FORGET_INPUT, 'body must be {"tenant": "<channel>", "learner": "<learner id>"}')
    learner = doc.get("learner")
    if not isinstance(learner, str) or not 1 <= len(learner) <= MAX_ID_CHARS:
        raise CohortError(ErrorCode.FORGET_INPUT, f"'learner' must be the learner's id as sent (a string of 1 to "
                          f"{MAX_ID_CHARS} characters)")
    tenant = doc.get("tenant", identity.tenant)
    if tenant is None:
        raise CohortError(ErrorCode.FORGET_INPUT, "'tenant' is required: name the tenant (channel) of the learner")
    if not isinstance(tenant, str):
        raise CohortError(ErrorCode.FORGET_INPUT, "'tenant' must be a string (a channel id)")
    check_tenant_id(tenant)
    if identity.tenant is not None and tenant != identity.tenant:
        raise CohortError(ErrorCode.AUTH_FORBIDDEN, f"this key forgets learners of tenant {identity.tenant} only")
    return tenant, learner


def _status(code: ErrorCode) -> int:
    return _STATUS.get(code, status_for(code))
