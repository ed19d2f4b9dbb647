"""Mergeable distinct sketches: exact sets stay exact through any union; registers estimate within the stated
error; the text form round-trips; what the stores' SQL computes is what this module computes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cohort.analytics import distinct_sketch
from cohort.analytics.distinct_sketch import (REGISTERS, RELATIVE_STANDARD_ERROR, Sketch, count, estimate, from_packed,
                                              merged, registers_of)


def _hashes(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2**64, size=n, dtype=np.uint64)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 2**64 - 1), max_size=40), max_size=6))
def test_a_union_of_exact_sketches_counts_exactly(parts):
    sketches = [Sketch(hashes=np.array(p, dtype=np.uint64)) for p in parts]
    union = merged(Sketch.parse(s.text()) for s in sketches)
    assert union.exact
    assert count(union) == len({h for p in parts for h in p})


@pytest.mark.parametrize("n", [50, 3_000, 40_000, 1_000_000])
def test_registers_estimate_within_four_standard_errors(n):
    errors = [estimate(registers_of(_hashes(n, seed))) / n - 1 for seed in range(3)]
    assert all(abs(e) < 4 * RELATIVE_STANDARD_ERROR for e in errors), errors
    assert abs(float(np.mean(errors))) < 3 * RELATIVE_STANDARD_ERROR


def test_merging_registers_equals_the_registers_of_the_union():
    a, b = _hashes(20_000, 1), _hashes(30_000, 2)
    exact_part = Sketch(hashes=_hashes(500, 3))
    union = merged([Sketch(registers=registers_of(a)), Sketch(registers=registers_of(b)), exact_part])
    assert not union.exact
    assert np.array_equal(union.registers, registers_of(np.concatenate([a, b, exact_part.hashes])))
    overlap = merged([Sketch(registers=registers_of(a)), Sketch(registers=registers_of(a[:10_000]))])
    assert count(overlap) == count(Sketch(registers=registers_of(a)))  # a union counts shared items once


def test_the_text_form_round_trips_and_is_small():
    registers = registers_of(_hashes(100_000, 4))
    text = Sketch(registers=registers).text()
    assert text.startswith("z") and len(text) < 3_000  # deflated: base64 of the 4 096 bytes would be 5 464
    assert np.array_equal(Sketch.parse(text).registers, registers)
    assert count(Sketch.parse("")) == 0 and count(Sketch.parse(None)) == 0 and count(Sketch.parse("e")) == 0
    packed = np.flatnonzero(registers).astype(np.uint64) * np.uint64(64) + registers[registers > 0].astype(np.uint64)
    assert np.array_equal(from_packed(packed).registers, registers)


@pytest.mark.parametrize("text", ["x123", "zAAAA", "z" + "A" * 8])
def test_a_damaged_sketch_is_refused(text):
    with pytest.raises(Exception):
        Sketch.parse(text)


def test_the_rank_is_one_more_than_the_leading_zeros_of_the_hash_above_the_register_bits():
    p = distinct_sketch.P
    top = np.uint64(1) << np.uint64(63)  # no leading zero: rank 1
    assert registers_of(np.array([top | np.uint64(5)], dtype=np.uint64))[5] == 1
    assert registers_of(np.array([np.uint64(1) << np.uint64(p)], dtype=np.uint64))[0] == 64 - p  # 51 zeros
    assert registers_of(np.array([np.uint64(7)], dtype=np.uint64))[7] == 64 - p + 1  # nothing above the bits
    assert len(registers_of(np.zeros(0, dtype=np.uint64))) == REGISTERS


def test_counting_many_cells_at_once_gives_each_cell_its_own_count():
    small = [Sketch(hashes=_hashes(n, seed)) for seed, n in enumerate((0, 3, 700, 1_000))]
    large = [Sketch(registers=registers_of(_hashes(n, 10 + seed))) for seed, n in enumerate((5_000, 80_000, 2))]
    cells = [[], [small[0].text()], [small[1].text(), small[2].text()], [large[0].text()],
             [small[3].text(), large[1].text(), large[2].text()], ["", None, small[1].text()], [large[1].text()] * 3]
    counted, exact = distinct_sketch.counts(cells)
    expected = [merged([Sketch.parse(text) for text in texts]) if texts else Sketch.parse("") for texts in cells]
    assert counted == [count(sketch) for sketch in expected]
    assert exact == [sketch.exact for sketch in expected] == [True, True, True, False, False, True, False]
    assert counted[2] == 703 and abs(counted[4] / 86_000 - 1) < 4 * RELATIVE_STANDARD_ERROR
    assert distinct_sketch.counts([]) == ([], [])


@pytest.mark.parametrize("n", [1, 2, 3, 5, 1023, 1024])
def test_one_exact_set_is_counted_from_its_length_as_decoding_would(n):
    text = Sketch(hashes=_hashes(n, n)).text()
    assert distinct_sketch.counts([[text]]) == ([n], [True]) == ([count(Sketch.parse(text))], [True])
    with pytest.raises(ValueError):
        distinct_sketch.counts([[text[:-1]]])
