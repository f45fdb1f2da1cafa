"""Baseline slate policies in the batch interface: random, popularity, myopic, LinUCB.

Every learned policy must beat these on the same environment and the same logs: random is the
floor (and a perfect logging policy for off-policy evaluation), popularity is what a catalog
without personalisation does, myopic greedy maximises the *immediate* expected reward (the
policy RL must beat by caring about the future), and LinUCB is the contextual bandit that
explores optimistically but still ignores long-term effects. All honour the sampler's ad load
(its ``max_ads`` cap and ``min_ads`` floor).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch

from recsys.policy._nets import to_tensor
from recsys.policy.base import SlateSampler, Tensors, optimiser_first_priority
from recsys.policy.batch import SlateAction, SlateObs, Transition, gather_slots
from recsys.policy.choice_model import ConditionalLogitChoiceModel
from recsys.policy.exploration import check_ad_load, plackett_luce_sample_batch
from recsys.policy.slate_optimization import SlateOptimizer, optimize_slates

#: Maps a batch of observations to per-candidate scores ``[B, C]``.
ItemScorer = Callable[[SlateObs], npt.NDArray[np.floating]]


class RandomPolicy:
    """Uniformly random slates without replacement (propensity ``1 / available`` per slot)
    under an ad load (``max_ads`` cap, ``min_ads`` floor)."""

    name: str = "random"

    def __init__(self, max_ads: int | None = None, min_ads: int = 0) -> None:
        check_ad_load(max_ads, min_ads)
        self.max_ads = max_ads
        self.min_ads = min_ads

    def act(
        self, obs: SlateObs, slate_size: int, rng: np.random.Generator, explore: bool = True
    ) -> SlateAction:
        """A uniform slate whatever ``explore`` says (it has no better guess)."""
        scores = np.zeros(obs.candidate_ids.shape, dtype=np.float64)
        slates, props, log_prob = plackett_luce_sample_batch(
            scores,
            slate_size,
            1.0,
            rng,
            mask=obs.candidate_mask,
            is_ad=obs.is_ad,
            max_ads=self.max_ads,
            min_ads=self.min_ads,
        )
        return SlateAction(slates, props, log_prob, np.zeros(slates.shape, np.float32))


class PopularityPolicy:
    """Ranks candidates by how often each catalog item was clicked (``log(1 + clicks)``).

    Counts are over catalog ids, so they transfer across requests; :meth:`update` adds the
    clicks of new transitions (online), :meth:`observe` arbitrary counts (e.g. from logs).
    """

    name: str = "popularity"

    def __init__(self, num_items: int, sampler: SlateSampler | None = None) -> None:
        self.counts = np.zeros(num_items, dtype=np.float64)
        self.sampler = sampler or SlateSampler("greedy")

    def observe(self, item_ids: npt.ArrayLike, weights: npt.ArrayLike | float = 1.0) -> None:
        """Add ``weights`` to the counts of ``item_ids`` (repeats accumulate)."""
        ids = np.asarray(item_ids, dtype=np.int64).reshape(-1)
        w = np.broadcast_to(np.asarray(weights, dtype=np.float64), ids.shape)
        np.add.at(self.counts, ids, w)

    def update(self, rollout: Sequence[Transition]) -> Mapping[str, float]:
        """Count the clicked items of every transition."""
        clicks = 0.0
        for tr in rollout:
            ids = gather_slots(tr.obs.candidate_ids, tr.action.slates)
            clicked = np.asarray(tr.response.click) > 0
            self.observe(ids[clicked])
            clicks += float(clicked.sum())
        return {"clicks": clicks}

    def act(
        self, obs: SlateObs, slate_size: int, rng: np.random.Generator, explore: bool = True
    ) -> SlateAction:
        """The most clicked candidates (explored as the sampler says)."""
        scores = np.log1p(self.counts[obs.candidate_ids])
        return self.sampler.sample(scores, obs, slate_size, rng, explore=explore)

    def weights(self) -> Tensors:
        """The click counts (``counts``)."""
        return {"counts": self.counts.copy()}

    def load_weights(self, tensors: Mapping[str, np.ndarray[Any, Any]]) -> None:
        """Inverse of :meth:`weights`."""
        self.counts = np.asarray(tensors["counts"], dtype=np.float64).copy()

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """None: counting needs no optimiser."""
        return {}


class MyopicGreedyPolicy:
    """Maximises the expected *immediate* reward of the slate, ignoring what comes after.

    With a ``choice_model``, ``immediate_reward(obs)`` ``[B, C]`` is the reward if an item is
    clicked and the slate maximises ``sum_i P(i | s, A) r_i`` under the conditional logit
    (SlateQ's slate optimisation with ``gamma = 0``). Without one, ``immediate_reward`` is
    already an expected per-impression reward and the slate is its top-``S``. For ads, the
    scorer should include ``revenue_weight * expected revenue``, the same objective the
    learned policies are trained on.
    """

    name: str = "myopic_greedy"

    def __init__(
        self,
        immediate_reward: ItemScorer,
        choice_model: ConditionalLogitChoiceModel | None = None,
        optimizer: SlateOptimizer = "greedy",
        sampler: SlateSampler | None = None,
    ) -> None:
        self.immediate_reward = immediate_reward
        self.choice_model = choice_model
        self.optimizer = optimizer
        self.sampler = sampler or SlateSampler("greedy")

    def set_sampler(self, sampler: SlateSampler) -> None:
        """Explore around the optimiser's slate with ``sampler`` (and its ad load)."""
        self.sampler = sampler

    def act(
        self, obs: SlateObs, slate_size: int, rng: np.random.Generator, explore: bool = True
    ) -> SlateAction:
        """The myopically best slate (explored around as the sampler says)."""
        reward = np.asarray(self.immediate_reward(obs), dtype=np.float64)
        if self.choice_model is None:
            return self.sampler.sample(reward, obs, slate_size, rng, explore=explore)
        user, items = to_tensor(obs.user_features), to_tensor(obs.item_features)
        with torch.no_grad():
            v = self.choice_model.item_logits(user, items).double()
            v0 = self.choice_model.no_click_logit(user).double()
            peak = torch.maximum(v.max(1).values, v0)
            attraction, no_click = torch.exp(v - peak[:, None]), torch.exp(v0 - peak)
            slates = optimize_slates(
                attraction,
                no_click,
                torch.from_numpy(reward),
                slate_size,
                self.optimizer,
                valid=None if obs.candidate_mask is None else torch.from_numpy(obs.candidate_mask),
                is_ad=None if obs.is_ad is None else torch.from_numpy(obs.is_ad),
                max_ads=self.sampler.max_ads,
                min_ads=self.sampler.min_ads,
            ).numpy()
        item_scores = attraction.numpy() * reward
        priority = optimiser_first_priority(item_scores, obs, slates)
        action = self.sampler.sample(priority, obs, slate_size, rng, explore=explore)
        chosen = np.take_along_axis(item_scores, action.slates, axis=1)
        return action._replace(scores=chosen.astype(np.float32))


LinUCBFeatures = Literal["item", "outer"]


class LinUCBPolicy:
    """Contextual bandit with a shared linear model and upper-confidence exploration.

    Each impressed slot is one observation ``(phi(u, x), r)`` with ``phi = [x, 1]`` (``item``)
    or ``[x, vec(u x^T), 1]`` (``outer``, personalised). Scores are
    ``theta^T phi + alpha sqrt(phi^T A^-1 phi)`` (Li et al. 2010, "hybrid" with only shared
    features); the slate is the top-``S`` of the scores, so exploration comes from optimism
    and the propensities are 1 unless the sampler adds randomness. Updates are batched:
    ``A += Phi^T Phi``, ``b += Phi^T r`` and ``A^-1`` is recomputed from a Cholesky factor
    (rank-``N`` updates would need ``N`` Sherman-Morrison steps). Position bias is ignored.
    """

    name: str = "linucb"

    def __init__(
        self,
        user_dim: int,
        item_dim: int,
        alpha: float = 1.0,
        l2: float = 1.0,
        features: LinUCBFeatures = "outer",
        sampler: SlateSampler | None = None,
    ) -> None:
        if alpha < 0 or l2 <= 0:
            raise ValueError(f"alpha must be >= 0 and l2 > 0, got {alpha}, {l2}")
        if features not in ("item", "outer"):
            raise ValueError(f"features must be 'item' or 'outer', got {features!r}")
        self.user_dim, self.item_dim = user_dim, item_dim
        self.features = features
        self.alpha = float(alpha)
        self.dim = item_dim + 1 + (user_dim * item_dim if features == "outer" else 0)
        self.A = np.eye(self.dim) * l2
        self.b = np.zeros(self.dim)
        self.A_inv = np.eye(self.dim) / l2
        self.theta = np.zeros(self.dim)
        self.sampler = sampler or SlateSampler("greedy")

    def featurize(self, user: npt.ArrayLike, items: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """``phi`` ``[..., d]`` for users ``[B, du]`` and items ``[B, C, di]``."""
        u = np.asarray(user, dtype=np.float64)
        x = np.asarray(items, dtype=np.float64)
        ones = np.ones((*x.shape[:-1], 1))
        parts = [x, ones]
        if self.features == "outer":
            outer = np.einsum("bu,bci->bcui", u, x).reshape(*x.shape[:-1], -1)
            parts.insert(1, outer)
        return np.concatenate(parts, axis=-1)

    def ucb_scores(self, obs: SlateObs) -> npt.NDArray[np.float64]:
        """``[B, C]`` upper confidence bounds of the per-impression reward."""
        phi = self.featurize(obs.user_features, obs.item_features)
        mean = phi @ self.theta
        width = np.sqrt(np.maximum(np.einsum("bcd,de,bce->bc", phi, self.A_inv, phi), 0.0))
        out: npt.NDArray[np.float64] = mean + self.alpha * width
        return out

    def act(
        self, obs: SlateObs, slate_size: int, rng: np.random.Generator, explore: bool = True
    ) -> SlateAction:
        """Top-``S`` by UCB (``explore=True``) or by the posterior mean (``explore=False``)."""
        if explore:
            scores = self.ucb_scores(obs)
        else:
            scores = self.featurize(obs.user_features, obs.item_features) @ self.theta
        return self.sampler.sample(scores, obs, slate_size, rng, explore=explore)

    def update(self, rollout: Sequence[Transition]) -> Mapping[str, float]:
        """Ridge update with every impressed slot of the rollout (per-slot rewards)."""
        n = 0
        for tr in rollout:
            x = gather_slots(tr.obs.item_features, tr.action.slates)
            phi = self.featurize(tr.obs.user_features, x).reshape(-1, self.dim)
            r = np.asarray(tr.reward, dtype=np.float64).reshape(-1)
            self.A += phi.T @ phi
            self.b += phi.T @ r
            n += r.shape[0]
        chol = np.linalg.cholesky(self.A)
        chol_inv = np.linalg.solve(chol, np.eye(self.dim))
        self.A_inv = chol_inv.T @ chol_inv
        self.theta = self.A_inv @ self.b
        return {"observations": float(n), "theta_norm": float(np.linalg.norm(self.theta))}

    def weights(self) -> Tensors:
        """The ridge statistics ``A``, ``b`` and what is derived from them (``A_inv``,
        ``theta``)."""
        return {k: np.array(getattr(self, k)) for k in ("A", "b", "A_inv", "theta")}

    def load_weights(self, tensors: Mapping[str, np.ndarray[Any, Any]]) -> None:
        """Inverse of :meth:`weights` (same feature dimension)."""
        for k in ("A", "b", "A_inv", "theta"):
            setattr(self, k, np.array(tensors[k], dtype=np.float64))

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """None: the ridge solution is closed-form."""
        return {}
