"""Slate OPE on a synthetic bandit whose target value is known exactly.

The bandit: 3 contexts (uniform), 5 candidates, slates of 3. Clicks follow a position-based
model, ``P(click | x, j, k) = theta_k * alpha[x, j]``, so the item-position estimators are
unbiased too. Logging and target are Plackett-Luce policies with different scores and
temperatures. Every slate of every context is enumerated (60 per context), which gives the
target's true value, exact conditional and marginal propensities, and a perfect reward model.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.data.logged import LoggedFeedback, LoggedFeedbackError, read_logged_feedback
from recsys.policy.evaluation.ope import (
    ESTIMATORS,
    ItemPositionMeanModel,
    LoggedSlates,
    OPEResult,
    RewardPredictions,
    TargetPropensities,
    evaluate_off_policy,
    load_target_column,
    load_target_propensities,
    plackett_luce_target,
    results_to_json,
)
from recsys.policy.exploration import plackett_luce_propensities

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

N_CTX, N_CAND, SLATE = 3, 5, 3
THETA = np.array([1.0, 0.6, 0.3])  # examination probability per position
_rng = np.random.default_rng(7)
ALPHA = _rng.uniform(0.1, 0.9, size=(N_CTX, N_CAND))  # attractiveness per (context, item)
LOG_SCORES = _rng.normal(size=(N_CTX, N_CAND))
TARGET_SCORES = 0.5 * _rng.normal(size=(N_CTX, N_CAND)) + 2.5 * ALPHA  # likes clicks
LOG_T, TARGET_T = 1.0, 0.7
CLICK = THETA[None, None, :] * ALPHA[:, :, None]  # [x, j, k] expected click = perfect qhat


def _enumerate(scores: F64, temperature: float) -> tuple[I64, F64]:
    """Every ordered slate and its textbook Plackett-Luce probability, per context."""
    slates = np.array(list(itertools.permutations(range(N_CAND), SLATE)), dtype=np.int64)
    probs = np.empty((scores.shape[0], slates.shape[0]))
    for x in range(scores.shape[0]):
        for i, slate in enumerate(slates):
            weights = {j: math.exp(scores[x, j] / temperature) for j in range(N_CAND)}
            p = 1.0
            for item in slate:
                p *= weights[item] / sum(weights.values())
                del weights[item]
            probs[x, i] = p
    return slates, probs


def _marginals(scores: F64, temperature: float) -> F64:
    """``P(item j at position k | x)`` by enumeration: ``[x, j, k]``."""
    slates, probs = _enumerate(scores, temperature)
    out = np.zeros((scores.shape[0], N_CAND, SLATE))
    for k in range(SLATE):
        for x in range(scores.shape[0]):
            np.add.at(out[x, :, k], slates[:, k], probs[x])
    return out


LOG_MARGINAL = _marginals(LOG_SCORES, LOG_T)
TARGET_MARGINAL = _marginals(TARGET_SCORES, TARGET_T)
# True expected slate clicks of the target: mean over contexts of sum_k sum_j P(j@k) click.
TRUE_VALUE = float((TARGET_MARGINAL * CLICK).sum(axis=(1, 2)).mean())
LOGGING_VALUE = float((LOG_MARGINAL * CLICK).sum(axis=(1, 2)).mean())


def _conditionals(scores: F64, slates: I64, temperature: float) -> F64:
    """Exact ``P(a_k | a_<k)`` for a batch of slates ``[n, S]`` with per-slate logits."""
    e = np.exp(scores / temperature)
    chosen = np.take_along_axis(e, slates, axis=1)
    used = np.concatenate([np.zeros((slates.shape[0], 1)), np.cumsum(chosen, 1)[:, :-1]], 1)
    out: F64 = chosen / (e.sum(axis=1, keepdims=True) - used)
    return out


@dataclass(frozen=True)
class BanditLog:
    """A simulated log, one entry per row, plus the exact target quantities for its rows."""

    context: I64  # per slate
    slates: I64  # [n_slates, S] candidate indices
    slate_id: I64
    position: I64
    item: I64
    propensity: F64
    position_propensity: F64
    click: F64
    expected_click: F64
    target: TargetPropensities
    perfect: RewardPredictions

    @property
    def logs(self) -> LoggedSlates:
        return LoggedSlates.from_arrays(
            self.slate_id,
            self.position,
            self.propensity,
            position_propensity=self.position_propensity,
            item_id=self.item,
        )


def simulate(n_slates: int, seed: int, *, target_is_logging: bool = False) -> BanditLog:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, N_CTX, n_slates)
    keys = LOG_SCORES[x] / LOG_T + rng.gumbel(size=(n_slates, N_CAND))
    slates = np.argsort(-keys, axis=1)[:, :SLATE].astype(np.int64)
    xs = np.repeat(x, SLATE)
    pos = np.tile(np.arange(SLATE), n_slates)
    item = slates.reshape(-1)
    p_click = CLICK[xs, item, pos]
    if target_is_logging:
        t_scores, t_temp, t_marg = LOG_SCORES, LOG_T, LOG_MARGINAL
    else:
        t_scores, t_temp, t_marg = TARGET_SCORES, TARGET_T, TARGET_MARGINAL
    q_target = (t_marg[:, :, :, None] * CLICK[:, :, None, :]).sum(axis=1)  # [x, k, k']
    return BanditLog(
        context=x,
        slates=slates,
        slate_id=np.repeat(np.arange(n_slates), SLATE),
        position=pos,
        item=item,
        propensity=_conditionals(LOG_SCORES[x], slates, LOG_T).reshape(-1),
        position_propensity=LOG_MARGINAL[xs, item, pos],
        click=(rng.random(item.shape[0]) < p_click).astype(np.float64),
        expected_click=p_click,
        target=TargetPropensities(
            propensity=_conditionals(t_scores[x], slates, t_temp).reshape(-1),
            position_propensity=t_marg[xs, item, pos],
        ),
        perfect=RewardPredictions(logged=p_click, target=q_target[xs, pos, pos]),
    )


@pytest.fixture(scope="module")
def big() -> BanditLog:
    return simulate(40_000, seed=1)


@pytest.fixture(scope="module")
def big_results(big: BanditLog) -> dict[str, OPEResult]:
    return evaluate_off_policy(
        big.logs, big.target, slot_rewards=big.click, reward_predictions=big.perfect, seed=0
    )


def _width(r: OPEResult) -> float:
    return r.ci_high - r.ci_low


# --- the bandit itself ---------------------------------------------------------------------


def test_enumeration_is_a_distribution_and_the_policies_differ() -> None:
    assert LOG_MARGINAL.sum(axis=1) == pytest.approx(np.ones((N_CTX, SLATE)))
    assert LOG_MARGINAL.sum(axis=2).max() <= 1 + 1e-12
    # The target is meaningfully better than the logger, so OPE has something to find.
    assert TRUE_VALUE - LOGGING_VALUE > 0.1


def test_test_conditionals_agree_with_exploration_module() -> None:
    slates = np.array([[3, 0, 4], [1, 2, 0]])
    got = _conditionals(TARGET_SCORES[[0, 2]], slates, TARGET_T)
    for row, x in enumerate([0, 2]):
        expected = plackett_luce_propensities(
            TARGET_SCORES[x].astype(np.float32), slates[row], TARGET_T
        )
        assert got[row] == pytest.approx(expected, rel=1e-5)


# --- estimators against the known answer ---------------------------------------------------


@pytest.mark.parametrize("name", ["ips", "snips", "iips", "dm", "dr", "position_dr"])
def test_every_estimator_covers_the_true_value(
    big_results: dict[str, OPEResult], name: str
) -> None:
    r = big_results[name]
    assert r.ci_low <= TRUE_VALUE <= r.ci_high, (name, r.value, r.ci_low, r.ci_high, TRUE_VALUE)
    assert r.ci_low <= r.value <= r.ci_high
    assert r.n_slates == 40_000
    assert r.n_rows == 120_000


def test_logged_value_is_the_logging_policys_on_policy_value(
    big_results: dict[str, OPEResult],
) -> None:
    r = big_results["logged"]
    assert r.ci_low <= LOGGING_VALUE <= r.ci_high
    # ... and the target's CI excludes it: the estimators tell the two policies apart.
    assert big_results["ips"].ci_low > r.ci_high


def test_importance_weights_average_to_one(big_results: dict[str, OPEResult]) -> None:
    assert big_results["ips"].mean_weight == pytest.approx(1.0, abs=0.05)
    assert big_results["iips"].mean_weight == pytest.approx(1.0, abs=0.02)
    assert 0 < big_results["ips"].ess < big_results["iips"].ess < 40_000


def test_iips_has_lower_variance_than_ips_under_the_position_based_model(
    big_results: dict[str, OPEResult],
) -> None:
    assert big_results["iips"].std_error < 0.7 * big_results["ips"].std_error


def test_dr_with_a_perfect_model_beats_ips(big_results: dict[str, OPEResult]) -> None:
    assert big_results["dr"].std_error < big_results["ips"].std_error
    assert big_results["position_dr"].std_error < big_results["iips"].std_error
    assert big_results["dm"].value == pytest.approx(TRUE_VALUE, abs=0.01)


def test_dr_with_a_perfect_model_and_noiseless_rewards_has_near_zero_variance() -> None:
    log = simulate(5_000, seed=2)
    res = evaluate_off_policy(
        log.logs, log.target, slot_rewards=log.expected_click, reward_predictions=log.perfect
    )
    # Each DR term equals the context's true value exactly; only the context draw varies.
    per_context = (TARGET_MARGINAL * CLICK).sum(axis=(1, 2))
    assert res["dr"].value == pytest.approx(per_context[log.context].mean(), abs=1e-9)
    assert res["position_dr"].value == pytest.approx(per_context[log.context].mean(), abs=1e-9)
    assert _width(res["dr"]) < 0.1 * _width(res["ips"])
    single = simulate(2_000, seed=3)
    mask = np.repeat(single.context == 0, SLATE)
    logs = LoggedSlates.from_arrays(
        single.slate_id[mask], single.position[mask], single.propensity[mask]
    )
    res0 = evaluate_off_policy(
        logs,
        TargetPropensities(single.target.propensity[mask]),
        slot_rewards=single.expected_click[mask],
        reward_predictions=RewardPredictions(
            single.perfect.logged[mask], single.perfect.target[mask]
        ),
    )
    assert res0["dr"].value == pytest.approx(per_context[0], abs=1e-9)
    assert _width(res0["dr"]) < 1e-9


def test_cis_shrink_with_more_data(big_results: dict[str, OPEResult]) -> None:
    small = simulate(5_000, seed=4)
    res = evaluate_off_policy(
        small.logs, small.target, slot_rewards=small.click, reward_predictions=small.perfect
    )
    for name in ("ips", "snips", "iips", "dr", "position_dr"):
        # sqrt(5k / 40k) = 0.35 in expectation.
        assert _width(big_results[name]) < 0.6 * _width(res[name]), name


def test_coverage_over_independent_logs() -> None:
    hits = {name: 0 for name in ("ips", "snips", "iips", "dr", "position_dr")}
    runs = 12
    for seed in range(runs):
        log = simulate(3_000, seed=100 + seed)
        res = evaluate_off_policy(
            log.logs, log.target, slot_rewards=log.click, n_bootstrap=300, seed=seed
        )
        for name in hits:
            hits[name] += res[name].ci_low <= TRUE_VALUE <= res[name].ci_high
    # 95% intervals: P(fewer than 9 of 12 cover) < 2% per estimator when calibrated.
    assert all(h >= 9 for h in hits.values()), hits


def test_a_cluster_bootstrap_resamples_whole_clusters() -> None:
    log = simulate(2_000, seed=7)
    plain = evaluate_off_policy(log.logs, log.target, slot_rewards=log.click, n_bootstrap=300)
    # One cluster per slate, labelled in slate order: the same resamples, the same intervals.
    own = evaluate_off_policy(
        log.logs, log.target, slot_rewards=log.click, n_bootstrap=300, clusters=log.slate_id
    )
    for name, r in plain.items():
        assert (own[name].value, own[name].ci_low, own[name].ci_high) == pytest.approx(
            (r.value, r.ci_low, r.ci_high)
        )
    # Every slate logged four times (four copies of one user's identical slates): resampling
    # slates treats the copies as independent and shrinks the interval by about half;
    # resampling the copies together gives the interval of the original 2,000 slates back.
    copies = 4
    rows = np.tile(np.arange(log.slate_id.size), copies)
    copy = np.repeat(np.arange(copies), log.slate_id.size)
    slate_id = copy * (log.slate_id.max() + 1) + log.slate_id[rows]
    many = LoggedSlates.from_arrays(
        slate_id, log.position[rows], log.propensity[rows],
        position_propensity=log.position_propensity[rows], item_id=log.item[rows],
    )  # fmt: skip
    target = TargetPropensities(
        propensity=log.target.propensity[rows],
        position_propensity=None
        if log.target.position_propensity is None
        else log.target.position_propensity[rows],
    )
    naive = evaluate_off_policy(many, target, slot_rewards=log.click[rows], n_bootstrap=300)
    users = evaluate_off_policy(
        many, target, slot_rewards=log.click[rows], n_bootstrap=300, clusters=log.slate_id[rows]
    )
    for name in ("ips", "snips", "iips"):
        assert users[name].value == pytest.approx(plain[name].value)
        assert _width(naive[name]) < 0.7 * _width(plain[name]), name
        assert _width(users[name]) == pytest.approx(_width(plain[name]), rel=0.3), name
    with pytest.raises(ValueError, match="same label"):
        evaluate_off_policy(
            many, target, slot_rewards=log.click[rows], clusters=np.arange(rows.size)
        )
    with pytest.raises(ValueError, match="one label per row"):
        evaluate_off_policy(many, target, slot_rewards=log.click[rows], clusters=log.slate_id)


def test_default_dr_uses_a_target_blind_baseline_and_omits_dm(big: BanditLog) -> None:
    res = evaluate_off_policy(big.logs, big.target, slot_rewards=big.click, n_bootstrap=200)
    assert "dm" not in res
    assert list(res) == [e for e in ESTIMATORS if e != "dm"]
    for name in ("dr", "position_dr"):
        assert res[name].ci_low <= TRUE_VALUE <= res[name].ci_high
    # A per-position baseline is already a useful control variate for slate IPS.
    assert res["dr"].std_error < res["ips"].std_error


# --- clipping and the on-policy special case -----------------------------------------------


def test_clipping_reports_the_clipped_fraction(big: BanditLog) -> None:
    res = evaluate_off_policy(
        big.logs, big.target, slot_rewards=big.click, max_weight=3.0, n_bootstrap=100
    )
    log_w = np.log(big.target.propensity) - np.log(big.propensity)
    w = np.exp(log_w.reshape(-1, SLATE).sum(axis=1))
    assert big.target.position_propensity is not None
    w_pos = big.target.position_propensity / big.position_propensity
    assert res["ips"].clipped_fraction == pytest.approx(float((w > 3).mean()))
    assert res["iips"].clipped_fraction == pytest.approx(float((w_pos > 3).mean()))
    assert 0.05 < res["ips"].clipped_fraction < 0.5
    assert res["ips"].value == pytest.approx(
        float((np.minimum(w, 3) * big.click.reshape(-1, SLATE).sum(1)).mean())
    )
    unclipped = evaluate_off_policy(big.logs, big.target, slot_rewards=big.click, n_bootstrap=100)
    assert unclipped["ips"].clipped_fraction == 0.0
    # Clipping a target that up-weights good slates biases IPS down and raises the ESS.
    assert res["ips"].value < unclipped["ips"].value
    assert res["ips"].ess > unclipped["ips"].ess


def test_target_equal_to_logging_gives_unit_weights_and_the_on_policy_mean() -> None:
    log = simulate(4_000, seed=5, target_is_logging=True)
    res = evaluate_off_policy(
        log.logs, log.target, slot_rewards=log.click, reward_predictions=log.perfect
    )
    on_policy = float(log.click.sum() / 4_000)
    for name in ("logged", "ips", "snips", "iips"):
        assert res[name].value == pytest.approx(on_policy, rel=1e-12), name
        assert res[name].mean_weight == pytest.approx(1.0, rel=1e-12)
        assert res[name].ess == pytest.approx(4_000, rel=1e-9)
        assert res[name].clipped_fraction == 0.0
    # Paired bootstrap: identical per-slate terms give identical intervals.
    assert (res["ips"].ci_low, res["ips"].ci_high) == pytest.approx(
        (res["logged"].ci_low, res["logged"].ci_high)
    )
    assert res["ips"].ci_low <= LOGGING_VALUE <= res["ips"].ci_high


# --- Plackett-Luce target helper -----------------------------------------------------------


def test_plackett_luce_target_matches_enumeration() -> None:
    # One slate per context; every (item, position) that can occur is logged somewhere.
    slates = np.array([[0, 1, 2], [3, 4, 0], [2, 0, 4]])
    ids = np.repeat(np.arange(3), SLATE)
    pos = np.tile(np.arange(SLATE), 3)
    logs = LoggedSlates.from_arrays(ids, pos, np.full(9, 0.5))
    n_samples = 40_000
    tgt = plackett_luce_target(
        logs,
        TARGET_SCORES,
        slates.reshape(-1),
        temperature=TARGET_T,
        n_samples=n_samples,
        seed=1,
        candidate_rewards=CLICK,
    )
    exact_cond = _conditionals(TARGET_SCORES, slates, TARGET_T).reshape(-1)
    assert tgt.propensity == pytest.approx(exact_cond, rel=1e-9)
    exact_marg = TARGET_MARGINAL[np.repeat(np.arange(3), SLATE), slates.reshape(-1), pos]
    assert tgt.position_propensity is not None
    assert tgt.position_propensity_stderr is not None
    err = np.abs(tgt.position_propensity - exact_marg)
    assert np.all(err[pos == 0] < 1e-12)  # Rao-Blackwellised: position 0 is exact
    assert np.all(err <= 4 * tgt.position_propensity_stderr + 1e-12)
    assert err.max() < 0.005
    # Stated bound: never worse than the indicator estimator's sqrt(p(1-p)/M).
    bound = np.sqrt(exact_marg * (1 - exact_marg) / n_samples)
    assert np.all(tgt.position_propensity_stderr <= bound * 1.05 + 1e-12)
    assert tgt.reward_predictions is not None
    q_target = (TARGET_MARGINAL[:, :, :, None] * CLICK[:, :, None, :]).sum(axis=1)
    exact_q = q_target[np.repeat(np.arange(3), SLATE), pos, pos]
    assert tgt.reward_predictions.target == pytest.approx(exact_q, abs=0.005)
    assert tgt.reward_predictions.logged == pytest.approx(
        CLICK[np.repeat(np.arange(3), SLATE), slates.reshape(-1), pos]
    )


def test_plackett_luce_target_handles_padding_and_ragged_slates() -> None:
    # Slate "a": 3 real candidates of 5 (two padded), 2 slots; slate "b": 5 candidates, 3 slots.
    scores = np.array([[0.5, -np.inf, 1.0, -np.inf, -0.2], [0.1, 0.2, 0.3, 0.4, 0.5]])
    logs = LoggedSlates.from_arrays(["a", "a", "b", "b", "b"], [0, 1, 0, 1, 2], np.full(5, 0.5))
    tgt = plackett_luce_target(
        logs, scores, [2, 0, 4, 0, 1], temperature=0.7, n_samples=20_000, seed=0
    )
    real = np.array([0.5, 1.0, -0.2]) / 0.7
    e = np.exp(real)
    # P(2 first) * P(0 | 2 taken); marginal of item 0 at slot 1 = sum over the first pick.
    assert tgt.propensity[0] == pytest.approx(e[1] / e.sum())
    assert tgt.propensity[1] == pytest.approx(e[0] / (e[0] + e[2]))
    marg = e[1] / e.sum() * e[0] / (e[0] + e[2]) + e[2] / e.sum() * e[0] / (e[0] + e[1])
    assert tgt.position_propensity is not None
    assert tgt.position_propensity[1] == pytest.approx(marg, abs=0.005)
    expected_b = plackett_luce_propensities(scores[1].astype(np.float32), np.array([4, 0, 1]), 0.7)
    assert tgt.propensity[2:] == pytest.approx(expected_b, rel=1e-5)


def test_plackett_luce_target_when_the_slate_uses_every_candidate() -> None:
    scores = np.array([[0.3, -0.4, 1.1]])
    logs = LoggedSlates.from_arrays(["s", "s", "s"], [0, 1, 2], np.full(3, 0.5))
    tgt = plackett_luce_target(logs, scores, [2, 0, 1], n_samples=20_000, seed=2)
    e = np.exp(scores[0])
    perm_prob = {
        perm: e[perm[0]] / e.sum() * e[perm[1]] / (e.sum() - e[perm[0]])
        for perm in itertools.permutations(range(3))
    }
    exact = [
        sum(p for perm, p in perm_prob.items() if perm[k] == j) for k, j in enumerate([2, 0, 1])
    ]
    assert tgt.position_propensity == pytest.approx(exact, abs=0.01)
    assert float(np.prod(tgt.propensity)) == pytest.approx(perm_prob[(2, 0, 1)])
    assert tgt.propensity[2] == pytest.approx(1.0)


def test_plackett_luce_target_end_to_end_covers_the_truth() -> None:
    log = simulate(6_000, seed=6)
    model = ItemPositionMeanModel.fit(log.item, log.position, log.click)
    candidate_rewards = model.predict(np.arange(N_CAND)[None, :, None], np.arange(SLATE))
    tgt = plackett_luce_target(
        log.logs,
        TARGET_SCORES[log.context],
        log.item,
        temperature=TARGET_T,
        n_samples=400,
        seed=0,
        candidate_rewards=np.broadcast_to(candidate_rewards, (6_000, N_CAND, SLATE)),
    )
    assert tgt.propensity == pytest.approx(log.target.propensity, rel=1e-9)
    res = evaluate_off_policy(log.logs, tgt, slot_rewards=log.click, n_bootstrap=300)
    for name in ("ips", "snips", "iips", "dr", "position_dr"):
        assert res[name].ci_low <= TRUE_VALUE <= res[name].ci_high, name
    # The context-blind default model is badly biased as DM; DR built on it is not.
    assert not res["dm"].ci_low <= TRUE_VALUE <= res["dm"].ci_high
    assert abs(res["dm"].value - TRUE_VALUE) > 0.1


def test_item_position_model_shrinks_to_the_position_mean() -> None:
    model = ItemPositionMeanModel.fit(
        [1, 1, 2, 2, 9], [0, 1, 0, 1, 0], [1.0, 0.0, 0.0, 0.0, 1.0], prior_strength=1.0
    )
    assert model.position_mean == pytest.approx([2 / 3, 0.0])
    assert model.predict(1, 0) == pytest.approx((1 + 2 / 3) / 2)
    assert model.predict([7, 7], [0, 1]) == pytest.approx([2 / 3, 0.0])  # unseen item
    with pytest.raises(ValueError, match="position"):
        model.predict(1, 2)


# --- inputs: LoggedFeedback, shuffled rows, Parquet target columns, JSON -------------------


def _feedback(log: BanditLog, **override: Any) -> LoggedFeedback:
    n = log.item.shape[0]
    click = log.click.astype(bool)
    slate_log = np.log(log.propensity).reshape(-1, SLATE).sum(1)
    values: dict[str, Any] = {
        "request_id": np.array([f"req-{i}" for i in log.slate_id]),
        "session_id": log.slate_id.astype(np.int64),
        "step": np.zeros(n, dtype=np.int32),
        "ts": np.zeros(n),
        "user_id": np.array([f"u{x}" for x in np.repeat(log.context, SLATE)]),
        "user_idx": np.repeat(log.context, SLATE).astype(np.int64),
        "item_id": log.item,
        "position": log.position.astype(np.int16),
        "slate_size": np.full(n, SLATE, dtype=np.int16),
        "propensity": log.propensity.astype(np.float32),
        "slate_log_propensity": np.repeat(slate_log, SLATE).astype(np.float32),
        "position_propensity": log.position_propensity.astype(np.float32),
        "policy": np.full(n, "pl-log"),
        "is_ad": np.zeros(n, dtype=bool),
        "click": click,
        "dwell_s": np.where(click, 10.0, 0.0).astype(np.float32),
        "like": np.zeros(n, dtype=bool),
        "conversion": np.zeros(n, dtype=bool),
        "revenue": np.zeros(n, dtype=np.float32),
        "skip": ~click,
        "hidden_ltv": np.full(n, np.nan, dtype=np.float32),
        "user_features": np.zeros((n, 2), dtype=np.float32),
        "item_features": np.zeros((n, 2), dtype=np.float32),
    }
    values.update(override)
    return LoggedFeedback(**values)


def test_logged_feedback_input_defaults_to_click_rewards() -> None:
    log = simulate(2_000, seed=8)
    # Default DR folds follow the sorted slate keys (strings here, ints below): pin the model.
    from_feedback = evaluate_off_policy(
        _feedback(log), log.target, reward_predictions=log.perfect, n_bootstrap=50
    )
    from_arrays = evaluate_off_policy(
        log.logs,
        log.target,
        slot_rewards=log.click,
        reward_predictions=log.perfect,
        n_bootstrap=50,
    )
    for name in from_arrays:
        # float32 storage of the logging propensities is the only difference.
        assert from_feedback[name].value == pytest.approx(from_arrays[name].value, rel=1e-4)


def test_row_order_does_not_matter() -> None:
    log = simulate(2_000, seed=9)
    perm = np.random.default_rng(0).permutation(log.item.shape[0])
    shuffled = LoggedSlates.from_arrays(
        log.slate_id[perm],
        log.position[perm],
        log.propensity[perm],
        position_propensity=log.position_propensity[perm],
    )
    assert log.target.position_propensity is not None
    target = TargetPropensities(log.target.propensity[perm], log.target.position_propensity[perm])
    a = evaluate_off_policy(log.logs, log.target, slot_rewards=log.click, n_bootstrap=10)
    b = evaluate_off_policy(shuffled, target, slot_rewards=log.click[perm], n_bootstrap=10)
    for name in a:
        assert b[name].value == pytest.approx(a[name].value, rel=1e-9), name


def test_target_column_round_trips_through_parquet(tmp_path: Path) -> None:
    log = simulate(1_000, seed=10)
    table = _feedback(log).to_table()
    table = table.append_column("target_propensity", pa.array(log.target.propensity))
    table = table.append_column(
        "target_position_propensity", pa.array(log.target.position_propensity)
    )
    path = tmp_path / "logs.parquet"
    pq.write_table(table, str(path))
    feedback = read_logged_feedback(path)  # the extra columns do not upset the reader
    column = load_target_column(path, "target_propensity")
    assert column.dtype == np.float32
    assert column == pytest.approx(log.target.propensity.astype(np.float32))
    target = load_target_propensities(path, "target_propensity", "target_position_propensity")
    res = evaluate_off_policy(feedback, target, n_bootstrap=50)
    ref = evaluate_off_policy(log.logs, log.target, slot_rewards=log.click, n_bootstrap=50)
    assert res["iips"].value == pytest.approx(ref["iips"].value, rel=1e-4)
    with pytest.raises(ValueError, match="no column 'nope'"):
        load_target_column(path, "nope")
    with pytest.raises(ValueError, match="numeric"):
        load_target_column(path, "policy")
    with pytest.raises(ValueError, match="no Parquet file"):
        load_target_column(tmp_path / "missing.parquet", "target_propensity")


def test_results_serialise_to_json() -> None:
    log = simulate(500, seed=11)
    res = evaluate_off_policy(log.logs, log.target, slot_rewards=log.click, n_bootstrap=0)
    payload = json.loads(results_to_json(res))
    assert set(payload) == set(res)
    assert payload["ips"]["value"] == pytest.approx(res["ips"].value)
    assert payload["ips"]["ci_low"] is None  # no bootstrap: NaN becomes null
    assert json.loads(res["snips"].to_json())["estimator"] == "snips"


def test_bootstrap_is_seeded() -> None:
    log = simulate(1_000, seed=12)
    a = evaluate_off_policy(log.logs, log.target, slot_rewards=log.click, n_bootstrap=100, seed=3)
    b = evaluate_off_policy(log.logs, log.target, slot_rewards=log.click, n_bootstrap=100, seed=3)
    c = evaluate_off_policy(log.logs, log.target, slot_rewards=log.click, n_bootstrap=100, seed=4)
    assert a == b
    assert a["ips"].ci_low != c["ips"].ci_low


# --- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ids", "positions", "message"),
    [
        ([0, 0, 0], [0, 1, 1], r"slate 0 has positions \[0, 1, 1\]"),
        ([0, 0, 1], [0, 2, 0], r"slate 0 has positions \[0, 2\]"),
        (["a", "a", "b"], [1, 2, 0], r"slate 'a' has positions \[1, 2\]"),
        ([0, 0, 1], [0, -1, 0], "positions"),
    ],
)
def test_non_contiguous_positions_are_refused(
    ids: list[Any], positions: list[int], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        LoggedSlates.from_arrays(ids, positions, [0.5, 0.5, 0.5])


@pytest.mark.parametrize(
    ("propensity", "message"),
    [
        ([0.5, 0.0, 0.5], r"propensity must lie in \(0, 1\]; row 1"),
        ([0.5, 1.5, 0.5], r"propensity must lie in \(0, 1\]; row 1"),
        ([0.5, np.inf, 0.5], "NaN or inf"),
        ([0.5, 0.5], r"propensity has shape \(2,\), expected shape \(3,\)"),
    ],
)
def test_bad_logging_propensities_are_refused(propensity: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LoggedSlates.from_arrays([0, 0, 1], [0, 1, 0], propensity)


def test_bad_target_and_reward_inputs_are_refused() -> None:
    logs = LoggedSlates.from_arrays([0, 0, 1], [0, 1, 0], [0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match=r"target propensity must lie in \[0, 1\]"):
        TargetPropensities(np.array([0.5, -0.1, 0.5]))
    TargetPropensities(np.array([0.0, 1.0, 0.5]))  # zero is fine for a target
    ok = TargetPropensities(np.array([0.5, 0.5, 0.5]))
    with pytest.raises(ValueError, match="target has 2 rows but the log has 3"):
        evaluate_off_policy(
            logs, TargetPropensities(np.array([0.5, 0.5])), slot_rewards=[1.0, 0, 0]
        )
    with pytest.raises(ValueError, match="slot_rewards has shape"):
        evaluate_off_policy(logs, ok, slot_rewards=[1.0, 0.0])
    with pytest.raises(ValueError, match="slot_rewards contains NaN"):
        evaluate_off_policy(logs, ok, slot_rewards=[1.0, np.nan, 0.0])
    with pytest.raises(ValueError, match="slot_rewards is required"):
        evaluate_off_policy(logs, ok)
    with pytest.raises(ValueError, match="max_weight"):
        evaluate_off_policy(logs, ok, slot_rewards=[1.0, 0, 0], max_weight=0.0)
    with pytest.raises(ValueError, match="confidence"):
        evaluate_off_policy(logs, ok, slot_rewards=[1.0, 0, 0], confidence=1.0)
    with pytest.raises(ValueError, match="reward_predictions has 2 rows"):
        evaluate_off_policy(
            logs,
            ok,
            slot_rewards=[1.0, 0, 0],
            reward_predictions=RewardPredictions(np.full(2, 0.1), np.full(2, 0.1)),
        )
    with pytest.raises(ValueError, match="candidate_scores has shape"):
        plackett_luce_target(logs, np.zeros((3, 4)), [0, 1, 0])
    with pytest.raises(ValueError, match="same logged candidate twice"):
        plackett_luce_target(logs, np.zeros((2, 4)), [1, 1, 0])
    with pytest.raises(ValueError, match="padding"):
        plackett_luce_target(logs, np.array([[0.0, -np.inf], [0.0, 0.0]]), [0, 1, 0])


def test_partial_slates_run_item_position_estimators_only() -> None:
    log = simulate(10, seed=13)
    keep = np.ones(30, dtype=bool)
    keep[2] = False  # slot 2 of slate 0 is missing but slate_size still says 3
    partial = _feedback(log).take(keep)
    slates = LoggedSlates.from_feedback(partial)
    assert not slates.complete
    assert slates.slate_size[0] == 3
    assert slates.logged_slots[0] == 2
    assert log.target.position_propensity is not None
    both = TargetPropensities(log.target.propensity[keep], log.target.position_propensity[keep])
    with pytest.raises(LoggedFeedbackError, match="'req-0' has 2 rows but slate_size 3"):
        evaluate_off_policy(partial, both, n_bootstrap=10)
    marginal_only = TargetPropensities(None, log.target.position_propensity[keep])
    res = evaluate_off_policy(partial, marginal_only, n_bootstrap=10)
    assert list(res) == ["logged", "iips", "position_dr"]


def test_dataclass_replace_keeps_validation() -> None:
    target = TargetPropensities(np.array([0.5, 0.5]))
    with pytest.raises(ValueError, match="position_propensity"):
        replace(target, position_propensity=np.array([0.5, 2.0]))


# --- unknown propensities, partial slates, empty logs ---------------------------------------


def test_one_impression_per_row_logs_run_the_item_position_estimators() -> None:
    """The OBD layout: every row its own request, propensity unknown, the marginal known.
    Per impression IIPS is the per-slate IIPS of the same rows divided by the slate size."""
    log = simulate(3_000, seed=14)
    n = log.item.shape[0]
    nan = np.full(n, np.nan, np.float32)
    rows = _feedback(
        log,
        request_id=np.array([f"imp-{i}" for i in range(n)]),
        propensity=nan,
        slate_log_propensity=nan,
    )
    assert log.target.position_propensity is not None
    marginal = TargetPropensities(None, log.target.position_propensity)
    per_row = evaluate_off_policy(rows, marginal, n_bootstrap=20)
    assert list(per_row) == ["logged", "iips", "position_dr"]
    assert per_row["iips"].n_slates == n
    full = evaluate_off_policy(_feedback(log), marginal, n_bootstrap=0)
    assert per_row["iips"].value * SLATE == pytest.approx(full["iips"].value, rel=1e-9)
    # The slate estimators need the conditional propensity the log does not have.
    with pytest.raises(
        LoggedFeedbackError, match=r"propensity is unknown \(null\) on 9000 of 9000"
    ):
        evaluate_off_policy(rows, log.target, n_bootstrap=0)


def test_a_served_log_without_marginals_refuses_item_position_estimators() -> None:
    log = simulate(200, seed=15)
    served = _feedback(log, position_propensity=np.full(600, np.nan, np.float32))
    with pytest.raises(LoggedFeedbackError, match="position_propensity is unknown"):
        evaluate_off_policy(served, log.target, n_bootstrap=0)
    conditional = TargetPropensities(log.target.propensity)
    assert list(evaluate_off_policy(served, conditional, n_bootstrap=0)) == [
        "logged",
        "ips",
        "snips",
        "dr",
    ]


def test_nan_logging_propensities_mean_unknown_in_arrays() -> None:
    logs = LoggedSlates.from_arrays([0, 0, 1], [0, 1, 0], [0.5, np.nan, 0.5])
    assert logs.propensity is not None
    assert np.isnan(logs.propensity[1])
    assert LoggedSlates.from_arrays([0, 0, 1], [0, 1, 0], [np.nan] * 3).propensity is None
    with pytest.raises(LoggedFeedbackError, match="unknown"):
        evaluate_off_policy(logs, TargetPropensities(np.full(3, 0.5)), slot_rewards=[1.0, 0.0, 0.0])


def test_declared_slate_sizes_allow_partial_slates() -> None:
    logs = LoggedSlates.from_arrays(
        ["a", "b", "b"], [2, 0, 2], None, position_propensity=[0.2, 0.5, 0.1], slate_size=[3] * 3
    )
    assert logs.slate_size.tolist() == [3, 3]
    assert logs.logged_slots.tolist() == [1, 2]
    assert not logs.complete
    with pytest.raises(ValueError, match=r"slate 'b' has positions \[0, 3\]; positions must be"):
        LoggedSlates.from_arrays(["a", "b", "b"], [2, 0, 3], None, [0.2] * 3, slate_size=[3] * 3)
    with pytest.raises(ValueError, match="different slate_size"):
        LoggedSlates.from_arrays(["b", "b"], [0, 1], None, [0.2] * 2, slate_size=[3, 4])
    with pytest.raises(ValueError, match="propensity, position_propensity or both"):
        TargetPropensities(None)


def test_plackett_luce_target_on_partial_slates_gives_marginals_only() -> None:
    full = LoggedSlates.from_arrays(["s", "s", "s"], [0, 1, 2], np.full(3, 0.5))
    partial = LoggedSlates.from_arrays(
        ["s", "t"], [2, 1], None, position_propensity=[0.5, 0.5], slate_size=[3, 3]
    )
    scores = np.array([[0.3, -0.4, 1.1, 0.0]])
    a = plackett_luce_target(full, scores, [2, 0, 1], n_samples=2_000, seed=0)
    b = plackett_luce_target(partial, np.repeat(scores, 2, axis=0), [1, 0], n_samples=2_000, seed=0)
    assert b.propensity is None
    assert a.position_propensity is not None
    assert b.position_propensity is not None
    assert b.position_propensity[0] == pytest.approx(a.position_propensity[2], abs=0.05)


def test_an_empty_log_says_it_has_no_rows() -> None:
    empty = _feedback(simulate(10, seed=16)).take(slice(0, 0))
    with pytest.raises(LoggedFeedbackError, match="the log has no rows"):
        evaluate_off_policy(empty, TargetPropensities(np.zeros(0)), n_bootstrap=0)
    with pytest.raises(LoggedFeedbackError, match="the log has no rows"):
        LoggedSlates.from_arrays([], [], [])


@pytest.mark.parametrize("name", ["propensity", "position_propensity"])
def test_a_target_that_is_zero_everywhere_is_refused(name: str) -> None:
    log = simulate(50, seed=17)
    zeros = {"propensity": None, "position_propensity": None, name: np.zeros(150)}
    with pytest.raises(ValueError, match=f"the target's {name} is 0 on every logged row"):
        evaluate_off_policy(log.logs, TargetPropensities(**zeros), slot_rewards=log.click)
