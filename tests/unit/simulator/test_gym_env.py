"""Gymnasium wrappers: the env checker, registration, action repair, vector autoreset."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.config import CatalogSettings, SimulatorSettings
from recsys.data import SyntheticWorld, make_world
from recsys.simulator import (
    SLATE_ENV_ID,
    SLATE_VECTOR_ENV_ID,
    SlateGymEnv,
    SlateVectorEnv,
    click_reward,
    register_envs,
)
from recsys.simulator.gym_env import dedupe_actions

CFG = SimulatorSettings(num_candidates=12, slate_size=4, max_episode_steps=60)


@pytest.fixture(scope="module")
def world() -> SyntheticWorld:
    return make_world(CatalogSettings(num_items=150, num_users=30, num_topics=5, seed=1))


def test_single_env_passes_the_env_checker(world: SyntheticWorld) -> None:
    env = gymnasium.make(SLATE_ENV_ID, world=world, settings=CFG)
    check_env(env.unwrapped)
    env.close()


def test_default_registered_envs_build() -> None:
    env = gymnasium.make(SLATE_ENV_ID)
    obs, _ = env.reset(seed=0)
    assert obs["candidates"].shape == (100, 20)
    assert env.action_space.shape == (10,)
    vec = gymnasium.make_vec(SLATE_VECTOR_ENV_ID, num_envs=3)
    assert vec.num_envs == 3
    via_entry_point = gymnasium.make_vec(
        SLATE_ENV_ID, num_envs=2, vectorization_mode="vector_entry_point"
    )
    assert isinstance(via_entry_point, SlateVectorEnv)


def test_registration_is_idempotent() -> None:
    register_envs()
    register_envs()
    assert SLATE_ENV_ID in gymnasium.registry
    assert SLATE_VECTOR_ENV_ID in gymnasium.registry


def test_episode_is_a_life_with_engagement_reward(world: SyntheticWorld) -> None:
    env = SlateGymEnv(world, CFG)
    obs, info = env.reset(seed=3)
    assert obs in env.observation_space
    total, steps = 0.0, 0
    while True:
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert obs in env.observation_space
        assert reward == pytest.approx(info["signals"]["dwell_s"] / 60.0, rel=1e-6)
        total += reward
        steps += 1
        if terminated or truncated:
            break
    assert steps <= CFG.max_episode_steps
    assert total == pytest.approx(info["hidden"]["lifetime_value"] / 60.0, rel=1e-4)
    assert set(info["signals"]) >= {"dwell_s", "like", "conversion", "revenue", "skip"}


def test_same_seed_same_episode(world: SyntheticWorld) -> None:
    def run(seed: int) -> list[float]:
        env = SlateGymEnv(world, CFG)
        env.reset(seed=seed)
        env.action_space.seed(seed)
        return [env.step(env.action_space.sample())[1] for _ in range(15)]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_duplicate_actions_are_repaired(world: SyntheticWorld) -> None:
    env = SlateGymEnv(world, CFG, user_idx=2, reward_fn=click_reward)
    obs, info = env.reset(seed=0)
    assert info["user_idx"] == 2
    _, _, _, _, info = env.step(np.array([5, 5, 5, 1]))
    assert info["duplicates_replaced"] == 2
    np.testing.assert_array_equal(info["slate"], obs["candidate_ids"][[5, 0, 2, 1]])


@settings(max_examples=60, deadline=None)
@given(data=st.data(), num_candidates=st.integers(1, 12), rows=st.integers(0, 6))
def test_dedupe_keeps_first_occurrences_and_fills_smallest_free(
    data: st.DataObject, num_candidates: int, rows: int
) -> None:
    slate = data.draw(st.integers(1, num_candidates))
    actions = np.array(
        data.draw(
            st.lists(
                st.lists(st.integers(0, num_candidates - 1), min_size=slate, max_size=slate),
                min_size=rows,
                max_size=rows,
            )
        ),
        dtype=np.int64,
    ).reshape(rows, slate)
    fixed, replaced = dedupe_actions(actions, num_candidates)
    for row, out, n in zip(actions, fixed, replaced, strict=True):
        assert len(set(out.tolist())) == slate
        assert out.min() >= 0
        assert out.max() < num_candidates
        seen: set[int] = set()
        free = iter(sorted(set(range(num_candidates)) - set(row.tolist())))
        for a, b in zip(row.tolist(), out.tolist(), strict=True):
            assert b == (a if a not in seen else next(free))
            seen.add(a)
        assert n == slate - len(set(row.tolist()))


def test_bad_actions_raise(world: SyntheticWorld) -> None:
    env = SlateGymEnv(world, CFG)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        env.step(np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="lie in"):
        env.step(np.array([0, 1, 2, 12]))


def test_vector_env_steps_autoresets_and_stays_in_space(world: SyntheticWorld) -> None:
    env = SlateVectorEnv(40, world, CFG)  # more slots than users: independent copies
    assert env.metadata["autoreset_mode"] == gymnasium.vector.AutoresetMode.NEXT_STEP
    obs, _ = env.reset(seed=0)
    env.action_space.seed(0)
    assert obs in env.observation_space
    assert obs["user"].shape == (40, len(env.core.user_feature_names))
    step_col = env.core.user_feature_names.index("log1p_session_step")
    pending = np.zeros(40, dtype=np.bool_)
    ended = 0
    for _ in range(150):
        obs, rewards, terminated, truncated, info = env.step(env.action_space.sample())
        assert obs in env.observation_space
        np.testing.assert_array_equal(info["autoreset"], pending)
        assert np.all(rewards[pending] == 0.0)
        assert not np.any(terminated[pending] | truncated[pending])
        assert np.all(obs["user"][pending, step_col] == 0.0)  # fresh lives
        np.testing.assert_allclose(rewards, info["dwell_s"] / 60.0, rtol=1e-6)
        pending = terminated | truncated
        ended += int(pending.sum())
    assert ended > 40


def test_vector_env_is_deterministic(world: SyntheticWorld) -> None:
    def run() -> list[np.ndarray]:
        env = SlateVectorEnv(8, world, CFG)
        env.reset(seed=11)
        env.action_space.seed(11)
        return [env.step(env.action_space.sample())[1] for _ in range(20)]

    for a, b in zip(run(), run(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_vector_env_rejects_bad_sizes(world: SyntheticWorld) -> None:
    with pytest.raises(ValueError, match="num_envs"):
        SlateVectorEnv(0, world, CFG)
    env = SlateVectorEnv(3, world, CFG)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros((2, 4), dtype=np.int64))
