"""QueryAdmission: a few queries per caller and a few more in all; beyond, a coded refusal, not a queue."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from cohort.api.query_admission import QueryAdmission, caller_key
from cohort.core.errors import CohortError, ErrorCode


def refused(admission: QueryAdmission, caller: str) -> str:
    with pytest.raises(CohortError) as info:
        admission.admit(caller)
    assert info.value.code == ErrorCode.TOO_MANY_QUERIES
    return info.value.message


def test_per_caller_bound():
    admission = QueryAdmission(max_total=10, max_per_caller=2)
    first, second = admission.admit("a"), admission.admit("a")
    assert "at most 2 at a time" in refused(admission, "a")
    admission.admit("b")  # others are not affected
    first()
    admission.admit("a")  # a slot given back is usable again
    assert admission.in_flight == 3


def test_global_bound():
    admission = QueryAdmission(max_total=3, max_per_caller=2)
    releases = [admission.admit(c) for c in ("a", "b", "c")]
    assert "maximum of 3" in refused(admission, "d")
    releases[0]()
    admission.admit("d")


def test_releasing_twice_gives_back_one_slot():
    admission = QueryAdmission(max_total=2, max_per_caller=2)
    release = admission.admit("a")
    admission.admit("a")
    release()
    release()
    assert admission.in_flight == 1


def test_caller_is_the_client_address():
    scope = {"type": "http", "client": ("10.1.2.3", 5555), "headers": [], "method": "POST", "path": "/"}
    assert caller_key(Request(scope)) == "10.1.2.3"
    assert caller_key(Request({**scope, "client": None})) == "unknown"
