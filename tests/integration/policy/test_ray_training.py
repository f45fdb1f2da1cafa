"""Training with 2 Ray rollout actors on the project simulator (a small local Ray)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from recsys.policy.training.checkpoint import load_policy_checkpoint
from recsys.policy.training.config import PolicyTrainConfig
from recsys.policy.training.trainer import train_policy

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


@pytest.mark.parametrize("algo", ["slateq", "reinforce"])
def test_two_ray_workers_train_and_checkpoint(ray_cluster: None, tmp_path: Path, algo: str) -> None:
    config = PolicyTrainConfig(
        algo=algo,  # type: ignore[arg-type]
        reward="learned",
        workers=2,
        iterations=2,
        steps_per_iteration=3,
        users=128,
        batch_size=128,
        updates_per_iteration=3,
        pretrain_updates=2,
        num_items=300,
        num_candidates=20,
        slate_size=4,
        log_users=256,
        log_max_steps=20,
        checkpoint_every=1,
        hidden=(16,),
    )
    result = train_policy(config, artifacts_root=tmp_path, output_dir=tmp_path / "curve")
    assert len(result.curve) == 2
    # Both workers contributed every iteration.
    assert result.curve[-1]["user_steps"] == 2 * 2 * 3 * 128
    ckpt = load_policy_checkpoint(result.checkpoints[-1])
    assert ckpt.iteration == 2
    assert ckpt.reward_tensors is not None
    assert (tmp_path / "curve" / "learning_curve.csv").is_file()
