"""Training with 2 Ray rollout actors on the project simulator (a small local Ray): each
actor builds its own simulated users from a :class:`~recsys.pipeline.SimulatorEnvFactory`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from recsys.pipeline import SimulatorSetup, simulator_env_factory, train_simulator_policy
from recsys.policy.training.checkpoint import load_policy_checkpoint
from tests.unit.policy.configs import SMALL_SIMULATOR, build_small_setup

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    """Reuse a running Ray (e.g. the Ray Serve session fixture's); else start a small one."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> SimulatorSetup:
    return build_small_setup(tmp_path_factory.mktemp("setup"))


def test_workers_simulate_their_own_users(setup: SimulatorSetup) -> None:
    """Worker ``k`` serves its own slice of the population with its own seed."""
    factory = simulator_env_factory(setup, SMALL_SIMULATOR, seed=0)
    first, second = factory(0), factory(1)
    assert first.batch_size == second.batch_size == SMALL_SIMULATOR.users
    a, b = first.reset(seed=0), second.reset(seed=0)
    assert a.user_features.shape == b.user_features.shape
    assert not np.array_equal(
        first.users.core.world.user_interests, second.users.core.world.user_interests
    )


@pytest.mark.parametrize("algo", ["slateq", "reinforce"])
def test_two_ray_workers_train_and_checkpoint(
    ray_cluster: None, setup: SimulatorSetup, tmp_path: Path, algo: str
) -> None:
    config = replace(
        SMALL_SIMULATOR,
        algo=algo,  # type: ignore[arg-type]
        workers=2,
        iterations=2,
        steps_per_iteration=3,
        checkpoint_every=1,
    )
    result = train_simulator_policy(
        config, setup, checkpoints=tmp_path, output_dir=tmp_path / "curve"
    )
    assert len(result.curve) == 2
    # Both workers contributed every iteration.
    assert result.curve[-1]["user_steps"] == 2 * 2 * 3 * config.users
    assert [p.parent.name for p in result.checkpoints] == [f"checkpoint-{algo}"] * 2
    ckpt = load_policy_checkpoint(result.checkpoints[-1])
    assert ckpt.iteration == 2
    assert ckpt.reward_tensors is not None
    assert ckpt.features is not None
    assert ckpt.features.retrieval_version == setup.retrieval.artifact.version
    assert (tmp_path / "curve" / "learning_curve.csv").is_file()
