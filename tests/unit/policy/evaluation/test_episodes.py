"""Evaluation on any env: episode returns and lengths with CIs, paired on the same episode
seeds (never training's), greedy or exploring, and policies loaded to fit the env."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from recsys.artifacts import latest_version
from recsys.policy.algorithms.baselines import RandomPolicy
from recsys.policy.base import BatchSlatePolicy
from recsys.policy.batch import SlateAction, SlateObs
from recsys.policy.evaluation.episodes import env_policies, evaluate_on_env
from recsys.policy.seeds import EVALUATION_SEEDS, TRAINING_SEEDS
from recsys.policy.testing import TinySlateEnv
from recsys.policy.training.checkpoint import save_policy_checkpoint
from recsys.policy.training.config import PolicyTrainConfig, build_policy
from recsys.policy.training.envs import EnvStep, TinyEnvAdapter
from recsys.types import IntArray
from tests.unit.policy.custom_envs import USERS, make_endless_env, make_env


class TopicOracle:
    """Puts an item of the user's topic first (the two-topic env's optimum): every slate earns
    1. Exploring, it serves uniformly random slates instead, so the mode is visible."""

    name = "oracle"

    def act(
        self, obs: SlateObs, slate_size: int, rng: np.random.Generator, explore: bool = True
    ) -> SlateAction:
        if explore:
            return RandomPolicy().act(obs, slate_size, rng)
        topic = obs.user_features.argmax(axis=1)
        match = obs.item_features[np.arange(obs.batch_size), :, topic]  # [B, C]
        slates = np.argsort(-match, axis=1, kind="stable")[:, :slate_size]
        ones = np.ones(slates.shape, np.float32)
        return SlateAction(slates, ones, np.zeros(slates.shape[0], np.float32), ones)


class Recorded:
    """An env that remembers the seeds it was reset with."""

    def __init__(self, env: Any) -> None:
        self.env = env
        self.batch_size, self.slate_size = env.batch_size, env.slate_size
        self.resets: list[int | None] = []

    def reset(self, seed: int | None = None) -> SlateObs:
        self.resets.append(seed)
        obs: SlateObs = self.env.reset(seed)
        return obs

    def step(self, slates: IntArray) -> EnvStep:
        step: EnvStep = self.env.step(slates)
        return step


def _policies() -> dict[str, BatchSlatePolicy]:
    return {"random": RandomPolicy(), "oracle": TopicOracle()}


def test_the_oracle_beats_random_on_the_same_episodes() -> None:
    env = Recorded(make_env(0))
    result = evaluate_on_env(_policies(), env, episodes=40, seed=3)
    runs = result.pop("_episodes")
    oracle, random = runs["oracle"], runs["random"]
    assert oracle.returns.shape == (40,)  # 3 rounds of 16 users, the first 40 kept
    # Same reset seeds, so the same users with the same horizons (5 to 14 slates).
    np.testing.assert_array_equal(oracle.lengths, random.lengths)
    assert oracle.lengths.min() >= 5
    assert oracle.lengths.max() <= 14
    np.testing.assert_array_equal(oracle.returns, oracle.lengths)  # 1 on every slate
    assert (random.returns <= random.lengths).all()
    summary = result["policies"]
    assert summary["oracle"]["length"]["mean"] == pytest.approx(oracle.lengths.mean())
    assert summary["oracle"]["truncated_fraction"] == 0.0
    diff = result["paired"]["oracle - random"]
    assert diff["ci_low"] > 0
    assert diff["mean"] == pytest.approx(oracle.returns.mean() - random.returns.mean())
    ratio = result["paired"]["oracle/random"]
    assert ratio["ci_low"] > 1.0
    # A random slate of 2 from 3 + 3 items holds the topic with probability 0.8.
    assert ratio["ratio"] == pytest.approx(1 / 0.8, rel=0.1)
    assert result["config"]["reward"] == "env"
    assert result["config"]["reference"] == "random"


def test_evaluation_resets_only_with_seeds_training_never_uses() -> None:
    env = Recorded(make_env(0))
    result = evaluate_on_env(_policies(), env, episodes=40, seed=3)
    seeds = result["seeds"]
    assert seeds["disjoint_from_training"] is True
    assert seeds["reset_reproducible"] is True
    rounds = seeds["reset_seeds"]
    assert len(rounds) == 3
    assert all(s is not None for s in env.resets)
    used = {int(s) + i for s in env.resets if s is not None for i in range(USERS)}
    assert min(used) >= EVALUATION_SEEDS.start
    assert max(used) < EVALUATION_SEEDS.stop
    assert min(used) >= TRAINING_SEEDS.stop
    assert set(rounds) <= set(env.resets)  # every policy played exactly these rounds
    other = evaluate_on_env(_policies(), make_env(0), episodes=40, seed=4)
    assert other["seeds"]["reset_seeds"] != rounds


def test_greedy_and_exploring_modes_differ() -> None:
    greedy = evaluate_on_env({"oracle": TopicOracle()}, make_env(0), episodes=32)
    explore = evaluate_on_env({"oracle": TopicOracle()}, make_env(0), episodes=32, explore=True)
    assert greedy["config"]["mode"] == "greedy"
    assert explore["config"]["mode"] == "explore"
    g, e = greedy["_episodes"]["oracle"], explore["_episodes"]["oracle"]
    np.testing.assert_array_equal(g.returns, g.lengths)
    assert e.returns.sum() < e.lengths.sum()


def test_episodes_that_never_end_are_truncated_at_max_steps() -> None:
    result = evaluate_on_env(_policies(), make_endless_env(0), episodes=6, max_steps=7)
    assert result["policies"]["oracle"]["truncated_fraction"] == 1.0
    np.testing.assert_array_equal(result["_episodes"]["oracle"].lengths, np.full(6, 7.0))
    assert result["policies"]["oracle"]["return"]["mean"] == 7.0


class IgnoresSeeds(TinyEnvAdapter):
    """Resets to fresh random users whatever seed it is given."""

    def reset(self, seed: int | None = None) -> SlateObs:
        return super().reset(None)


class NoEnvReward(TinyEnvAdapter):
    def step(self, slates: IntArray) -> EnvStep:
        return super().step(slates)._replace(env_reward=None)


def test_an_env_that_ignores_seeds_is_reported_as_unpaired() -> None:
    result = evaluate_on_env(
        _policies(), IgnoresSeeds(TinySlateEnv(batch_size=4)), episodes=4, max_steps=3
    )
    assert result["seeds"]["reset_reproducible"] is False


def test_the_default_return_falls_back_to_the_hidden_reward() -> None:
    env = NoEnvReward(TinySlateEnv(batch_size=4))
    assert evaluate_on_env(_policies(), env, episodes=4, max_steps=3)["config"]["reward"] == (
        "hidden"
    )
    clicks = evaluate_on_env(_policies(), env, episodes=4, max_steps=3, reward="clicks")
    assert clicks["config"]["reward"] == "clicks"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"episodes": 1}, "episodes >= 2"),
        ({"max_steps": 0}, "max_steps >= 1"),
        ({"reward": "learned"}, "reward must be one of"),
        ({"reference": "oracle2"}, "reference 'oracle2'"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"episodes": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        evaluate_on_env(_policies(), make_env(0), **args)


def test_a_reference_without_positive_return_has_no_ratio() -> None:
    env = make_env(0)
    result = evaluate_on_env(_policies(), env, episodes=4, reward="engagement")
    assert result["paired"]["oracle/random"] is None  # dwell is 0: no ratio to speak of
    assert result["paired"]["oracle - random"]["mean"] == 0.0


def _checkpoint(root: Path, dims: tuple[int, int, int]) -> Path:
    config = PolicyTrainConfig(algo="slateq", reward="env", slate_size=dims[2], hidden=(4,))
    return save_policy_checkpoint(
        root,
        build_policy(config, *dims),
        config,
        iteration=1,
        dims=dims,
        reward_scale=1.0,
        features=None,
        reward_tensors=None,
        curve=[],
        reward_report={},
        name="checkpoint-slateq",
    ).path


def test_env_policies_loads_random_and_checkpoints_that_fit(tmp_path: Path) -> None:
    version = _checkpoint(tmp_path, (2, 2, 2))
    env = make_env(0)
    loaded = env_policies(["random", str(version), f"q={tmp_path / 'checkpoint-slateq'}"], env)
    assert list(loaded) == ["random", str(version), "q"]
    assert latest_version(tmp_path, "checkpoint-slateq") == version
    result = evaluate_on_env(loaded, env, episodes=4, max_steps=5)
    assert set(result["policies"]) == {"random", str(version), "q"}


@pytest.mark.parametrize(
    ("names", "message"),
    [
        ([], "no policies"),
        (["oracle"], "unknown policy 'oracle'"),
        (["random", "random"], "given twice"),
        (["=random"], "label before '=' is empty"),
        (["/no/such/checkpoint"], "unknown policy '/no/such/checkpoint'"),
    ],
)
def test_env_policies_refuses_unknown_names(names: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        env_policies(names, make_env(0))


def test_env_policies_refuses_a_checkpoint_that_does_not_fit(tmp_path: Path) -> None:
    version = _checkpoint(tmp_path, (3, 2, 2))
    with pytest.raises(
        ValueError, match=r"does not fit this env: .*\(3, 2, 2\), the env has \(2, 2, 2\)"
    ):
        env_policies([str(version)], make_env(0))
