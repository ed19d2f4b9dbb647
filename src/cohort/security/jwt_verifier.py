"""OIDC bearer JWTs: verified against the identity provider's JWKS, then mapped to an Identity.

Obsrv accepted JWTs it never verified; Cohort checks the signature (asymmetric algorithms only: `none`
and HMAC are refused whatever the settings say, since an HMAC "signed" with a public key is forgeable by
anyone holding that public key), the issuer, the audience, `exp` and `nbf` (with a small leeway for clock
skew), and that the key in the JWKS is of the token's algorithm. Every failure is one coded
ERR_AUTH_INVALID with a reason; the token itself is never quoted.

The JWKS (a file, an https:// URL, or http:// on this machine) is read when first needed, again when a
token names a key id it does not hold (key rotation; at most once a minute, so unknown ids cannot make
Cohort hammer the provider) and after an hour (a key the provider withdrew stops working). A failed
fetch keeps the keys it had.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
import orjson

from cohort.core.errors import CohortError, ErrorCode
from cohort.security.identity import Identity, Role, Scope, check_tenant_id
from cohort.settings import Settings

log = logging.getLogger(__name__)

ASYMMETRIC_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                                   "ES256", "ES384", "ES512", "EdDSA"})
_EC_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
JWKS_REFETCH_MIN_SECONDS = 60.0  # an unknown key id refetches the JWKS at most this often
JWKS_MAX_AGE_SECONDS = 3600.0  # keys are fetched again after this, so withdrawn keys stop working
JWKS_MAX_BYTES = 1024 * 1024
MAX_SUBJECT_CHARS = 255

# pyjwt's exceptions, most specific first (InvalidSignatureError is a DecodeError, all are InvalidTokenError)
_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.ImmatureSignatureError, "not yet valid (nbf or iat in the future)"),
    (jwt.InvalidAudienceError, "not for this audience"),
    (jwt.InvalidIssuerError, "not from the configured issuer"),
    (jwt.InvalidSignatureError, "signature does not verify"),
    (jwt.InvalidAlgorithmError, "algorithm not accepted"),
    (jwt.InvalidKeyError, "signing key unusable"),
    (jwt.PyJWKError, "signing key unusable"),
    (jwt.DecodeError, "malformed"),
    (jwt.InvalidTokenError, "invalid"),
)


def _invalid(reason: str) -> CohortError:
    return CohortError(ErrorCode.AUTH_INVALID, f"JWT {reason}")


def _config_error(message: str) -> CohortError:
    return CohortError(ErrorCode.CONFIG_INVALID, message)


class JwtVerifier:
    """Verifies bearer JWTs of one identity provider (COHORT_OIDC_* settings). Thread-safe."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.monotonic,
                 fetch_timeout_s: float = 5.0):
        self._source = settings.oidc_jwks
        self._check_settings(settings)
        self._settings = settings
        self._algorithms = frozenset(settings.oidc_algorithms)
        self._clock = clock
        self._fetch_timeout_s = fetch_timeout_s
        self._lock = threading.Lock()
        self._jwks: list[dict[str, Any]] = []
        self._loaded_at: float | None = None
        self._attempted_at = -math.inf
        self._prepared: dict[tuple[str | None, str], jwt.PyJWK] = {}
        self.fetches = 0  # JWKS reads attempted (tests and /metrics may read it)

    def _check_settings(self, settings: Settings) -> None:
        if not self._source:
            raise _config_error("COHORT_OIDC_JWKS is empty: no identity provider to verify JWTs against")
        if not settings.oidc_issuer or not settings.oidc_audience:
            raise _config_error("COHORT_OIDC_ISSUER and COHORT_OIDC_AUDIENCE are required with COHORT_OIDC_JWKS "
                                "(a token for another application of the same provider must not pass)")
        refused = [a for a in settings.oidc_algorithms if a not in ASYMMETRIC_ALGORITHMS]
        if refused or not settings.oidc_algorithms:
            raise _config_error(f"COHORT_OIDC_ALGORITHMS: {', '.join(refused) or 'empty'} not accepted; use "
                                f"asymmetric ones ({', '.join(sorted(ASYMMETRIC_ALGORITHMS))}): `none` and HMAC "
                                "would let anyone mint tokens")
        if "://" in self._source:
            url = urlsplit(self._source)
            if not (url.scheme == "https" or (url.scheme == "http" and url.hostname in _LOOPBACK_HOSTS)):
                raise _config_error("COHORT_OIDC_JWKS must be a file, an https:// URL or an http:// URL on this "
                                    "machine (keys fetched in clear could be swapped on the way)")
        elif not Path(self._source).is_file():
            raise _config_error(f"COHORT_OIDC_JWKS: no file {self._source}")

    # -- verification --------------------------------------------------------------------------
    def verify(self, token: str) -> Identity:
        if not isinstance(token, str):
            raise _invalid("malformed")
        try:
            header = jwt.get_unverified_header(token)
            alg, kid = header.get("alg"), header.get("kid")
            if not isinstance(alg, str) or alg not in self._algorithms:
                raise _invalid("algorithm not accepted")
            if kid is not None and (not isinstance(kid, str) or len(kid) > 256):
                raise _invalid("key id (kid) malformed")
            key = self._key(kid, alg)
            claims = jwt.decode(token, key, algorithms=[alg], audience=self._settings.oidc_audience,
                                issuer=self._settings.oidc_issuer, leeway=self._settings.oidc_leeway_seconds,
                                options={"require": ["exp", "iss", "aud", "sub"],
                                         "enforce_minimum_key_length": True})
        except jwt.MissingRequiredClaimError as exc:
            raise _invalid(f"claim {exc.claim} missing") from None
        except jwt.PyJWTError as exc:
            raise _invalid(next(reason for kind, reason in _REASONS if isinstance(exc, kind))) from None
        except (ValueError, TypeError, OverflowError):  # a claim of a shape pyjwt does not expect
            raise _invalid("malformed") from None
        return self._identity(claims)

    def _identity(self, claims: dict[str, Any]) -> Identity:
        names = self._settings
        subject = claims.get("sub")
        if not isinstance(subject, str) or not 0 < len(subject) <= MAX_SUBJECT_CHARS:
            raise _invalid("claim sub is not a string of 1 to 255 characters")
        role_text, tenant, scope_text = (claims.get(names.oidc_role_claim), claims.get(names.oidc_tenant_claim),
                                         claims.get(names.oidc_scope_claim))
        try:
            role = Role(role_text) if isinstance(role_text, str) else None
        except ValueError:
            role = None
        if role is None:
            raise _invalid(f"claim {names.oidc_role_claim} is missing or not a role ({', '.join(Role)})")
        if role is Role.ADMIN and (tenant is not None or scope_text is not None):
            raise _invalid(f"an admin spans every tenant: claims {names.oidc_tenant_claim} and "
                           f"{names.oidc_scope_claim} must be absent")
        if scope_text is not None and not isinstance(scope_text, str):
            raise _invalid(f"claim {names.oidc_scope_claim} is not text (kind:value,…)")
        try:
            if tenant is not None:
                check_tenant_id(tenant)
            scope = Scope.parse(scope_text) if scope_text is not None else None
            return Identity(subject=subject, role=role, tenant=tenant, scope=scope, via="jwt")
        except CohortError as exc:  # a tenant or scope claim that is not one: the token is refused
            raise _invalid(f"claims do not name a valid tenant and scope: {exc.message}") from None

    # -- keys ----------------------------------------------------------------------------------
    def _key(self, kid: str | None, alg: str) -> jwt.PyJWK:
        with self._lock:
            now = self._clock()
            if self._loaded_at is None or now - self._loaded_at >= JWKS_MAX_AGE_SECONDS:
                self._refresh(now)
            jwk = self._find(kid)
            if jwk is None:
                self._refresh(now)
                jwk = self._find(kid)
            if jwk is None:
                raise _invalid("signing key unknown (kid not in the provider's JWKS)" if self._loaded_at is not None
                               else "cannot be checked: the provider's keys (JWKS) are unavailable")
            prepared = self._prepared.get((kid, alg))
            if prepared is None:
                if not _key_fits(jwk, alg):
                    raise _invalid("algorithm does not match its signing key")
                prepared = self._prepared[(kid, alg)] = jwt.PyJWK(jwk, algorithm=alg)
            return prepared

    def _find(self, kid: str | None) -> dict[str, Any] | None:
        if kid is None:  # a token naming no key: only a JWKS of one key says which
            return self._jwks[0] if len(self._jwks) == 1 else None
        return next((jwk for jwk in self._jwks if jwk.get("kid") == kid), None)

    def _refresh(self, now: float) -> None:
        """Read the JWKS again unless a read was attempted within the last minute; keep the old keys if
        this read fails."""
        if now - self._attempted_at < JWKS_REFETCH_MIN_SECONDS:
            return
        self._attempted_at = now
        self.fetches += 1
        try:
            self._jwks = _signing_keys(self._read_source())
        except (OSError, httpx.HTTPError, ValueError) as exc:
            log.warning("OIDC: cannot read the JWKS at %s (%s); keeping the %d keys read before", self._source,
                        str(exc)[:200], len(self._jwks))
            return
        self._loaded_at = now
        self._prepared.clear()

    def _read_source(self) -> bytes:
        if "://" not in self._source:
            path = Path(self._source)
            if path.stat().st_size > JWKS_MAX_BYTES:
                raise ValueError(f"JWKS over {JWKS_MAX_BYTES} bytes")
            return path.read_bytes()
        with httpx.stream("GET", self._source, timeout=self._fetch_timeout_s, follow_redirects=False) as response:
            if response.status_code != 200:
                raise ValueError(f"HTTP {response.status_code}")
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > JWKS_MAX_BYTES:
                    raise ValueError(f"JWKS over {JWKS_MAX_BYTES} bytes")
            return bytes(body)


def _signing_keys(document: bytes) -> list[dict[str, Any]]:
    """The public signing keys of a JWKS document; symmetric (`oct`) and encryption keys are left out."""
    parsed = orjson.loads(document)
    if not isinstance(parsed, dict) or not isinstance(parsed.get("keys"), list):
        raise ValueError("not a JWKS (an object with a `keys` list)")
    return [jwk for jwk in parsed["keys"] if isinstance(jwk, dict) and jwk.get("kty") in ("RSA", "EC", "OKP")
            and jwk.get("use", "sig") == "sig" and not any(name in jwk for name in ("d", "p", "q"))]


def _key_fits(jwk: dict[str, Any], alg: str) -> bool:
    """Whether `alg` may verify with this key: its type (and curve) fits, and the key names no other alg."""
    if jwk.get("alg") not in (None, alg):
        return False
    if alg[:2] in ("RS", "PS"):
        return jwk.get("kty") == "RSA"
    if alg in _EC_CURVES:
        return jwk.get("kty") == "EC" and jwk.get("crv") == _EC_CURVES[alg]
    return alg == "EdDSA" and jwk.get("kty") == "OKP" and jwk.get("crv") == "Ed25519"
