"""The learned multi-signal reward, fit from the logging policy's sessions.

:func:`fit_learned_reward` fits a linear :class:`~recsys.policy.reward.model.LearnedRewardModel`
two ways (regressing each step's *future* lifetime value, return-to-go in minutes, on that
step's immediate signals; or Bradley-Terry on pairs of logged lives ranked by their hidden
lifetime value) and reports Spearman correlations against the hidden lifetime value for both
and for a clicks-only reward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch

from recsys.policy.batch import NUM_SIGNALS
from recsys.policy.reward.model import LearnedRewardModel, preference_pairs, rank_correlation
from recsys.policy.training.sessions import SessionLog
from recsys.types import FloatArray, IntArray

__all__ = [
    "REWARD_OBJECTIVES",
    "RewardFit",
    "RewardObjective",
    "fit_learned_reward",
]


@dataclass(frozen=True)
class RewardFit:
    """A fitted learned reward with its diagnostics (JSON-ready ``report``)."""

    model: LearnedRewardModel
    report: dict[str, Any]


RewardObjective = Literal["regression", "bradley_terry"]
REWARD_OBJECTIVES: tuple[RewardObjective, ...] = ("regression", "bradley_terry")


def _zero_ignored_slots(model: LearnedRewardModel) -> float:
    """Shift the output so an ignored slot (all signals zero) earns exactly 0; returns the
    shift. The intercept is the average future value of *being* a user: paid per slot it
    would reward keeping users around whatever they consume (for Bradley-Terry it is not
    even identified). Shifting the last bias is exact for any net."""
    zero = float(model.rewards(np.zeros((1, NUM_SIGNALS), np.float32))[0])
    last = [m for m in model.net.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.bias.sub_(zero)
    return zero


def _lives(log: SessionLog) -> IntArray:
    """One id per logged life (a user served again after churn is a new life)."""
    out: IntArray = log.user.astype(np.int64) * 2**20 + log.life
    return out


def _life_sums(log: SessionLog, rows: IntArray) -> tuple[FloatArray, npt.NDArray[np.float64]]:
    """Per-user summed signals ``[L, 6]`` and hidden LTV ``[L]`` of the given rows."""
    _, inverse = np.unique(_lives(log)[rows], return_inverse=True)
    sums = np.stack(
        [
            np.bincount(inverse, weights=log.signals[rows, :, k].sum(axis=1))
            for k in range(NUM_SIGNALS)
        ],
        axis=1,
    ).astype(np.float32)
    ltv = np.bincount(inverse, weights=log.hidden_reward[rows]).astype(np.float64)
    return sums, ltv


def fit_learned_reward(
    log: SessionLog,
    *,
    holdout_fraction: float = 0.3,
    seed: int = 0,
    epochs: int = 400,
    objective: RewardObjective = "regression",
    num_pairs: int = 50_000,
) -> RewardFit:
    """Fit the learned reward on logged steps both ways, rank-check both, return one.

    - ``regression``: ``sum_slots r(signals) ≈ future lifetime value`` per step. The target
      of a step is its return-to-go (hidden LTV from that step to the end of the life), so
      a signal earns reward for what it predicts about the *future*: a like or a long dwell
      signals a satisfied user who stays and comes back; a skip signals clickbait that
      drains the session.
    - ``bradley_terry``: ``P(life a better than life b) = sigmoid(R_a - R_b)`` on random
      pairs of users' logged lives ranked by their hidden LTV, ``R`` the summed reward of a
      life (exactly the sum of the per-slot reward for the linear model), i.e. only
      comparisons of outcomes, the way RLHF learns from preferences.

    Users are split into fit and holdout; the report gives, for both objectives and for
    clicks-only, the Spearman correlation with the hidden value per step (reward vs
    return-to-go) and per life (summed reward vs life LTV). ``objective`` picks the model
    returned (and used by training).
    """
    if objective not in REWARD_OBJECTIVES:
        raise ValueError(f"objective must be regression or bradley_terry, got {objective!r}")
    users = np.unique(log.user)
    rng = np.random.default_rng(seed)
    held = rng.random(users.shape[0]) < holdout_fraction
    is_held = np.isin(log.user, users[held])
    fit_rows, test_rows = np.flatnonzero(~is_held), np.flatnonzero(is_held)
    regression = LearnedRewardModel(seed=seed)
    stats = regression.fit_regression(
        log.signals[fit_rows],
        log.return_to_go[fit_rows],
        epochs=epochs,
        lr=0.05,
        batch_size=fit_rows.shape[0],
    )
    zero = _zero_ignored_slots(regression)

    fit_sums, fit_ltv = _life_sums(log, fit_rows)
    a, b, pref = preference_pairs(fit_ltv, num_pairs, rng)
    bradley_terry = LearnedRewardModel(seed=seed)
    bt_stats = bradley_terry.fit_bradley_terry(
        fit_sums[a][:, None, :],
        fit_sums[b][:, None, :],
        pref,
        epochs=epochs,
        lr=0.05,
        batch_size=pref.shape[0],  # full batch, like the regression: a linear model on 6 inputs
    )
    _zero_ignored_slots(bradley_terry)

    truth = log.return_to_go[test_rows]
    life_sums, life_truth = _life_sums(log, test_rows)
    report: dict[str, Any] = {
        "objective": objective,
        "fit_r2": stats["r2"],
        "fit_rows": float(fit_rows.shape[0]),
        "holdout_rows": float(test_rows.shape[0]),
        "bt_pairs": float(pref.shape[0]),
        "bt_pair_accuracy": bt_stats["pair_accuracy"],
    }
    for name, model in (("learned", regression), ("bt", bradley_terry)):
        step = model.rewards(log.signals[test_rows]).sum(axis=1)
        life = model.rewards(life_sums[:, None, :])[:, 0]
        report[f"spearman_step_{name}_vs_future_ltv"] = rank_correlation(step, truth)
        report[f"spearman_life_{name}_vs_ltv"] = rank_correlation(life, life_truth)
    report["spearman_step_clicks_vs_future_ltv"] = rank_correlation(
        log.signals[test_rows, :, 0].sum(axis=1), truth
    )
    report["spearman_life_clicks_vs_ltv"] = rank_correlation(life_sums[:, 0], life_truth)
    report["weights_raw_units"] = [float(w) for w in regression.linear_weights()]
    report["bt_weights_raw_units"] = [float(w) for w in bradley_terry.linear_weights()]
    report["intercept_removed_per_slot"] = zero
    chosen = regression if objective == "regression" else bradley_terry
    return RewardFit(model=chosen, report=report)
