"""Batched slate samplers: exact conditional propensities under masks and an ad load."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Callable
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
    slot_log_probs_after_prefix,
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
    min_ads: int = 0,
) -> float:
    """Textbook masked PL: each slot is a softmax over valid, unchosen, cap-allowed items,
    organic ones only while the ads still needed for the floor leave room for them."""
    p, used, chosen = 1.0, 0, set()
    floor = min(min_ads, int((valid & ads).sum()))
    for k, item in enumerate(slate):
        only_ads = floor - used >= len(slate) - k
        allowed = [
            i
            for i in range(scores.shape[0])
            if valid[i]
            and i not in chosen
            and not (cap is not None and ads[i] and used >= cap)
            and not (only_ads and not ads[i])
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


def _sample_and_walk(
    kind: str, scores: np.ndarray, rng: np.random.Generator, kw: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Slates of 4 sampled by PL at T = 0.8 or epsilon-greedy at 0.4, with the sampler's
    propensities and log-probability and the walk's per-slot log-propensities of them."""
    if kind == "pl":
        slates, props, log_prob = plackett_luce_sample_batch(scores, 4, 0.8, rng, **kw)
        return (
            slates,
            props,
            log_prob,
            plackett_luce_log_propensities_batch(scores, slates, 0.8, **kw),
        )
    slates, props, log_prob = epsilon_greedy_sample_batch(scores, 4, 0.4, rng, **kw)
    return slates, props, log_prob, epsilon_greedy_log_propensities_batch(scores, slates, 0.4, **kw)


@pytest.mark.parametrize("kind", ["pl", "eps"])
def test_sampled_propensities_equal_evaluated_ones(kind: str) -> None:
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(64, 7))
    is_ad = rng.random((64, 7)) < 0.5
    mask = rng.random((64, 7)) < 0.9
    mask[:, :5] = True
    is_ad[:, :3] = False
    kw: dict[str, Any] = {"mask": mask, "is_ad": is_ad, "max_ads": 1}
    slates, props, _, logp = _sample_and_walk(kind, scores, rng, kw)
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


# ---- the ads floor (min_ads) ----------------------------------------------------------------

#: (max_ads, min_ads) pairs; a floor of 3 is clipped to the 2 valid ads of each row.
AD_LOADS = [(None, 1), (1, 1), (None, 2), (2, 2), (None, 3)]


def _ads_floor(ads: np.ndarray, valid: np.ndarray, min_ads: int, slate_size: int) -> np.ndarray:
    """What every slate must hold: ``min(min_ads, valid ads, S)`` ads per row."""
    need: np.ndarray = np.minimum(np.minimum((ads & valid).sum(-1), min_ads), slate_size)
    return need


@pytest.mark.parametrize(("cap", "floor"), AD_LOADS)
@pytest.mark.parametrize("s", [1, 2, 3])
@pytest.mark.parametrize("kind", ["pl", "eps"])
def test_slate_probabilities_under_ads_floor_sum_to_one_and_match_brute_force(
    kind: str, cap: int | None, floor: int, s: int
) -> None:
    slates = _all_slates(SCORES.shape[1], s)  # invalid items included: they must get 0
    m = slates.shape[0]
    for row in range(2):
        kw: dict[str, Any] = {
            "mask": np.repeat(MASK[row : row + 1], m, 0),
            "is_ad": np.repeat(IS_AD[row : row + 1], m, 0),
            "max_ads": cap,
            "min_ads": floor,
        }
        scores = np.repeat(SCORES[row : row + 1], m, 0)
        if kind == "pl":
            logp = plackett_luce_log_propensities_batch(scores, slates, 0.7, **kw)
        else:
            logp = epsilon_greedy_log_propensities_batch(scores, slates, 0.3, **kw)
        probs = np.exp(logp.sum(axis=1))
        assert probs.sum() == pytest.approx(1.0, abs=1e-12)
        n_ads = IS_AD[row][slates].sum(axis=1)
        need = _ads_floor(IS_AD[row], MASK[row], floor, s)
        assert (probs[n_ads < need] == 0.0).all()
        assert np.isneginf(logp[n_ads < need]).any(axis=1).all()
        if kind == "pl":
            for slate, p in zip(slates, probs, strict=True):
                expected = _brute_force(
                    SCORES[row], tuple(slate.tolist()), 0.7, MASK[row], IS_AD[row], cap, floor
                )
                assert p == pytest.approx(expected, abs=1e-12)


