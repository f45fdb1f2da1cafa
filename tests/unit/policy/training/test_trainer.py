"""The trainer: learns the known optimum in-process, checkpoints and resumes, writes curves."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from recsys.policy.testing import TinySlateEnv, greedy_slates
from recsys.policy.training.checkpoint import load_policy_checkpoint, optimizer_tensors
from recsys.policy.training.config import PolicyTrainConfig
from recsys.policy.training.envs import TinyEnvAdapter
from recsys.policy.training.trainer import train_policy


def _tiny_env(worker_index: int) -> TinyEnvAdapter:
    return TinyEnvAdapter(TinySlateEnv(batch_size=64, seed=worker_index))


TINY = PolicyTrainConfig(
    algo="slateq",
    reward="env",
    gamma=0.9,
    hidden=(32,),
    lr=3e-3,
    iterations=30,
    steps_per_iteration=10,
    users=64,
    batch_size=256,
    updates_per_iteration=10,
    replay_iterations=5,
    epsilon=0.5,
    tau=0.05,
)


def test_in_process_slateq_learns_the_optimal_slate() -> None:
    result = train_policy(TINY, env_factory=_tiny_env)
    env = TinySlateEnv()
    assert greedy_slates(env, result.policy) == env.solve().optimal
    assert len(result.curve) == TINY.iterations
    assert result.curve[-1]["user_steps"] == TINY.iterations * 10 * 64


def test_in_process_reinforce_learns_the_optimal_slate() -> None:
    config = replace(
        TINY, algo="reinforce", iterations=60, steps_per_iteration=20, batch_size=64, lr=1e-2
    )
    result = train_policy(config, env_factory=_tiny_env)
    env = TinySlateEnv()
    assert greedy_slates(env, result.policy) == env.solve().optimal


@pytest.mark.parametrize("algo", ["slateq", "reinforce"])
def test_checkpoint_resume_round_trip(tmp_path: Path, algo: str) -> None:
    config = replace(TINY, algo=algo, iterations=2, checkpoint_every=1)  # type: ignore[arg-type]
    first = train_policy(config, env_factory=_tiny_env, artifacts_root=tmp_path)
    assert len(first.checkpoints) == 2
    ckpt = load_policy_checkpoint(first.checkpoints[-1])
    assert ckpt.iteration == 2
    assert ckpt.policy.weights().keys() == first.policy.weights().keys()
    for key, value in first.policy.weights().items():
        np.testing.assert_array_equal(ckpt.policy.weights()[key], value)
    saved_optim = optimizer_tensors(first.policy)
    assert saved_optim, "optimiser state is stored"
    for key, value in saved_optim.items():
        np.testing.assert_array_equal(optimizer_tensors(ckpt.policy)[key], value)

    resumed = train_policy(
        replace(config, iterations=4),
        env_factory=_tiny_env,
        artifacts_root=tmp_path,
        resume=first.checkpoints[-1],
    )
    assert [row["iteration"] for row in resumed.curve] == [1.0, 2.0, 3.0, 4.0]
    assert resumed.curve[:2] == first.curve
    assert load_policy_checkpoint(resumed.checkpoints[-1]).iteration == 4


def test_resume_refuses_another_algorithm(tmp_path: Path) -> None:
    first = train_policy(
        replace(TINY, iterations=1), env_factory=_tiny_env, artifacts_root=tmp_path
    )
    with pytest.raises(ValueError, match="cannot resume"):
        train_policy(
            replace(TINY, algo="reinforce"), env_factory=_tiny_env, resume=first.checkpoints[-1]
        )


def test_learning_curve_csv_and_png_are_written(tmp_path: Path) -> None:
    result = train_policy(replace(TINY, iterations=3), env_factory=_tiny_env, output_dir=tmp_path)
    assert result.curve_csv is not None
    assert result.curve_png is not None
    lines = result.curve_csv.read_text().splitlines()
    header = lines[0].split(",")
    assert {"iteration", "user_steps", "reward_per_user_step", "td_loss"} <= set(header)
    assert len(lines) == 4
    assert result.curve_png.stat().st_size > 1000


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("algo", "dqn", "algo"),
        ("reward", "likes", "reward"),
        ("iterations", 0, "iterations"),
        ("gamma", 1.0, "gamma"),
        ("lr", float("nan"), "lr"),
        ("workers", -1, "workers"),
        ("slate_size", 80, "slate_size"),
        ("log_replay_fraction", 1.0, "log_replay_fraction"),
    ],
)
def test_config_rejects_bad_values(field: str, value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PolicyTrainConfig(**{field: value})  # type: ignore[arg-type]


def test_config_round_trips_through_dict() -> None:
    config = replace(TINY, hidden=(16, 8))
    assert PolicyTrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown"):
        PolicyTrainConfig.from_dict({"nope": 1})
