"""GET /v1/keys: the API keys there are, for those who manage them (admin: every key; tenant_admin: its
tenant's keys only), so the dashboard can show who holds access without a shell on the server.

Only what `cohort keys list` shows leaves the server: the key id, tenant, role, scope, label, when it was
made, when it expires or was revoked, and whether it works now. Never the secret, never its hash
(KeyInfo holds neither). Listing keys is an administrative read, so it is recorded in the audit log
(`keys.list`) before the answer goes out; one that cannot be recorded gets 503 and no list.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from cohort.api.access import caller_identity
from cohort.api.responses import failure, status_for, success
from cohort.core.errors import CohortError, ErrorCode
from cohort.security.api_keys import KeyInfo, KeyStore, KeyStoreUnavailable
from cohort.security.audit_log import AuditLog, AuditLogUnavailable
from cohort.security.identity import Identity, check_tenant_id

API_ID = "api.keys"
_PARAMS = frozenset({"tenant", "revoked"})
_FLAGS = {"true": True, "false": False}


async def list_keys(request: Request) -> Response:
    try:
        identity = caller_identity(request)
        tenant, with_revoked = _params(request, identity)
        store: KeyStore = request.app.state.authenticator.key_store
        audit: AuditLog = request.app.state.audit
        keys = await run_in_threadpool(_list_and_record, store, audit, identity, tenant, with_revoked)
    except CohortError as exc:
        return failure(API_ID, exc.code, exc.message, status_for(exc.code), ver="1.0")
    except KeyStoreUnavailable as exc:
        return failure(API_ID, ErrorCode.AUTH_UNAVAILABLE, f"the key store cannot be read now: {exc}", 503,
                       ver="1.0", headers={"Retry-After": "1"})
    except AuditLogUnavailable as exc:
        return failure(API_ID, ErrorCode.AUDIT_UNAVAILABLE, f"the read could not be audited, so the list is "
                       f"withheld: {exc}", 503, ver="1.0", headers={"Retry-After": "1"})
    now = time.time()
    return success(API_ID, ver="1.0", result={"tenant": tenant, "keys": [describe_key(k, now) for k in keys]})


def describe_key(info: KeyInfo, now: float) -> dict[str, Any]:
    """A key as the API shows it: every field of KeyInfo (which holds no secret) and its state now."""
    return {"key_id": info.key_id, "tenant": info.tenant, "role": str(info.role),
            "scope": None if info.scope is None else str(info.scope), "label": info.label,
            "created_at": _iso(info.created_at), "expires_at": _iso(info.expires_at),
            "revoked_at": _iso(info.revoked_at), "state": info.refusal(now) or "active"}


def _list_and_record(store: KeyStore, audit: AuditLog, identity: Identity, tenant: str | None,
                     with_revoked: bool) -> list[KeyInfo]:
    keys = [k for k in store.list_keys(tenant) if with_revoked or k.revoked_at is None]
    audit.append(identity, "keys.list", "/v1/keys", "ok", {"keys": len(keys), "revoked": with_revoked}, tenant=tenant)
    return keys


def _params(request: Request, identity: Identity) -> tuple[str | None, bool]:
    """(tenant, with revoked keys): an admin may name any tenant or none (every key, admin keys too);
    anyone else reads its own tenant's, and naming another is refused (403), never answered with its own."""
    params = request.query_params
    unknown = sorted(set(params) - _PARAMS)
    if unknown:
        raise CohortError(ErrorCode.KEYS_PARAM, f"unknown parameter(s) {', '.join(unknown)[:200]}; "
                          f"use {', '.join(sorted(_PARAMS))}")
    if any(len(params.getlist(name)) > 1 for name in params):
        raise CohortError(ErrorCode.KEYS_PARAM, "a parameter is given more than once")
    revoked = params.get("revoked", "true")
    if revoked not in _FLAGS:
        raise CohortError(ErrorCode.KEYS_PARAM, "revoked must be true or false")
    asked = params.get("tenant")
    if asked is not None:
        try:
            check_tenant_id(asked)
        except CohortError as exc:
            raise CohortError(ErrorCode.KEYS_PARAM, exc.message) from None
    if identity.tenant is None:
        return asked, _FLAGS[revoked]
    if asked is not None and asked != identity.tenant:
        raise CohortError(ErrorCode.AUTH_FORBIDDEN, f"this key lists the keys of tenant {identity.tenant} only")
    return identity.tenant, _FLAGS[revoked]


def _iso(moment) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")
