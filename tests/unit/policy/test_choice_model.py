"""Conditional-logit choice model: recovers planted utilities, position bias and no-click."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.policy import ConditionalLogitChoiceModel
from recsys.policy.testing import TinySlateEnv


def _planted(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Users [n, 3], slates of 4 items [n, 4, 5], true probabilities [n, 5], sampled choices."""
    rng = np.random.default_rng(seed)
    w = np.random.default_rng(99).normal(0, 1.0, (3, 5))
    item_w = np.array([0.5, -0.5, 0.2, 0.0, 0.3])
    pos = np.array([0.0, -0.4, -0.7, -0.9])
    user = rng.normal(size=(n, 3)).astype(np.float32)
    items = rng.normal(size=(n, 4, 5)).astype(np.float32)
    v = np.einsum("nu,ui,nsi->ns", user, w, items) + items @ item_w + pos
    v0 = 0.5 + user @ np.array([0.3, 0.0, -0.2])
    logits = np.concatenate([v, v0[:, None]], axis=1)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    choice = (rng.random(n)[:, None] > np.cumsum(probs, 1)).sum(1).clip(max=4)
    return user, items, probs, choice


def test_recovers_planted_choice_probabilities() -> None:
    user, items, _, choice = _planted(20_000, seed=0)
    model = ConditionalLogitChoiceModel(3, 5, max_slate_size=4, seed=0)
    model.fit(user, items, choice, epochs=25, lr=0.03, batch_size=2048)
    u_test, x_test, p_test, _ = _planted(5000, seed=1)
    p_hat = model.predict_proba(u_test, x_test)
    assert p_hat.shape == (5000, 5)
    np.testing.assert_allclose(p_hat.sum(1), 1.0, atol=1e-5)
    assert np.abs(p_hat - p_test).mean() < 0.01
    np.testing.assert_allclose(model.position_bias.detach().numpy(), [-0.4, -0.7, -0.9], atol=0.1)


def test_learns_the_tiny_env_from_logged_slates() -> None:
    env = TinySlateEnv(batch_size=4000, seed=0)
    rng = np.random.default_rng(0)
    obs = env.reset()
    slates = np.argsort(rng.random((4000, 5)), axis=1)[:, :2]
    step = env.step(slates)
    items = obs.item_features[np.arange(4000)[:, None], slates]
    model = ConditionalLogitChoiceModel(2, 5, max_slate_size=2, seed=0)
    model.fit(obs.user_features, items, step.response.choice(), epochs=40, lr=0.05)
    oracle = env.oracle_choice_model()
    p_hat = model.predict_proba(obs.user_features, items)
    p_true = oracle.predict_proba(obs.user_features, items)
    assert np.abs(p_hat - p_true).mean() < 0.02


def test_rejects_bad_choices() -> None:
    model = ConditionalLogitChoiceModel(2, 3, max_slate_size=2)
    with pytest.raises(ValueError, match="choice"):
        model.fit(np.zeros((2, 2)), np.zeros((2, 2, 3)), np.array([0, 3]))
