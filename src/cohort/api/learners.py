"""POST /v1/learners/reidentify: an educator (or a tenant admin) turns pseudonyms of its own learners back into
their ids — the one place the platform hands out a clear learner id, so every call is audited first.

Body `{"pseudonyms": ["u:…", …]}` (at most MAX_PSEUDONYMS; an admin also names `"tenant"`). A scoped identity
gets only the pseudonyms that are the `actor_id` of at least one stored telemetry event of its tenant within
its scope (one bounded query through the store, over scope_filter's condition, the one SQL is narrowed by);
every other pseudonym is withheld as `not_in_scope`, whether it is unknown or another class's, so that a
caller cannot learn what exists beyond its scope. An unscoped tenant admin (or an admin naming a tenant) may
re-identify any pseudonym of that tenant; an unscoped educator none (an educator reads its classes only).
The pseudonyms held in scope are looked up in the identity vault; the call, its pseudonyms and how many were
revealed (never the ids) go to the audit log, and only once it is written do the ids go out: no audit, no ids
(503). The store, the vault and the audit log are all reached on the query executor, never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from typing import Any

import orjson
from sqlglot import exp
from starlette.requests import Request
from starlette.responses import Response

from cohort.api.access import caller_identity
from cohort.api.query import QueryService, admission_key
from cohort.api.request_body import read_body
from cohort.api.responses import failure, status_for, success
from cohort.core.errors import CohortError, ErrorCode
from cohort.security.audit_log import AuditLog, AuditLogUnavailable
from cohort.security.identity import Identity, Role, check_tenant_id
from cohort.security.sql_scope import rows_condition
from cohort.security.table_catalog import TELEMETRY
from cohort.state.identity_vault import IdentityVault
from cohort.store.base import QueryTimeout, Store

log = logging.getLogger("cohort.api")

API_ID = "api.learners.reidentify"
TARGET = "/v1/learners/reidentify"
MAX_PSEUDONYMS = 100
MAX_BODY_BYTES = 16 * 1024  # 100 pseudonyms of 34 characters and a tenant, with room for whitespace
LEARNER_PSEUDONYM = re.compile(r"^u:[0-9a-f]{32}$")
NOT_IN_SCOPE = "not_in_scope"  # outside the caller's scope, or unknown: a scoped caller is not told which
NOT_HELD = "not_held"  # the vault holds no id for it (never given, or forgotten)
AUDIT_LIST_CHUNK = 32  # the audit log keeps lists of up to 32 items: the pseudonyms go as a list of such lists


async def reidentify_learners(request: Request) -> Response:
    try:
        identity = caller_identity(request)
    except CohortError as exc:
        return failure(API_ID, exc.code, exc.message, status_for(exc.code))
    service: QueryService = request.app.state.queries
    asked: list[str] = []
    try:
        body = await read_body(request, MAX_BODY_BYTES)
        tenant, asked = _parse(body, identity)
        release = service.admission.admit(admission_key(request, identity))
    except CohortError as exc:
        await _off_loop(service, _record_refusal, request.app.state.audit, identity, asked, exc.code)
        return failure(API_ID, exc.code, exc.message, status_for(exc.code))
    try:
        job = service.submit(_reidentify, request.app.state.node.store, request.app.state.vault,
                                        request.app.state.audit, service, identity, tenant, asked, release)
    except BaseException:
        release()
        raise
    return await asyncio.wrap_future(job)  # if this request is cancelled, the job keeps its slot until it ends


def _reidentify(store: Store, vault: IdentityVault, audit: AuditLog, service: QueryService, identity: Identity,
                tenant: str, asked: list[str], release: Callable[[], None]) -> Response:
    try:
        return _reidentify_now(store, vault, audit, service, identity, tenant, asked)
    except Exception:  # noqa: BLE001 - a fault of ours: logged, answered with a code, nothing revealed
        log.exception("re-identification failed")
        return failure(API_ID, ErrorCode.INTERNAL, "learners cannot be re-identified: an internal error (see the "
                       "server's log)", 500)
    finally:
        release()


def _reidentify_now(store: Store, vault: IdentityVault, audit: AuditLog, service: QueryService, identity: Identity,
                    tenant: str, asked: list[str]) -> Response:
    """On a query thread: the scope check, the vault, the audit entry, in that order; ids only after the entry."""
    scoped = identity.scope is not None
    try:
        in_scope = _in_scope(store, service, identity, asked) if scoped else set(asked)
        wanted = [p for p in asked if p in in_scope]
        revealed = vault.reidentify(tenant, wanted) if wanted else {}
    except (CohortError, QueryTimeout) as exc:  # the store or the vault failed: nothing is revealed
        code = exc.code if isinstance(exc, CohortError) else ErrorCode.QUERY_TIMEOUT
        status = 500 if code == ErrorCode.VAULT_INTEGRITY else 503
        detail = _detail(identity, asked, revealed=0, status=status)
        try:
            audit.append(identity, "reidentify", TARGET, "error", detail, tenant=tenant)
        except AuditLogUnavailable:
            pass  # the call is refused anyway
        message = exc.message if isinstance(exc, CohortError) else str(exc)
        return failure(API_ID, code, f"learners cannot be re-identified now: {message}", status,
                       headers={"Retry-After": str(service.settings.retry_after_seconds)} if status == 503 else None)
    learners = [{"pseudonym": p, "id": revealed[p]} for p in asked if p in revealed]
    withheld = [{"pseudonym": p, "reason": NOT_HELD if p in in_scope else NOT_IN_SCOPE}
                for p in asked if p not in revealed]
    try:
        audit.append(identity, "reidentify", TARGET, "ok", _detail(identity, asked, len(learners), 200), tenant=tenant)
    except AuditLogUnavailable as exc:
        return failure(API_ID, ErrorCode.AUDIT_UNAVAILABLE, f"the re-identification could not be audited, so no "
                       f"id is given: {exc}", 503, headers={"Retry-After": str(service.settings.retry_after_seconds)})
    return success(API_ID, result={"tenant": tenant, "learners": learners, "withheld": withheld}, ver="1.0")


def _in_scope(store: Store, service: QueryService, identity: Identity, asked: list[str]) -> set[str]:
    """Which of `asked` act in at least one stored event of the identity's tenant within its scope: one query."""
    dialect = store.capabilities.sql_dialect
    settings = service.settings
    wanted = exp.In(this=exp.column("actor_id"), expressions=[exp.Literal.string(p) for p in asked])
    condition = rows_condition(TELEMETRY, identity, dialect)  # tenant AND (scope), as SQL is narrowed
    query = exp.select("actor_id").distinct().from_(TELEMETRY.name).where(exp.and_(wanted, condition))
    result = store.query(query.sql(dialect=dialect), None, MAX_PSEUDONYMS, settings.query_timeout_seconds,
                         max_result_bytes=settings.query_max_result_bytes,
                         max_memory_bytes=settings.query_max_memory_mb * 1024 * 1024)
    return {row[0] for row in result.rows if isinstance(row[0], str)}


