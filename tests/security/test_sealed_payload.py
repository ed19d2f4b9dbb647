"""Sealed quarantine payloads: exact bytes back with the keys, nothing without them, no other tenant's
key opens one, and a seal made before a vault key rotation still opens after it."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from cohort.core.errors import CohortError, ErrorCode
from cohort.security.sealed_payload import PayloadSealer, is_sealed, open_sealed, sealed_scope
from cohort.security.secrets import PLATFORM_SCOPE, create_secrets

SECRETS = create_secrets()


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=2000), tenant=st.sampled_from([None, "tenant-a", "in.ekstep", "not a tenant"]))
def test_any_bytes_open_back_exactly(data, tenant):
    text = PayloadSealer(SECRETS).seal(tenant, data)
    assert is_sealed(text) and text.isascii()
    assert sealed_scope(text) == (tenant if tenant in ("tenant-a", "in.ekstep") else PLATFORM_SCOPE)
    assert text.split(":")[4] == str(len(data))  # the length, readable without the keys
    assert open_sealed(text, SECRETS) == data


def test_the_clear_text_is_not_in_the_seal_and_two_seals_differ():
    first, second = (PayloadSealer(SECRETS).seal("tenant-a", b'{"actor":{"id":"child-42"}}') for _ in range(2))
    assert "child-42" not in first and first != second  # a fresh nonce each time


@pytest.mark.parametrize("change", [
    lambda t: t.replace(":tenant-a:", ":tenant-b:"),  # moved to another tenant
    lambda t: t.replace(":tenant-a:", f":{PLATFORM_SCOPE}:"),
    lambda t: t.replace(":v1:", ":v2:"),  # another key id
    lambda t: t[:-8] + ("A" if t[-8] != "A" else "B") + t[-7:],  # a ciphertext byte
    lambda t: t.rsplit(":", 2)[0] + ":5:" + t.rsplit(":", 1)[1],  # another length
    lambda t: t[:40],  # truncated
    lambda t: "cohort-sealed:v2:" + t[len("cohort-sealed:v1:"):],
    lambda t: "plain text",
])
def test_an_altered_or_moved_seal_does_not_open(change):
    text = PayloadSealer(SECRETS).seal("tenant-a", b"payload of tenant a")
    with pytest.raises(CohortError) as refused:
        open_sealed(change(text), SECRETS)
    assert refused.value.code in (ErrorCode.VAULT_INTEGRITY, ErrorCode.CONFIG_INVALID)


def test_another_tenants_key_or_deployment_cannot_open_it():
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    import base64
    text = PayloadSealer(SECRETS).seal("tenant-a", b"payload of tenant a")
    raw = base64.b64decode(text.rsplit(":", 1)[1])
    aad = text.rsplit(":", 1)[0].encode()
    with pytest.raises(InvalidTag):
        AESGCM(SECRETS.quarantine_key("tenant-b", "v1")).decrypt(raw[:12], raw[12:], aad)
    with pytest.raises(CohortError):
        open_sealed(text, create_secrets())


def test_the_quarantine_key_is_its_own_per_scope_and_key_id():
    keys = {SECRETS.quarantine_key("tenant-a", "v1"), SECRETS.quarantine_key("tenant-b", "v1"),
            SECRETS.quarantine_key(PLATFORM_SCOPE, "v1"), SECRETS.vault_key("tenant-a", "v1")}
    assert len(keys) == 4
    with pytest.raises(CohortError) as refused:
        SECRETS.quarantine_key("tenant-a", "v9")
    assert refused.value.code is ErrorCode.CONFIG_INVALID


def test_a_seal_made_before_a_rotation_opens_after_and_new_seals_use_the_new_key():
    old = PayloadSealer(SECRETS).seal("tenant-a", b"before")
    rotated = SECRETS.with_new_vault_key()
    assert open_sealed(old, rotated) == b"before"
    new = PayloadSealer(rotated).seal("tenant-a", b"after")
    assert f":{rotated.vault_current}:" in new and open_sealed(new, rotated) == b"after"
