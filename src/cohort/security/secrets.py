"""The platform's keys: the pseudonym master key and the identity vault's master keys, in one file.

Why a file of our own and no built-in key: a key shipped with the code is known to everyone who has
the code, so every deployment makes its own (embedded: on first start; scale-out: the operator makes
one file and gives the same one to every process, since pseudonyms from two different keys never match).

The file (JSON, mode 0600, refused when group or others may read it):
    {"format": "cohort-secrets", "version": 1,
     "pseudonym_master_key": "<base64 of 32 bytes>",
     "vault_keys": {"v1": "<base64 of 32 bytes>", …}, "vault_current": "v1"}

- The pseudonym master key keys the vault's blind index (which clear id has which pseudonym). It is
  never rotated casually: with another one, no learner's entry is found again and every learner gets a
  new pseudonym, which splits each learner's history in two. The vault records a fingerprint of it and
  refuses to open with another (`key_fingerprint`).
- Vault master keys encrypt the clear ids held in the vault. Rotation adds a new id and makes it
  current; old ids stay in the file so old entries stay readable until `rekey` re-encrypts them.

Keys used are derived per tenant with HKDF-SHA256 from the master keys (the tenant in HKDF's `info`),
so one tenant's index or entries cannot be joined with or opened as another's.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cohort.core.errors import CohortError, ErrorCode
from cohort.owner_only_files import sync_path
from cohort.settings import Settings

FORMAT = "cohort-secrets"
FORMAT_VERSION = 1
KEY_BYTES = 32
FILE_NAME = "secrets.json"
_MAX_FILE_BYTES = 64 * 1024  # thousands of rotations; more is not a secrets file
MAX_CACHED_TENANT_KEYS = 4096  # derived keys kept (a few per tenant; deployments have tens of tenants)
_KEY_ID = re.compile(r"^v[0-9]{1,9}$")
# HKDF `info` labels: one per purpose, so a key derived for one purpose is never another's
_BLIND_INDEX_INFO = b"cohort/vault-blind-index/v1\0"
_VAULT_KEY_INFO = b"cohort/vault-entry-key/v1\0"
_FINGERPRINT_INFO = b"cohort/pseudonym-key-fingerprint/v1"
_QUARANTINE_KEY_INFO = b"cohort/quarantine-seal-key/v1\0"
PLATFORM_SCOPE = "_platform"  # a quarantine key's scope when no tenant is known (tenant ids start alphanumeric)


class Secrets:
    """Master keys as loaded from the secrets file, and the per-tenant keys derived from them.

    Derived keys are cached (a tenant's keys are asked for on every batch). `repr` shows key ids only.
    """

    def __init__(self, pseudonym_master_key: bytes, vault_keys: Mapping[str, bytes], vault_current: str):
        if len(pseudonym_master_key) != KEY_BYTES or any(len(k) != KEY_BYTES for k in vault_keys.values()):
            raise CohortError(ErrorCode.CONFIG_INVALID, f"every key must be {KEY_BYTES} bytes")
        if not all(isinstance(key_id, str) and _KEY_ID.match(key_id) for key_id in vault_keys):
            raise CohortError(ErrorCode.CONFIG_INVALID, "vault key ids must be v<number>")
        if vault_current not in vault_keys:
            raise CohortError(ErrorCode.CONFIG_INVALID, f"current vault key id {vault_current!r} has no key")
        self._pseudonym_master_key = pseudonym_master_key
        self._vault_keys = dict(vault_keys)
        self.vault_current = vault_current
        self._derived: dict[tuple[bytes, str, str], bytes] = {}
        self.source: Path | None = None  # the file these keys were read from, to read again after a rotation

    @property
    def vault_key_ids(self) -> tuple[str, ...]:
        return tuple(self._vault_keys)

    def blind_index_key(self, tenant: str) -> bytes:
        """HMAC key of the tenant's lookup index (clear id → entry); the same for the life of the master key."""
        return self._derive(_BLIND_INDEX_INFO, tenant, "", self._pseudonym_master_key)

    def vault_key(self, tenant: str, key_id: str) -> bytes:
        """AES-256-GCM key of the tenant's vault entries written under `key_id`."""
        master = self._vault_keys.get(key_id)
        if master is None:
            raise CohortError(ErrorCode.CONFIG_INVALID, f"vault key id {key_id!r} is not in the secrets file "
                              f"(it has {', '.join(self._vault_keys)}): restore the file that wrote the entry")
        return self._derive(_VAULT_KEY_INFO, tenant, key_id, master)

    def quarantine_key(self, scope: str, key_id: str) -> bytes:
        """AES-256-GCM key sealing quarantined payloads that cannot be pseudonymised field by field, of a
        tenant (or `PLATFORM_SCOPE` when none is known), written under the vault key `key_id`: a key of
        its own, so a sealed payload never opens as a vault entry nor as another tenant's."""
        master = self._vault_keys.get(key_id)
        if master is None:
            raise CohortError(ErrorCode.CONFIG_INVALID, f"vault key id {key_id!r} is not in the secrets file "
                              f"(it has {', '.join(self._vault_keys)}): restore the file that sealed the payload")
        return self._derive(_QUARANTINE_KEY_INFO, scope, key_id, master)

    def key_fingerprint(self) -> str:
        """Names the pseudonym master key without revealing it (HKDF is one-way), so the vault can refuse
        a secrets file other than the one its entries were indexed with."""
        hkdf = HKDF(algorithm=hashes.SHA256(), length=16, salt=None, info=_FINGERPRINT_INFO)
        return hkdf.derive(self._pseudonym_master_key).hex()

    def _derive(self, purpose: bytes, tenant: str, key_id: str, master: bytes) -> bytes:
        cache_key = (purpose, tenant, key_id)
        derived = self._derived.get(cache_key)
        if derived is None:
            info = purpose + key_id.encode() + b"\0" + tenant.encode("utf-8", "surrogatepass")
            derived = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(master)
            if len(self._derived) >= MAX_CACHED_TENANT_KEYS:  # bounded whatever channels the input names
                self._derived.clear()
            self._derived[cache_key] = derived
        return derived

    def __repr__(self) -> str:
        return f"Secrets(vault_key_ids={list(self._vault_keys)}, vault_current={self.vault_current!r})"

    def reread(self) -> Secrets | None:
        """The keys of this file as it is now, when it holds this pseudonym key and more vault key ids than
        these (another process rotated): None otherwise. Why: entries re-encrypted under a new vault key by
        `cohort vault rekey` must stay readable by processes started before the rotation."""
        if self.source is None:
            return None
        try:
            now = load_secrets(self.source)
        except CohortError:
            return None
        if now.key_fingerprint() != self.key_fingerprint() or set(now.vault_key_ids) <= set(self.vault_key_ids):
            return None
        return now

    def with_new_vault_key(self) -> Secrets:
        """The same keys plus a new random vault key, current, with the next id."""
        new_id = f"v{max(int(key_id[1:]) for key_id in self._vault_keys) + 1}"
        keys = dict(self._vault_keys, **{new_id: secrets.token_bytes(KEY_BYTES)})
        return Secrets(self._pseudonym_master_key, keys, new_id)

    def _file_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": FORMAT_VERSION,
                "pseudonym_master_key": _b64(self._pseudonym_master_key),
                "vault_keys": {key_id: _b64(key) for key_id, key in self._vault_keys.items()},
                "vault_current": self.vault_current}


