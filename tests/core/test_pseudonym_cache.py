"""The process's memory of pseudonyms: bounded, short-lived, and a forget drops what it names."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from cohort.core.pseudonym_cache import PseudonymCache
from cohort.core.pseudonyms import DEVICE, LEARNER


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_what_is_remembered_is_known_per_tenant_and_kind():
    cache = PseudonymCache()
    cache.remember("t1", LEARNER, {"alice": "u:1"})
    assert cache.known("t1")[LEARNER] == {"alice": "u:1"}
    assert cache.known("t1")[DEVICE] == {}
    assert cache.known("t2")[LEARNER] == {}


def test_everything_is_dropped_once_older_than_the_time_to_live():
    clock = Clock()
    cache = PseudonymCache(ttl_s=30, clock=clock)
    cache.remember("t1", LEARNER, {"alice": "u:1"})
    clock.now = 29.9
    assert cache.known("t1")[LEARNER] == {"alice": "u:1"}
    clock.now = 30.0
    assert cache.known("t1")[LEARNER] == {}
    assert cache.recall("t1", LEARNER, ["alice"]) == {}
    assert len(cache) == 0


def held(cache: PseudonymCache, tenant: str, kind: str, ids: list[str]) -> dict[str, str]:
    """What either generation holds of these ids."""
    young = cache.known(tenant)[kind]
    return {**cache.recall(tenant, kind, [i for i in ids if i not in young]),
            **{i: young[i] for i in ids if i in young}}


def test_forgets_drop_an_id_a_pseudonym_or_a_tenant_in_both_generations():
    cache = PseudonymCache(max_entries=4)
    cache.remember("t1", LEARNER, {"alice": "u:1", "bob": "u:2"})
    cache.remember("t1", DEVICE, {"tab": "d:1"})  # the young generation is full: alice and bob are old now
    cache.remember("t2", LEARNER, {"alice": "u:9"})
    cache.forget_id("t1", LEARNER, "alice")
    assert cache.recall("t1", LEARNER, ["alice", "bob"]) == {"bob": "u:2"}
    cache.forget_pseudonym("t1", "u:2")
    assert held(cache, "t1", LEARNER, ["alice", "bob"]) == {}
    assert held(cache, "t2", LEARNER, ["alice"]) == {"alice": "u:9"}  # another tenant's same id is untouched
    cache.forget_tenant("t2")
    assert held(cache, "t2", LEARNER, ["alice"]) == {} and held(cache, "t1", DEVICE, ["tab"]) == {"tab": "d:1"}
    cache.clear()
    assert len(cache) == 0


def test_an_old_entry_used_again_moves_back_to_the_young_generation():
    cache = PseudonymCache(max_entries=4)
    cache.remember("t", LEARNER, {"a": "u:a", "b": "u:b"})
    cache.remember("t", LEARNER, {"c": "u:c"})  # rotation: a, b old
    assert "a" not in cache.known("t")[LEARNER]
    assert cache.recall("t", LEARNER, {"a", "zz"}) == {"a": "u:a"}
    assert cache.known("t")[LEARNER]["a"] == "u:a"
    cache.remember("t", LEARNER, {"d": "u:d"})  # rotation: b (unused) leaves, a (used) stays
    assert cache.recall("t", LEARNER, ["a", "b"]) == {"a": "u:a"}


@settings(max_examples=200, deadline=None)
@given(bound=st.integers(2, 20), batches=st.lists(st.dictionaries(st.text(max_size=3), st.text(max_size=3),
                                                                  max_size=15), max_size=30))
def test_never_holds_more_than_its_bound_and_never_a_wrong_pseudonym(bound, batches):
    cache = PseudonymCache(max_entries=bound)
    truth: dict[str, str] = {}
    for n, batch in enumerate(batches):
        answer = {clear: truth.setdefault(clear, pseudonym) for clear, pseudonym in batch.items()}
        cache.remember("t", LEARNER, answer)
        assert len(cache) <= bound
        known = cache.known("t")[LEARNER]
        assert all(truth[clear] == held for clear, held in known.items())
        assert all(truth[clear] == held for clear, held in cache.recall("t", LEARNER, list(truth)).items())


@pytest.mark.parametrize("max_entries, ttl_s", [(1, 30.0), (10, 0.0)])
def test_a_cache_that_cannot_work_is_refused(max_entries, ttl_s):
    with pytest.raises(ValueError):
        PseudonymCache(max_entries=max_entries, ttl_s=ttl_s)
