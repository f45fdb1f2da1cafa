"""The batch policy contract and slate construction with exploration.

Learned policies score ``[B, C]`` candidates at once (training and evaluation are batched); the
serving path asks for one slate at a time through :class:`recsys.protocols.SlatePolicy`, which
:class:`recsys.serving.policies.ServedPolicy` implements over any :class:`BatchSlatePolicy`.

The Protocols live here rather than in :mod:`recsys.protocols` because they speak in the batch
types of :mod:`recsys.policy.batch`, which only the policy package, its trainer and
off-policy evaluation use.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
import torch

from recsys.policy.batch import SlateAction, SlateObs, Transition, gather_slots
from recsys.policy.exploration import (
    check_ad_load,
    epsilon_greedy_log_propensities_batch,
    epsilon_greedy_sample_batch,
    greedy_slate_batch,
    plackett_luce_log_propensities_batch,
    plackett_luce_sample_batch,
    slot_log_probs_after_prefix,
)

Float64Array = npt.NDArray[np.float64]
ExplorationKind = Literal["greedy", "epsilon", "boltzmann"]
#: Named arrays, e.g. a policy's weights: what safetensors stores and Ray broadcasts.
Tensors = dict[str, np.ndarray[Any, Any]]


@runtime_checkable
class BatchSlatePolicy(Protocol):
    """Chooses a slate for each of ``B`` requests, reporting exact per-slot propensities."""

    name: str

    def act(
        self,
        obs: SlateObs,
        slate_size: int,
        rng: np.random.Generator,
        explore: bool = True,
    ) -> SlateAction:
        """Slates ``[B, slate_size]`` of candidate indices with their propensities.

        ``explore=False`` asks for the policy's deterministic best slate (propensity 1 per
        slot); ``explore=True`` for its behaviour distribution, which is what gets logged.
        """
        ...


@runtime_checkable
class TrainableSlatePolicy(BatchSlatePolicy, Protocol):
    """A batch policy that learns from experience (what the trainer drives)."""

    def update(self, rollout: Sequence[Transition]) -> Mapping[str, float]:
        """One learning step on a time-ordered rollout (``rollout[t]`` is step ``t`` of ``B``
        parallel users); value-based and bandit policies ignore the order. Returns metrics."""
        ...

    def weights(self) -> Tensors:
        """Everything learned, as a flat ``{name: array}`` (checkpoints, Ray broadcasts)."""
        ...

    def load_weights(self, tensors: Mapping[str, np.ndarray[Any, Any]]) -> None:
        """Inverse of :meth:`weights` into a policy of the same architecture."""
        ...

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The torch optimisers by name, so a checkpoint can store their moments (none for
        closed-form learners)."""
        ...


@runtime_checkable
class ExploringPolicy(BatchSlatePolicy, Protocol):
    """A batch policy whose exploration (its :class:`SlateSampler`) can be replaced, e.g. by
    the service's exploration setting."""

    def set_sampler(self, sampler: SlateSampler) -> None:
        """Act through ``sampler`` from now on (its propensities are the ones reported)."""
        ...


