"""Choice models: proper distributions with the no-click option, position bias, sampling."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from recsys.config import SimulatorSettings
from recsys.protocols import ChoiceModel as ProtocolChoiceModel
from recsys.simulator import CascadeChoice, ChoiceModel, MultinomialLogitChoice, make_choice_model

MODELS = [MultinomialLogitChoice, CascadeChoice]


@pytest.mark.parametrize("cls", MODELS)
def test_implements_protocol(cls: type) -> None:
    assert ChoiceModel is ProtocolChoiceModel
    assert isinstance(cls(), ChoiceModel)


def test_hand_checked_mnl_three_slots() -> None:
    # appeals 0.5, 0, 0 with scale 2 -> utilities 1, 0 - log 2, 0 - log 3 (position bias 1),
    # no click 0: weights e, 1/2, 1/3, 1 over a total of e + 11/6.
    model = MultinomialLogitChoice(no_click_logit=0.0, position_bias=1.0, affinity_scale=2.0)
    probs = model.probabilities(np.array([[0.5, 0.0, 0.0]], dtype=np.float32))
    weights = np.array([np.e, 1 / 2, 1 / 3, 1.0])
    np.testing.assert_allclose(probs[0], weights / weights.sum(), rtol=1e-5)
    assert probs.sum() == pytest.approx(1.0, abs=1e-6)


def test_hand_checked_cascade() -> None:
    # Appeal 0 and no-click logit 0: each examined slot is clicked with probability 1/2;
    # slot 1 is examined with probability 1/2 (position bias 1).
    # P(0) = 1/2, P(1) = 1/2 * (1/2 * 1/2) = 1/8, P(none) = 1/2 * (1 - 1/4) = 3/8.
    model = CascadeChoice(no_click_logit=0.0, position_bias=1.0, affinity_scale=1.0)
    probs = model.probabilities(np.zeros((1, 2), dtype=np.float32))
    np.testing.assert_allclose(probs, [[0.5, 0.125, 0.375]], rtol=1e-6)


def test_cascade_shadows_lower_slots() -> None:
    # Same item appeal everywhere, no position bias: a cascade still clicks earlier slots more,
    # because reaching a slot requires passing every slot above it.
    model = CascadeChoice(no_click_logit=0.0, position_bias=0.0, affinity_scale=1.0)
    probs = model.probabilities(np.full((2, 4), 0.5, dtype=np.float32))
    assert np.all(np.diff(probs[:, :4], axis=1) < 0)


@pytest.mark.parametrize("choice", ["mnl", "cascade"])
def test_make_choice_model_uses_settings(choice: str) -> None:
    cfg = SimulatorSettings(choice_model=choice, no_click_logit=1.5, position_bias=0.25)
    model = make_choice_model(cfg)
    assert isinstance(model, CascadeChoice if choice == "cascade" else MultinomialLogitChoice)
    assert model.no_click_logit == 1.5
    assert model.position_bias == 0.25
    assert model.affinity_scale == cfg.affinity_scale


def test_hand_checked_position_bias() -> None:
    # Equal affinity 0 everywhere, no-click utility 0, discount (1 + s) ** -1:
    # weights 1, 1/2 for the slots and 1 for no click -> 0.4, 0.2, 0.4.
    model = MultinomialLogitChoice(no_click_logit=0.0, position_bias=1.0)
    probs = model.probabilities(np.zeros((1, 2), dtype=np.float32))
    np.testing.assert_allclose(probs, [[0.4, 0.2, 0.4]], rtol=1e-6)


def test_position_bias_lowers_later_slots() -> None:
    aff = np.full((3, 5), 0.3, dtype=np.float32)
    biased = MultinomialLogitChoice(no_click_logit=1.0, position_bias=0.7).probabilities(aff)
    assert np.all(np.diff(biased[:, :5], axis=1) < 0)
    unbiased = MultinomialLogitChoice(no_click_logit=1.0, position_bias=0.0).probabilities(aff)
    np.testing.assert_allclose(unbiased[:, :5], unbiased[:, :1].repeat(5, axis=1), rtol=1e-6)
    cascade = CascadeChoice(no_click_logit=1.0, position_bias=0.7).probabilities(aff)
    assert np.all(np.diff(cascade[:, :5], axis=1) < 0)
    flat = CascadeChoice(no_click_logit=1.0, position_bias=0.0).probabilities(aff)
    np.testing.assert_allclose(cascade[:, 0], flat[:, 0], rtol=1e-6)  # slot 0 always examined
    assert np.all(cascade[:, 1] < flat[:, 1])
    assert np.all(cascade[:, 5] > flat[:, 5])  # less examined -> more "no click"


def test_higher_no_click_logit_lowers_ctr() -> None:
    aff = np.array([[0.5, -0.2, 0.1]], dtype=np.float32)
    low = MultinomialLogitChoice(no_click_logit=-1.0).probabilities(aff)
    high = MultinomialLogitChoice(no_click_logit=2.0).probabilities(aff)
    assert high[0, -1] > low[0, -1]


def test_affinity_scale_sharpens_choice() -> None:
    aff = np.array([[1.0, 0.0]], dtype=np.float32)
    soft = MultinomialLogitChoice(position_bias=0.0, affinity_scale=1.0).probabilities(aff)
    sharp = MultinomialLogitChoice(position_bias=0.0, affinity_scale=5.0).probabilities(aff)
    assert sharp[0, 0] / sharp[0, 1] == pytest.approx(np.exp(5.0), rel=1e-4)
    assert soft[0, 0] / soft[0, 1] == pytest.approx(np.exp(1.0), rel=1e-5)


@settings(max_examples=50, deadline=None)
@given(
    aff=arrays(
        np.float32,
        st.tuples(st.integers(1, 8), st.integers(1, 12)),
        elements=st.floats(-50, 50, width=32),
    ),
    no_click=st.floats(-20, 20),
    bias=st.floats(0, 5),
    scale=st.floats(0, 10),
)
def test_probabilities_are_a_distribution_including_no_click(
    aff: np.ndarray, no_click: float, bias: float, scale: float
) -> None:
    for cls in MODELS:
        probs = cls(no_click, bias, affinity_scale=scale).probabilities(aff)
        assert probs.shape == (aff.shape[0], aff.shape[1] + 1)
        assert probs.dtype == np.float32
        assert np.all(probs >= 0)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("cls", MODELS)
def test_sample_matches_probabilities(cls: type) -> None:
    model = cls(no_click_logit=0.5, position_bias=0.5)
    row = model.probabilities(np.array([[0.8, -0.3, 0.2]], dtype=np.float32))
    probs = np.repeat(row, 200_000, axis=0)
    chosen = model.sample(probs, np.random.default_rng(0))
    assert chosen.dtype == np.int64
    freq = np.bincount(chosen, minlength=4) / chosen.shape[0]
    np.testing.assert_allclose(freq, row[0], atol=0.005)


def test_sample_never_picks_impossible_outcomes() -> None:
    probs = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32).repeat(500, axis=0)
    chosen = MultinomialLogitChoice().sample(probs, np.random.default_rng(1))
    np.testing.assert_array_equal(chosen, np.array([1, 2]).repeat(500))


def test_sample_is_deterministic_given_rng() -> None:
    model = MultinomialLogitChoice()
    probs = model.probabilities(np.random.default_rng(0).normal(size=(100, 5)).astype(np.float32))
    a = model.sample(probs, np.random.default_rng(3))
    b = model.sample(probs, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cls", MODELS)
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"position_bias": -0.1}, "position_bias"),
        ({"no_click_logit": float("inf")}, "no_click_logit"),
        ({"affinity_scale": float("nan")}, "affinity_scale"),
        ({"affinity_scale": -1.0}, "affinity_scale"),
    ],
)
def test_bad_parameters_raise(cls: type, kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_bad_shapes_raise() -> None:
    model = MultinomialLogitChoice()
    with pytest.raises(ValueError, match="affinity"):
        model.probabilities(np.zeros(3, dtype=np.float32))
    with pytest.raises(ValueError, match="affinity"):
        model.probabilities(np.zeros((2, 0), dtype=np.float32))
    with pytest.raises(ValueError, match="probs"):
        model.sample(np.ones((2, 1), dtype=np.float32), np.random.default_rng(0))
