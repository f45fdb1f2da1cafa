"""Uniformly random slates for the simulator tests (the env's inputs, not a logging path:
logged sessions come from :func:`recsys.policy.training.sessions.record_sessions`)."""

from __future__ import annotations

import numpy as np

from recsys.types import IntArray


def uniform_random_slates(
    num_items: int, slate_size: int, num_slates: int, rng: np.random.Generator
) -> IntArray:
    """``[num_slates, slate_size]`` ordered slates, each uniform over distinct-item orderings.

    Floyd's subset algorithm vectorized across rows (a loop over the ``slate_size`` slots only,
    memory ``O(num_slates * slate_size)`` instead of ``O(num_slates * num_items)`` for random
    keys), followed by a uniform per-row shuffle so the order is uniform too.
    """
    if not 1 <= slate_size <= num_items:
        raise ValueError(f"slate_size must be in [1, num_items={num_items}], got {slate_size}")
    if num_slates < 0:
        raise ValueError(f"num_slates must be >= 0, got {num_slates}")
    chosen = np.empty((num_slates, slate_size), dtype=np.int64)
    for slot, upper in enumerate(range(num_items - slate_size, num_items)):
        draw = rng.integers(0, upper + 1, size=num_slates)
        taken = (chosen[:, :slot] == draw[:, None]).any(axis=1)
        chosen[:, slot] = np.where(taken, upper, draw)
    order = np.argsort(rng.random((num_slates, slate_size)), axis=1)
    out: IntArray = np.take_along_axis(chosen, order, axis=1)
    return out
