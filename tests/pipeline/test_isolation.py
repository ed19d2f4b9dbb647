"""The isolation rule: the first way that works wins, what fails every way goes to the last resort with
its last failure, and infrastructure or terminal faults are never blamed on the input."""

from __future__ import annotations

import pytest

from cohort.core.errors import TerminalFault, TransientFault
from cohort.pipeline.isolation import RecordIsolation, StoreRefused, quarantine_message


class EngineAway(Exception):
    """An infrastructure fault of some engine that does not derive from TransientFault."""


def failing(exc: Exception):
    def way():
        raise exc
    return way


def test_the_first_way_that_works_wins_and_a_record_that_failed_once_counts_as_isolated():
    isolation = RecordIsolation()
    assert isolation.first_that_works([lambda: "whole"], lambda failure: "quarantined") == "whole"
    assert isolation.isolated_records == 0
    ways = [failing(ValueError("whole")), lambda: "event by event"]
    assert isolation.first_that_works(ways, lambda failure: "quarantined") == "event by event"
    assert isolation.isolated_records == 1


def test_what_fails_every_way_goes_to_the_last_resort_with_the_last_failure():
    isolation = RecordIsolation()
    last = StoreRefused(ValueError("Code: 469. value refused"))
    got = isolation.first_that_works([failing(KeyError("first")), failing(last)], lambda failure: failure)
    assert got is last and isolation.isolated_records == 1
    assert quarantine_message(last) == ("every attempt to process this request failed: "
                                        "ValueError: Code: 469. value refused")


@pytest.mark.parametrize("fault", [TransientFault("disk"), TerminalFault("broken invariant"), EngineAway("gone")])
def test_infrastructure_and_terminal_faults_pass_through_untouched(fault):
    isolation = RecordIsolation([EngineAway])
    resorted = []
    with pytest.raises(type(fault)):
        isolation.first_that_works([failing(ValueError("input")), failing(fault)], resorted.append)
    assert resorted == []  # never quarantined
    with pytest.raises(type(fault)):  # nor from the last resort itself
        isolation.first_that_works([failing(ValueError("input"))], lambda failure: failing(fault)())