@dataclass(frozen=True, slots=True)
class SlateSampler:
    """Turns per-candidate scores into slates: exploration kind and the ad load per slate.

    - ``greedy``: top-``S`` by score (deterministic, propensity 1).
    - ``epsilon``: each slot is the best available item w.p. ``1 - epsilon``, else uniform
      over the available ones (:func:`~recsys.policy.exploration.epsilon_greedy_sample_batch`).
    - ``boltzmann``: Plackett-Luce over ``softmax(scores / temperature)``
      (:func:`~recsys.policy.exploration.plackett_luce_sample_batch`).

    ``max_ads`` limits sponsored candidates per slate (``None``: no cap); once a slate holds
    that many, remaining ads are masked out. ``min_ads`` is the fixed ad load: every slate
    holds at least that many ads (fewer when its candidates have fewer valid ads), the last
    slots taking only ads when the floor needs them all. The propensities are those of the
    masked distribution, so they stay exact for off-policy evaluation.
    """

    kind: ExplorationKind = "boltzmann"
    epsilon: float = 0.1
    temperature: float = 1.0
    max_ads: int | None = None
    min_ads: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("greedy", "epsilon", "boltzmann"):
            raise ValueError(f"kind must be greedy, epsilon or boltzmann, got {self.kind!r}")
        if not 0.0 <= self.epsilon <= 1.0:
            raise ValueError(f"epsilon must lie in [0, 1], got {self.epsilon}")
        if not (np.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be finite and > 0, got {self.temperature}")
        check_ad_load(self.max_ads, self.min_ads)

    def sample(
        self,
        scores: npt.ArrayLike,
        obs: SlateObs,
        slate_size: int,
        rng: np.random.Generator,
        explore: bool = True,
    ) -> SlateAction:
        """Build slates from ``[B, C]`` scores; ``explore=False`` always takes the top-``S``."""
        mask, ads, cap, floor = obs.candidate_mask, obs.is_ad, self.max_ads, self.min_ads
        s = np.asarray(scores, dtype=np.float64)
        if not explore or self.kind == "greedy":
            slates = greedy_slate_batch(
                s, slate_size, mask=mask, is_ad=ads, max_ads=cap, min_ads=floor
            )
            b = slates.shape[0]
            props = np.ones((b, slate_size), dtype=np.float32)
            log_prob = np.zeros(b, dtype=np.float32)
        elif self.kind == "epsilon":
            slates, props, log_prob = epsilon_greedy_sample_batch(
                s, slate_size, self.epsilon, rng, mask=mask, is_ad=ads, max_ads=cap, min_ads=floor
            )
        else:
            slates, props, log_prob = plackett_luce_sample_batch(
                s,
                slate_size,
                self.temperature,
                rng,
                mask=mask,
                is_ad=ads,
                max_ads=cap,
                min_ads=floor,
            )
        chosen = gather_slots(s, slates).astype(np.float32)
        return SlateAction(slates=slates, propensities=props, log_prob=log_prob, scores=chosen)

    def log_propensities(
        self, scores: npt.ArrayLike, obs: SlateObs, slates: npt.ArrayLike, explore: bool = True
    ) -> Float64Array:
        """Exact per-slot log-propensities ``[B, S]`` this sampler gives to given slates.

        The target-policy side of off-policy evaluation; ``-inf`` where the sampler could
        never produce that slot (for ``greedy``, anything but the top-``S`` path).
        """
        mask, ads, cap, floor = obs.candidate_mask, obs.is_ad, self.max_ads, self.min_ads
        idx = np.asarray(slates, dtype=np.int64)
        if self.kind == "boltzmann" and explore:
            return plackett_luce_log_propensities_batch(
                scores, idx, self.temperature, mask=mask, is_ad=ads, max_ads=cap, min_ads=floor
            )
        eps = self.epsilon if explore and self.kind == "epsilon" else 0.0
        return epsilon_greedy_log_propensities_batch(
            scores, idx, eps, mask=mask, is_ad=ads, max_ads=cap, min_ads=floor
        )

    def slot_log_propensities(
        self,
        scores: npt.ArrayLike,
        obs: SlateObs,
        prefixes: npt.ArrayLike,
        picks: npt.ArrayLike,
        slate_size: int,
    ) -> Float64Array:
        """Exact ``log P(picks | prefixes)`` ``[B]`` at the slot after the ``[B, k]``
        prefixes, exploring: the Rao-Blackwellised marginals of off-policy evaluation
        average it over sampled prefixes
        (:func:`~recsys.policy.exploration.slot_log_probs_after_prefix`)."""
        return slot_log_probs_after_prefix(
            scores,
            prefixes,
            picks,
            slate_size,
            kind="boltzmann" if self.kind == "boltzmann" else "epsilon",
            epsilon=self.epsilon if self.kind == "epsilon" else 0.0,
            temperature=self.temperature,
            mask=obs.candidate_mask,
            is_ad=obs.is_ad,
            max_ads=self.max_ads,
            min_ads=self.min_ads,
        )


def optimiser_first_priority(
    item_scores: Float64Array, obs: SlateObs, slates: npt.NDArray[np.int64]
) -> Float64Array:
    """Sampler scores that rank an optimiser's ``slates`` ``[B, S]`` above every other valid
    candidate, in their order, and the rest by ``item_scores`` ``[B, C]``.

    Epsilon-greedy over this priority serves the optimiser's slate w.p. ``1 - eps`` per slot
    and explores by item score otherwise; greedy over it *is* the optimiser's slate, under the
    sampler's ad load too when the optimiser got the same one (the slate meets the floor, so a
    slot where only ads are left takes the slate's next ad, its best-ranked one). Policies
    whose slate comes from a set optimiser (SlateQ, the myopic greedy baseline) act through
    it, and off-policy evaluation rebuilds their propensities from it.
    """
    valid = obs.valid()
    top = np.max(np.where(valid, item_scores, -np.inf), axis=1)
    priority: Float64Array = np.where(valid, item_scores, 0.0)
    rows = np.arange(priority.shape[0])[:, None]
    priority[rows, slates] = top[:, None] + 1.0 + np.arange(slates.shape[1], 0, -1)
    return priority
