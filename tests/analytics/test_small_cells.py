"""Small-cell suppression: rules by example, then properties over arbitrary tables of learners.

The properties model what an attacker can see: each cell is built from a set of learners (so the bucket
total, which the same caller can request with by=none, has the union's learners and the sum of values of
an additive metric); suppression is run on the groups and on the total alike, as the API does."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cohort.analytics.small_cells import Cell, exact, suppress, suppression_applies
from cohort.security.identity import Identity, Role


def test_a_small_cell_is_withheld_and_its_complement_too():
    cells = [Cell(0, "school-1", 120, 12), Cell(0, "school-2", 30, 3), Cell(0, "school-3", 200, 20)]
    out = suppress(cells, 10)
    assert [(c.group, c.value, c.suppressed) for c in out.cells] == [
        ("school-1", None, True), ("school-2", None, True), ("school-3", 200, False)]
    assert out.applied and out.k == 10 and out.suppressed_cells == 2


def test_two_small_cells_need_no_complement():
    cells = [Cell(0, "a", 5, 5), Cell(0, "b", 7, 7), Cell(0, "c", 50, 50)]
    out = suppress(cells, 10)
    assert [(c.group, c.suppressed) for c in out.cells] == [("a", True), ("b", True), ("c", False)]


def test_the_complement_is_the_next_smallest_then_by_value_then_name():
    cells = [Cell(0, "small", 1, 1), Cell(0, "z", 90, 15), Cell(0, "y", 80, 15), Cell(0, "x", 80, 15),
             Cell(0, "big", 5, 40)]
    shown = {c.group: c.suppressed for c in suppress(cells, 10).cells}
    assert shown == {"small": True, "x": True, "y": False, "z": False, "big": False}


def test_buckets_are_judged_apart():
    cells = [Cell(0, "a", 3, 3), Cell(0, "b", 30, 30), Cell(0, "c", 40, 40),
             Cell(3600, "a", 30, 30), Cell(3600, "b", 30, 30)]
    out = suppress(cells, 10)
    assert [(c.bucket, c.group, c.suppressed) for c in out.cells] == [
        (0, "a", True), (0, "b", True), (0, "c", False), (3600, "a", False), (3600, "b", False)]


def test_cells_without_learners_are_not_shown_at_all():
    cells = [Cell(0, None, 4, 0), Cell(0, "school-1", 40, 40), Cell(0, "school-2", 30, 30)]
    out = suppress(cells, 10)
    assert [(c.group, c.value) for c in out.cells] == [("school-1", 40), ("school-2", 30)]
    assert out.dropped_cells == 1 and out.suppressed_cells == 0


def test_a_lone_small_cell_is_withheld_alone():
    out = suppress([Cell(0, None, 7, 7)], 10)
    assert [(c.value, c.suppressed) for c in out.cells] == [(None, True)] and out.suppressed_cells == 1


def test_k_of_one_hides_nothing_with_learners():
    out = suppress([Cell(0, "a", 1, 1), Cell(0, "b", 2, 2)], 1)
    assert [c.value for c in out.cells] == [1, 2] and out.suppressed_cells == 0


def test_exact_shows_everything_as_computed():
    cells = [Cell(0, "b", 3, 3), Cell(0, None, 1, 0), Cell(0, "a", 5, 5)]
    out = exact(cells, 10)
    assert [(c.group, c.value, c.suppressed) for c in out.cells] == [(None, 1, False), ("a", 5, False),
                                                                        ("b", 3, False)]
    assert not out.applied and out.k == 10


def test_bad_input_is_refused():
    with pytest.raises(ValueError):
        suppress([Cell(0, "a", 1, 1)], 0)
    with pytest.raises(ValueError):
        suppress([Cell(0, "a", 1, 1), Cell(0, "a", 2, 2)], 10)


@pytest.mark.parametrize("role, applies", [(Role.ANALYST, True), (Role.EDUCATOR, False),
                                           (Role.TENANT_ADMIN, False), (Role.ADMIN, False)])
def test_who_gets_suppressed_figures(role, applies):
    identity = Identity("k", role, None if role is Role.ADMIN else "t1")
    assert suppression_applies(identity) is applies


# --- properties ---------------------------------------------------------------------------------------

LEARNERS = [f"u{i}" for i in range(40)]


@st.composite
def tables(draw):
    """Buckets of groups, each group an (additive value, set of learners) pair; a few groups learner-free."""
    k = draw(st.integers(1, 12))
    buckets = draw(st.lists(st.integers(0, 5), min_size=1, max_size=4, unique=True))
    table = {}
    for bucket in buckets:
        names = draw(st.lists(st.sampled_from(["s1", "s2", "s3", "s4", "s5", None]), min_size=1, max_size=6,
                              unique=True))
        for name in names:
            people = frozenset(draw(st.lists(st.sampled_from(LEARNERS), max_size=25)))
            value = draw(st.integers(0, 1000))
            table[(bucket * 3600, name)] = (value, people)
    return k, table


def _cells(table) -> list[Cell]:
    return [Cell(bucket, group, value, len(people)) for (bucket, group), (value, people) in table.items()]


def _totals(table) -> list[Cell]:
    """The by=none cells: one per bucket, learners the union, value the sum (an additive metric)."""
    totals: dict[int, tuple[int, set]] = {}
    for (bucket, _), (value, people) in table.items():
        sum_, union = totals.get(bucket, (0, set()))
        totals[bucket] = (sum_ + value, union | people)
    return [Cell(bucket, None, value, len(union)) for bucket, (value, union) in totals.items()]


@settings(max_examples=400, deadline=None)
@given(tables())
def test_no_shown_cell_has_fewer_than_k_learners(drawn):
    k, table = drawn
    learners = {(c.bucket, c.group): c.learners for c in _cells(table)}
    for cell in suppress(_cells(table), k).cells:
        assert learners[(cell.bucket, cell.group)] >= 1
        if not cell.suppressed:
            assert learners[(cell.bucket, cell.group)] >= k and cell.value is not None
        else:
            assert cell.value is None


@settings(max_examples=400, deadline=None)
@given(tables())
def test_no_withheld_value_follows_from_a_shown_total(drawn):
    """Where the bucket's total is shown, subtracting the shown cells from it leaves the sum of at least two
    withheld cells (or of none), never one withheld value."""
    k, table = drawn
    shown_totals = {c.bucket for c in suppress(_totals(table), k).cells if not c.suppressed}
    groups = suppress(_cells(table), k).cells
    for bucket in shown_totals:
        withheld = [c for c in groups if c.bucket == bucket and c.suppressed]
        assert len(withheld) != 1, (bucket, groups)


@settings(max_examples=200, deadline=None)
@given(tables(), st.randoms(use_true_random=False))
def test_the_output_does_not_depend_on_the_order_of_the_cells(drawn, rng: random.Random):
    k, table = drawn
    cells = _cells(table)
    shuffled = list(cells)
    rng.shuffle(shuffled)
    assert suppress(cells, k) == suppress(shuffled, k)
    assert exact(cells, k) == exact(shuffled, k)


@settings(max_examples=200, deadline=None)
@given(tables())
def test_only_learner_free_cells_are_left_out(drawn):
    k, table = drawn
    out = suppress(_cells(table), k)
    kept = {(c.bucket, c.group) for c in out.cells}
    assert kept == {key for key, (_, people) in table.items() if people}
    assert out.dropped_cells == sum(1 for _, people in table.values() if not people)
    assert out.suppressed_cells == sum(c.suppressed for c in out.cells)