def secrets_path(settings: Settings) -> Path:
    return settings.secrets_file or settings.data_dir / FILE_NAME


def load_or_create_secrets(settings: Settings) -> Secrets:
    """The deployment's keys. Embedded: made on first start when the file is absent. Scale-out: never
    made here (each process would make its own, and their pseudonyms would never match)."""
    path = secrets_path(settings)
    if not path.exists():
        if settings.footprint == "scaleout":
            raise CohortError(ErrorCode.CONFIG_INVALID, f"secrets file {path} does not exist: on the scale-out "
                              "footprint every process needs the same file (e.g. the one an embedded start "
                              "writes), copied to each host with mode 0600 and named by COHORT_SECRETS_FILE")
        return _create(path)
    return load_secrets(path)


def load_secrets(path: Path) -> Secrets:
    """Read and check the secrets file: owner-only permissions, the format, every key's length."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise CohortError(ErrorCode.CONFIG_INVALID, f"secrets file {path} cannot be read: {exc.strerror}") from exc
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise CohortError(ErrorCode.CONFIG_INVALID, f"secrets file {path} is not a regular file")
        if mode & 0o077:
            raise CohortError(ErrorCode.CONFIG_INVALID, f"secrets file {path} may be read by others (mode "
                              f"{stat.S_IMODE(mode):04o}): run `chmod 600 {path}`")
        raw = os.read(fd, _MAX_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(raw) > _MAX_FILE_BYTES:
        raise CohortError(ErrorCode.CONFIG_INVALID, f"secrets file {path} is over {_MAX_FILE_BYTES} bytes")
    loaded = _parse(path, raw)
    loaded.source = path
    return loaded


def create_secrets() -> Secrets:
    """New random keys (never derived from anything guessable)."""
    return Secrets(secrets.token_bytes(KEY_BYTES), {"v1": secrets.token_bytes(KEY_BYTES)}, "v1")


def rotate_vault_key(path: Path) -> str:
    """Add a new vault master key and make it current; returns its id. Old ids stay, so entries written
    under them stay readable until `rekey`. Every process must then load the new file (restart) before
    `rekey` runs, or they cannot read what `rekey` re-encrypted. Run by one operator at a time."""
    rotated = load_secrets(path).with_new_vault_key()
    _write_atomically(path, rotated, replace=True)
    return rotated.vault_current


def _create(path: Path) -> Secrets:
    path.parent.mkdir(parents=True, exist_ok=True)
    made = create_secrets()
    if _write_atomically(path, made, replace=False):
        made.source = path
        return made
    return load_secrets(path)  # another process of this deployment made it first: use theirs


def _write_atomically(path: Path, made: Secrets, *, replace: bool) -> bool:
    """Write to a private temporary file (mode 0600 from its creation), fsync, then link or rename it into
    place. With replace=False an existing file wins (returns False): two processes starting at once end
    with one file. Nothing else in the directory is touched."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(json.dumps(made._file_json(), indent=2).encode() + b"\n")
            file.flush()
            os.fsync(file.fileno())
        if replace:
            os.replace(temporary, path)
        else:
            try:
                os.link(temporary, path)
            except FileExistsError:
                return False
    finally:
        temporary.unlink(missing_ok=True)
        sync_path(path.parent)
    return True


