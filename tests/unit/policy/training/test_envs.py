"""Env adapters: the project simulator, Gymnasium envs (project and custom), the tiny MDP."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import gymnasium
import numpy as np
import pytest
from gymnasium import spaces

from recsys.config import CatalogSettings, SimulatorSettings
from recsys.data import SyntheticWorld, make_world
from recsys.policy.testing import TinySlateEnv
from recsys.policy.training.config import PolicyTrainConfig
from recsys.policy.training.envs import (
    BatchSlateEnv,
    GymSlateEnv,
    SimulatorSlateEnv,
    TinyEnvAdapter,
)
from recsys.policy.training.trainer import train_policy
from recsys.simulator import SLATE_ENV_ID, SlateVectorEnv

SIM = SimulatorSettings(num_candidates=12, slate_size=3, max_episode_steps=30)


@pytest.fixture(scope="module")
def world() -> SyntheticWorld:
    return make_world(CatalogSettings(num_items=150, num_users=40, num_topics=5, seed=1))


SMALL = PolicyTrainConfig(
    algo="slateq",
    reward="engagement",
    iterations=2,
    steps_per_iteration=3,
    users=8,
    batch_size=16,
    updates_per_iteration=2,
    hidden=(8,),
)


def test_simulator_adapter_shapes_and_hidden_reward(world: SyntheticWorld) -> None:
    env = SimulatorSlateEnv(world, SIM, seed=0, item_extra=np.ones((150, 2), np.float32))
    assert isinstance(env, BatchSlateEnv)
    obs = env.reset(seed=1)
    obs.validate()
    assert obs.item_features.shape == (40, 12, env.item_dim)
    assert env.item_dim == 9 + 2 + 2  # observable table + extras + cross features
    total = np.zeros(40)
    for _ in range(20):
        step = env.step(np.tile(np.arange(3), (40, 1)))
        assert step.hidden_reward is not None
        # The hidden LTV increment is the step's dwell (minutes): the simulator defines LTV so.
        np.testing.assert_allclose(
            step.hidden_reward, step.response.dwell_s.sum(axis=1) / 60.0, rtol=1e-4, atol=1e-5
        )
        total += step.hidden_reward
    assert total.sum() > 0


def test_gymnasium_single_env_adapter_trains(world: SyntheticWorld) -> None:
    def factory(_: int) -> GymSlateEnv:
        return GymSlateEnv(gymnasium.make(SLATE_ENV_ID, world=world, settings=SIM))

    env = factory(0)
    obs = env.reset(seed=0)
    assert obs.item_features.shape == (1, 12, 9)
    assert obs.candidate_ids.shape == (1, 12)
    step = env.step(np.array([[0, 1, 2]]))
    assert step.env_reward is not None
    assert step.env_reward.sum() == pytest.approx(step.response.dwell_s.sum() / 60.0, rel=1e-5)
    result = train_policy(replace(SMALL, reward="env"), env_factory=factory)
    assert len(result.curve) == 2


def test_gymnasium_vector_env_adapter_marks_autoreset_rows(world: SyntheticWorld) -> None:
    env = GymSlateEnv(SlateVectorEnv(num_envs=6, world=world, settings=SIM))
    env.reset(seed=0)
    saw_done = False
    for _ in range(60):
        step = env.step(np.tile(np.arange(3), (6, 1)))
        if saw_done:
            assert step.valid is not None
        saw_done = saw_done or bool(step.done.any())
    assert saw_done
    result = train_policy(
        SMALL,
        env_factory=lambda _: GymSlateEnv(SlateVectorEnv(num_envs=6, world=world, settings=SIM)),
    )
    assert result.curve[-1]["user_steps"] > 0


class TwoTopicEnv(gymnasium.Env[dict[str, np.ndarray[Any, Any]], np.ndarray[Any, Any]]):
    """A custom RecSim-style env: one of 6 items matches the user's hidden-in-plain-sight topic;
    showing it in the slate of 2 earns reward 1 (clicked), anything else 0."""

    def __init__(self) -> None:
        self.observation_space = spaces.Dict(
            {
                "user": spaces.Box(0.0, 1.0, shape=(2,), dtype=np.float32),
                "items": spaces.Box(0.0, 1.0, shape=(6, 2), dtype=np.float32),
            }
        )
        self.action_space = spaces.MultiDiscrete([6, 6])
        self._topic = 0
        self._items = np.zeros((6, 2), np.float32)

    def _obs(self) -> dict[str, np.ndarray[Any, Any]]:
        self._topic = int(self.np_random.integers(2))
        self._items = np.eye(2, dtype=np.float32)[self.np_random.permutation([0, 0, 0, 1, 1, 1])]
        return {"user": np.eye(2, dtype=np.float32)[self._topic], "items": self._items}

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray[Any, Any]], dict[str, Any]]:
        super().reset(seed=seed)
        return self._obs(), {}

    def step(
        self, action: np.ndarray[Any, Any]
    ) -> tuple[dict[str, np.ndarray[Any, Any]], float, bool, bool, dict[str, Any]]:
        hits = self._items[np.asarray(action), self._topic] > 0
        position = int(np.argmax(hits)) if hits.any() else -1
        info = {"signals": {"click_position": position}}
        return self._obs(), float(hits.any()), False, False, info


def test_custom_gymnasium_env_is_learned_through_the_adapter() -> None:
    def factory(_: int) -> GymSlateEnv:
        vec = gymnasium.vector.SyncVectorEnv([TwoTopicEnv for _ in range(16)])
        return GymSlateEnv(vec, user_key="user", items_key="items", ids_key=None)

    config = replace(
        SMALL,
        reward="env",
        iterations=25,
        steps_per_iteration=4,
        batch_size=64,
        epsilon=0.2,
        updates_per_iteration=5,
        lr=1e-2,
        gamma=0.0,
        hidden=(16,),
    )
    result = train_policy(config, env_factory=factory)
    env = factory(0)
    obs = env.reset(seed=123)
    action = result.policy.act(obs, 2, np.random.default_rng(0), explore=False)
    topic = obs.user_features.argmax(axis=1)
    shown = np.take_along_axis(obs.item_features[..., :].argmax(axis=2), action.slates, axis=1)
    assert (shown == topic[:, None]).any(axis=1).mean() > 0.9


def test_tiny_adapter_reports_planted_reward() -> None:
    env = TinyEnvAdapter(TinySlateEnv(batch_size=5))
    env.reset(seed=3)
    step = env.step(np.tile([0, 1], (5, 1)))
    assert step.env_reward is not None
    assert step.hidden_reward is not None
    np.testing.assert_allclose(step.env_reward.sum(axis=1), step.hidden_reward)
