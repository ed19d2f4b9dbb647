"""Isolation of poison input: the rule every pipeline role follows, written once.

Input sits in a durable log, so an input that breaks a step comes back after every retry and
restart. A role that meets a failure which is neither an infrastructure fault (retried for as
long as it lasts) nor a terminal one (the role stops loudly) tries the record's ways in order —
whole, then finer — and the first that works wins; when none does, the last resort (a quarantine,
which the store always takes) gets the record with the last failure, so one input never stops
the pipeline and is never lost either.

Used by the store writer (write a record alone, else quarantine it: ERR_STORE_REJECTED). The
embedded runner (`_commit_isolated`) and the scale-out worker (`_prepare_alone`) follow the same
rule with their own ways (prepare whole, prepare event by event, quarantine: ERR_PIPELINE_POISON).
"""

from __future__ import annotations

from typing import Callable, Sequence, TypeVar

from cohort.core.errors import TerminalFault, TransientFault
from cohort.core.work_item import describe_failure

T = TypeVar("T")
POISON_ATTEMPTS = 2  # a record failing this often, each time for a reason that is not a fault, is the input's


class StoreRefused(Exception):
    """The store refused a write for a reason that is not an infrastructure fault: perhaps the input's."""

    def __init__(self, cause: Exception):
        super().__init__(str(cause))
        self.cause = cause


class RecordIsolation:
    """Tries a record's ways in order, counting the records that could not be processed whole."""

    def __init__(self, infrastructure_faults: Sequence[type[BaseException]] = ()):
        self._passing: tuple[type[BaseException], ...] = (TransientFault, TerminalFault, *infrastructure_faults)
        self.isolated_records = 0

    def passes_through(self, exc: BaseException) -> bool:
        """Whether `exc` is never the input's: an infrastructure fault (retry) or a terminal one (stop)."""
        return isinstance(exc, self._passing)

    def first_that_works(self, ways: Sequence[Callable[[], T]], last_resort: Callable[[Exception], T]) -> T:
        """The result of the first way that works; if none does, `last_resort(last failure)`. Faults that
        pass through (see `passes_through`) propagate at once, from a way or from the last resort."""
        failure: Exception | None = None
        for way in ways:
            try:
                return way()
            except Exception as exc:
                if self.passes_through(exc):
                    raise
                if failure is None:
                    self.isolated_records += 1  # this record could not be processed whole
                failure = exc
        if failure is None:
            raise ValueError("first_that_works needs at least one way")
        return last_resort(failure)


def quarantine_message(failure: BaseException) -> str:
    """What a quarantined record's rows say about why: the failure of its last attempt."""
    cause = failure.cause if isinstance(failure, StoreRefused) else failure
    return f"every attempt to process this request failed: {describe_failure(cause)}"
