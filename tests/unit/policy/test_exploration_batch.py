"""Batched slate samplers: exact conditional propensities under masks and an ads cap."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from typing import Any

import numpy as np
import pytest

from recsys.policy import (
    epsilon_greedy_log_propensities_batch,
    epsilon_greedy_sample_batch,
    greedy_slate_batch,
    plackett_luce_log_propensities_batch,
    plackett_luce_propensities,
    plackett_luce_sample_batch,
)

SCORES = np.array([[1.2, 0.3, -0.5, 0.9, 0.1], [0.0, 2.0, 1.0, -1.0, 0.5]])
IS_AD = np.array([[True, False, True, False, True], [False, True, True, False, False]])
MASK = np.array([[True, True, True, True, False], [True, True, True, True, True]])


def _brute_force(
    scores: np.ndarray,
    slate: tuple[int, ...],
    t: float,
    valid: np.ndarray,
    ads: np.ndarray,
    cap: int | None,
) -> float:
    """Textbook masked PL: each slot is a softmax over valid, unchosen, cap-allowed items."""
    p, used, chosen = 1.0, 0, set()
    for item in slate:
        allowed = [
            i
            for i in range(scores.shape[0])
            if valid[i] and i not in chosen and not (cap is not None and ads[i] and used >= cap)
        ]
        if item not in allowed:
            return 0.0
        w = {i: math.exp(scores[i] / t) for i in allowed}
        p *= w[item] / sum(w.values())
        chosen.add(item)
        used += int(ads[item])
    return p


def _all_slates(c: int, s: int) -> np.ndarray:
    return np.array(list(itertools.permutations(range(c), s)), dtype=np.int64)


@pytest.mark.parametrize("cap", [None, 0, 1])
@pytest.mark.parametrize("s", [1, 2, 3])
def test_pl_slate_probabilities_sum_to_one_and_match_brute_force(cap: int | None, s: int) -> None:
    row = 0
    valid = MASK[row]
    idx = np.flatnonzero(valid)
    slates = _all_slates(int(valid.sum()), s)
    slates = idx[slates]  # only valid candidates
    m = slates.shape[0]
    scores = np.repeat(SCORES[row : row + 1], m, axis=0)
    kw: dict[str, Any] = {
        "mask": np.repeat(MASK[row : row + 1], m, 0),
        "is_ad": np.repeat(IS_AD[row : row + 1], m, 0),
        "max_ads": cap,
    }
    logp = plackett_luce_log_propensities_batch(scores, slates, 0.7, **kw)
    probs = np.exp(logp.sum(axis=1))
    organic = int((valid & ~IS_AD[row]).sum())
    feasible = cap is None or organic + min(cap, int((valid & IS_AD[row]).sum())) >= s
    assert probs.sum() == pytest.approx(1.0 if feasible else 0.0, abs=1e-9)
    sub_scores = SCORES[row]
    for slate, p in zip(slates, probs, strict=True):
        assert p == pytest.approx(
            _brute_force(sub_scores, tuple(slate.tolist()), 0.7, valid, IS_AD[row], cap), abs=1e-12
        )
        n_ads = int(IS_AD[row][slate].sum())
        if cap is not None and n_ads > cap:
            assert p == 0.0


@pytest.mark.parametrize("cap", [None, 1])
def test_each_conditional_row_sums_to_one(cap: int | None) -> None:
    """For every prefix, the next-slot propensities over all possible items sum to 1."""
    for row in range(2):
        c = SCORES.shape[1]
        for prefix in itertools.permutations(np.flatnonzero(MASK[row]).tolist(), 1):
            nxt = [i for i in range(c) if i not in prefix]
            slates = np.array([[*prefix, i] for i in nxt])
            n = slates.shape[0]
            logp = plackett_luce_log_propensities_batch(
                np.repeat(SCORES[row : row + 1], n, 0),
                slates,
                1.3,
                mask=np.repeat(MASK[row : row + 1], n, 0),
                is_ad=np.repeat(IS_AD[row : row + 1], n, 0),
                max_ads=cap,
            )
            assert np.exp(logp[:, 1]).sum() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("cap", [None, 1])
def test_epsilon_greedy_probabilities_sum_to_one(cap: int | None) -> None:
    slates = _all_slates(5, 3)
    m = slates.shape[0]
    for row in range(2):
        logp = epsilon_greedy_log_propensities_batch(
            np.repeat(SCORES[row : row + 1], m, 0),
            slates,
            0.3,
            mask=np.repeat(MASK[row : row + 1], m, 0),
            is_ad=np.repeat(IS_AD[row : row + 1], m, 0),
            max_ads=cap,
        )
        assert np.exp(logp.sum(axis=1)).sum() == pytest.approx(1.0, abs=1e-12)


def test_batched_pl_matches_single_row_version() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(8, 12))
    slates, props, log_prob = plackett_luce_sample_batch(scores, 4, 0.5, rng)
    for b in range(8):
        np.testing.assert_allclose(
            props[b],
            plackett_luce_propensities(scores[b].astype(np.float32), slates[b], 0.5),
            rtol=1e-5,
        )
    np.testing.assert_allclose(log_prob, np.log(props.astype(np.float64)).sum(1), rtol=1e-5)


@pytest.mark.parametrize("kind", ["pl", "eps"])
def test_sampled_propensities_equal_evaluated_ones(kind: str) -> None:
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(64, 7))
    is_ad = rng.random((64, 7)) < 0.5
    mask = rng.random((64, 7)) < 0.9
    mask[:, :5] = True
    is_ad[:, :3] = False
    kw: dict[str, Any] = {"mask": mask, "is_ad": is_ad, "max_ads": 1}
    if kind == "pl":
        slates, props, _ = plackett_luce_sample_batch(scores, 4, 0.8, rng, **kw)
        logp = plackett_luce_log_propensities_batch(scores, slates, 0.8, **kw)
    else:
        slates, props, _ = epsilon_greedy_sample_batch(scores, 4, 0.4, rng, **kw)
        logp = epsilon_greedy_log_propensities_batch(scores, slates, 0.4, **kw)
    np.testing.assert_allclose(props, np.exp(logp), rtol=1e-6)
    rows = np.arange(64)[:, None]
    assert mask[rows, slates].all()
    assert (is_ad[rows, slates].sum(axis=1) <= 1).all()
    assert all(len(set(s.tolist())) == 4 for s in slates)


@pytest.mark.parametrize("kind", ["pl", "eps"])
def test_empirical_frequencies_match_propensities_under_ads_cap(kind: str) -> None:
    n = 40_000
    rng = np.random.default_rng(2)
    scores = np.repeat(SCORES[:1], n, 0)
    kw: dict[str, Any] = {
        "mask": np.repeat(MASK[:1], n, 0),
        "is_ad": np.repeat(IS_AD[:1], n, 0),
        "max_ads": 1,
    }
    if kind == "pl":
        slates, _, log_prob = plackett_luce_sample_batch(scores, 2, 0.7, rng, **kw)
    else:
        slates, _, log_prob = epsilon_greedy_sample_batch(scores, 2, 0.5, rng, **kw)
    counts = Counter(map(tuple, slates.tolist()))
    probs = {tuple(s): float(np.exp(lp)) for s, lp in zip(slates.tolist(), log_prob, strict=True)}
    for slate, p in probs.items():
        assert counts[slate] / n == pytest.approx(p, abs=0.01)
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)


def test_greedy_respects_cap_and_mask() -> None:
    slates = greedy_slate_batch(SCORES, 3, mask=MASK, is_ad=IS_AD, max_ads=1)
    # Row 0: best is 0 (ad), then 3, then 1 (2 is an ad past the cap, 4 is masked).
    np.testing.assert_array_equal(slates[0], [0, 3, 1])
    # Row 1: 1 (ad), then 2 would be a second ad -> 4, then 0.
    np.testing.assert_array_equal(slates[1], [1, 4, 0])


def test_tiny_temperature_stays_finite_and_greedy() -> None:
    slates, props, log_prob = plackett_luce_sample_batch(
        SCORES, 3, 1e-200, np.random.default_rng(0)
    )
    np.testing.assert_array_equal(slates, greedy_slate_batch(SCORES, 3))
    np.testing.assert_allclose(props, 1.0)
    assert np.all(np.isfinite(log_prob))


def test_infeasible_slate_raises() -> None:
    with pytest.raises(ValueError, match="cannot be filled"):
        plackett_luce_sample_batch(SCORES, 4, 1.0, np.random.default_rng(0), is_ad=IS_AD, max_ads=0)
