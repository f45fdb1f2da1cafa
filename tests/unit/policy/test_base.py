"""Batch types, the slate sampler and the serving adapter."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys.policy import (
    SIGNAL_NAMES,
    RandomPolicy,
    SlateObs,
    SlateResponse,
    SlateSampler,
    concat_transitions,
    optimize_slates,
)
from recsys.policy.base import optimiser_first_priority
from recsys.policy.batch import signals_array
from recsys.policy.testing import TinySlateEnv, collect
from recsys.types import Candidates, Signals, UserState


def _candidates(n: int = 12, dim: int = 4) -> Candidates:
    rng = np.random.default_rng(0)
    return Candidates(
        item_ids=rng.choice(1000, size=n, replace=False).astype(np.int64),
        scores=rng.normal(size=n).astype(np.float32),
        embeddings=rng.normal(size=(n, dim)).astype(np.float32),
    )


USER = UserState(user_id="u", embedding=np.ones(4, dtype=np.float32))


def test_signal_order_matches_the_signals_type() -> None:
    assert tuple(Signals.__dataclass_fields__) == SIGNAL_NAMES
    sig = signals_array(
        Signals(click=1.0, dwell_s=2.0, like=3.0, conversion=4.0, revenue=5.0, skip=6.0)
    )
    np.testing.assert_array_equal(sig, [1, 2, 3, 4, 5, 6])


def test_response_round_trip_and_choice() -> None:
    sig = np.zeros((3, 2, 6), dtype=np.float32)
    sig[0, 1, 0] = 1.0  # user 0 clicked slot 1
    sig[2, 0, 0] = 1.0  # user 2 clicked slot 0
    response = SlateResponse.from_signals(sig)
    np.testing.assert_array_equal(response.signals(), sig)
    np.testing.assert_array_equal(response.choice(), [1, 2, 0])  # 2 = slate size = no click


def test_several_clicks_per_row_keep_every_click_and_the_first_as_the_choice() -> None:
    click = np.array([[1, 0, 1], [0, 0, 0], [0, 1, 1], [1, 1, 1]], dtype=np.float32)
    sig = np.zeros((4, 3, 6), dtype=np.float32)
    sig[..., 0] = click
    response = SlateResponse.from_signals(sig)
    np.testing.assert_array_equal(response.clicks(), click.astype(bool))
    assert response.clicks().dtype == np.bool_
    np.testing.assert_array_equal(response.num_clicks(), [2, 0, 2, 3])
    np.testing.assert_array_equal(response.choice(), [0, 3, 1, 0])  # the first click; 3 = none


def test_concat_and_take_transitions() -> None:
    env = TinySlateEnv(batch_size=4)
    transitions, _ = collect(env, RandomPolicy(), env.reset(), 3, np.random.default_rng(0))
    batch = concat_transitions(transitions)
    assert batch.batch_size == 12
    assert batch.next_action is not None
    part = batch.take(np.array([5, 0]))
    np.testing.assert_array_equal(part.action.slates, batch.action.slates[[5, 0]])
    np.testing.assert_array_equal(part.obs.ads(), batch.obs.ads()[[5, 0]])


def test_obs_validate_rejects_mismatched_shapes() -> None:
    obs = SlateObs(
        np.zeros((2, 3), np.float32), np.zeros((2, 4, 5), np.float32), np.zeros((3, 4), np.int64)
    )
    with pytest.raises(ValueError, match="batch shapes"):
        obs.validate()


def test_sampler_greedy_is_deterministic_with_unit_propensities() -> None:
    obs = TinySlateEnv(batch_size=3).reset()
    scores = np.array([[5.0, 4.0, 3.0, 2.0, 9.0]] * 3)
    action = SlateSampler("greedy", max_ads=0).sample(scores, obs, 2, np.random.default_rng(0))
    np.testing.assert_array_equal(action.slates, [[0, 1]] * 3)  # item 4 is an ad, capped out
    np.testing.assert_array_equal(action.propensities, 1.0)
    np.testing.assert_array_equal(action.scores, [[5.0, 4.0]] * 3)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"kind": "softmax"}, "kind"),
        ({"epsilon": 1.5}, "epsilon"),
        ({"temperature": 0.0}, "temp"),
        ({"max_ads": -1}, "max_ads must be >= 0"),
        ({"min_ads": -1}, "min_ads must be >= 0"),
        ({"max_ads": 1, "min_ads": 2}, "min_ads must be <= max_ads"),
    ],
)
def test_sampler_validates(bad: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SlateSampler(**bad)  # type: ignore[arg-type]


def test_sampler_ads_floor_forces_the_best_ads() -> None:
    obs = TinySlateEnv(batch_size=3).reset()  # item 4 is the only ad
    scores = np.array([[5.0, 4.0, 3.0, 2.0, 1.0]] * 3)
    sampler = SlateSampler("greedy", max_ads=1, min_ads=1)
    action = sampler.sample(scores, obs, 2, np.random.default_rng(0))
    np.testing.assert_array_equal(action.slates, [[0, 4]] * 3)
    np.testing.assert_array_equal(sampler.log_propensities(scores, obs, action.slates), 0.0)
    # [0, 1] breaks the floor at slot 1, the only slot left for the ad.
    broken = sampler.log_propensities(scores, obs, np.array([[0, 1]] * 3))
    np.testing.assert_array_equal(broken, [[0.0, -np.inf]] * 3)


@pytest.mark.parametrize("method", ["greedy", "exact_lp", "top_k"])
@pytest.mark.parametrize(("max_ads", "min_ads"), [(None, 1), (2, 2), (3, 3)])
def test_priority_sampler_reproduces_the_optimiser_slate_under_ads_floor(
    method: str, max_ads: int | None, min_ads: int
) -> None:
    """Greedy (and epsilon = 0) sampling over the optimiser-first priority serves exactly the
    optimiser's slate, in its order, when the floor forces ads: the forced slots take the
    slate's own ads. Low-value ads make the floor bind."""
    rng = np.random.default_rng(0)
    b, c, s = 64, 9, 4
    is_ad = rng.random((b, c)) < 0.5
    is_ad[:, :4] = False
    mask = rng.random((b, c)) < 0.9
    mask[:, :4] = True
    obs = SlateObs(
        np.zeros((b, 1), np.float32),
        np.zeros((b, c, 1), np.float32),
        np.tile(np.arange(c), (b, 1)),
        mask,
        is_ad,
    )
    v = torch.from_numpy(np.exp(rng.normal(size=(b, c))))
    v0 = torch.from_numpy(np.exp(rng.normal(size=b)))
    q = torch.from_numpy(rng.normal(size=(b, c)) - 1.5 * is_ad)
    kw = {"valid": torch.from_numpy(mask), "is_ad": torch.from_numpy(is_ad), "max_ads": max_ads}
    slates = optimize_slates(v, v0, q, s, method, min_ads=min_ads, **kw).numpy()  # type: ignore[arg-type]
    free = optimize_slates(v, v0, q, s, method, **kw).numpy()  # type: ignore[arg-type]
    rows = np.arange(b)[:, None]
    assert (is_ad[rows, free].sum(1) < is_ad[rows, slates].sum(1)).any()  # the floor binds
    priority = optimiser_first_priority((v * q).numpy(), obs, slates)
    for sampler, explore in [
        (SlateSampler("greedy", max_ads=max_ads, min_ads=min_ads), True),
        (SlateSampler("epsilon", epsilon=0.3, max_ads=max_ads, min_ads=min_ads), False),
        (SlateSampler("epsilon", epsilon=0.0, max_ads=max_ads, min_ads=min_ads), True),
    ]:
        action = sampler.sample(priority, obs, s, np.random.default_rng(1), explore=explore)
        np.testing.assert_array_equal(action.slates, slates)
        np.testing.assert_array_equal(action.propensities, 1.0)
    # Exploring, the optimiser's slate keeps its exact epsilon-greedy probability.
    sampler = SlateSampler("epsilon", epsilon=0.3, max_ads=max_ads, min_ads=min_ads)
    logp = sampler.log_propensities(priority, obs, slates)
    assert np.isfinite(logp).all()
    assert (logp > np.log(0.7)).all()
