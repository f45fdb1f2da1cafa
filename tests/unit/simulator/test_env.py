"""SlateEnv: seeded batched steps, the affinity model, and input validation."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.data import SyntheticWorld
from recsys.simulator import MultinomialLogitChoice, SlateEnv, StepResult
from recsys.simulator.logs import uniform_random_slates


def _batch(world: SyntheticWorld, n: int, slate_size: int, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    users = rng.integers(0, world.num_users, size=n)
    return users, uniform_random_slates(world.num_items, slate_size, n, rng)


def _assert_same(a: StepResult, b: StepResult) -> None:
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_same_seed_same_steps(small_world: SyntheticWorld) -> None:
    users, slates = _batch(small_world, 300, 6, seed=0)
    env_a = SlateEnv(small_world, MultinomialLogitChoice(), seed=5)
    env_b = SlateEnv(small_world, MultinomialLogitChoice(), seed=5)
    for _ in range(3):
        _assert_same(env_a.step(users, slates), env_b.step(users, slates))


def test_reset_with_seed_replays(small_world: SyntheticWorld) -> None:
    users, slates = _batch(small_world, 300, 6, seed=0)
    env = SlateEnv(small_world, MultinomialLogitChoice(), seed=0)
    obs = env.reset(seed=42)
    assert obs.t == 0
    np.testing.assert_array_equal(obs.active_users, np.arange(small_world.num_users))
    first = [env.step(users, slates) for _ in range(2)]
    env.reset(seed=42)
    second = [env.step(users, slates) for _ in range(2)]
    for a, b in zip(first, second, strict=True):
        _assert_same(a, b)
    assert not np.array_equal(first[0].clicks, first[1].clicks)  # the stream moves on


def test_step_result_is_consistent(small_world: SyntheticWorld) -> None:
    users, slates = _batch(small_world, 500, 5, seed=1)
    env = SlateEnv(small_world, MultinomialLogitChoice(no_click_logit=-1.0), seed=0)
    res = env.step(users, slates)
    assert res.clicked_item.shape == res.click_position.shape == (500,)
    assert res.clicked_item.dtype == res.click_position.dtype == np.int64
    assert res.clicks.shape == res.affinity.shape == (500, 5)
    assert res.clicks.dtype == np.bool_
    assert res.affinity.dtype == np.float32
    assert res.probabilities.shape == (500, 6)
    assert np.all(res.clicks.sum(axis=1) <= 1)
    none = res.click_position == -1
    assert 0 < none.sum() < 500
    np.testing.assert_array_equal(res.clicked_item[none], -1)
    np.testing.assert_array_equal(res.clicks.any(axis=1), ~none)
    rows = np.flatnonzero(~none)
    np.testing.assert_array_equal(res.clicked_item[rows], slates[rows, res.click_position[rows]])
    np.testing.assert_array_equal(res.clicks[rows, res.click_position[rows]], True)


def test_affinity_is_interest_dot_topics_plus_quality(small_world: SyntheticWorld) -> None:
    users, slates = _batch(small_world, 20, 4, seed=2)
    env = SlateEnv(small_world, MultinomialLogitChoice(), seed=0, quality_weight=0.3)
    expected = np.array(
        [
            [
                small_world.user_interests[u] @ small_world.item_topics[i]
                + 0.3 * small_world.item_quality[i]
                for i in row
            ]
            for u, row in zip(users, slates, strict=True)
        ]
    )
    np.testing.assert_allclose(env.step(users, slates).affinity, expected, rtol=1e-5, atol=1e-6)


def test_interested_user_clicks_their_topic_much_more(topic_world: SyntheticWorld) -> None:
    # User 0 has interest +1 in topic 0 and -1 elsewhere; item i has topic i % 4.
    n, slate_size = 20_000, 4
    rng = np.random.default_rng(0)
    slates = uniform_random_slates(topic_world.num_items, slate_size, n, rng)
    choice = MultinomialLogitChoice(no_click_logit=0.0, position_bias=0.0, affinity_scale=1.0)
    env = SlateEnv(topic_world, choice, seed=0)
    res = env.step(np.zeros(n, dtype=np.int64), slates)
    on_topic = slates % 4 == 0
    ctr_on = res.clicks[on_topic].mean()
    ctr_off = res.clicks[~on_topic].mean()
    # Utility gap of 2 nats means about exp(2) = 7.4x; demand far less than that, and more
    # than any sampling noise at 20k slates could produce.
    assert ctr_on > 4 * ctr_off


def test_no_click_extremes(small_world: SyntheticWorld) -> None:
    users, slates = _batch(small_world, 200, 3, seed=3)
    never = SlateEnv(small_world, MultinomialLogitChoice(no_click_logit=50.0), seed=0)
    assert np.all(never.step(users, slates).clicked_item == -1)
    always = SlateEnv(small_world, MultinomialLogitChoice(no_click_logit=-50.0), seed=0)
    assert np.all(always.step(users, slates).clicked_item >= 0)


def test_empty_batch(small_world: SyntheticWorld) -> None:
    env = SlateEnv(small_world, MultinomialLogitChoice(), seed=0)
    res = env.step(np.zeros(0, dtype=np.int64), np.zeros((0, 3), dtype=np.int64))
    assert res.clicks.shape == (0, 3)


@pytest.mark.parametrize(
    ("users", "slates", "match"),
    [
        ([0, 1], [[0, 1, 2]], "rows"),
        ([0], [0, 1, 2], "2-D"),
        ([[0]], [[0, 1, 2]], "1-D"),
        ([0], [[0, 1, 1]], "repeat"),
        ([0], [[0, 1, 200]], r"slates must lie in \[0, 200\)"),
        ([0], [[-1, 1, 2]], "slates must lie"),
        ([50], [[0, 1, 2]], r"user_idx must lie in \[0, 50\)"),
        ([0], [[0.0, 1.0, 2.0]], "integers"),
        ([0], np.zeros((1, 0), dtype=np.int64), "at least one"),
    ],
)
def test_bad_inputs_raise(
    small_world: SyntheticWorld, users: object, slates: object, match: str
) -> None:
    env = SlateEnv(small_world, MultinomialLogitChoice(), seed=0)
    with pytest.raises(ValueError, match=match):
        env.step(users, slates)  # type: ignore[arg-type]
