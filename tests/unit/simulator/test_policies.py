"""Reference batch policies and the lifetime rollout."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.config import SimulatorSettings
from recsys.data import SyntheticWorld
from recsys.simulator import REFERENCE_POLICIES, SlateEnv, rollout_lifetimes, top_k_slates


def test_top_k_picks_the_best_in_order() -> None:
    candidates = np.array([[10, 11, 12, 13], [20, 21, 22, 23]])
    scores = np.array([[0.1, 0.9, 0.5, 0.3], [3.0, 1.0, 2.0, 0.0]], dtype=np.float32)
    np.testing.assert_array_equal(top_k_slates(candidates, scores, 2), [[11, 12], [20, 22]])
    with pytest.raises(ValueError, match="slate_size"):
        top_k_slates(candidates, scores, 5)


@pytest.mark.parametrize("name", sorted(REFERENCE_POLICIES))
def test_baseline_policies_return_valid_slates(small_world: SyntheticWorld, name: str) -> None:
    env = SlateEnv(small_world, seed=0, settings=SimulatorSettings(num_candidates=25))
    users = np.arange(small_world.num_users)
    candidates = env.sample_candidates(users)
    slates = REFERENCE_POLICIES[name](env, users, candidates, 6, np.random.default_rng(0))
    assert slates.shape == (small_world.num_users, 6)
    assert all(set(s) <= set(c) for s, c in zip(slates.tolist(), candidates.tolist(), strict=True))
    env.step(users, slates)  # distinct and in range, or this raises


def test_clickbait_policy_prefers_clickbait(small_world: SyntheticWorld) -> None:
    env = SlateEnv(small_world, seed=0, settings=SimulatorSettings(num_candidates=50))
    users = np.arange(small_world.num_users)
    candidates = env.sample_candidates(users)
    rng = np.random.default_rng(0)
    bait = REFERENCE_POLICIES["clickbait"](env, users, candidates, 3, rng)
    good = REFERENCE_POLICIES["quality"](env, users, candidates, 3, rng)
    assert small_world.item_clickbait[bait].mean() > 0.5
    assert small_world.item_clickbait[good].mean() < 0.05
    assert small_world.item_quality[good].mean() > small_world.item_quality.mean() + 0.3


def test_rollout_accounts_for_every_life(small_world: SyntheticWorld) -> None:
    env = SlateEnv(small_world, seed=0, settings=SimulatorSettings(num_candidates=20))
    users = np.arange(0, small_world.num_users, 2)
    summary = rollout_lifetimes(
        env,
        REFERENCE_POLICIES["random"],
        users,
        slate_size=5,
        max_steps=400,
        rng=np.random.default_rng(0),
    )
    assert summary.steps.shape == users.shape
    assert np.all(summary.steps >= 1)
    assert np.all(summary.clicks <= summary.steps)
    assert not summary.truncated.any()
    assert summary.alive_after[-1] == 0.0
    assert np.all(np.diff(summary.alive_after) <= 0)
    stats = summary.as_dict()
    assert 0.0 < stats["ctr"] < 1.0
    assert stats["lifetime_value_min"] == pytest.approx(summary.dwell_s.mean() / 60)
    with pytest.raises(ValueError, match="distinct"):
        rollout_lifetimes(
            env,
            REFERENCE_POLICIES["random"],
            np.array([1, 1]),
            slate_size=5,
            max_steps=3,
            rng=np.random.default_rng(0),
        )
