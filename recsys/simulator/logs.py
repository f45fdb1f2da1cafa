"""Logged bandit feedback from a uniformly random logging policy.

Named ``logs`` rather than ``logging`` so it never shadows the standard library module. The
uniform logger is the textbook choice for bootstrapping: every item gets impressions at every
position, so the candidate model sees unbiased negatives and off-policy estimators have known,
bounded propensities.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from recsys.data.synthetic import SyntheticWorld
from recsys.simulator.env import SlateEnv
from recsys.types import FloatArray, IntArray


class LoggedClicks(NamedTuple):
    """One row per impressed (slate, position); all arrays share length ``N * S``.

    Rows are grouped slate by slate: ``slate_idx`` says which logged slate a row belongs to and
    ``position`` its slot. ``clicked`` is 1.0 for the (at most one) clicked row of a slate.
    ``propensity`` is the logging policy's conditional probability of that item at that slot
    given the items above it, i.e. ``1 / (num_items - position)`` for the uniform logger, the
    same convention as :attr:`recsys.types.Slate.propensities`.
    """

    user_idx: IntArray
    item_idx: IntArray
    position: IntArray
    clicked: FloatArray
    propensity: FloatArray
    slate_idx: IntArray

    @property
    def num_rows(self) -> int:
        """Number of logged (slate, position) rows (``len()`` counts the tuple's fields)."""
        return int(self.user_idx.shape[0])


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
    return np.take_along_axis(chosen, order, axis=1)


def simulate_logs(
    world: SyntheticWorld,
    env: SlateEnv,
    num_impressions: int,
    slate_size: int,
    rng: np.random.Generator,
) -> LoggedClicks:
    """Serve ``num_impressions`` uniformly random slates to uniformly drawn users and log clicks.

    An impression is one served slate, so the result has ``num_impressions * slate_size`` rows.
    ``rng`` drives the logging policy (users and slates); the env's own RNG drives the clicks.
    All impressions go through one batched :meth:`SlateEnv.step`, so each sees its user's
    state before the call (parallel impressions): the logs sample the users' current
    preferences without fatigue or drift from the logging itself. For sequential sessions
    with dynamics, step the env repeatedly instead (``StepResult`` carries every signal).
    """
    if env.num_items != world.num_items or env.num_users != world.num_users:
        raise ValueError(
            f"env was built for {env.num_users} users x {env.num_items} items but world has "
            f"{world.num_users} x {world.num_items}"
        )
    if num_impressions < 0:
        raise ValueError(f"num_impressions must be >= 0, got {num_impressions}")
    users = rng.integers(0, world.num_users, size=num_impressions, dtype=np.int64)
    slates = uniform_random_slates(world.num_items, slate_size, num_impressions, rng)
    result = env.step(users, slates)

    positions = np.arange(slate_size, dtype=np.int64)
    slot_propensity = (1.0 / (world.num_items - positions)).astype(np.float32)
    return LoggedClicks(
        user_idx=np.repeat(users, slate_size),
        item_idx=slates.reshape(-1),
        position=np.tile(positions, num_impressions),
        clicked=result.clicks.reshape(-1).astype(np.float32),
        propensity=np.tile(slot_propensity, num_impressions),
        slate_idx=np.repeat(np.arange(num_impressions, dtype=np.int64), slate_size),
    )
