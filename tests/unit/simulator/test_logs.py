"""Uniform logging policy: unbiased slates, exact propensities, well-formed logged rows."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.config import CatalogSettings
from recsys.data import SyntheticWorld, make_world
from recsys.simulator import MultinomialLogitChoice, SlateEnv, simulate_logs
from recsys.simulator.logs import uniform_random_slates


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


@pytest.fixture
def world() -> SyntheticWorld:
    return make_world(CatalogSettings(num_items=100, num_users=30, num_topics=6, seed=4))


def test_simulate_logs_rows(world: SyntheticWorld) -> None:
    env = SlateEnv(world, MultinomialLogitChoice(no_click_logit=0.0), seed=0)
    logs = simulate_logs(world, env, 1_000, 5, np.random.default_rng(0))
    assert logs.num_rows == 5_000
    for arr in (logs.user_idx, logs.item_idx, logs.position, logs.slate_idx):
        assert arr.shape == (5_000,)
        assert arr.dtype == np.int64
    assert logs.clicked.dtype == logs.propensity.dtype == np.float32
    np.testing.assert_array_equal(logs.position[:10], [0, 1, 2, 3, 4] * 2)
    np.testing.assert_array_equal(logs.slate_idx[:10], [0] * 5 + [1] * 5)
    np.testing.assert_allclose(logs.propensity, 1.0 / (100 - logs.position), rtol=1e-6)
    by_slate = logs.clicked.reshape(1_000, 5)
    assert np.all(by_slate.sum(axis=1) <= 1)
    assert 0 < by_slate.sum() < 1_000
    # One user per slate, and distinct items within a slate.
    users = logs.user_idx.reshape(1_000, 5)
    assert np.all(users == users[:, :1])
    items = np.sort(logs.item_idx.reshape(1_000, 5), axis=1)
    assert not np.any(items[:, 1:] == items[:, :-1])


def test_simulate_logs_is_deterministic(world: SyntheticWorld) -> None:
    def run() -> tuple[np.ndarray, ...]:
        env = SlateEnv(world, MultinomialLogitChoice(), seed=3)
        return tuple(simulate_logs(world, env, 200, 4, np.random.default_rng(9)))

    for a, b in zip(run(), run(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_simulate_logs_rejects_mismatched_env(world: SyntheticWorld) -> None:
    other = make_world(CatalogSettings(num_items=50, num_users=30, num_topics=6))
    env = SlateEnv(other, MultinomialLogitChoice(), seed=0)
    with pytest.raises(ValueError, match="world"):
        simulate_logs(world, env, 10, 3, np.random.default_rng(0))


def test_simulate_logs_zero_impressions(world: SyntheticWorld) -> None:
    env = SlateEnv(world, MultinomialLogitChoice(), seed=0)
    logs = simulate_logs(world, env, 0, 3, np.random.default_rng(0))
    assert logs.num_rows == 0
