"""Dedup: rows whose mid repeats (within the batch, or already stored) are counted, not passed on."""

from __future__ import annotations

import pyarrow as pa

from cohort.core.stages.dedup import dedup
from cohort.state.mid_window import MidWindow


def rows(*mids: str) -> pa.Table:
    return pa.table({"mid": list(mids), "n": list(range(len(mids)))})


def kept(table: pa.Table) -> list[tuple[str, int]]:
    return list(zip(table.column("mid").to_pylist(), table.column("n").to_pylist()))


def test_unique_rows_pass_in_order():
    unique, duplicates = dedup(rows("a", "b", "c"), MidWindow(60))
    assert kept(unique) == [("a", 0), ("b", 1), ("c", 2)] and duplicates == 0


def test_repeats_within_a_batch_keep_the_first():
    unique, duplicates = dedup(rows("a", "b", "a", "a", "c", "b"), MidWindow(60))
    assert kept(unique) == [("a", 0), ("b", 1), ("c", 4)]
    assert duplicates == 3


def test_mids_already_seen_are_duplicates():
    seen = MidWindow(60)
    seen.add(["b", "z"])
    unique, duplicates = dedup(rows("a", "b", "c", "b"), seen)
    assert kept(unique) == [("a", 0), ("c", 2)]
    assert duplicates == 2


def test_other_columns_stay_aligned_with_their_mid():
    table = pa.table({"mid": ["a", "a", "b"], "event": ['{"n":1}', '{"n":2}', '{"n":3}']})
    unique, _ = dedup(table, MidWindow(60))
    assert unique.to_pylist() == [{"mid": "a", "event": '{"n":1}'}, {"mid": "b", "event": '{"n":3}'}]
    assert unique.schema == table.schema


def test_dedup_only_asks_the_state():
    # Recording mids is the runner's job after the store commit: if dedup recorded them and the store
    # write then failed, the retried batch would be counted as duplicates and lost.
    seen = MidWindow(60)
    dedup(rows("a", "b"), seen)
    assert seen.seen(["a", "b"]) == set() and len(seen) == 0


def test_empty_batch():
    unique, duplicates = dedup(rows(), MidWindow(60))
    assert unique.num_rows == 0 and duplicates == 0


def test_any_state_with_seen_works():
    class AllSeen:
        def seen(self, mids):
            return set(mids)

    unique, duplicates = dedup(rows("a", "b", "a"), AllSeen())
    assert unique.num_rows == 0 and duplicates == 3
