"""A time limit truncates an episode; it does not terminate it (issue 13).

On an env whose reward goes on forever, the value at the last step before a time limit is
the same as at any other step: ``1 / (1 - gamma)``. Treating the truncation as a terminal
step would collapse it to the one-step reward.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.wrappers import TimeLimit

from recsys.policy.algorithms.reinforce import ReinforceConfig, ReinforceTopKPolicy
from recsys.policy.algorithms.slateq import SlateQConfig, SlateQPolicy
from recsys.policy.batch import SlateAction, Transition
from recsys.policy.choice_model import ConditionalLogitChoiceModel
from recsys.policy.reward.spec import RewardSpec
from recsys.policy.training.envs import GymSlateEnv
from recsys.policy.training.rollout import RolloutWorker

Obs = dict[str, np.ndarray[Any, Any]]

LIMIT = 4
USERS = 8
GAMMA = 0.8
CANDIDATES = 3


class EndlessClickEnv(gymnasium.Env[Obs, np.ndarray[Any, Any]]):
    """Every slate is clicked in slot 0 and pays 1, forever; the user features are the
    one-hot step within the time limit (so a value can tell the last step apart)."""

    def __init__(self) -> None:
        self.observation_space = spaces.Dict(
            {
                "user": spaces.Box(0.0, 1.0, (LIMIT,), np.float32),
                "items": spaces.Box(0.0, 1.0, (CANDIDATES, 1), np.float32),
            }
        )
        self.action_space = spaces.MultiDiscrete([CANDIDATES, CANDIDATES])
        self.t = 0

    def _obs(self) -> Obs:
        user = np.eye(LIMIT, dtype=np.float32)[min(self.t, LIMIT - 1)]
        return {"user": user, "items": np.ones((CANDIDATES, 1), np.float32)}

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Obs, dict[str, Any]]:
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action: np.ndarray[Any, Any]) -> tuple[Obs, float, bool, bool, dict[str, Any]]:
        self.t += 1
        return self._obs(), 1.0, False, False, {"signals": {"click_position": 0}}


def make_env() -> GymSlateEnv:
    vec = gymnasium.vector.SyncVectorEnv(
        [lambda: TimeLimit(EndlessClickEnv(), LIMIT) for _ in range(USERS)]
    )
    return GymSlateEnv(vec, user_key="user", items_key="items", ids_key=None)


def play(env: GymSlateEnv, steps: int) -> list[Transition]:
    obs = env.reset(seed=0)
    slates = np.tile(np.arange(2), (USERS, 1))
    action = SlateAction(slates, np.ones(slates.shape, np.float32), np.zeros(USERS, np.float32))
    out = []
    for _ in range(steps):
        step = env.step(slates)
        assert step.env_reward is not None
        tr = Transition(obs, action, step.response, step.env_reward, step.next_obs, step.done)
        out.append(tr._replace(valid=step.valid).valid_rows())
        obs = step.next_obs
    return out


def test_a_truncating_step_ends_the_episode_without_terminating_it() -> None:
    env = make_env()
    env.reset(seed=0)
    steps = [env.step(np.tile(np.arange(2), (USERS, 1))) for _ in range(LIMIT + 1)]
    last, reset = steps[LIMIT - 1], steps[LIMIT]
    assert not last.done.any()  # no bootstrap cut at a time limit
    assert last.truncated is not None
    assert last.truncated.all()
    assert last.episode_end().all()
    # the truncating step's observation is the episode's real last one, not a fresh start
    assert last.next_obs.user_features[:, LIMIT - 1].all()
    assert reset.valid is not None
    assert not reset.valid.any()
    assert not reset.episode_end().any()
    assert not any(s.episode_end().any() for s in steps[: LIMIT - 1])


def test_a_rollout_counts_truncated_episodes_as_ended() -> None:
    worker = RolloutWorker(
        lambda _: make_env(),
        lambda: ReinforceTopKPolicy(LIMIT, 1, ReinforceConfig(hidden=(8,), state_dim=4)),
        RewardSpec("env", 0.0),
    )
    stats = worker.sample(2 * (LIMIT + 1)).stats
    assert stats.episodes_done == 2 * USERS
    assert stats.episode_length == 2 * USERS * LIMIT
    assert stats.episode_return == 2 * USERS * LIMIT
    rollout = worker.sample(LIMIT + 1).transitions
    assert not any(tr.done.any() for tr in rollout)  # nothing terminal to cut the returns


def test_slateq_value_does_not_collapse_at_the_time_limit() -> None:
    data = play(make_env(), 3 * (LIMIT + 1))
    choice = ConditionalLogitChoiceModel(LIMIT, 1, 2, seed=0)
    config = SlateQConfig(gamma=GAMMA, hidden=(16,), lr=1e-2, tau=0.1, huber_delta=10.0)
    policy = SlateQPolicy(LIMIT, 1, choice, config, seed=0)
    for _ in range(400):
        policy.update(data)
    with torch.no_grad():
        q, _ = policy.item_values(torch.eye(LIMIT), torch.ones(LIMIT, 1, 1))
    values = q[:, 0].numpy()
    print("Q by step within the time limit:", values)
    # A terminal time limit would give 1 at the last step and 2.95 at the first.
    assert values[-1] > 0.85 * values[0], values
    assert values[-1] > 3.5, values


def test_reinforce_value_does_not_collapse_at_the_time_limit() -> None:
    """REINFORCE's learned value (its GAE baseline and bootstrap) on rollouts with the reset
    rows in place: the last step before the limit bootstraps from its real next observation."""
    config = ReinforceConfig(gamma=GAMMA, hidden=(16,), state_dim=4, lr=1e-2)
    policy = ReinforceTopKPolicy(LIMIT, 1, config, seed=0)
    worker = RolloutWorker(lambda _: make_env(), lambda: policy, RewardSpec("env", 0.0))
    for _ in range(150):
        rollout = worker.sample(LIMIT + 1, policy.weights()).transitions
        policy.update(rollout)
    with torch.no_grad():
        values = policy.value(torch.eye(LIMIT).numpy()).numpy()
    print("V by step within the time limit:", values)
    # A terminal time limit would give 1 at the last step; the truth is 1 / (1 - 0.8) = 5.
    assert values[-1] > 0.85 * values[0], values
    assert values[-1] > 3.5, values
