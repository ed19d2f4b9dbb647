"""A call run inline comes back as a completed Future: its result, or its exception through result()."""

from __future__ import annotations

import pytest

from cohort.core.completed_future import completed_future


def test_the_result_of_the_call_is_the_futures():
    future = completed_future(lambda a, b=0: a + b, 2, b=3)
    assert future.done() and future.result(timeout=0) == 5


def test_an_exception_of_the_call_reaches_the_caller_through_result():
    def broken():
        raise ValueError("bad input")

    future = completed_future(broken)
    assert future.done() and isinstance(future.exception(timeout=0), ValueError)
    with pytest.raises(ValueError, match="bad input"):
        future.result(timeout=0)
