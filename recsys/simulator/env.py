"""A batched slate environment: many users are shown slates and respond in one vectorized step.

The environment owns the mutable per-user state (today only a copy of the interests, later
fatigue, time budgets and interest drift) and its own seeded :class:`numpy.random.Generator`;
the world stays immutable ground truth. How users choose is injected as a
:class:`~recsys.simulator.choice.ChoiceModel`, so response models can be swapped without
touching the stepping logic. Gymnasium wrappers, when added, stay thin shells over it.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from recsys.data.synthetic import SyntheticWorld
from recsys.simulator.choice import ChoiceModel
from recsys.types import FloatArray, IntArray


class SlateObservation(NamedTuple):
    """What a policy may observe about the population before acting.

    ``active_users`` are the user indices that can be served (all users today; users whose
    session budget runs out will drop out once the simulator models time budgets). ``t`` counts
    steps since the last reset.
    """

    active_users: IntArray
    t: int


class StepResult(NamedTuple):
    """Responses of a batch of ``B`` users to slates of size ``S``.

    - ``clicked_item`` ``[B]`` int64: item id clicked, ``-1`` for no click.
    - ``click_position`` ``[B]`` int64: slot of the click, ``-1`` for no click.
    - ``clicks`` ``[B, S]`` bool: one-hot of the click per slot (all False for no click).
    - ``affinity`` ``[B, S]`` float32: the latent affinity that drove the choice.
    - ``probabilities`` ``[B, S + 1]`` float32: the choice distribution the click was drawn
      from (last column = no click), for variance-free expected-reward evaluation.
    """

    clicked_item: IntArray
    click_position: IntArray
    clicks: npt.NDArray[np.bool_]
    affinity: FloatArray
    probabilities: FloatArray


def _as_index_array(name: str, value: npt.ArrayLike, ndim: int) -> IntArray:
    arr = np.asarray(value)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _check_range(name: str, arr: IntArray, upper: int) -> None:
    if arr.size and (arr.min() < 0 or arr.max() >= upper):
        raise ValueError(
            f"{name} must lie in [0, {upper}), got values in [{arr.min()}, {arr.max()}]"
        )


class SlateEnv:
    """Shows slates to a batch of users and samples their clicks.

    Affinity of user ``u`` for item ``i`` is ``interests[u] . item_topics[i] + quality_weight *
    item_quality[i]``; the choice model turns a slate's affinities into at most one click.
    Same ``seed`` and same inputs give identical results.
    """

    def __init__(
        self,
        world: SyntheticWorld,
        choice_model: ChoiceModel,
        seed: int | None = 0,
        *,
        quality_weight: float = 0.5,
    ) -> None:
        if not np.isfinite(quality_weight):
            raise ValueError(f"quality_weight must be finite, got {quality_weight}")
        self.world = world
        self.choice_model = choice_model
        self.quality_weight = float(quality_weight)
        self._rng = np.random.default_rng(seed)
        self._interests = world.user_interests.copy()
        self._t = 0

    @property
    def num_users(self) -> int:
        """Population size; valid user indices are ``0 .. num_users - 1``."""
        return self.world.num_users

    @property
    def num_items(self) -> int:
        """Catalog size; valid item ids are ``0 .. num_items - 1``."""
        return self.world.num_items

    def reset(self, seed: int | None = None) -> SlateObservation:
        """Restore every user's initial state; reseed the RNG when ``seed`` is given.

        As in Gymnasium, ``seed=None`` keeps the current random stream going.
        """
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self._interests = self.world.user_interests.copy()
        self._t = 0
        return self._observation()

    def affinity(self, user_idx: IntArray, slates: IntArray) -> FloatArray:
        """Latent affinity ``[B, S]`` of each user for each slotted item (no validation)."""
        topics = self.world.item_topics[slates]  # [B, S, T]
        interests = self._interests[user_idx]  # [B, T]
        aff: FloatArray = np.einsum("bst,bt->bs", topics, interests)
        aff += np.float32(self.quality_weight) * self.world.item_quality[slates]
        return aff

    def step(self, user_idx: npt.ArrayLike, slates: npt.ArrayLike) -> StepResult:
        """Show ``slates[b]`` to user ``user_idx[b]`` and sample at most one click per user.

        Raises :class:`ValueError` for shapes that disagree, ids out of range, or a slate that
        repeats an item.
        """
        users = _as_index_array("user_idx", user_idx, 1)
        items = _as_index_array("slates", slates, 2)
        if items.shape[0] != users.shape[0]:
            raise ValueError(
                f"slates has {items.shape[0]} rows but user_idx has {users.shape[0]} users"
            )
        if items.shape[1] < 1:
            raise ValueError("slates must have at least one column (slate size >= 1)")
        _check_range("user_idx", users, self.num_users)
        _check_range("slates", items, self.num_items)
        ordered = np.sort(items, axis=1)
        dup_rows = np.flatnonzero((ordered[:, 1:] == ordered[:, :-1]).any(axis=1))
        if dup_rows.size:
            raise ValueError(
                f"slates must not repeat an item within a row; {dup_rows.size} rows do "
                f"(first: row {int(dup_rows[0])})"
            )

        aff = self.affinity(users, items)
        probs = self.choice_model.probabilities(aff)
        choice = self.choice_model.sample(probs, self._rng)
        slate_size = items.shape[1]
        clicked = choice < slate_size
        rows = np.arange(items.shape[0])
        clicked_item = np.where(clicked, items[rows, np.minimum(choice, slate_size - 1)], -1)
        click_position = np.where(clicked, choice, -1)
        clicks = choice[:, None] == np.arange(slate_size)[None, :]
        self._t += 1
        return StepResult(
            clicked_item=clicked_item.astype(np.int64, copy=False),
            click_position=click_position.astype(np.int64, copy=False),
            clicks=clicks,
            affinity=aff,
            probabilities=probs,
        )

    def _observation(self) -> SlateObservation:
        return SlateObservation(active_users=np.arange(self.num_users, dtype=np.int64), t=self._t)
