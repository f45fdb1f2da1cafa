"""Training and evaluation reset seeds never meet, and a worker resets with the seed it says."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.policy.algorithms.baselines import RandomPolicy
from recsys.policy.batch import SlateObs
from recsys.policy.reward.spec import RewardSpec
from recsys.policy.seeds import (
    EVALUATION_SEEDS,
    TRAINING_SEEDS,
    evaluation_reset_seeds,
    rollout_reset_seed,
)
from recsys.policy.testing import TinySlateEnv
from recsys.policy.training.envs import TinyEnvAdapter
from recsys.policy.training.rollout import RolloutWorker


class _Recorder(TinyEnvAdapter):
    """The tiny env, remembering every seed it was reset with."""

    def __init__(self, batch_size: int = 4) -> None:
        super().__init__(TinySlateEnv(batch_size=batch_size))
        self.resets: list[int | None] = []

    def reset(self, seed: int | None = None) -> SlateObs:
        self.resets.append(seed)
        return super().reset(seed)


def test_the_ranges_are_disjoint_with_room_for_sub_env_offsets() -> None:
    assert TRAINING_SEEDS.start == 0
    assert EVALUATION_SEEDS.start - TRAINING_SEEDS.stop >= 2**30
    assert EVALUATION_SEEDS.stop <= 2**32  # numpy's legacy seeding takes < 2**32


@pytest.mark.parametrize("seed", [0, 1, 7, 2**31 - 1, 10**12])
def test_training_reset_seeds_stay_in_the_training_range(seed: int) -> None:
    seeds = [rollout_reset_seed(seed, worker) for worker in range(64)]
    assert all(s in TRAINING_SEEDS for s in seeds)
    assert len(set(seeds)) == 64


@pytest.mark.parametrize(("seed", "rounds", "batch"), [(0, 1, 1), (3, 10, 16), (10**9, 4, 2048)])
def test_evaluation_seeds_cover_every_row_inside_the_evaluation_range(
    seed: int, rounds: int, batch: int
) -> None:
    seeds = evaluation_reset_seeds(seed, rounds, batch)
    assert len(seeds) == rounds
    rows = {s + i for s in seeds for i in range(batch)}
    assert len(rows) == rounds * batch  # no two rows of any round share a seed
    assert min(rows) in EVALUATION_SEEDS
    assert max(rows) in EVALUATION_SEEDS
    assert min(rows) >= TRAINING_SEEDS.stop


def test_evaluation_seeds_depend_on_the_seed_and_are_reproducible() -> None:
    assert evaluation_reset_seeds(1, 3, 8) == evaluation_reset_seeds(1, 3, 8)
    assert evaluation_reset_seeds(1, 3, 8) != evaluation_reset_seeds(2, 3, 8)


def test_evaluation_seeds_refuse_what_does_not_fit() -> None:
    with pytest.raises(ValueError, match="rounds"):
        evaluation_reset_seeds(0, 0, 4)
    with pytest.raises(ValueError, match="do not fit"):
        evaluation_reset_seeds(0, 2**20, 2**20)


@pytest.mark.parametrize("worker", [0, 3])
def test_a_rollout_worker_resets_once_with_its_training_seed(worker: int) -> None:
    env = _Recorder()
    RolloutWorker(
        lambda _: env, RandomPolicy, RewardSpec("env"), worker_index=worker, seed=5
    ).sample(2)
    assert env.resets == [rollout_reset_seed(5, worker)]


def test_a_rollout_worker_takes_the_callers_first_observation() -> None:
    env = _Recorder()
    obs = env.reset(seed=rollout_reset_seed(5, 0))
    worker = RolloutWorker(lambda _: env, RandomPolicy, RewardSpec("env"), seed=5, env=env, obs=obs)
    assert worker.obs is obs
    assert env.resets == [rollout_reset_seed(5, 0)]  # not reset a second time
    with pytest.raises(ValueError, match="pass env"):
        RolloutWorker(lambda _: env, RandomPolicy, RewardSpec("env"), obs=obs)


def test_the_worker_generator_continues_after_the_reset_draw() -> None:
    """Exploration is unchanged by the refactoring: the reset seed is the first draw."""
    rng = np.random.default_rng([5, 0])
    first = int(rng.integers(2**31))
    worker = RolloutWorker(lambda _: _Recorder(), RandomPolicy, RewardSpec("env"), seed=5)
    assert first == rollout_reset_seed(5, 0)
    assert worker.rng.integers(2**31) == rng.integers(2**31)