def _parse(path: Path, raw: bytes) -> Secrets:
    def bad(why: str) -> CohortError:
        return CohortError(ErrorCode.CONFIG_INVALID, f"secrets file {path} is malformed: {why}")

    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad("not JSON") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise bad(f'"format" is not {FORMAT!r}')
    if data.get("version") != FORMAT_VERSION:
        raise bad(f'"version" {str(data.get("version"))[:20]!r} is not {FORMAT_VERSION} (written by another Cohort?)')
    vault_keys = data.get("vault_keys")
    if not isinstance(vault_keys, dict) or not vault_keys:
        raise bad('"vault_keys" must map key ids to keys')
    for key_id in vault_keys:
        if not _KEY_ID.match(key_id):
            raise bad(f"vault key id {key_id[:20]!r} is not v<number>")
    current = data.get("vault_current")
    if not isinstance(current, str) or current not in vault_keys:
        raise bad('"vault_current" is not one of the vault key ids')
    return Secrets(_key(data.get("pseudonym_master_key"), "pseudonym_master_key", bad),
                   {key_id: _key(key, f"vault key {key_id}", bad) for key_id, key in vault_keys.items()}, current)


def _key(value: object, name: str, bad: Any) -> bytes:
    if not isinstance(value, str):
        raise bad(f"{name} is not a base64 string")
    try:
        key = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise bad(f"{name} is not base64") from exc
    if len(key) != KEY_BYTES:
        raise bad(f"{name} is {len(key)} bytes, not {KEY_BYTES}")
    return key


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode()
