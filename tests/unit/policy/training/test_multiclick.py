"""The multi-click simulator as a training env: the adapter reads its declared per-slot
signals and rewards, its greedy oracle plays through the policy interface, and SlateQ and
REINFORCE train on it through ``train_policy`` without a crash (small sizes)."""

from __future__ import annotations

import pickle
from dataclasses import replace

import numpy as np
import pytest

from recsys.policy.algorithms.baselines import RandomPolicy
from recsys.policy.evaluation.episodes import evaluate_on_env
from recsys.policy.training.config import PolicyTrainConfig
from recsys.policy.training.multiclick import (
    GreedyOraclePolicy,
    MultiClickEnvFactory,
    multiclick_env,
)
from recsys.policy.training.trainer import train_policy
from recsys.simulator.multiclick import MultiClickSettings
from tests.unit.policy.custom_envs import make_env

SMALL = MultiClickSettings(num_items=80, num_topics=4, num_users=40, slate_size=4, horizon=5)


def test_the_adapter_reads_several_clicks_and_credits_each_item_its_reward() -> None:
    env = multiclick_env(32, SMALL)
    obs = env.reset(seed=0)
    core = env.env
    assert obs.item_features.shape == (32, SMALL.num_items, SMALL.num_topics + 2)
    np.testing.assert_array_equal(obs.item_features[3], core.item_table)
    several = 0
    for _ in range(SMALL.horizon):
        slates = core.oracle_slates()
        step = env.step(slates)
        clicks = step.response.click > 0
        assert step.env_reward is not None
        np.testing.assert_array_equal(
            step.env_reward, np.where(clicks, core.click_reward[slates], 0)
        )
        np.testing.assert_allclose(step.response.dwell_s, 60.0 * step.env_reward)
        several += int((clicks.sum(axis=1) >= 2).sum())
    assert several > 0
    assert step.truncated is not None
    assert step.truncated.all()  # the time limit: bootstrapped, not terminal
    assert not step.done.any()


def test_the_factory_pickles_and_seeds_each_worker() -> None:
    factory = MultiClickEnvFactory(users=4, settings=SMALL)
    again = pickle.loads(pickle.dumps(factory))
    assert again == factory
    a, b = factory(0), factory(1)
    assert a.batch_size == 4
    assert a.slate_size == SMALL.slate_size
    assert not np.array_equal(a.env.users, b.env.users)


def test_the_greedy_oracle_serves_the_envs_best_immediate_slates() -> None:
    env = multiclick_env(64, replace(SMALL, horizon=20))
    oracle = GreedyOraclePolicy(env)
    obs = env.reset(seed=1)
    action = oracle.act(obs, SMALL.slate_size, np.random.default_rng(0), explore=True)
    np.testing.assert_array_equal(action.slates, env.env.oracle_slates())
    np.testing.assert_array_equal(action.propensities, 1.0)
    assert action.scores is not None
    assert (np.diff(action.scores, axis=1) <= 0).all()  # best first
    result = evaluate_on_env(
        {"random": RandomPolicy(), "oracle": oracle}, env, episodes=64, max_steps=20, seed=0
    )
    assert result["config"]["reward"] == "env"
    assert result["seeds"]["reset_reproducible"]
    assert result["paired"]["oracle - random"]["ci_low"] > 0
    with pytest.raises(ValueError, match="needs a MultiClickVectorEnv"):
        GreedyOraclePolicy(make_env(0))


@pytest.mark.parametrize(
    ("algo", "extra"),
    [
        ("slateq", {"clicks": "multi", "immediate_head": True}),
        ("slateq", {}),
        ("reinforce", {"per_slot_credit": True}),
        ("reinforce", {}),
    ],
)
def test_slateq_and_reinforce_train_on_it(algo: str, extra: dict[str, object]) -> None:
    config = PolicyTrainConfig(
        algo=algo,  # type: ignore[arg-type]
        reward="env",
        iterations=3,
        steps_per_iteration=4,
        users=4,
        batch_size=8,
        updates_per_iteration=2,
        hidden=(8,),
        replay_size=64,
        target_candidates=16,
        **extra,  # type: ignore[arg-type]
    )
    result = train_policy(config, env_factory=MultiClickEnvFactory(users=4, settings=SMALL))
    assert len(result.curve) == 3
    assert all(np.isfinite(row["reward_per_user_step"]) for row in result.curve)
    assert result.curve[-1]["clicks_per_user_step"] > 0  # the declared clicks were read
    assert result.curve[-1]["episodes"] >= 0
    env = multiclick_env(4, SMALL)
    obs = env.reset(seed=3)
    slates = result.policy.act(obs, SMALL.slate_size, np.random.default_rng(0), False).slates
    assert slates.shape == (4, SMALL.slate_size)
