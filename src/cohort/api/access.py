"""Who may call an endpoint: every route declares the permission it needs, checked before its handler runs.

The identity comes from `Authorization: Bearer <API key or JWT>` (cohort.security.authenticator) and is
handed to the handler as `request.state.identity`; the handler then limits what it reads or writes to
that identity's tenant and scope. A request without valid credentials gets 401, one whose role lacks
the permission 403, both with coded Sunbird-style bodies, before any of its body is read (the connection
is closed rather than the body received). Public: /health and the index page, so a load balancer can
probe without a key, and /metrics, which holds counts only (no identifiers, no tenant's data) and is for
the operator's network.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from cohort.api.responses import failure
from cohort.core.errors import CohortError, ErrorCode
from cohort.security.api_keys import KeyStoreUnavailable
from cohort.security.identity import Identity, Permission

Handler = Callable[[Request], Awaitable[Response]]
PUBLIC = "public"  # what a public endpoint declares instead of a permission


def requires(permission: Permission | str, api_id: str) -> Callable[[Handler], Handler]:
    """Wrap a handler so it runs only for an identity holding `permission` (or for anyone: PUBLIC)."""

    def wrap(handler: Handler) -> Handler:
        async def guarded(request: Request) -> Response:
            if permission == PUBLIC:
                return await handler(request)
            try:
                identity = await authenticate(request)
            except CohortError as exc:
                return failure(api_id, exc.code, exc.message, 401,
                               headers={"WWW-Authenticate": 'Bearer realm="cohort"', "Connection": "close"})
            except KeyStoreUnavailable as exc:  # the key may be valid: the client should retry, not give up
                return failure(api_id, ErrorCode.AUTH_UNAVAILABLE, f"credentials cannot be checked now: {exc}", 503,
                               headers={"Retry-After": "1", "Connection": "close"})
            if not identity.can(Permission(permission)):
                return failure(api_id, ErrorCode.AUTH_FORBIDDEN,
                               f"role {identity.role} may not {permission.replace('_', ' ')}", 403,
                               headers={"Connection": "close"})
            request.state.identity = identity
            return await handler(request)

        guarded.__name__ = handler.__name__
        guarded.__doc__ = handler.__doc__
        guarded.permission = permission  # type: ignore[attr-defined]  # read by the route audit test
        return guarded

    return wrap


async def authenticate(request: Request) -> Identity:
    """The caller's identity, or CohortError (ERR_AUTH_REQUIRED / ERR_AUTH_INVALID). A key verified in the
    last seconds is answered here; anything that must read the key store or the identity provider's keys
    runs on a worker thread, so a slow store or provider never stalls the event loop (other clients' acks)."""
    authenticator = request.app.state.authenticator
    header = request.headers.get("authorization")
    identity = authenticator.authenticate_without_io(header)
    if identity is not None:
        return identity
    return await run_in_threadpool(authenticator.authenticate, header)


def caller_identity(request: Request) -> Identity:
    """The identity the access layer (cohort.api.access) authenticated for this request. Its absence is a
    wiring fault, never a reason to answer for everyone: ERR_AUTH_REQUIRED."""
    identity = getattr(request.state, "identity", None)
    if not isinstance(identity, Identity):
        raise CohortError(ErrorCode.AUTH_REQUIRED, "this request carries no authenticated identity; send "
                          "Authorization: Bearer <key or token>")
    return identity
