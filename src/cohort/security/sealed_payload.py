"""Sealed quarantine payloads: what the failed-events quarantine keeps of a payload it cannot pseudonymise.

A quarantined payload that does not parse (a corrupt or truncated request), or whose identifiers cannot be
given pseudonyms (no tenant can be named for them, or one is longer than the vault takes), may hold a
learner's clear id anywhere in it; it must still be kept, to be replayed once the cause is fixed (nothing
is dropped). So it is kept encrypted, as one self-describing text:

    cohort-sealed:v1:<vault key id>:<scope>:<length>:<base64 of nonce ‖ AES-256-GCM ciphertext ‖ tag>

- scope: the tenant whose key seals it (the event's channel, else the tenant of the key that sent the
  request), or `_platform` when none is known; the key is `Secrets.quarantine_key(scope, key id)`, derived
  from the vault master key `key id` (rotation: old ids stay in the secrets file, so old seals stay open).
- length: of the sealed bytes, so a reader of the quarantine sees how big the payload was.
- the version, key id, scope and length are authenticated (AES-GCM associated data): a text altered or
  moved to another tenant's scope does not open.

`open_sealed` gives back the exact bytes sealed; it is for an admin's replay tool, not exposed by any API.
"""

from __future__ import annotations

import base64
import binascii
import os
import re

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cohort.core.errors import CohortError, ErrorCode
from cohort.security.identity import check_tenant_id
from cohort.security.secrets import PLATFORM_SCOPE, Secrets

PREFIX = "cohort-sealed:v1:"
NONCE_BYTES = 12
_SEALED = re.compile(r"^cohort-sealed:v1:(?P<key_id>v[0-9]{1,9}):(?P<scope>[A-Za-z0-9_.:-]{1,128}):"
                     r"(?P<length>[0-9]{1,12}):(?P<data>[A-Za-z0-9+/=]*)$")


class PayloadSealer:
    """Seals payloads under the current vault key id of these secrets (the transform stage's `sealer`)."""

    def __init__(self, secrets_: Secrets):
        self.secrets = secrets_

    def seal(self, tenant: str | None, data: bytes) -> str:
        """`data` sealed under `tenant`'s quarantine key (the platform's when None or not a tenant id)."""
        scope = tenant if tenant is not None and _is_tenant(tenant) else PLATFORM_SCOPE
        key_id = self.secrets.vault_current
        nonce = os.urandom(NONCE_BYTES)
        sealed = AESGCM(self.secrets.quarantine_key(scope, key_id)).encrypt(nonce, data,
                                                                              _aad(key_id, scope, len(data)))
        return f"{PREFIX}{key_id}:{scope}:{len(data)}:{base64.b64encode(nonce + sealed).decode()}"


def is_sealed(text: str) -> bool:
    return text.startswith(PREFIX)


def sealed_scope(text: str) -> str | None:
    """The tenant (or `_platform`) a sealed text names, without opening it; None if it is not one."""
    match = _SEALED.match(text)
    return match["scope"] if match else None


def open_sealed(text: str, secrets_: Secrets) -> bytes:
    """The exact bytes sealed in `text`; CohortError ERR_VAULT_INTEGRITY when it is not a sealed text, was
    altered, or was sealed with keys other than these (never a part of it)."""
    match = _SEALED.match(text)
    if match is None:
        raise CohortError(ErrorCode.VAULT_INTEGRITY, "not a sealed quarantine payload (cohort-sealed:v1:…)")
    key_id, scope, length = match["key_id"], match["scope"], int(match["length"])
    try:
        raw = base64.b64decode(match["data"], validate=True)
        key = secrets_.quarantine_key(scope, key_id)
        plain = AESGCM(key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], _aad(key_id, scope, length))
    except (binascii.Error, InvalidTag, ValueError) as exc:
        raise CohortError(ErrorCode.VAULT_INTEGRITY, f"sealed quarantine payload of scope {scope} does not open "
                          "(altered, truncated, or sealed with other keys)") from exc
    if len(plain) != length:  # cannot happen with an authentic text; said plainly if it ever did
        raise CohortError(ErrorCode.VAULT_INTEGRITY, "sealed quarantine payload holds another length than it says")
    return plain


def _is_tenant(tenant: str) -> bool:
    try:
        check_tenant_id(tenant)
    except CohortError:
        return False
    return True


def _aad(key_id: str, scope: str, length: int) -> bytes:
    return f"{PREFIX}{key_id}:{scope}:{length}".encode()
