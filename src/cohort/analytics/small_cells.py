"""Small-cell suppression: aggregates that could single out a learner are withheld from roles not entitled
to individual records.

As national education statistics publish tables: a figure computed from fewer than k learners (k =
COHORT_MIN_CELL_LEARNERS, default 10) is not shown (primary suppression), and where that would let it be
recovered by subtraction, a second figure is withheld too (complementary suppression):

- primary: a cell with 1..k-1 distinct learners keeps its bucket and group but its value is null and it
  is flagged `suppressed`;
- complementary: within one bucket, if exactly one group's cell is suppressed, the bucket's total (which
  the same caller can ask for with by=none) minus the shown cells would give it back; so the next smallest
  shown cell (fewest learners, then smallest value, then group name) is suppressed as well. With two or
  more suppressed, only their sum can be derived. A bucket whose only cell is suppressed has a total from
  the same learners, which is suppressed too;
- a cell with no learner behind it (events of System or anonymous actors only) is not shown at all: it
  says nothing about a learner, and a row with a withheld value would only tell which groups had such
  activity. Cells exist only where there are events: no zero-filled rows name groups without activity.

Who is entitled (see `suppression_applies`): admins, tenant admins and educators (their own learners, in
their scope) see exact figures; analysts (and aggregate exports to come) get suppressed ones.

What this does not stop (docs/SECURITY.md): differencing across requests. Two windows that differ by one
day, each with k or more learners, give that day's figure by subtraction even when the day alone is
suppressed; the same holds for overlapping groups or scopes. Noise (differential privacy) or fixed,
aligned windows would be needed to close that.

Pure: no I/O, deterministic (the output depends on the cells, not their order).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from cohort.security.identity import Identity, Role

UNSUPPRESSED_ROLES = frozenset({Role.ADMIN, Role.TENANT_ADMIN, Role.EDUCATOR})  # entitled to individual records


@dataclass(frozen=True, slots=True)
class Cell:
    """A metric's value in one bucket (epoch seconds) and group, and the distinct learners behind it."""

    bucket: int
    group: str | None
    value: float | int | None
    learners: int


@dataclass(frozen=True, slots=True)
class ShownCell:
    bucket: int
    group: str | None
    value: float | int | None  # None when suppressed
    suppressed: bool


@dataclass(frozen=True, slots=True)
class SuppressedSeries:
    cells: tuple[ShownCell, ...]
    applied: bool
    k: int
    suppressed_cells: int
    dropped_cells: int  # cells with no learner behind them, left out


def suppression_applies(identity: Identity) -> bool:
    """Whether `identity`'s role gets suppressed figures (not entitled to individual learners' records)."""
    return identity.role not in UNSUPPRESSED_ROLES


def exact(cells: Iterable[Cell], k: int) -> SuppressedSeries:
    """Every cell as computed, for an entitled role."""
    shown = tuple(ShownCell(c.bucket, c.group, c.value, False) for c in sorted(cells, key=_order))
    return SuppressedSeries(shown, applied=False, k=k, suppressed_cells=0, dropped_cells=0)


def suppress(cells: Iterable[Cell], k: int) -> SuppressedSeries:
    """The cells with primary and complementary suppression at threshold `k` (≥ 1)."""
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    by_bucket: dict[int, list[Cell]] = defaultdict(list)
    dropped = 0
    seen: set[tuple[int, bool, str]] = set()
    for cell in cells:
        if _key(cell) in seen:
            raise ValueError(f"two cells for bucket {cell.bucket} and group {cell.group!r}")
        seen.add(_key(cell))
        if cell.learners <= 0:
            dropped += 1
        else:
            by_bucket[cell.bucket].append(cell)
    shown: list[ShownCell] = []
    suppressed_count = 0
    for bucket in sorted(by_bucket):
        members = sorted(by_bucket[bucket], key=_order)
        withheld = {_key(c) for c in members if c.learners < k}
        if len(withheld) == 1 and len(members) > 1:
            complement = min((c for c in members if _key(c) not in withheld), key=_smallness)
            withheld.add(_key(complement))
        for cell in members:
            hidden = _key(cell) in withheld
            shown.append(ShownCell(cell.bucket, cell.group, None if hidden else cell.value, hidden))
        suppressed_count += len(withheld)
    return SuppressedSeries(tuple(shown), applied=True, k=k, suppressed_cells=suppressed_count,
                            dropped_cells=dropped)


def _key(cell: Cell) -> tuple[int, bool, str]:
    return (cell.bucket, cell.group is not None, cell.group or "")


def _order(cell: Cell) -> tuple[int, bool, str]:
    """Buckets in time order; within one, the no-group cell first, then groups by name."""
    return _key(cell)


def _smallness(cell: Cell) -> tuple[int, float, bool, str]:
    value = float(cell.value) if cell.value is not None else 0.0
    return (cell.learners, value, cell.group is not None, cell.group or "")
