"""Dedup: drop events whose `mid` was already stored, or repeats within the batch.

The state of what was seen lives outside the core (embedded or Redis); this stage
only asks it. Duplicates are counted, never stored.
"""

from __future__ import annotations

from typing import Iterable, Protocol

from cohort.core.work_item import WorkItem

STAGE = "dedup"


class SeenMids(Protocol):
    def seen(self, mids: Iterable[str]) -> set[str]:
        """Which of these mids are already stored."""


def dedup(items: list[WorkItem], state: SeenMids) -> tuple[list[WorkItem], int]:
    already = state.seen(item.event["mid"] for item in items)
    unique: list[WorkItem] = []
    in_batch: set[str] = set()
    for item in items:
        mid = item.event["mid"]
        if mid in already or mid in in_batch:
            continue
        in_batch.add(mid)
        unique.append(item)
    return unique, len(items) - len(unique)
