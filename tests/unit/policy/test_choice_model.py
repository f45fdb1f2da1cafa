"""Logit choice model: recovers planted utilities, position bias and no-click, from single
choices (conditional logit) and from several clicks per slate (independent clicks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys.policy import ConditionalLogitChoiceModel
from recsys.policy.testing import TinyMultiClickEnv, TinySlateEnv


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


# ---- several clicks per slate (clicks="multi") ----------------------------------------------


def _planted_clicks(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Users [n, 3], slates [n, 4, 5], true per-slot click probabilities [n, 4] of the
    independent-click model ``sigmoid(v + pos - v_0)``, and sampled click masks [n, 4]."""
    rng = np.random.default_rng(seed)
    w = np.random.default_rng(99).normal(0, 1.0, (3, 5))
    item_w = np.array([0.5, -0.5, 0.2, 0.0, 0.3])
    pos = np.array([0.0, -0.4, -0.7, -0.9])
    user = rng.normal(size=(n, 3)).astype(np.float32)
    items = rng.normal(size=(n, 4, 5)).astype(np.float32)
    v = np.einsum("nu,ui,nsi->ns", user, w, items) + items @ item_w + pos
    v0 = 0.5 + user @ np.array([0.3, 0.0, -0.2])
    probs = 1.0 / (1.0 + np.exp(-(v - v0[:, None])))
    clicks = (rng.random((n, 4)) < probs).astype(np.float32)
    return user, items, probs, clicks


def test_multi_click_model_recovers_planted_click_probabilities() -> None:
    user, items, _, clicks = _planted_clicks(20_000, seed=0)
    assert (clicks.sum(1) >= 2).mean() > 0.3  # many rows have several clicks
    model = ConditionalLogitChoiceModel(3, 5, max_slate_size=4, seed=0, clicks="multi")
    model.fit(user, items, clicks, epochs=25, lr=0.03, batch_size=2048)
    u_test, x_test, p_test, _ = _planted_clicks(5000, seed=1)
    p_hat = model.predict_proba(u_test, x_test)
    assert p_hat.shape == (5000, 5)
    assert np.abs(p_hat[:, :4] - p_test).mean() < 0.01
    np.testing.assert_allclose(p_hat[:, 4], np.prod(1.0 - p_hat[:, :4], axis=1), rtol=1e-5)
    np.testing.assert_allclose(model.position_bias.detach().numpy(), [-0.4, -0.7, -0.9], atol=0.1)
    # The single-choice model sees only first clicks of the same logs: it misprices the
    # slots' click probabilities by an order of magnitude more.
    single = ConditionalLogitChoiceModel(3, 5, max_slate_size=4, seed=0)
    single.fit(user, items, clicks, epochs=25, lr=0.03, batch_size=2048)
    p_single = single.predict_proba(u_test, x_test)[:, :4]
    assert np.abs(p_single - p_test).mean() > 10 * np.abs(p_hat[:, :4] - p_test).mean()


def test_multi_click_model_learns_the_tiny_multi_click_env() -> None:
    env = TinyMultiClickEnv(batch_size=4000, seed=0)
    rng = np.random.default_rng(0)
    obs = env.reset()
    types = env.types.copy()  # the step replaces the users whose session ends
    slates = np.argsort(rng.random((4000, 5)), axis=1)[:, :2]
    step = env.step(slates)
    items = obs.item_features[np.arange(4000)[:, None], slates]
    model = ConditionalLogitChoiceModel(2, 5, max_slate_size=2, seed=0, clicks="multi")
    model.fit(obs.user_features, items, step.response.clicks(), epochs=40, lr=0.05)
    oracle = env.oracle_choice_model()
    p_hat = model.predict_proba(obs.user_features, items)
    p_true = oracle.predict_proba(obs.user_features, items)
    np.testing.assert_allclose(p_true[:, :2], env.click_prob[types[:, None], slates], atol=1e-5)
    assert np.abs(p_hat - p_true).mean() < 0.02


def test_each_model_reads_either_response_format() -> None:
    """A click mask fits the single model by its first click; a choice fits the multi model
    as a one-hot row (no click: none)."""
    user, items = torch.randn(3, 2), torch.randn(3, 3, 4)
    mask = torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    choice = torch.tensor([1, 3, 0])
    single = ConditionalLogitChoiceModel(2, 4, max_slate_size=3, seed=1)
    multi = ConditionalLogitChoiceModel(2, 4, max_slate_size=3, seed=1, clicks="multi")
    torch.testing.assert_close(single.responses(mask, 3), choice)
    torch.testing.assert_close(single.nll(user, items, mask), single.nll(user, items, choice))
    one_hot = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    torch.testing.assert_close(multi.responses(choice, 3), one_hot)
    torch.testing.assert_close(multi.nll(user, items, choice), multi.nll(user, items, one_hot))
    # The multi-click likelihood: per-slot Bernoulli terms summed over the slate.
    p = multi.click_probabilities(user, items)
    expected = -(mask * p.log() + (1 - mask) * (1 - p).log()).sum(1).mean()
    torch.testing.assert_close(multi.nll(user, items, mask), expected)
    # Same parameters, so the two models' states are interchangeable.
    multi.load_state_dict(single.state_dict())
    torch.testing.assert_close(multi.item_logits(user, items), single.item_logits(user, items))


def test_click_probabilities_are_marginals_in_both_models() -> None:
    user, items = torch.randn(5, 2), torch.randn(5, 3, 4)
    single = ConditionalLogitChoiceModel(2, 4, max_slate_size=3, seed=2)
    multi = ConditionalLogitChoiceModel(2, 4, max_slate_size=3, seed=2, clicks="multi")
    with torch.no_grad():
        torch.testing.assert_close(
            single.click_probabilities(user, items), single.slate_probabilities(user, items)[:, :3]
        )
        logits = multi.slate_logits(user, items)
        torch.testing.assert_close(
            multi.click_probabilities(user, items), torch.sigmoid(logits[:, :3] - logits[:, 3:])
        )
        # Position-free item probabilities are the slot-0 ones, whatever the rest of the slate.
        torch.testing.assert_close(
            multi.item_click_probabilities(user, items)[:, :1],
            multi.click_probabilities(user, items[:, :1]),
        )
    with pytest.raises(ValueError, match="clicks='multi'"):
        single.item_click_probabilities(user, items)


def test_rejects_bad_click_masks_and_modes() -> None:
    with pytest.raises(ValueError, match="clicks must be single or multi"):
        ConditionalLogitChoiceModel(2, 3, max_slate_size=2, clicks="many")  # type: ignore[arg-type]
    model = ConditionalLogitChoiceModel(2, 3, max_slate_size=2, clicks="multi")
    with pytest.raises(ValueError, match="0/1"):
        model.fit(np.zeros((2, 2)), np.zeros((2, 2, 3)), np.array([[0, 2], [1, 0]]))
    with pytest.raises(ValueError, match="0/1"):
        model.fit(np.zeros((2, 2)), np.zeros((2, 2, 3)), np.zeros((2, 3)))
