"""The choice-model direct method: a known answer where items compete for one click."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from recsys.policy.base import SlateSampler
from recsys.policy.batch import SlateObs
from recsys.policy.evaluation.choice_dm import (
    CrossFittedChoiceModel,
    choice_predictions,
)
from recsys.policy.evaluation.ope_file import evaluate_ope_file
from recsys.policy.evaluation.ope_policies import LoggedRequests
from recsys.types import FloatArray, IntArray

from .test_ope_policies import _feedback

M, C, S, DU, DI = 4000, 8, 3, 3, 3
NO_CLICK = 1.0


class FeatureTarget:
    """A target that observes user and item features (looked up by user feature 0, the
    request index) and acts on fixed scores with any sampler."""

    name = "features"

    def __init__(
        self, users: FloatArray, items: FloatArray, scores: FloatArray, sampler: SlateSampler
    ) -> None:
        self.users, self.items, self.scores, self.sampler = users, items, scores, sampler

    def behaviour(
        self, user_features: FloatArray, candidate_ids: IntArray, slate_size: int
    ) -> tuple[np.ndarray, SlateObs]:
        rows = user_features[:, 0].astype(np.int64)
        obs = SlateObs(
            user_features=self.users[rows],
            item_features=self.items[rows],
            candidate_ids=candidate_ids,
        )
        return self.scores[rows].astype(np.float64), obs


def _utilities(users: FloatArray, items: FloatArray) -> FloatArray:
    weights = np.array([[1.5, 0.0, -0.5], [0.0, 1.0, 0.5], [0.5, -1.0, 1.0]])
    out: FloatArray = np.einsum("md,de,mce->mc", users, weights, items)
    return out


def _no_click_probability(util: FloatArray, slates: IntArray) -> FloatArray:
    """The true single-choice model: ``P(no click | slate)``."""
    shown = np.exp(np.take_along_axis(util, slates, axis=1)).sum(axis=1)
    out: FloatArray = np.exp(NO_CLICK) / (np.exp(NO_CLICK) + shown)
    return out


@pytest.fixture(scope="module")
def world() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    users = rng.normal(size=(M, DU)).astype(np.float32)
    items = rng.normal(size=(M, C, DI)).astype(np.float32)
    util = _utilities(users, items)
    # A uniformly random logger; one click at most, drawn from the true choice model.
    slates = np.argsort(rng.random((M, C)), axis=1)[:, :S]
    logits = np.concatenate(
        [np.take_along_axis(util, slates, axis=1), np.full((M, 1), NO_CLICK)], axis=1
    )
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    choice = (probs.cumsum(axis=1) > rng.random((M, 1))).argmax(axis=1)
    clicks = np.zeros((M, S), dtype=bool)
    clicks[np.arange(M)[choice < S], choice[choice < S]] = True
    return {"users": users, "items": items, "util": util, "slates": slates, "clicks": clicks}


def _log(world: dict[str, np.ndarray]) -> tuple[LoggedRequests, FloatArray]:
    cands = np.arange(M * C).reshape(M, C)
    logs = replace(_feedback(cands, world["slates"]), click=world["clicks"].reshape(-1))
    requests = LoggedRequests.from_feedback(logs)
    return requests, requests.slates.per_position(logs.click)


def test_dm_recovers_a_targets_clicks_where_items_compete(world: dict[str, np.ndarray]) -> None:
    requests, clicks = _log(world)
    util = world["util"]
    # The target puts the three most attractive items together: they share one click, so
    # adding up each one's click rate beside the logger's random neighbours overestimates.
    target = FeatureTarget(world["users"], world["items"], util, SlateSampler("greedy"))
    model = CrossFittedChoiceModel.fit(requests, target, clicks, seed=0)
    assert model.clicks == "single"
    assert set(np.unique(model.fold).tolist()) == {0, 1}

    preds = choice_predictions(requests, target, model, n_samples=4, seed=0)
    sid = requests.slates.slate
    dm = np.bincount(sid, weights=preds.target).mean()
    best = np.argsort(-util, axis=1)[:, :S]
    truth = float((1.0 - _no_click_probability(util, best)).mean())
    assert dm == pytest.approx(truth, abs=0.01)
    # On the logged slates the model predicts the logged click rate.
    assert np.bincount(sid, weights=preds.logged).mean() == pytest.approx(
        clicks.sum(axis=1).mean(), abs=0.02
    )
    # The target is far from the logger: the estimate is not the logged value.
    logged_rate = (1.0 - _no_click_probability(util, world["slates"])).mean()
    assert truth - logged_rate > 0.1


def test_multi_click_logs_fit_independent_clicks(world: dict[str, np.ndarray]) -> None:
    requests, clicks = _log(world)
    both = clicks.copy()
    both[:, :2] = True  # two clicks on every slate
    target = FeatureTarget(world["users"], world["items"], world["util"], SlateSampler("greedy"))
    assert CrossFittedChoiceModel.fit(requests, target, both, steps=1).clicks == "multi"


def test_what_a_choice_model_cannot_run_on(world: dict[str, np.ndarray]) -> None:
    requests, clicks = _log(world)
    bare = FeatureTarget(
        world["users"][:, :0], world["items"][:, :, :0], world["util"], SlateSampler("greedy")
    )
    with pytest.raises(ValueError, match="observation features"):
        CrossFittedChoiceModel.fit(requests, bare, clicks, steps=1)
    short = replace(requests, slates=replace(requests.slates, slate_size=np.full(M, 2)))
    target = FeatureTarget(world["users"], world["items"], world["util"], SlateSampler("greedy"))
    with pytest.raises(ValueError, match="slates of one size"):
        CrossFittedChoiceModel.fit(short, target, clicks, steps=1)
    for kwargs in (
        {"target_column": "propensity"},
        {"policy": "random", "reward": "engagement"},
        {"policy": "random", "direct_method": True},
    ):
        with pytest.raises(ValueError, match="choice_model needs a checkpoint policy"):
            evaluate_ope_file("unused.parquet", choice_model=True, **kwargs)
