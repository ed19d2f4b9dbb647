"""A vault entry's cryptography: the blind index is HMAC-SHA256, a sealed id opens only as its own
pseudonym's in its own tenant, and every seal is fresh."""

from __future__ import annotations

import hmac

import pytest
from hypothesis import given, settings as hyp_settings, strategies as st

from cohort.core.errors import CohortError, ErrorCode
from cohort.core.pseudonyms import DEVICE, LEARNER
from cohort.security.secrets import create_secrets
from cohort.state.vault_entry import EntrySealer, SealedEntry, check_ids, is_pseudonym

SEALER = EntrySealer(create_secrets())


@hyp_settings(max_examples=300, deadline=None)
@given(ids=st.lists(st.text(min_size=1, max_size=80), max_size=10), kind=st.sampled_from([LEARNER, DEVICE]),
       tenant=st.sampled_from(["t1", "t2", "state.ka"]))
def test_lookups_are_hmac_sha256_of_kind_and_id_under_the_tenants_key(ids, kind, tenant):
    key = SEALER.secrets.blind_index_key(tenant)
    expected = [hmac.digest(key, f"{kind}\0{i}".encode("utf-8", "surrogatepass"), "sha256") for i in ids]
    assert SEALER.lookups(tenant, kind, ids) == expected


def test_lookups_differ_per_tenant_and_kind():
    lookups = {SEALER.lookups(t, k, ["same"])[0] for t in ("t1", "t2") for k in (LEARNER, DEVICE)}
    assert len(lookups) == 4


@hyp_settings(max_examples=200, deadline=None)
@given(clear_id=st.text(min_size=1, max_size=200))
def test_a_sealed_id_opens_to_itself(clear_id):
    entry = SEALER.new_entry("t1", LEARNER, clear_id)
    assert is_pseudonym(entry.pseudonym) and entry.pseudonym.startswith("u:")
    assert SEALER.open("t1", entry) == clear_id


def test_a_sealed_id_opens_only_as_its_own_pseudonym_in_its_own_tenant():
    entry = SEALER.new_entry("t1", LEARNER, "child")
    other = SEALER.new_entry("t1", LEARNER, "other")
    for tenant, moved in (("t2", entry), ("t1", SealedEntry(other.pseudonym, entry.key_id, entry.sealed)),
                          ("t1", SealedEntry("d:" + entry.pseudonym[2:], entry.key_id, entry.sealed)),
                          ("t1", SealedEntry(entry.pseudonym, entry.key_id, entry.sealed[:5]))):
        with pytest.raises(CohortError) as caught:
            SEALER.open(tenant, moved)
        assert caught.value.code == ErrorCode.VAULT_INTEGRITY and "child" not in str(caught.value)


def test_every_seal_is_fresh():
    first, second = SEALER.seal("t1", "u:" + "a" * 32, "child"), SEALER.seal("t1", "u:" + "a" * 32, "child")
    assert first.sealed[:12] != second.sealed[:12] and first.sealed != second.sealed
    assert len({SEALER.new_entry("t1", LEARNER, "child").pseudonym for _ in range(100)}) == 100


def test_ids_are_checked_and_deduplicated_in_order():
    assert check_ids(["b", "a", "b"], "clear id") == ["b", "a"]
    for bad in ("one-str", b"bytes", None, 5, [1], [[1]], [{"a": 1}], [""], ["x" * 1025]):
        with pytest.raises(CohortError) as caught:
            check_ids(bad, "clear id")
        assert caught.value.code == ErrorCode.VAULT_INPUT
