"""GET /v1/whoami: the caller's own identity, so a client (the dashboard) can show whose data it shows and
offer only the views the role may use, without trying each endpoint.

Any authenticated identity may ask (an ingestor too, which holds no read permission), so the route declares
no permission and authenticates here, answering 401 exactly as the access layer does. It reveals nothing
the caller does not already hold: the tenant, role and scope of its own key or token, never the secret."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from cohort.api.access import authenticate
from cohort.api.responses import failure, success
from cohort.core.errors import CohortError, ErrorCode
from cohort.security.api_keys import KeyStoreUnavailable
from cohort.security.identity import ROLE_PERMISSIONS

API_ID = "api.whoami"


async def whoami(request: Request) -> Response:
    try:
        identity = await authenticate(request)
    except CohortError as exc:
        return failure(API_ID, exc.code, exc.message, 401, ver="1.0",
                       headers={"WWW-Authenticate": 'Bearer realm="cohort"'})
    except KeyStoreUnavailable as exc:
        return failure(API_ID, ErrorCode.AUTH_UNAVAILABLE, f"credentials cannot be checked now: {exc}", 503,
                       headers={"Retry-After": "1"}, ver="1.0")
    return success(API_ID, ver="1.0", result={
        "subject": identity.subject,
        "role": str(identity.role),
        "tenant": identity.tenant,
        "scope": None if identity.scope is None else {"kind": identity.scope.kind,
                                                      "values": list(identity.scope.values),
                                                      "text": str(identity.scope)},
        "via": identity.via,
        "permissions": sorted(str(p) for p in ROLE_PERMISSIONS[identity.role]),
    })