def test_slot_breaking_the_floor_gets_minus_inf_there() -> None:
    # Row 0, S = 2, at least one ad: an organic item in slot 1 after an organic slot 0 is
    # impossible; the same organic item after an ad is fine.
    slates = np.array([[1, 3], [0, 3]])
    kw: dict[str, Any] = {"mask": MASK[[0, 0]], "is_ad": IS_AD[[0, 0]], "min_ads": 1}
    for logp in (
        plackett_luce_log_propensities_batch(SCORES[[0, 0]], slates, 0.7, **kw),
        epsilon_greedy_log_propensities_batch(SCORES[[0, 0]], slates, 0.3, **kw),
    ):
        assert np.isfinite(logp[0, 0])
        assert logp[0, 1] == -np.inf
        assert np.isfinite(logp[1]).all()


def _ads_problem(seed: int, b: int = 256, c: int = 8) -> dict[str, Any]:
    """Random rows with 0 to 5 valid ads, every one fillable with 4 organic items."""
    rng = np.random.default_rng(seed)
    is_ad = rng.random((b, c)) < 0.5
    is_ad[:, :4] = False
    mask = rng.random((b, c)) < 0.85
    mask[:, :4] = True
    return {"scores": rng.normal(size=(b, c)), "mask": mask, "is_ad": is_ad}


