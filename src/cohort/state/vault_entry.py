"""One identity vault entry, whatever holds it: its lookup key, its random pseudonym, its sealed clear id.

- lookup = HMAC-SHA256(blind_index_key(tenant), kind + NUL + clear id): finds the entry of a clear id
  without storing the id in clear (a blind index); per tenant, so tenants' entries never join.
- pseudonym = kind prefix + 128 random bits: random rather than computed, so once the entry is deleted
  nothing, not even the keys, links a stored or exported pseudonym back to the person.
- sealed = nonce (12 random bytes) + AES-256-GCM(vault_key(tenant, key id), clear id, AAD = tenant, kind
  and pseudonym): the clear id, readable only with the tenant's key, and only as this pseudonym's (an
  entry copied to another pseudonym or tenant fails authentication).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cohort.core.errors import CohortError, ErrorCode, TransientFault
from cohort.core.pseudonyms import DEVICE, KINDS, LEARNER
from cohort.security.identity import check_tenant_id
from cohort.security.secrets import MAX_CACHED_TENANT_KEYS, Secrets

MAX_ID_CHARS = 1024
NONCE_BYTES = 12
PSEUDONYM_PREFIX = {LEARNER: "u:", DEVICE: "d:"}
KIND_OF_PREFIX = {prefix: kind for kind, prefix in PSEUDONYM_PREFIX.items()}
PSEUDONYM = re.compile(r"^[ud]:[0-9a-f]{32}$")


class VaultUnavailable(CohortError, TransientFault):
    """The vault cannot be read or written now (disk, database locked too long, Redis away): the batch is
    retried, never given a partial mapping."""

    def __init__(self, message: str):
        super().__init__(ErrorCode.VAULT_UNAVAILABLE, message)


def check_kind(kind: object) -> str:
    if kind not in KINDS:
        raise CohortError(ErrorCode.VAULT_INPUT, f"identifier kind {str(kind)[:40]!r} is not one of {', '.join(KINDS)}")
    return kind


def check_tenant(tenant: object) -> str:
    try:
        return check_tenant_id(tenant)  # type: ignore[arg-type]
    except CohortError as exc:
        raise CohortError(ErrorCode.VAULT_INPUT, exc.message) from exc


def check_ids(ids: Iterable[object], what: str) -> list[str]:
    """The distinct ids, in order; each a str of 1..MAX_ID_CHARS characters."""
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
        raise CohortError(ErrorCode.VAULT_INPUT, f"{what}s must be a collection of str, not {type(ids).__name__}")
    return list(dict.fromkeys([check_id(value, what) for value in ids]))


def check_id(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise CohortError(ErrorCode.VAULT_INPUT, f"a {what} must be a str, not {type(value).__name__}")
    if not 0 < len(value) <= MAX_ID_CHARS:
        raise CohortError(ErrorCode.VAULT_INPUT, f"a {what} must have 1 to {MAX_ID_CHARS} characters, not {len(value)}")
    return value


def is_pseudonym(value: str) -> bool:
    return PSEUDONYM.match(value) is not None


@dataclass(frozen=True)
class SealedEntry:
    pseudonym: str
    key_id: str
    sealed: bytes  # nonce + ciphertext + tag


class EntrySealer:
    """Lookup keys, new pseudonyms, sealing and opening of clear ids for one vault, from its Secrets."""

    def __init__(self, secrets_: Secrets):
        self.secrets = secrets_
        self._ciphers: dict[tuple[str, str], AESGCM] = {}
        self._hmac_states: dict[str, tuple[Any, Any]] = {}

    def lookups(self, tenant: str, kind: str, clear_ids: Collection[str]) -> list[bytes]:
        """HMAC-SHA256(blind_index_key(tenant), kind NUL clear id) of each id, from the key's inner and outer
        hash states computed once per tenant: the same digests as `hmac.digest`, in half its time (the hot
        path: every id of every batch)."""
        states = self._hmac_states.get(tenant)
        if states is None:
            _bound(self._hmac_states)
            states = self._hmac_states[tenant] = _hmac_sha256_states(self.secrets.blind_index_key(tenant))
        inner, outer = states
        prefix = kind.encode() + b"\0"
        digests = []
        for clear_id in clear_ids:
            inner_hash = inner.copy()
            inner_hash.update(prefix + clear_id.encode("utf-8", "surrogatepass"))
            outer_hash = outer.copy()
            outer_hash.update(inner_hash.digest())
            digests.append(outer_hash.digest())
        return digests

    def new_entry(self, tenant: str, kind: str, clear_id: str) -> SealedEntry:
        pseudonym = PSEUDONYM_PREFIX[kind] + secrets.token_hex(16)
        return self.seal(tenant, pseudonym, clear_id)

    def seal(self, tenant: str, pseudonym: str, clear_id: str) -> SealedEntry:
        key_id = self.secrets.vault_current
        nonce = os.urandom(NONCE_BYTES)
        ciphertext = self._cipher(tenant, key_id).encrypt(nonce, clear_id.encode("utf-8", "surrogatepass"),
                                                          _aad(tenant, pseudonym))
        return SealedEntry(pseudonym, key_id, nonce + ciphertext)

    def open(self, tenant: str, entry: SealedEntry) -> str:
        """The clear id, or VAULT_INTEGRITY (never the clear text of a failed entry) if it was altered."""
        nonce, ciphertext = entry.sealed[:NONCE_BYTES], entry.sealed[NONCE_BYTES:]
        try:
            plain = self._cipher(tenant, entry.key_id).decrypt(nonce, ciphertext, _aad(tenant, entry.pseudonym))
            return plain.decode("utf-8", "surrogatepass")
        except (InvalidTag, ValueError, UnicodeDecodeError) as exc:
            raise CohortError(ErrorCode.VAULT_INTEGRITY, f"vault entry of pseudonym {entry.pseudonym} of tenant "
                              f"{tenant} fails authentication (altered, corrupt, or sealed with another key)") from exc

    def _cipher(self, tenant: str, key_id: str) -> AESGCM:
        cipher = self._ciphers.get((tenant, key_id))
        if cipher is None:
            if key_id not in self.secrets.vault_key_ids:  # rotated since this process read the file?
                newer = self.secrets.reread()
                if newer is not None:
                    self.secrets = newer
            _bound(self._ciphers)
            cipher = self._ciphers[(tenant, key_id)] = AESGCM(self.secrets.vault_key(tenant, key_id))
        return cipher


def _bound(cache: dict[Any, Any]) -> None:
    """Per-tenant caches stay bounded whatever tenants the input names."""
    if len(cache) >= MAX_CACHED_TENANT_KEYS:
        cache.clear()


def _hmac_sha256_states(key: bytes) -> tuple[Any, Any]:
    """SHA-256 states after the HMAC key's inner and outer pads (RFC 2104; the key is 32 bytes < the block)."""
    block = key.ljust(64, b"\0")
    return (hashlib.sha256(bytes(b ^ 0x36 for b in block)), hashlib.sha256(bytes(b ^ 0x5C for b in block)))


def _aad(tenant: str, pseudonym: str) -> bytes:
    # the pseudonym starts with its kind's prefix, so the kind is bound too; NUL cannot occur in either
    kind = KIND_OF_PREFIX.get(pseudonym[:2], "?")
    return b"\0".join((tenant.encode(), kind.encode(), pseudonym.encode()))
