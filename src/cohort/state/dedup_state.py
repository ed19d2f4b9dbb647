"""The dedup state contract: which keys (event mids, batch msgids) were committed within the period.

The pipeline asks `seen` before a batch is committed and calls `add` only after the store has
committed it, so the state never holds a key whose event is not stored: a crash between the two can
only make the state miss keys of the last committed batch, never invent one, and the runner re-adds
those on start. Implementations must be exact (no probabilistic filter: calling a new event a
duplicate is data loss) and honour the period: a key added at time t is seen until t + period and
not after. Embedded: a disk-backed index; scale-out: Redis with expiry.
"""

from __future__ import annotations

from typing import Protocol, Sequence


class DedupState(Protocol):
    period_s: float

    def seen(self, keys: Sequence[str]) -> set[str]:
        """Which of `keys` were added less than one period ago."""

    def add(self, keys: Sequence[str], at_ms: int) -> None:
        """Remember `keys` as committed at `at_ms` (epoch ms). A key already held keeps its first time."""

    def forget(self, keys: Sequence[str]) -> int:
        """Drop `keys` whatever their time (the mids of a forgotten learner's deleted events, so no index
        keeps a trace and the same event sent again is stored again); how many were held."""

    def reach_seconds(self) -> float:
        """How far back a key is certainly remembered now (the period, or less when the state is
        younger than one period or lost data): what /metrics shows as the dedup reach."""

    def close(self) -> None: ...
