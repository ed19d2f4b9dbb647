"""The identity vault contract: the only place a pseudonym can be turned back into a person.

It gives the transform stage its pseudonyms (`PseudonymResolver`), re-identifies an educator's own
learners (the caller checks the scope and audits each call), and forgets: once an entry is deleted its
pseudonym is linked to nobody, in the store, exports or backups alike, because pseudonyms are random
(vault_entry.py). Embedded: a SQLite file in the data directory; scale-out: the shared Redis.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Protocol

from cohort.core.errors import CohortError, ErrorCode
from cohort.security.secrets import Secrets
from cohort.settings import Settings
from cohort.state.redis_identity_vault import RedisIdentityVault, VaultMisconfigured
from cohort.state.sqlite_identity_vault import SqliteIdentityVault
from cohort.state.vault_entry import MAX_ID_CHARS, VaultUnavailable

VAULT_FILE_NAME = "identity-vault.sqlite"

__all__ = ["IdentityVault", "MAX_ID_CHARS", "RedisIdentityVault", "SqliteIdentityVault", "VaultMisconfigured",
           "VaultUnavailable", "open_identity_vault", "VAULT_FILE_NAME"]


class IdentityVault(Protocol):
    """Every method validates its input (a tenant that is not a channel id, an unknown kind, an id that is
    not a str of 1..1024 characters: CohortError ERR_VAULT_INPUT) and raises `VaultUnavailable` (a
    TransientFault) on an infrastructure fault, never returning part of an answer."""

    def pseudonyms(self, tenant: str, kind: str, clear_ids: Collection[str]) -> Mapping[str, str]:
        """The pseudonym of each clear id (`u:`/`d:` + 32 hex), made with its entry when new; the same one
        for the same (tenant, kind, id), from any process, until the id is forgotten."""
        ...

    def reidentify(self, tenant: str, pseudonyms: Collection[str]) -> dict[str, str]:
        """{pseudonym: clear id} for the tenant's pseudonyms held; others (unknown, forgotten, another
        tenant's) are absent. An entry failing authentication raises ERR_VAULT_INTEGRITY."""
        ...

    def pseudonym_of(self, tenant: str, kind: str, clear_id: str) -> str | None:
        """The id's pseudonym if the vault holds an entry for it, else None; never creates an entry (a
        lookup that created one would issue a pseudonym to someone being forgotten)."""
        ...

    def forget(self, tenant: str, kind: str, clear_id: str) -> bool:
        """Delete the id's entry (whether it was held); the same id later gets a new pseudonym."""
        ...

    def forget_pseudonym(self, tenant: str, pseudonym: str) -> bool:
        """Delete the entry behind a pseudonym (whether it was held)."""
        ...

    def rekey(self, tenant: str) -> int:
        """Re-encrypt the tenant's entries under the current vault key id; how many were re-encrypted."""
        ...

    def count(self, tenant: str) -> int:
        """Entries the tenant holds."""
        ...

    def tenants(self) -> list[str]:
        """The tenants holding entries (what a rekey goes through)."""
        ...

    def close(self) -> None: ...


def open_identity_vault(settings: Settings, secrets: Secrets) -> IdentityVault:
    """The footprint's vault: embedded, <data_dir>/identity-vault.sqlite; scale-out, COHORT_REDIS_URL."""
    if settings.footprint == "scaleout":
        if not settings.redis_url:
            raise CohortError(ErrorCode.CONFIG_INVALID, "the scale-out identity vault needs COHORT_REDIS_URL")
        return RedisIdentityVault(settings.redis_url, secrets, socket_timeout_s=settings.redis_socket_timeout_seconds,
                                  cache_ttl_s=settings.pseudonym_cache_seconds)
    return SqliteIdentityVault(settings.data_dir / VAULT_FILE_NAME, secrets,
                               cache_ttl_s=settings.pseudonym_cache_seconds)
