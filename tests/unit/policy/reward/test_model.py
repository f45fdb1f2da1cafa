"""Learned reward model: recovers a planted linear reward by regression and by Bradley-Terry."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.policy import LearnedRewardModel, RandomPolicy, rank_correlation
from recsys.policy.batch import SlateResponse
from recsys.policy.reward.model import group_sessions, preference_pairs
from recsys.policy.testing import TinySlateEnv, collect
from recsys.protocols import RewardModel
from recsys.types import Signals

# Planted per-impression reward: click, dwell_s, like, conversion, revenue, skip.
W_TRUE = np.array([0.4, 0.02, 0.8, 1.5, 0.6, -0.7])


def _signals(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    click = rng.random(shape) < 0.4
    return np.stack(
        [
            click,
            click * rng.exponential(40.0, shape),
            click & (rng.random(shape) < 0.3),
            click & (rng.random(shape) < 0.1),
            rng.exponential(1.0, shape) * (rng.random(shape) < 0.2),
            ~click & (rng.random(shape) < 0.5),
        ],
        axis=-1,
    ).astype(np.float32)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_regression_recovers_planted_linear_reward() -> None:
    rng = np.random.default_rng(0)
    x = _signals(rng, (4000,))
    y = x @ W_TRUE + 0.3 + rng.normal(0, 0.2, 4000)
    model = LearnedRewardModel(seed=0)
    metrics = model.fit_regression(x, y, epochs=150)
    assert metrics["r2"] > 0.9
    assert _cosine(model.linear_weights(), W_TRUE) > 0.95
    np.testing.assert_allclose(model.linear_weights(), W_TRUE, atol=0.05)
    x_test = _signals(np.random.default_rng(1), (2000,))
    assert rank_correlation(model.rewards(x_test), x_test @ W_TRUE) > 0.95


def test_regression_on_sessions_recovers_per_impression_reward() -> None:
    """The outcome is observed per session only; the per-impression reward is still identified."""
    rng = np.random.default_rng(1)
    x = _signals(rng, (3000, 6))
    mask = rng.random((3000, 6)) < 0.8
    y = ((x @ W_TRUE) * mask).sum(1) + rng.normal(0, 0.3, 3000)
    model = LearnedRewardModel(seed=0)
    model.fit_regression(x, y, mask, epochs=150)
    assert _cosine(model.linear_weights(), W_TRUE) > 0.95


def test_bradley_terry_recovers_planted_linear_reward() -> None:
    rng = np.random.default_rng(2)
    xa, xb = _signals(rng, (6000, 5)), _signals(rng, (6000, 5))
    margin = (xa @ W_TRUE).sum(1) - (xb @ W_TRUE).sum(1)
    pref = (rng.random(6000) < 1 / (1 + np.exp(-margin))).astype(np.float32)
    model = LearnedRewardModel(seed=0)
    metrics = model.fit_bradley_terry(xa, xb, pref, epochs=150)
    assert metrics["pair_accuracy"] > 0.75
    w = model.linear_weights()
    assert _cosine(w, W_TRUE) > 0.95
    # Bradley-Terry with logistic noise identifies the scale too, not only the direction.
    assert np.linalg.norm(w) / np.linalg.norm(W_TRUE) == pytest.approx(1.0, abs=0.15)
    x_test = _signals(np.random.default_rng(3), (2000,))
    assert rank_correlation(model.rewards(x_test), x_test @ W_TRUE) > 0.95


def test_mlp_reward_with_context_fits() -> None:
    rng = np.random.default_rng(4)
    x = _signals(rng, (3000,))
    ctx = (rng.random((3000, 1)) < 0.5).astype(np.float32)  # e.g. is_ad
    y = x @ W_TRUE + 2.0 * ctx[:, 0] * x[:, 0]  # clicks on ads are worth more
    model = LearnedRewardModel(context_dim=1, hidden=(32,), seed=0)
    metrics = model.fit_regression(x, y, context=ctx, epochs=80)
    assert metrics["r2"] > 0.95
    with pytest.raises(ValueError, match="linear"):
        model.linear_weights()


def test_implements_reward_protocol_and_revenue_weight() -> None:
    model = LearnedRewardModel(seed=0)
    assert isinstance(model, RewardModel)
    r = model.reward(Signals(click=1.0, dwell_s=30.0, revenue=2.0))
    assert isinstance(r, float)
    sig = np.zeros((2, 3, 6), dtype=np.float32)
    sig[0, 1, 4] = 2.0  # revenue in one slot
    response = SlateResponse.from_signals(sig)
    base = model.slate_rewards(response)
    with_revenue = model.slate_rewards(response, revenue_weight=0.5)
    assert base.shape == (2, 3)
    np.testing.assert_allclose(with_revenue - base, 0.5 * sig[..., 4], atol=1e-6)
    assert model.rewards(sig[0, 1])[()] == pytest.approx(model.reward(Signals(revenue=2.0)))


def test_rank_correlation_matches_known_values() -> None:
    assert rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # Ties share the average rank (scipy.stats.spearmanr gives 0.9486832980505138 here).
    assert rank_correlation([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486832980505138)
    # Monotone transforms do not change it.
    x = np.random.default_rng(0).normal(size=100)
    assert rank_correlation(np.exp(x), x**3) == pytest.approx(1.0)
    assert np.isnan(rank_correlation([1, 1, 1], [1, 2, 3]))


def test_group_sessions_and_pairs() -> None:
    sid = np.array([7, 3, 7, 3, 3, 9])
    sig = np.arange(36, dtype=np.float32).reshape(6, 6)
    out = np.array([1.0, 2.0, 1.0, 2.0, 2.0, 5.0])
    grouped = group_sessions(sid, sig, out)
    np.testing.assert_array_equal(grouped.session_ids, [3, 7, 9])
    np.testing.assert_array_equal(grouped.mask.sum(1), [3, 2, 1])
    np.testing.assert_array_equal(grouped.signals[0, :3], sig[[1, 3, 4]])
    np.testing.assert_array_equal(grouped.outcome, [2.0, 1.0, 5.0])
    a, b, pref = preference_pairs(grouped.outcome, 50, np.random.default_rng(0))
    assert (a != b).all()
    np.testing.assert_array_equal(pref, grouped.outcome[a] > grouped.outcome[b])


def _future_steps(done: np.ndarray) -> np.ndarray:
    """Steps a user stays after each step ``[T, B]`` (NaN where the session outlives the log)."""
    out = np.full(done.shape, np.nan)
    nxt = np.full(done.shape[1], np.nan)
    for t in range(done.shape[0] - 1, -1, -1):
        nxt = np.where(done[t], 0.0, nxt + 1)
        out[t] = nxt
    return out


def test_learned_reward_tracks_hidden_long_term_value_in_the_tiny_env() -> None:
    """Clicks anti-correlate with retention here (clickbait ends sessions); a reward learned
    from future engagement, by either objective, ranks slates by their long-term value."""
    env = TinySlateEnv(batch_size=512, seed=0)
    rng = np.random.default_rng(0)
    transitions, _ = collect(env, RandomPolicy(), env.reset(), 60, rng)
    signals = np.stack([t.response.signals() for t in transitions])  # [T, B, S, 6]
    future = _future_steps(np.stack([t.done for t in transitions]))
    known = ~np.isnan(future)
    x, y = signals[known], future[known]
    perm = rng.permutation(y.shape[0])
    train, test = perm[: y.shape[0] // 2], perm[y.shape[0] // 2 :]

    regression = LearnedRewardModel(seed=0)
    regression.fit_regression(x[train], y[train], epochs=100)
    a, b, pref = preference_pairs(y[train], 20_000, rng)
    bradley_terry = LearnedRewardModel(seed=0)
    bradley_terry.fit_bradley_terry(x[train][a], x[train][b], pref, epochs=100)

    rho_clicks = rank_correlation(x[test][..., 0].sum(1), y[test])
    rho_regression = rank_correlation(regression.group_rewards(x[test]), y[test])
    rho_bt = rank_correlation(bradley_terry.group_rewards(x[test]), y[test])
    print(
        f"spearman vs future engagement: clicks {rho_clicks:.3f}, "
        f"regression {rho_regression:.3f}, bradley-terry {rho_bt:.3f}"
    )
    assert rho_clicks < 0
    assert rho_regression > 0.5
    assert rho_bt > 0.5