def _sampled_under_ad_load(
    kind: str, cap: int | None, floor: int, problem_seed: int, seed: int
) -> tuple[dict[str, Any], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Slates of 4 sampled by PL at T = 0.8 or epsilon-greedy at 0.4 under the ad load, with
    the sampler's propensities, log-probability and the walk's per-slot log-propensities;
    returns ``(kw, slates, props, log_prob, walk)``, ``kw`` the problem and its load."""
    p = _ads_problem(problem_seed)
    kw: dict[str, Any] = {"mask": p["mask"], "is_ad": p["is_ad"], "max_ads": cap, "min_ads": floor}
    scores = p["scores"]
    slates, props, log_prob, walk = _sample_and_walk(kind, scores, np.random.default_rng(seed), kw)
    return {"scores": scores, **kw}, slates, props, log_prob, walk


@pytest.mark.parametrize(("cap", "floor"), [(None, 1), (2, 2), (3, 2), (None, 3), (4, 4)])
@pytest.mark.parametrize("kind", ["pl", "eps"])
def test_sampled_propensities_equal_evaluated_ones_under_ads_floor(
    kind: str, cap: int | None, floor: int
) -> None:
    kw, slates, props, log_prob, logp = _sampled_under_ad_load(kind, cap, floor, 3, 4)
    mask, is_ad = kw["mask"], kw["is_ad"]
    np.testing.assert_allclose(props, np.exp(logp), rtol=1e-6)
    np.testing.assert_allclose(log_prob, logp.sum(axis=1), rtol=1e-6)
    rows = np.arange(slates.shape[0])[:, None]
    assert mask[rows, slates].all()
    assert all(len(set(s.tolist())) == 4 for s in slates)
    n_ads = is_ad[rows, slates].sum(axis=1)
    need = _ads_floor(is_ad, mask, floor, 4)
    assert (n_ads >= need).all()
    assert (need < floor).any()  # rows with fewer ads than the floor occur ...
    assert (need == min(floor, 4)).any()  # ... and rows where it binds in full
    if cap is not None:
        assert (n_ads <= cap).all()


@pytest.mark.parametrize(("cap", "floor"), [(1, 1), (None, 2)])
@pytest.mark.parametrize("kind", ["pl", "eps"])
def test_empirical_frequencies_match_propensities_under_ads_floor(
    kind: str, cap: int | None, floor: int
) -> None:
    n = 40_000
    rng = np.random.default_rng(5)
    scores = np.repeat(SCORES[:1], n, 0)
    kw: dict[str, Any] = {
        "mask": np.repeat(MASK[:1], n, 0),
        "is_ad": np.repeat(IS_AD[:1], n, 0),
        "max_ads": cap,
        "min_ads": floor,
    }
    if kind == "pl":
        slates, _, log_prob = plackett_luce_sample_batch(scores, 3, 0.7, rng, **kw)
    else:
        slates, _, log_prob = epsilon_greedy_sample_batch(scores, 3, 0.5, rng, **kw)
    counts = Counter(map(tuple, slates.tolist()))
    probs = {tuple(s): float(np.exp(lp)) for s, lp in zip(slates.tolist(), log_prob, strict=True)}
    for slate, p in probs.items():
        assert counts[slate] / n == pytest.approx(p, abs=0.01)
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
    assert (IS_AD[0][slates].sum(axis=1) >= floor).all()


def test_greedy_fills_the_floor_with_the_best_remaining_ads() -> None:
    slates = greedy_slate_batch(SCORES, 3, mask=MASK, is_ad=IS_AD, min_ads=2)
    # Row 0: 0 (ad), 3; the last slot must be an ad and 2 is the only valid one left.
    np.testing.assert_array_equal(slates[0], [0, 3, 2])
    # Row 1: the two ads 1 and 2 are the best items anyway; the floor never binds.
    np.testing.assert_array_equal(slates[1], [1, 2, 4])
    # A floor above the slate size makes the slate all ads, the best ones first.
    np.testing.assert_array_equal(
        greedy_slate_batch(SCORES, 1, mask=MASK, is_ad=IS_AD, min_ads=2), [[0], [1]]
    )


def test_floor_is_clipped_to_the_ads_a_row_has() -> None:
    ads = IS_AD.copy()
    ads[1] = False  # row 1 has no ads at all, row 0 two valid ones
    slates, props, _ = plackett_luce_sample_batch(
        SCORES, 4, 1.0, np.random.default_rng(0), mask=MASK, is_ad=ads, min_ads=3
    )
    assert set(slates[0].tolist()) >= {0, 2}
    assert np.all(props > 0)


def test_floor_never_makes_a_row_unfillable() -> None:
    # Row 0 has two organic and two valid ads: S = 4 with at least 2 and at most 2 ads fits;
    # the cap, not the floor, is what can make a row unfillable.
    kw: dict[str, Any] = {"mask": MASK, "is_ad": IS_AD}
    slates = greedy_slate_batch(SCORES, 4, max_ads=2, min_ads=2, **kw)
    assert (IS_AD[[[0], [1]], slates].sum(axis=1) == 2).all()
    with pytest.raises(ValueError, match="cannot be filled"):
        greedy_slate_batch(SCORES, 4, max_ads=1, min_ads=1, **kw)


@pytest.mark.parametrize(
    ("load", "match"),
    [
        ({"min_ads": -1}, "min_ads must be >= 0"),
        ({"max_ads": 1, "min_ads": 2}, "min_ads must be <="),
    ],
)
def test_bad_ad_load_raises(load: dict[str, Any], match: str) -> None:
    rng = np.random.default_rng(0)
    slates = np.array([[0, 1], [0, 1]])
    calls: list[Callable[[], object]] = [
        lambda: plackett_luce_sample_batch(SCORES, 2, 1.0, rng, is_ad=IS_AD, **load),
        lambda: epsilon_greedy_sample_batch(SCORES, 2, 0.1, rng, is_ad=IS_AD, **load),
        lambda: greedy_slate_batch(SCORES, 2, is_ad=IS_AD, **load),
        lambda: plackett_luce_log_propensities_batch(SCORES, slates, 1.0, is_ad=IS_AD, **load),
        lambda: epsilon_greedy_log_propensities_batch(SCORES, slates, 0.1, is_ad=IS_AD, **load),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=match):
            call()


@pytest.mark.parametrize("kind", ["pl", "eps"])
def test_zero_floor_reproduces_the_pre_floor_samplers_exactly(kind: str) -> None:
    """Slates, propensities and RNG use recorded before ``min_ads`` existed (seeded runs)."""
    kw: dict[str, Any] = {"mask": np.tile(MASK, (3, 1)), "is_ad": np.tile(IS_AD, (3, 1))}
    scores = np.tile(SCORES, (3, 1))
    rng = np.random.default_rng(5)
    if kind == "pl":
        slates, props, _ = plackett_luce_sample_batch(scores, 3, 0.7, rng, max_ads=1, **kw)
        expected_slates = [[3, 0, 1], [2, 3, 0], [1, 0, 3], [1, 4, 0], [3, 0, 1], [4, 1, 0]]
        expected_first = [0.32312566, 0.16780327, 0.13712576, 0.70019841, 0.32312566, 0.08214670]
        next_draw = 0.7074955673371773
    else:
        slates, props, _ = epsilon_greedy_sample_batch(scores, 3, 0.5, rng, max_ads=1, **kw)
        expected_slates = [[0, 3, 1], [4, 3, 1], [0, 3, 1], [0, 2, 4], [2, 3, 1], [2, 4, 3]]
        expected_first = [0.625, 0.1, 0.625, 0.1, 0.125, 0.1]
        next_draw = 0.8643755631011325
    np.testing.assert_array_equal(slates, expected_slates)
    np.testing.assert_allclose(props[:, 0], expected_first, rtol=1e-6)
    assert rng.random() == next_draw


@pytest.mark.parametrize("kind", ["pl", "eps"])
def test_floor_on_rows_without_ads_changes_nothing(kind: str) -> None:
    """A floor clipped to zero everywhere gives bit-identical slates, propensities and draws."""
    p = _ads_problem(6)
    no_ads = np.zeros_like(p["is_ad"])
    outs = []
    for floor in (0, 2):
        rng = np.random.default_rng(7)
        kw: dict[str, Any] = {"mask": p["mask"], "is_ad": no_ads, "min_ads": floor}
        if kind == "pl":
            out = plackett_luce_sample_batch(p["scores"], 4, 0.9, rng, **kw)
        else:
            out = epsilon_greedy_sample_batch(p["scores"], 4, 0.3, rng, **kw)
        outs.append((*out, rng.random()))
    for a, b in zip(*outs, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(("cap", "floor"), [(None, 0), (2, 2), (None, 3)])
@pytest.mark.parametrize("kind", ["pl", "eps"])
def test_slot_after_a_prefix_is_the_walks_conditional(
    kind: str, cap: int | None, floor: int
) -> None:
    """At every slot, the conditional after the slate's own prefix is the walk's: the same
    availability (mask, taken items, ad cap and floor with the slots left)."""
    problem, slates, _, _, walk = _sampled_under_ad_load(kind, cap, floor, 5, 6)
    scores, mask = problem.pop("scores"), problem["mask"]
    kw = problem
    rule: dict[str, Any] = {
        "kind": "boltzmann" if kind == "pl" else "epsilon",
        "epsilon": 0.4,
        "temperature": 0.8,
    }
    for k in range(4):
        got = slot_log_probs_after_prefix(scores, slates[:, :k], slates[:, k], 4, **rule, **kw)
        np.testing.assert_allclose(got, walk[:, k], rtol=1e-9)
    # An item the prefix already holds, or one masked out, gets probability 0.
    first = slot_log_probs_after_prefix(scores, slates[:, :1], slates[:, 0], 4, **rule, **kw)
    assert (first == -np.inf).all()
    items = np.arange(scores.shape[1])
    for item in items:
        lp = slot_log_probs_after_prefix(
            scores, slates[:, :3], np.full(len(scores), item), 4, **rule, **kw
        )
        shown = (slates[:, :3] == item).any(axis=1)
        assert (lp[shown | ~mask[:, item]] == -np.inf).all()
    with pytest.raises(ValueError, match="leaves no slot"):
        slot_log_probs_after_prefix(scores, slates, slates[:, 0], 4, **rule, **kw)
    with pytest.raises(ValueError, match="kind must be"):
        slot_log_probs_after_prefix(scores, slates[:, :1], slates[:, 1], 4, kind="greedy")  # type: ignore[arg-type]
