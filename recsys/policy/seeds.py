"""Environment seeds: training and evaluation draw from disjoint ranges, by construction.

An environment's episodes are chosen by the seed its ``reset`` gets (a vector env seeds its
sub-envs ``seed, seed + 1, ...``, the Gymnasium convention). The trainer's rollout workers
only ever pass seeds in :data:`TRAINING_SEEDS` (``[0, 2**31)``), evaluation only seeds in
:data:`EVALUATION_SEEDS` (``[3 * 2**30, 2**32)``); the gap of ``2**30`` between them leaves
room for ``seed + i`` of up to a billion sub-envs, and everything stays below ``2**32`` for
environments that seed numpy's legacy generator. So no evaluation episode starts from a state
the policy was trained on, whatever seeds the two runs were given.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "EVALUATION_SEEDS",
    "TRAINING_SEEDS",
    "evaluation_reset_seeds",
    "rollout_generator",
    "rollout_reset_seed",
]

#: Seeds a training rollout worker passes to ``env.reset``.
TRAINING_SEEDS = range(0, 2**31)
#: Seeds evaluation passes to ``env.reset`` (with room above for each sub-env's ``+ i``).
EVALUATION_SEEDS = range(3 * 2**30, 2**32)
#: Spawn key that keeps evaluation's seed stream apart from any training stream.
_EVALUATION_KEY = 0x0E7A1


def rollout_generator(seed: int, worker_index: int) -> tuple[int, np.random.Generator]:
    """Rollout worker ``worker_index`` of a run seeded ``seed``: the seed it resets its env
    with (in :data:`TRAINING_SEEDS`) and its generator after that draw (its exploration)."""
    rng = np.random.default_rng([seed, worker_index])
    reset_seed = int(rng.integers(TRAINING_SEEDS.stop))
    assert reset_seed in TRAINING_SEEDS
    return reset_seed, rng


def rollout_reset_seed(seed: int, worker_index: int) -> int:
    """The seed rollout worker ``worker_index`` of a run seeded ``seed`` resets its env with."""
    return rollout_generator(seed, worker_index)[0]


def evaluation_reset_seeds(seed: int, rounds: int, batch_size: int) -> list[int]:
    """``rounds`` reset seeds of an evaluation seeded ``seed`` on an env of ``batch_size`` rows.

    Round ``r`` resets with ``base + r * batch_size``, so every row of every round (``seed +
    i`` for sub-env ``i``) starts from its own seed, all of them in :data:`EVALUATION_SEEDS`
    and so never one a training worker used. ``base`` is drawn from ``seed``: evaluations
    with different seeds see different episodes.
    """
    if rounds < 1 or batch_size < 1:
        raise ValueError(f"need rounds >= 1 and batch_size >= 1, got {rounds}, {batch_size}")
    span = rounds * batch_size
    room = len(EVALUATION_SEEDS) - span
    if room < 1:
        raise ValueError(f"{span} evaluation episodes do not fit the evaluation seed range")
    rng = np.random.default_rng([_EVALUATION_KEY, seed])
    base = EVALUATION_SEEDS.start + int(rng.integers(room))
    seeds = [base + r * batch_size for r in range(rounds)]
    assert seeds[0] in EVALUATION_SEEDS
    assert seeds[-1] + batch_size - 1 in EVALUATION_SEEDS
    return seeds
