"""The multi-click simulator: shapes, seeds, several clicks per slate, per-slot rewards,
boredom, episodes that end together at the time limit, and the greedy one-step oracle."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest

from recsys.simulator.multiclick import (
    MULTICLICK_REWARD_KEY,
    MultiClickSettings,
    MultiClickVectorEnv,
    multiclick_world,
)

SMALL = MultiClickSettings(num_items=60, num_topics=4, num_users=50, slate_size=4, horizon=6)


def _random_slates(env: MultiClickVectorEnv, rng: np.random.Generator) -> np.ndarray:
    keys = rng.random((env.num_envs, env.num_items))
    return np.argsort(keys, axis=1)[:, : env.slate_size]


def test_default_sizes_and_spaces() -> None:
    env = MultiClickVectorEnv(3)
    obs, _ = env.reset(seed=0)
    cfg = env.settings
    assert (env.num_items, cfg.slate_size, cfg.horizon) == (1000, 10, 100)
    assert obs["user"].shape == (3, 2 * cfg.num_topics)
    assert obs["candidate_ids"].shape == (3, 1000)
    np.testing.assert_array_equal(obs["candidate_ids"][2], np.arange(1000))  # whole catalog
    assert env.item_table.shape == (1000, cfg.num_topics + 2)
    assert not env.item_table.flags.writeable
    assert env.observation_space.contains(obs)
    assert env.single_action_space.shape == (10,)


def test_a_seed_reproduces_every_draw_and_another_seed_differs() -> None:
    def play(seed: int) -> list[np.ndarray]:
        env = MultiClickVectorEnv(8, SMALL)
        obs, _ = env.reset(seed=seed)
        rng = np.random.default_rng(0)
        out = [obs["user"]]
        for _ in range(2 * SMALL.horizon + 2):
            obs, reward, _, _, info = env.step(_random_slates(env, rng))
            out += [obs["user"], reward, info["clicks"]]
        return out

    first, again, other = play(5), play(5), play(6)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_slates_get_several_clicks_each_paying_its_items_reward() -> None:
    env = MultiClickVectorEnv(64, replace(SMALL, horizon=50))
    env.reset(seed=1)
    clicks_per_slate, rewards = [], []
    for _ in range(20):
        slates = env.oracle_slates()
        _, reward, _, _, info = env.step(slates)
        clicks, slot = info["clicks"], info[MULTICLICK_REWARD_KEY]
        assert clicks.shape == slot.shape == (64, SMALL.slate_size)
        np.testing.assert_array_equal(slot, np.where(clicks, env.click_reward[slates], 0.0))
        np.testing.assert_allclose(reward, slot.sum(axis=1), rtol=1e-6)
        np.testing.assert_allclose(info["watch_time_s"], 60.0 * slot)
        clicks_per_slate.append(clicks.sum(axis=1))
        rewards.append(slot[clicks])
    counts = np.concatenate(clicks_per_slate)
    assert (counts >= 2).mean() > 0.2  # several clicks are common, not a corner case
    paid = np.concatenate(rewards)
    assert np.unique(np.round(paid, 4)).size > 10  # per item, not one flat reward


def test_every_episode_ends_by_the_time_limit_on_the_same_step() -> None:
    env = MultiClickVectorEnv(5, replace(SMALL, horizon=100))
    env.reset(seed=2)
    rng = np.random.default_rng(0)
    ended = []
    for t in range(1, 103):
        _, reward, terminated, truncated, info = env.step(_random_slates(env, rng))
        assert not terminated.any()  # never terminated: a time limit
        if truncated.any():
            assert truncated.all()
            ended.append(t)
        if t == 101:  # the reset step: new users, nothing paid
            assert info["autoreset"].all()
            assert reward.sum() == 0
            assert not info["clicks"].any()
    assert ended == [100]


def test_a_reset_step_starts_new_users_without_boredom() -> None:
    env = MultiClickVectorEnv(16, replace(SMALL, horizon=3))
    env.reset(seed=3)
    users = env.users.copy()
    for _ in range(3):
        env.step(env.oracle_slates())
    assert env.boredom.sum() > 0
    obs, *_ = env.step(env.oracle_slates())
    assert env.boredom.sum() == 0
    assert (env.users != users).any()
    np.testing.assert_array_equal(obs["user"][:, : SMALL.num_topics], env.interests)


def test_boredom_lowers_a_clicked_topics_attraction_and_wears_off() -> None:
    env = MultiClickVectorEnv(32, replace(SMALL, exposure_boredom=0.0))
    env.reset(seed=4)
    slates = env.oracle_slates()
    before = env.attraction(slates)
    _, _, _, _, info = env.step(slates)
    clicked = info["clicks"]
    after = env.attraction(slates)
    assert (after[clicked] < before[clicked]).all()
    rows = ~clicked.any(axis=1)
    np.testing.assert_allclose(after[rows], before[rows])  # no click, no boredom
    bored = env.boredom.copy()
    env.boredom *= env.boredom_decay**50  # what 50 steps away from the topic do
    assert (np.abs(env.attraction(slates) - before) < np.abs(after - before) + 1e-7).all()
    assert bored.max() > 0


def test_exposure_alone_bores_a_little() -> None:
    env = MultiClickVectorEnv(8, replace(SMALL, click_boredom=0.0, exposure_boredom=0.1))
    env.reset(seed=5)
    slates = env.oracle_slates()
    env.step(slates)
    expected = 0.1 * np.einsum("s,bst->bt", env.examination, env.topics[slates])
    np.testing.assert_allclose(env.boredom, expected, rtol=1e-5, atol=1e-7)


def test_the_greedy_oracle_is_the_best_slate_for_the_immediate_reward() -> None:
    cfg = replace(SMALL, num_items=9, slate_size=3)
    env = MultiClickVectorEnv(4, cfg)
    env.reset(seed=6)
    values = env.expected_item_rewards()
    oracle = env.oracle_slates()
    for row in range(env.num_envs):
        best = max(
            float((env.examination * values[row, list(s)]).sum())
            for s in itertools.permutations(range(cfg.num_items), cfg.slate_size)
        )
        got = float((env.examination * values[row, oracle[row]]).sum())
        assert got == pytest.approx(best, rel=1e-6)


def test_the_oracles_expected_rewards_are_what_the_env_pays_on_average() -> None:
    env = MultiClickVectorEnv(4000, SMALL)
    env.reset(seed=7)
    slates = np.tile(env.oracle_slates()[:1], (env.num_envs, 1))
    env.interests[:] = env.interests[0]  # one user's state, 4000 times
    expected = float((env.examination * env.expected_item_rewards()[0, slates[0]]).sum())
    _, reward, *_ = env.step(slates)
    assert reward.mean() == pytest.approx(expected, rel=0.05)


def test_repeated_items_in_a_slate_are_replaced_and_bad_actions_refused() -> None:
    env = MultiClickVectorEnv(2, SMALL)
    env.reset(seed=8)
    env.step(np.zeros((2, SMALL.slate_size), np.int64))  # every slot the same item: fixed
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros((2, SMALL.slate_size + 1), np.int64))
    with pytest.raises(ValueError, match="must lie in"):
        env.step(np.full((2, SMALL.slate_size), SMALL.num_items))


def test_settings_are_checked_and_the_world_is_the_projects() -> None:
    with pytest.raises(ValueError, match="slate_size"):
        MultiClickSettings(num_items=5, slate_size=6)
    with pytest.raises(ValueError, match="examination_decay"):
        MultiClickSettings(examination_decay=0.0)
    with pytest.raises(ValueError, match="horizon"):
        MultiClickSettings(horizon=0)
    with pytest.raises(ValueError, match="num_envs"):
        MultiClickVectorEnv(0, SMALL)
    world = multiclick_world(SMALL)
    env = MultiClickVectorEnv(2, SMALL)
    np.testing.assert_array_equal(env.topics, world.item_topics)
    np.testing.assert_array_equal(env.item_table[:, -2], world.item_quality)
    with pytest.raises(ValueError, match="world has"):
        MultiClickVectorEnv(2, replace(SMALL, num_items=61), world=world)
