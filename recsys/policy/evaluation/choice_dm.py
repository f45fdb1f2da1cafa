"""A direct method for slates whose model is the user's choice among the slate's items.

The item-position estimators (IIPS, position DR with a per-position baseline) treat each
slot's reward as a function of its item and position alone. Where users choose among the
items of a slate (the simulator's default, and SlateQ's model: at most one click, items
competing for it) that assumption fails exactly when it matters: a slate of strong items
shares one click, while each item's click rate was measured beside the logger's weaker
neighbours, so IIPS can estimate more than one click per slate.

:class:`CrossFittedChoiceModel` fits a conditional logit with a no-click option
(:class:`~recsys.policy.choice_model.ConditionalLogitChoiceModel`; at most one click when the
log never has more, else independent clicks) on the log's own slates, on the target's
observation features, cross-fitted over two halves of the requests so that no slate is
predicted by a model that saw it. :func:`choice_predictions` gives, per logged row, the
model's click probability of that slot in the logged slate and its expectation at that slot
under the target (Monte Carlo over slates the target samples): ``dm`` is then the target's
expected clicks per slate with the competition modelled, and the DR estimators use it as
their control variate, so their importance-weighted corrections act on its residuals only.
``dm``'s interval holds sampling error only, not the model's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from recsys.policy.batch import SlateObs
from recsys.policy.choice_model import ClickModel, ConditionalLogitChoiceModel
from recsys.policy.evaluation.ope import RewardPredictions
from recsys.policy.evaluation.ope_policies import (
    LoggedRequests,
    TargetPolicy,
    chunks,
    obs_rows,
    request_folds,
)
from recsys.types import FloatArray, IntArray

Float64Array = npt.NDArray[np.float64]

__all__ = ["CrossFittedChoiceModel", "choice_predictions"]


def _observe(
    target: TargetPolicy, requests: LoggedRequests, a: int, b: int
) -> tuple[Float64Array, SlateObs]:
    """The target's scores and observations of requests ``[a, b)``; its features must exist."""
    scores, obs = target.behaviour(
        requests.user_features[a:b], requests.candidate_ids[a:b], requests.max_slate_size
    )
    if obs.user_features.shape[1] == 0 or obs.item_features.shape[2] == 0:
        raise ValueError(
            "a choice model needs the target's observation features: give a checkpoint "
            "policy, not random or boltzmann:T"
        )
    return scores, obs


@dataclass(frozen=True, eq=False)
class CrossFittedChoiceModel:
    """Two choice models, each fitted on one half of the requests; the other half's
    predictions come from it. Halves alternate over sorted request ids
    (:func:`~recsys.policy.evaluation.ope_policies.request_folds`)."""

    models: tuple[ConditionalLogitChoiceModel, ConditionalLogitChoiceModel]
    fold: IntArray  # [m] each request's fold; the model fitted on the other fold predicts it
    clicks: ClickModel
    nll: tuple[float, float]

    @classmethod
    def fit(
        cls,
        requests: LoggedRequests,
        target: TargetPolicy,
        clicks: npt.NDArray[np.floating[Any]],
        *,
        seed: int = 0,
        steps: int = 600,
        batch_size: int = 512,
        chunk_requests: int = 4096,
    ) -> CrossFittedChoiceModel:
        """Fit on the logged slates (``clicks``: ``[m, S]`` 0/1 masks, the rows' clicks
        by :meth:`~recsys.policy.evaluation.ope.LoggedSlates.per_position`), each half for
        about ``steps`` Adam steps whatever its size (a fixed number of epochs underfits a
        small log). Every slate must have the same size: a padded slot would compete for the
        click in the model."""
        sizes = np.unique(requests.slates.slate_size)
        if sizes.size != 1 or int(sizes[0]) != requests.max_slate_size:
            raise ValueError(
                "a choice model needs slates of one size; the log has sizes "
                f"{sorted(int(s) for s in sizes)}"
            )
        m = requests.n_requests
        users, slates = [], []
        for a in range(0, m, chunk_requests):
            b = min(m, a + chunk_requests)
            _, obs = _observe(target, requests, a, b)
            users.append(obs.user_features)
            rows = np.arange(b - a)[:, None]
            slates.append(obs.item_features[rows, requests.slate_candidates[a:b]])
        u, x = np.concatenate(users), np.concatenate(slates)
        kind: ClickModel = "single" if float(clicks.sum(axis=1).max()) <= 1.0 else "multi"
        fold = request_folds(requests)
        models, nll = [], []
        for f in (0, 1):
            mine = fold == f
            if not mine.any():
                raise ValueError("a choice model needs at least two logged requests")
            model = ConditionalLogitChoiceModel(
                u.shape[1], x.shape[2], requests.max_slate_size, seed=seed + f, clicks=kind
            )
            epochs = max(1, math.ceil(steps / math.ceil(int(mine.sum()) / batch_size)))
            fitted = model.fit(u[mine], x[mine], clicks[mine], epochs=epochs, batch_size=batch_size)
            nll.append(fitted["nll"])
            models.append(model)
        return cls(models=(models[0], models[1]), fold=fold, clicks=kind, nll=(nll[0], nll[1]))

    def click_probabilities(
        self, fold: IntArray, user: FloatArray, slate_items: FloatArray
    ) -> Float64Array:
        """``P(slot k clicked | user, slate)`` ``[n, S]``, each row from the model that did
        not see its fold."""
        with torch.no_grad():
            u, x = torch.as_tensor(user), torch.as_tensor(slate_items)
            by = [m.click_probabilities(u, x).double().numpy() for m in self.models]
        out: Float64Array = np.where((fold == 0)[:, None], by[1], by[0])
        return out


def choice_predictions(
    requests: LoggedRequests,
    target: TargetPolicy,
    model: CrossFittedChoiceModel,
    *,
    n_samples: int = 50,
    seed: int = 0,
    chunk_elements: int = 1 << 22,
) -> RewardPredictions:
    """Per logged row: the model's click probability of its slot in the logged slate, and
    the mean over ``n_samples`` slates sampled from the target of that slot's click
    probability in them."""
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    s = requests.max_slate_size
    rng = np.random.default_rng(seed)
    logged = np.empty(requests.slates.n_rows)
    expected = np.empty(requests.slates.n_rows)
    per_chunk = max(1, chunk_elements // (n_samples * requests.num_candidates))
    for ch in chunks(requests, per_chunk):
        scores, obs = _observe(target, requests, ch.a, ch.b)
        user, items = obs.user_features, obs.item_features
        b = ch.b - ch.a
        fold = model.fold[ch.a : ch.b]
        rows = np.arange(b)[:, None]
        on_log = model.click_probabilities(
            fold, user, items[rows, requests.slate_candidates[ch.a : ch.b]]
        )
        logged[ch.rows] = on_log[ch.local, ch.position]
        rep = np.repeat(np.arange(b), n_samples)
        sampled = target.sampler.sample(scores[rep], obs_rows(obs, rep), s, rng).slates
        probs = model.click_probabilities(fold[rep], user[rep], items[rep[:, None], sampled])
        mean = probs.reshape(b, n_samples, s).mean(axis=1)
        expected[ch.rows] = mean[ch.local, ch.position]
    return RewardPredictions(logged=logged, target=expected)
