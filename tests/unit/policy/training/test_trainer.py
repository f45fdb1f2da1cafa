"""The trainer: learns the known optimum in-process on any env, checkpoints (with how the
policy observes) and resumes, replays logs, writes curves."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from recsys.pipeline import SimulatorSetup, simulator_env_factory
from recsys.policy.reward.spec import RewardSpec
from recsys.policy.testing import TinySlateEnv, greedy_slates
from recsys.policy.training.checkpoint import load_policy_checkpoint, optimizer_tensors
from recsys.policy.training.config import PolicyTrainConfig
from recsys.policy.training.envs import TinyEnvAdapter
from recsys.policy.training.trainer import LogReplay, train_policy
from tests.unit.policy.configs import SMALL_SIMULATOR


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
    replay_size=3200,
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
    # An entropy bonus keeps the softmax from collapsing on one item before the value
    # baseline has learned (without it, 2 seeds in 4 settle on a suboptimal slate).
    config = replace(
        TINY,
        algo="reinforce",
        iterations=60,
        steps_per_iteration=20,
        batch_size=64,
        lr=1e-2,
        entropy_coef=0.05,
    )
    result = train_policy(config, env_factory=_tiny_env)
    env = TinySlateEnv()
    assert greedy_slates(env, result.policy) == env.solve().optimal


@pytest.mark.parametrize("algo", ["slateq", "reinforce"])
def test_checkpoint_resume_round_trip(tmp_path: Path, algo: str) -> None:
    config = replace(TINY, algo=algo, iterations=2, checkpoint_every=1)  # type: ignore[arg-type]
    first = train_policy(config, env_factory=_tiny_env, artifacts_root=tmp_path)
    assert len(first.checkpoints) == 2
    # Intermediate checkpoints are not what serving loads (that is `policy-<name>`).
    assert {p.parent for p in first.checkpoints} == {tmp_path / f"checkpoint-{algo}"}
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


def test_checkpoint_name_can_be_chosen(tmp_path: Path) -> None:
    result = train_policy(
        replace(TINY, iterations=1),
        env_factory=_tiny_env,
        artifacts_root=tmp_path,
        checkpoint_name="policy-tiny",
    )
    assert result.checkpoint is not None
    assert result.checkpoint.parent == tmp_path / "policy-tiny"
    assert load_policy_checkpoint(result.checkpoint).features is None  # none were given


def _train_on_small_setup(
    setup: SimulatorSetup, root: Path, **kwargs: object
) -> tuple[PolicyTrainConfig, Path]:
    config = SMALL_SIMULATOR
    result = train_policy(
        config,
        env_factory=simulator_env_factory(setup, config, seed=0),
        artifacts_root=root,
        reward_tensors=setup.reward_tensors,
        features=setup.features(),
        **kwargs,  # type: ignore[arg-type]
    )
    assert result.checkpoint is not None
    return config, result.checkpoint


def test_features_are_stored_and_survive_a_resume(
    small_setup: SimulatorSetup, tmp_path: Path
) -> None:
    """How the policy observes travels in every checkpoint, and a resumed run (given neither
    features nor reward) keeps both: its checkpoints stay servable."""
    config, path = _train_on_small_setup(small_setup, tmp_path)
    want = small_setup.features()
    resumed = train_policy(
        replace(config, iterations=3),
        env_factory=simulator_env_factory(small_setup, config, seed=1),
        artifacts_root=tmp_path,
        resume=path,
    )
    assert resumed.checkpoint is not None
    for ckpt in (load_policy_checkpoint(path), load_policy_checkpoint(resumed.checkpoint)):
        got = ckpt.features
        assert got is not None
        assert (got.kind, got.spec, got.num_ads) == (want.kind, want.spec, want.num_ads)
        assert got.retrieval_version == small_setup.retrieval.artifact.version
        assert got.items.names == want.items.names
        np.testing.assert_array_equal(got.items.table, want.items.table)
        np.testing.assert_array_equal(got.is_ad, want.is_ad)
        assert ckpt.reward_tensors is not None
        for key, value in small_setup.reward_tensors.items():
            np.testing.assert_array_equal(ckpt.reward_tensors[key], value)
    assert load_policy_checkpoint(resumed.checkpoint).iteration == 3


def test_features_and_resume_must_fit_the_env(small_setup: SimulatorSetup, tmp_path: Path) -> None:
    config = SMALL_SIMULATOR
    env_factory = simulator_env_factory(small_setup, config, seed=0)
    latent = small_setup.features("latent")  # three crossed blocks, not four
    with pytest.raises(ValueError, match="features describe"):
        train_policy(
            config,
            env_factory=env_factory,
            reward_tensors=small_setup.reward_tensors,
            features=latent,
        )
    _, path = _train_on_small_setup(small_setup, tmp_path)
    tiny = replace(TINY, reward="learned", iterations=3)
    with pytest.raises(ValueError, match=r"checkpoint was trained on \(user_dim"):
        train_policy(tiny, env_factory=_tiny_env, resume=path)


def test_log_replay_yields_logged_rows_with_the_runs_reward(small_setup: SimulatorSetup) -> None:
    log, features = small_setup.log, small_setup.features()
    reward = RewardSpec("learned", 0.0, small_setup.reward_tensors).build()
    replay = LogReplay(log, features.items, "event", small_setup.table.is_ad, reward)
    batch = replay.sample(256, 2.0, np.random.default_rng(0))
    rows = np.random.default_rng(0).integers(0, log.num_rows, 256)  # the rows it drew
    np.testing.assert_array_equal(batch.obs.user_features, log.event_features[rows])
    np.testing.assert_array_equal(batch.obs.candidate_ids, log.candidate_ids[rows])
    np.testing.assert_array_equal(batch.action.slates, log.slates[rows])
    want = small_setup.reward_model.rewards(log.signals[rows]) * 2.0
    np.testing.assert_allclose(batch.reward, want, rtol=1e-5, atol=1e-6)
    assert batch.obs.is_ad is not None
    np.testing.assert_array_equal(batch.obs.is_ad, small_setup.table.is_ad[log.candidate_ids[rows]])
    # A life's last logged row is terminal; the others continue with the same life's next row.
    np.testing.assert_array_equal(batch.done, (log.next_row[rows] < 0) | log.done[rows])


@pytest.mark.parametrize("with_logs", [True, False])
def test_slateq_pretrains_on_the_log_replay(small_setup: SimulatorSetup, with_logs: bool) -> None:
    """Without online updates, only the pretraining on logged sessions moves the weights."""
    config = replace(SMALL_SIMULATOR, iterations=1, updates_per_iteration=0, pretrain_updates=3)
    features = small_setup.features()
    reward = RewardSpec("learned", 0.0, small_setup.reward_tensors).build()
    replay = LogReplay(small_setup.log, features.items, "event", small_setup.table.is_ad, reward)
    result = train_policy(
        config,
        env_factory=simulator_env_factory(small_setup, config, seed=0),
        reward_tensors=small_setup.reward_tensors,
        log_replay=replay if with_logs else None,
    )
    fresh = train_policy(
        replace(config, iterations=1, pretrain_updates=0),
        env_factory=simulator_env_factory(small_setup, config, seed=0),
        reward_tensors=small_setup.reward_tensors,
    ).policy.weights()
    moved = [not np.array_equal(v, fresh[k]) for k, v in result.policy.weights().items()]
    assert any(moved) == with_logs


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
