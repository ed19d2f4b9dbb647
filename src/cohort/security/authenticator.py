"""Who sent a request: the `Authorization` header turned into an Identity, or a coded refusal.

`Bearer ck_…` is an API key (the key store), `Bearer <header>.<payload>.<signature>` an OIDC JWT (the
verifier). A header is bounded before anything parses it. With authentication switched off
(COHORT_AUTH=off, local development only) every request is the development admin, whatever it sends.
"""

from __future__ import annotations

import re

from cohort.core.errors import CohortError, ErrorCode
from cohort.security.api_keys import KEY_PREFIX, KeyStore, open_key_store
from cohort.security.identity import DEVELOPMENT_IDENTITY, Identity
from cohort.security.jwt_verifier import JwtVerifier
from cohort.settings import Settings

MAX_AUTHORIZATION_BYTES = 8 * 1024  # real JWTs are 1–2 KiB; beyond this nothing is parsed
_JWT_SHAPE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")
AUTH_MODES = ("required", "off")


class Authenticator:
    def __init__(self, key_store: KeyStore, jwt_verifier: JwtVerifier | None, auth_mode: str):
        if auth_mode not in AUTH_MODES:
            raise CohortError(ErrorCode.CONFIG_INVALID, f"auth mode {auth_mode!r} is not one of {', '.join(AUTH_MODES)}")
        self.key_store = key_store
        self.jwt_verifier = jwt_verifier
        self.auth_mode = auth_mode

    def authenticate(self, authorization: str | None) -> Identity:
        """The identity behind an `Authorization` header value. ERR_AUTH_REQUIRED (401) without one or
        when it is not a Bearer token; ERR_AUTH_INVALID (401) when the token does not verify. A key store
        that cannot answer raises KeyStoreUnavailable (503): the key may well be valid. May block on I/O
        (the key store, the identity provider's keys): call it off the event loop."""
        if self.auth_mode == "off":
            return DEVELOPMENT_IDENTITY
        token = _bearer_token(authorization)
        if token.startswith(KEY_PREFIX):
            return self.key_store.verify(token)
        if _JWT_SHAPE.match(token):
            if self.jwt_verifier is None:
                raise CohortError(ErrorCode.AUTH_INVALID, "JWTs are not accepted here: no identity provider is "
                                  "configured (COHORT_OIDC_JWKS)")
            return self.jwt_verifier.verify(token)
        raise CohortError(ErrorCode.AUTH_INVALID, "bearer token is neither an API key (ck_…) nor a JWT")

    def authenticate_without_io(self, authorization: str | None) -> Identity | None:
        """What `authenticate` answers when it can answer without I/O (authentication off, a key verified in
        the last seconds, a header refused for its shape), else None: then call `authenticate` off the event
        loop. Why: a key store or an identity provider that is slow must not stall every other client."""
        if self.auth_mode == "off":
            return DEVELOPMENT_IDENTITY
        token = _bearer_token(authorization)
        if token.startswith(KEY_PREFIX):
            return self.key_store.cached_identity(token)
        return None

    def close(self) -> None:
        self.key_store.close()


def _bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise CohortError(ErrorCode.AUTH_REQUIRED, "send `Authorization: Bearer <API key or JWT>`")
    if len(authorization) > MAX_AUTHORIZATION_BYTES:
        raise CohortError(ErrorCode.AUTH_INVALID, f"Authorization header over {MAX_AUTHORIZATION_BYTES} bytes")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise CohortError(ErrorCode.AUTH_REQUIRED, "Authorization must be `Bearer <API key or JWT>`")
    token = token.strip()
    if not token:
        raise CohortError(ErrorCode.AUTH_REQUIRED, "Authorization `Bearer` without a token")
    return token


def build_authenticator(settings: Settings) -> Authenticator:
    """The authenticator the settings describe: the footprint's key store, a JWT verifier when
    COHORT_OIDC_JWKS is set. Misconfiguration raises CohortError(ERR_CONFIG_INVALID) at start."""
    verifier = JwtVerifier(settings) if settings.oidc_jwks else None
    return Authenticator(open_key_store(settings), verifier, settings.auth)
