"""A process's memory of the pseudonyms it was given: (tenant, kind, clear id) → pseudonym, bounded and short-lived.

Why: a pseudonym never changes until its id is forgotten, and a pipeline process meets the same learners and
devices batch after batch; asking the vault (an HMAC per id, then SQLite or Redis) for each of them every
batch cost a fifth of the transform stage. The stage reads the dicts of `known(tenant)` directly while it
walks the events, so a known id is replaced where it is found, with one dict lookup.

Why bounded in two generations: entries are kept in a young dict; when it holds half the bound it becomes
the old one (the previous old one is dropped) and an id found only in the old one moves back to the young
one. So at most `max_entries` are held, and the ids in use stay, as in an LRU, without bookkeeping on a hit.

Why short-lived: a forget (the vault entry deleted) may happen in another process (the API server, another
worker). The process that forgets drops its own entries at once (`forget_id`, `forget_pseudonym`,
`forget_tenant`); every other process stops using its entries at most `ttl_s` after it cached them, as the
whole memory is dropped when it is older than that. Within that window a batch may still get the forgotten
id's old pseudonym, as a batch resolved just before the forget would: that pseudonym is linked to nobody.

Pure: the clock is injected. Thread-safe for one writer with readers (the stage reads; forgets and fills
hold a lock).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Mapping

from cohort.core.pseudonyms import KINDS

MAX_ENTRIES = 100_000  # ≈ 200 bytes each: ≈ 20 MB a process at most
TTL_S = 30.0  # how long a forget made in another process may go unseen here

Known = dict[str, dict[str, str]]  # kind → clear id → pseudonym, for one tenant


class PseudonymCache:
    """See the module docstring."""

    def __init__(self, max_entries: int = MAX_ENTRIES, ttl_s: float = TTL_S,
                 clock: Callable[[], float] = time.monotonic):
        if max_entries < 2 or ttl_s <= 0:
            raise ValueError("a pseudonym cache needs max_entries >= 2 and ttl_s > 0")
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._young: dict[str, Known] = {}
        self._old: dict[str, Known] = {}
        self._young_count = 0
        self._born = clock()

    def known(self, tenant: str) -> Known:
        """The tenant's young entries per kind, to read (never to write: `remember` does)."""
        if self._clock() - self._born >= self.ttl_s:
            self.clear()
        known = self._young.get(tenant)
        if known is None:
            with self._lock:
                known = self._young.setdefault(tenant, {kind: {} for kind in KINDS})
        return known

    def recall(self, tenant: str, kind: str, clear_ids: Collection[str]) -> dict[str, str]:
        """The pseudonyms of these ids held in the old generation, moved back to the young one."""
        old = self._old.get(tenant)
        if old is None or not old[kind]:
            return {}
        held = old[kind]
        found = {clear: held[clear] for clear in clear_ids if clear in held}
        if found:
            self.remember(tenant, kind, found)
        return found

    def remember(self, tenant: str, kind: str, pseudonyms: Mapping[str, str]) -> None:
        """Keep the vault's whole answer for these ids (never a partial one: the caller checked)."""
        with self._lock:
            if self._young_count + len(pseudonyms) > self.max_entries // 2:
                self._old, self._young, self._young_count = self._young, {}, 0
            if len(pseudonyms) > self.max_entries // 2:
                return  # more than a generation holds: not worth evicting everything for
            known = self._young.setdefault(tenant, {k: {} for k in KINDS})[kind]
            before = len(known)
            known.update(pseudonyms)
            self._young_count += len(known) - before

    def forget_id(self, tenant: str, kind: str, clear_id: str) -> None:
        """Drop one id's entry (its vault entry is being deleted in this process)."""
        with self._lock:
            for generation in (self._young, self._old):
                generation.get(tenant, {}).get(kind, {}).pop(clear_id, None)

    def forget_pseudonym(self, tenant: str, pseudonym: str) -> None:
        """Drop the entry that gives this pseudonym (a scan of the tenant's entries: forgets are rare)."""
        with self._lock:
            for generation in (self._young, self._old):
                for known in generation.get(tenant, {}).values():
                    for clear in [clear for clear, held in list(known.items()) if held == pseudonym]:
                        del known[clear]

    def forget_tenant(self, tenant: str) -> None:
        """Drop all of a tenant's entries."""
        with self._lock:
            for generation in (self._young, self._old):
                generation.pop(tenant, None)

    def clear(self) -> None:
        """Drop everything (and start a new time-to-live)."""
        with self._lock:
            self._young, self._old, self._young_count, self._born = {}, {}, 0, self._clock()

    def __len__(self) -> int:
        return sum(len(ids) for generation in (self._young, self._old)
                   for known in generation.values() for ids in known.values())
