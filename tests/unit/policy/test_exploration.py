"""Plackett-Luce sampling: exact conditional propensities, faithful samples, no NaN at T -> 0."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from recsys.policy import plackett_luce_propensities, plackett_luce_sample, slate_log_probability

SCORES = np.array([1.2, 0.3, -0.5, 0.9], dtype=np.float32)


def _brute_force_slate_probability(scores: np.ndarray, slate: tuple[int, ...], t: float) -> float:
    """Textbook PL: pick each slot from the softmax over the not-yet-chosen items."""
    weights = {i: math.exp(float(s) / t) for i, s in enumerate(scores)}
    p = 1.0
    for item in slate:
        p *= weights[item] / sum(weights.values())
        del weights[item]
    return p


def test_propensities_sum_to_one_over_all_ordered_slates() -> None:
    total = sum(
        float(np.prod(plackett_luce_propensities(SCORES, np.array(slate), 0.7)))
        for slate in itertools.permutations(range(4), 2)
    )
    assert total == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("slate", list(itertools.permutations(range(4), 2)))
def test_slate_probability_matches_brute_force(slate: tuple[int, int]) -> None:
    expected = _brute_force_slate_probability(SCORES, slate, 0.7)
    got = math.exp(slate_log_probability(SCORES, np.array(slate), 0.7))
    assert got == pytest.approx(expected, rel=1e-6)


def test_propensities_are_exact_conditionals() -> None:
    t = 0.5
    idx, prop = plackett_luce_sample(SCORES, 3, t, np.random.default_rng(0))
    weights = np.exp(SCORES.astype(np.float64) / t)
    remaining = np.ones(4, dtype=bool)
    for slot, item in enumerate(idx):
        expected = weights[item] / weights[remaining].sum()
        assert prop[slot] == pytest.approx(expected, rel=1e-6)
        remaining[item] = False


def test_empirical_frequencies_match_propensities() -> None:
    rng = np.random.default_rng(0)
    n = 30_000
    counts: dict[tuple[int, int], int] = {}
    for _ in range(n):
        idx, _ = plackett_luce_sample(SCORES, 2, 0.7, rng)
        key = (int(idx[0]), int(idx[1]))
        counts[key] = counts.get(key, 0) + 1
    for slate in itertools.permutations(range(4), 2):
        expected = _brute_force_slate_probability(SCORES, slate, 0.7)
        assert counts.get(slate, 0) / n == pytest.approx(expected, abs=0.01)


def test_sample_reports_the_probability_of_what_it_sampled() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        idx, prop = plackett_luce_sample(SCORES, 3, 0.3, rng)
        np.testing.assert_allclose(prop, plackett_luce_propensities(SCORES, idx, 0.3), rtol=1e-6)


@pytest.mark.parametrize("t", [1e-6, 1e-30, 1e-300])
def test_tiny_temperature_is_greedy_without_nan(t: float) -> None:
    idx, prop = plackett_luce_sample(SCORES, 4, t, np.random.default_rng(0))
    np.testing.assert_array_equal(idx, [0, 3, 1, 2])
    assert np.all(np.isfinite(prop))
    np.testing.assert_allclose(prop, 1.0)
    assert np.isfinite(slate_log_probability(SCORES, idx, t))
    # The reverse order is astronomically unlikely but must still be a finite log-prob.
    assert np.isfinite(slate_log_probability(SCORES, idx[::-1], t))


def test_tiny_temperature_splits_exact_ties() -> None:
    scores = np.array([1.0, 1.0, 0.0], dtype=np.float32)
    idx, prop = plackett_luce_sample(scores, 2, 1e-6, np.random.default_rng(0))
    assert set(idx.tolist()) == {0, 1}
    np.testing.assert_allclose(prop, [0.5, 1.0], rtol=1e-6)


def test_full_slate_ends_with_certainty() -> None:
    idx, prop = plackett_luce_sample(SCORES, 4, 1.0, np.random.default_rng(2))
    assert sorted(idx.tolist()) == [0, 1, 2, 3]
    assert prop[-1] == pytest.approx(1.0)


def test_huge_score_range_stays_finite() -> None:
    scores = np.array([3e38, -3e38, 0.0], dtype=np.float32)
    idx, prop = plackett_luce_sample(scores, 3, 1e-3, np.random.default_rng(0))
    np.testing.assert_array_equal(idx, [0, 2, 1])
    assert np.all(np.isfinite(prop))
    assert np.all(prop > 0)


def test_same_rng_seed_same_slate() -> None:
    a = plackett_luce_sample(SCORES, 3, 1.0, np.random.default_rng(7))
    b = plackett_luce_sample(SCORES, 3, 1.0, np.random.default_rng(7))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


@settings(max_examples=60, deadline=None)
@given(
    scores=arrays(np.float32, st.integers(1, 30), elements=st.floats(-10, 10, width=32)),
    temperature=st.floats(1e-8, 100.0),
    seed=st.integers(0, 2**32 - 1),
    data=st.data(),
)
def test_sample_properties(
    scores: np.ndarray, temperature: float, seed: int, data: st.DataObject
) -> None:
    k = data.draw(st.integers(1, scores.shape[0]))
    idx, prop = plackett_luce_sample(scores, k, temperature, np.random.default_rng(seed))
    assert idx.shape == prop.shape == (k,)
    assert idx.dtype == np.int64
    assert prop.dtype == np.float32
    assert np.unique(idx).shape[0] == k
    assert np.all((prop > 0) & (prop <= 1))
    # Over all candidates, first-slot propensities form the full softmax and sum to 1.
    firsts = [
        plackett_luce_propensities(scores, np.array([i]), temperature)[0]
        for i in range(scores.shape[0])
    ]
    assert sum(firsts) == pytest.approx(1.0, abs=1e-4)
    log_p = slate_log_probability(scores, idx, temperature)
    assert log_p <= 0
    assert log_p == pytest.approx(float(np.log(prop.astype(np.float64)).sum()), abs=1e-3)


@pytest.mark.parametrize(
    ("scores", "k", "t", "match"),
    [
        (SCORES, 0, 1.0, "slate_size"),
        (SCORES, 5, 1.0, "slate_size"),
        (SCORES, 2, 0.0, "temperature"),
        (SCORES, 2, float("inf"), "temperature"),
        (np.array([1.0, np.nan], dtype=np.float32), 1, 1.0, "finite"),
        (np.zeros(0, dtype=np.float32), 1, 1.0, "non-empty"),
        (np.zeros((2, 2), dtype=np.float32), 1, 1.0, "1-D"),
    ],
)
def test_sample_rejects_bad_input(scores: np.ndarray, k: int, t: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        plackett_luce_sample(scores, k, t, np.random.default_rng(0))


@pytest.mark.parametrize(
    ("indices", "match"),
    [
        (np.array([0, 0]), "distinct"),
        (np.array([0, 4]), "lie in"),
        (np.array([0.0, 1.0]), "integers"),
        (np.zeros(0, dtype=np.int64), "1..4"),
    ],
)
def test_log_probability_rejects_bad_slates(indices: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        slate_log_probability(SCORES, indices, 1.0)
