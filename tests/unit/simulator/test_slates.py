"""The tests' uniform slate helper: distinct items, every ordering equally likely."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.simulator.slates import uniform_random_slates


@settings(max_examples=40, deadline=None)
@given(
    num_items=st.integers(1, 50),
    data=st.data(),
    num_slates=st.integers(0, 40),
    seed=st.integers(0, 1000),
)
def test_uniform_slates_are_distinct_and_in_range(
    num_items: int, data: st.DataObject, num_slates: int, seed: int
) -> None:
    slate_size = data.draw(st.integers(1, num_items))
    slates = uniform_random_slates(num_items, slate_size, num_slates, np.random.default_rng(seed))
    assert slates.shape == (num_slates, slate_size)
    assert slates.dtype == np.int64
    if num_slates:
        assert slates.min() >= 0
        assert slates.max() < num_items
        ordered = np.sort(slates, axis=1)
        assert not np.any(ordered[:, 1:] == ordered[:, :-1])


def test_uniform_slates_cover_every_ordering_equally() -> None:
    n = 60_000
    slates = uniform_random_slates(4, 2, n, np.random.default_rng(0))
    codes = slates[:, 0] * 4 + slates[:, 1]
    counts = np.bincount(codes, minlength=16)
    expected = {a * 4 + b for a, b in itertools.permutations(range(4), 2)}
    assert set(np.flatnonzero(counts)) == expected
    freq = counts[sorted(expected)] / n
    np.testing.assert_allclose(freq, 1 / 12, atol=0.006)


def test_uniform_slates_are_position_unbiased() -> None:
    slates = uniform_random_slates(10, 5, 40_000, np.random.default_rng(1))
    for position in range(5):
        freq = np.bincount(slates[:, position], minlength=10) / slates.shape[0]
        np.testing.assert_allclose(freq, 0.1, atol=0.01)


def test_uniform_slates_reject_bad_sizes() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="slate_size"):
        uniform_random_slates(5, 6, 3, rng)
    with pytest.raises(ValueError, match="slate_size"):
        uniform_random_slates(5, 0, 3, rng)
    with pytest.raises(ValueError, match="num_slates"):
        uniform_random_slates(5, 2, -1, rng)