def _parse(body: bytes, identity: Identity) -> tuple[str, list[str]]:
    """(tenant, the pseudonyms asked, each once, in order), or a coded CohortError (400, or 403)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise CohortError(ErrorCode.MALFORMED_JSON, f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or set(doc) - {"pseudonyms", "tenant"}:
        raise CohortError(ErrorCode.REIDENTIFY_INPUT, 'body must be {"pseudonyms": ["u:…", …]} (and "tenant" for an admin)')
    pseudonyms = doc.get("pseudonyms")
    if not isinstance(pseudonyms, list) or not pseudonyms:
        raise CohortError(ErrorCode.REIDENTIFY_INPUT, '"pseudonyms" must be a non-empty list of learner pseudonyms')
    if len(pseudonyms) > MAX_PSEUDONYMS:
        raise CohortError(ErrorCode.REIDENTIFY_INPUT, f"at most {MAX_PSEUDONYMS} pseudonyms a call "
                          f"({len(pseudonyms)} sent)")
    for value in pseudonyms:
        if not isinstance(value, str) or not LEARNER_PSEUDONYM.match(value):
            raise CohortError(ErrorCode.REIDENTIFY_INPUT, f"{str(value)[:40]!r} is not a learner pseudonym (u: and 32 "
                              "lower-case hex digits)")
    tenant = _tenant(doc.get("tenant"), identity)
    if identity.tenant is not None and identity.scope is None and identity.role is not Role.TENANT_ADMIN:
        raise CohortError(ErrorCode.AUTH_FORBIDDEN, f"a {identity.role} re-identifies only the learners of its "
                          "scope, and this key has none")
    return tenant, list(dict.fromkeys(pseudonyms))


def _tenant(named: object, identity: Identity) -> str:
    if identity.tenant is None:
        if named is None:
            raise CohortError(ErrorCode.AUTH_INVALID_TENANT, 'an admin names the tenant: {"tenant": "…", …}')
        if not isinstance(named, str):
            raise CohortError(ErrorCode.AUTH_INVALID_TENANT, '"tenant" must be a channel id')
        return check_tenant_id(named)
    if named is not None and named != identity.tenant:
        raise CohortError(ErrorCode.AUTH_FORBIDDEN, "you may re-identify learners of your own tenant only")
    return identity.tenant


def _detail(identity: Identity, asked: list[str], revealed: int, status: int) -> dict[str, Any]:
    """What the audit entry says: the pseudonyms asked, how many ids went out, never an id."""
    return {"pseudonyms": [asked[i:i + AUDIT_LIST_CHUNK] for i in range(0, len(asked), AUDIT_LIST_CHUNK)],
            "asked": len(asked), "revealed": revealed, "withheld": len(asked) - revealed,
            "scope": str(identity.scope) if identity.scope else None, "status": status}


def _record_refusal(audit: AuditLog, identity: Identity, asked: list[str], code: ErrorCode) -> None:
    """A refused call is recorded too, as well as it can be (nothing was revealed, so it is refused either way)."""
    detail = {"asked": len(asked), "revealed": 0, "err": str(code), "scope": str(identity.scope) if identity.scope
              else None}
    try:
        audit.append(identity, "reidentify", TARGET, "refused", detail, tenant=identity.tenant)
    except (AuditLogUnavailable, CohortError):
        pass


async def _off_loop(service: QueryService, function: Callable[..., None], *args: Any) -> None:
    await asyncio.wrap_future(service.submit(function, *args))


