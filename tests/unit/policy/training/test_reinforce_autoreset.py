"""REINFORCE on a Gymnasium vector env whose episodes all end on the same step (issue 13).

Under Gymnasium's default next-step autoreset, the step after a shared episode end is a
reset step for every row: no row of it is a real transition. The learner must mask those
rows out while keeping the ``[T, B]`` time axis, not crash on an empty step.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import gymnasium
import numpy as np
import pytest
import torch

from recsys.policy.algorithms.reinforce import (
    ReinforceConfig,
    ReinforceTopKPolicy,
    discounted_returns,
)
from recsys.policy.reward.spec import RewardSpec
from recsys.policy.training.config import PolicyTrainConfig
from recsys.policy.training.envs import GymSlateEnv
from recsys.policy.training.rollout import RolloutWorker
from recsys.policy.training.trainer import train_policy
from tests.unit.policy.custom_envs import Obs, TwoTopicEnv

HORIZON = 5
USERS = 4


class FixedLengthEnv(TwoTopicEnv):
    """:class:`TwoTopicEnv` whose users all leave after exactly ``HORIZON`` slates."""

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Obs, dict[str, Any]]:
        obs, info = super().reset(seed=seed, options=options)
        self.horizon = HORIZON
        return obs, info


def make_fixed_length_env(worker_index: int) -> GymSlateEnv:
    vec = gymnasium.vector.SyncVectorEnv([FixedLengthEnv for _ in range(USERS)])
    return GymSlateEnv(vec, user_key="user", items_key="items", ids_key=None)


CONFIG = PolicyTrainConfig(
    algo="reinforce",
    reward="env",
    iterations=4,
    steps_per_iteration=3,
    users=USERS,
    batch_size=USERS,
    hidden=(8,),
)

ENV_REWARD = RewardSpec("env", 0.0)


def test_the_shared_reset_step_is_invalid_for_every_row() -> None:
    env = make_fixed_length_env(0)
    env.reset(seed=0)
    steps = [env.step(np.tile(np.arange(2), (USERS, 1))) for _ in range(HORIZON + 1)]
    assert steps[HORIZON - 1].done.all()
    reset_step = steps[HORIZON]
    assert reset_step.valid is not None
    assert not reset_step.valid.any()


@pytest.mark.parametrize("steps_per_iteration", [1, 3, HORIZON + 1])
def test_reinforce_trains_when_every_episode_ends_on_the_same_step(
    steps_per_iteration: int,
) -> None:
    # 1: some rollouts are nothing but the reset step; 3: rollouts cross the episode end
    # with a whole invalid step inside; HORIZON + 1: every rollout ends on the reset step.
    iterations = 2 * (HORIZON + 1) // steps_per_iteration
    config = replace(CONFIG, steps_per_iteration=steps_per_iteration, iterations=iterations)
    result = train_policy(config, env_factory=make_fixed_length_env)
    assert len(result.curve) == iterations
    played = iterations * steps_per_iteration
    resets = played // (HORIZON + 1)
    # The reset rows are no user-steps: they are not counted.
    assert result.curve[-1]["user_steps"] == (played - resets) * USERS
    for row in result.curve:
        if "policy_loss" in row:
            assert np.isfinite(row["policy_loss"])
            assert np.isfinite(row["return_mean"])
    assert any("policy_loss" in row for row in result.curve)


def test_a_rollout_keeps_its_time_axis_and_marks_the_reset_rows() -> None:
    worker = RolloutWorker(make_fixed_length_env, _policy, ENV_REWARD)
    rollout = worker.sample(HORIZON + 2).transitions
    assert [tr.batch_size for tr in rollout] == [USERS] * (HORIZON + 2)
    valid = [tr.valid for tr in rollout]
    reset_rows = valid[HORIZON]
    assert reset_rows is not None
    assert not reset_rows.any()
    assert all(v is None or v.all() for i, v in enumerate(valid) if i != HORIZON)


def _policy() -> ReinforceTopKPolicy:
    return ReinforceTopKPolicy(2, 2, ReinforceConfig(hidden=(8,), state_dim=4), seed=0)


def test_returns_stop_at_an_invalid_step() -> None:
    rewards = torch.tensor([[1.0], [2.0], [100.0], [4.0]])
    dones = torch.zeros(4, 1, dtype=torch.bool)  # a truncation: no done before the reset
    valid = torch.tensor([[True], [True], [False], [True]])
    out = discounted_returns(rewards, dones, 0.5, valid)
    # The step before the reset gets nothing from the reset row or the episode after it.
    assert out[:, 0].tolist() == [2.0, 2.0, 0.0, 4.0]


def test_an_update_ignores_whatever_the_invalid_rows_hold() -> None:
    worker = RolloutWorker(make_fixed_length_env, _policy, ENV_REWARD)
    rollout = list(worker.sample(HORIZON + 3).transitions)
    assert any(tr.valid is not None and not tr.valid.all() for tr in rollout)

    def garbage(fill: float) -> list[Any]:
        out = []
        for tr in rollout:
            if tr.valid is None:
                out.append(tr)
                continue
            bad = ~tr.valid
            reward = tr.reward.copy()
            reward[bad] = fill
            user = tr.obs.user_features.copy()
            user[bad] = fill
            out.append(tr._replace(reward=reward, obs=tr.obs._replace(user_features=user)))
        return out

    a, b = _policy(), _policy()
    metrics_a = a.update(garbage(1e6))
    metrics_b = b.update(garbage(-3.0))
    assert all(np.isfinite(v) for v in metrics_a.values())
    assert metrics_a == pytest.approx(metrics_b)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb)
