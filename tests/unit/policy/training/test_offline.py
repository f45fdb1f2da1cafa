"""Offline training from a logged-feedback Parquet file of TinySlateEnv sessions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from recsys.data.logged import read_logged_feedback, write_logged_feedback
from recsys.policy import LearnedRewardModel, RandomPolicy
from recsys.policy.base import BatchSlatePolicy
from recsys.policy.testing import REWARD_WEIGHTS, TinySlateEnv, collect, greedy_slates
from recsys.policy.training.config import PolicyTrainConfig
from recsys.policy.training.offline import (
    logged_slates,
    train_offline,
    transitions_to_logged_feedback,
)


@pytest.fixture(scope="module")
def log_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    env = TinySlateEnv(batch_size=128, seed=0)
    transitions, _ = collect(env, RandomPolicy(), env.reset(), 30, np.random.default_rng(0))
    path = tmp_path_factory.mktemp("logs") / "tiny.parquet"
    write_logged_feedback(path, transitions_to_logged_feedback(transitions, policy_name="random"))
    return path


def _planted_reward() -> LearnedRewardModel:
    model = LearnedRewardModel()
    with torch.no_grad():
        model.net[0].weight.copy_(torch.tensor(REWARD_WEIGHTS)[None])
        model.net[0].bias.zero_()
    return model


def _value(policy: BatchSlatePolicy, seed: int = 5) -> float:
    """Mean planted reward per user-step of the policy's greedy slates (on-policy)."""
    env = TinySlateEnv(batch_size=512, seed=seed)
    transitions, _ = collect(env, policy, env.reset(), 30, np.random.default_rng(seed), False)
    return float(np.mean([tr.reward.sum(axis=1).mean() for tr in transitions]))


def test_logged_slates_link_sessions(log_file: Path) -> None:
    data = logged_slates(read_logged_feedback(log_file))
    assert data.num_slates == 128 * 30
    assert data.slate_size == 2
    linked = data.next_index >= 0
    assert (data.session[np.flatnonzero(linked)] == data.session[data.next_index[linked]]).all()


@pytest.mark.parametrize("algo", ["slateq", "reinforce"])
def test_offline_training_beats_the_logging_policy(log_file: Path, algo: str) -> None:
    config = PolicyTrainConfig(
        algo=algo,  # type: ignore[arg-type]
        reward="learned",
        gamma=0.9,
        hidden=(32,),
        lr=3e-3,
        batch_size=256,
    )
    result = train_offline(log_file, config, epochs=12, negatives=3, reward_model=_planted_reward())
    env = TinySlateEnv()
    # The logs come from a uniformly random policy; the offline policy finds the long-term
    # optimum (which avoids the clickbait) and earns more than the logging policy.
    assert greedy_slates(env, result.policy) == env.solve().optimal
    assert _value(result.policy) > 1.1 * _value(RandomPolicy())
