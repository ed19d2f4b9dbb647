"""Dedup: drop rows whose `mid` was already stored, or repeat within the batch.

The state of what was stored lives outside the core (embedded or Redis); this
stage only asks it. Duplicates are counted, never stored.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import pyarrow as pa

STAGE = "dedup"


class SeenMids(Protocol):
    def seen(self, keys: Sequence[str]) -> set[str]:
        """Which of these mids are already stored."""


def dedup(rows: pa.Table, state: SeenMids) -> tuple[pa.Table, int]:
    mids = rows.column("mid").to_pylist()
    already = state.seen(mids)
    keep: list[bool] = []
    in_batch: set[str] = set()
    for mid in mids:
        fresh = mid not in already and mid not in in_batch
        keep.append(fresh)
        in_batch.add(mid)
    duplicates = keep.count(False)
    if duplicates:
        rows = rows.filter(pa.array(keep, type=pa.bool_()))
    return rows, duplicates
