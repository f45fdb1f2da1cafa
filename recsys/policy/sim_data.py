"""Logged random-policy sessions from the simulator, and what is learned from them.

Before any RL runs, a production system has logs of an exploring policy. Everything the
policies may know beyond the raw observable features is learned from such logs here:

- :func:`collect_random_sessions`: every user of a world lives one life under a uniformly random
  logging policy (exact propensities), recorded step by step with the hidden lifetime value
  kept apart (evaluation and reward-model targets only).
- :func:`item_statistics`: per-item response aggregates (CTR, consumed fraction, skip and like
  rates, shrunk towards the catalog mean), the feature-store columns that make the hidden
  quality and clickbait of an item learnable.
- :func:`fit_learned_reward`: the learned multi-signal reward, a linear
  :class:`~recsys.policy.reward.LearnedRewardModel` regressing each step's *future* lifetime
  value (return-to-go, minutes) on that step's immediate signals, with Spearman correlations
  against the hidden lifetime value for it and for a clicks-only reward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np
import numpy.typing as npt
import torch

from recsys.config import SimulatorSettings
from recsys.data.synthetic import SyntheticWorld
from recsys.policy.batch import (
    NUM_SIGNALS,
    SIGNAL_NAMES,
    SlateAction,
    SlateObs,
    SlateResponse,
    Transition,
)
from recsys.policy.envs import SimulatorFeatures, response_from_step_result
from recsys.policy.reward import LearnedRewardModel, preference_pairs, rank_correlation
from recsys.simulator.env import SlateEnv
from recsys.types import FloatArray, IntArray

BoolArray = npt.NDArray[np.bool_]

__all__ = [
    "REWARD_OBJECTIVES",
    "RewardFit",
    "RewardObjective",
    "SessionLog",
    "collect_random_sessions",
    "fit_learned_reward",
    "item_statistics",
    "session_transitions",
]


class SessionLog(NamedTuple):
    """One row per served slate, rows ordered by (step, user); one life per user.

    ``slates`` are candidate indices ``[N, S]`` with their uniform logging ``propensities``;
    ``signals`` ``[N, S, 6]`` in :data:`~recsys.policy.batch.SIGNAL_NAMES` order;
    ``hidden_reward`` the step's lifetime-value increment (minutes), ``return_to_go`` its sum
    from this step to the end of the logged life, ``life_ltv`` the whole logged life's value
    (hidden truth: reward-model targets and evaluation only). ``next_row`` is the row of the
    same user's next step (``-1`` at the end of the life or of the log).
    """

    user: IntArray
    step: IntArray
    user_features: FloatArray
    candidate_ids: IntArray
    slates: IntArray
    propensities: FloatArray
    signals: FloatArray
    done: BoolArray
    hidden_reward: FloatArray
    return_to_go: FloatArray
    life_ltv: FloatArray
    next_row: IntArray

    @property
    def num_rows(self) -> int:
        """Logged slates."""
        return int(self.user.shape[0])

    def take(self, rows: IntArray) -> SessionLog:
        """Rows ``rows`` (``next_row`` is remapped; links leaving the subset become ``-1``)."""
        remap = np.full(self.num_rows + 1, -1, dtype=np.int64)
        remap[rows] = np.arange(rows.shape[0])
        nxt = self.next_row[rows]
        picked: dict[str, Any] = {
            name: np.asarray(getattr(self, name))[rows]
            for name in self._fields
            if name != "next_row"
        }
        return self._replace(**picked, next_row=np.where(nxt >= 0, remap[nxt], -1))


def collect_random_sessions(
    world: SyntheticWorld,
    settings: SimulatorSettings,
    *,
    seed: int,
    max_steps: int = 100,
) -> SessionLog:
    """Follow every user of ``world`` through one life under a uniformly random slate policy.

    Only users still alive are stepped (a loop over time; each step is batched over users).
    The uniform candidate sampler's rows are uniformly random orderings, so their first ``S``
    columns are a uniformly random slate with per-slot propensity ``1 / (C - slot)``.
    """
    env = SlateEnv(world, seed=seed, settings=settings)
    env.check_candidates_fit()
    n, s, c = world.num_users, settings.slate_size, settings.num_candidates
    alive = np.ones(n, dtype=np.bool_)
    parts: list[dict[str, npt.NDArray[np.generic]]] = []
    props = (1.0 / (c - np.arange(s))).astype(np.float32)
    for t in range(max_steps):
        users = np.flatnonzero(alive)
        if users.size == 0:
            break
        cands = env.sample_candidates(users)
        result = env.step(users, cands[:, :s], check=False)
        done = result.session.terminated.copy()
        parts.append(
            {
                "user": users,
                "step": np.full(users.shape[0], t, dtype=np.int64),
                "user_features": result.user_features,
                "candidate_ids": cands,
                "signals": response_from_step_result(result).signals(),
                "done": done,
                "hidden_reward": (result.observable.dwell_s / 60.0).astype(np.float32),
            }
        )
        alive[users[done]] = False
    cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    rows = cat["user"].shape[0]
    # Link each row to the same user's next row: rows are grouped by step, users ascending.
    order = np.lexsort((cat["step"], cat["user"]))
    same_user = cat["user"][order][1:] == cat["user"][order][:-1]
    next_row = np.full(rows, -1, dtype=np.int64)
    next_row[order[:-1][same_user]] = order[1:][same_user]
    # Return-to-go within each user's step-ordered rows: life total minus what came before.
    user_sorted = cat["user"][order]
    r = cat["hidden_reward"][order].astype(np.float64)
    _, group = np.unique(user_sorted, return_inverse=True)
    total = np.bincount(group, weights=r)
    before = np.cumsum(r) - r
    first_before = np.zeros(total.shape[0])
    starts = np.flatnonzero(np.r_[True, user_sorted[1:] != user_sorted[:-1]])
    first_before[group[starts]] = before[starts]
    rtg_sorted = total[group] - (before - first_before[group])
    rtg = np.empty(rows, dtype=np.float32)
    rtg[order] = rtg_sorted.astype(np.float32)
    life = np.empty(rows, dtype=np.float32)
    life[order] = total[group].astype(np.float32)
    return SessionLog(
        user=cat["user"],
        step=cat["step"],
        user_features=cat["user_features"].astype(np.float32),
        candidate_ids=cat["candidate_ids"],
        slates=np.broadcast_to(np.arange(s, dtype=np.int64), (rows, s)).copy(),
        propensities=np.broadcast_to(props, (rows, s)).copy(),
        signals=cat["signals"].astype(np.float32),
        done=cat["done"],
        hidden_reward=cat["hidden_reward"],
        return_to_go=rtg,
        life_ltv=life,
        next_row=next_row,
    )


def item_statistics(
    log: SessionLog, world: SyntheticWorld, prior_strength: float = 5.0
) -> FloatArray:
    """``[num_items, 4]`` shrunk per-item aggregates: CTR, consumed fraction, skip, like rate.

    Each is ``(sum + k * global_mean) / (count + k)`` so rarely seen items sit at the catalog
    mean; the consumed fraction is dwell over the item's (observable) length. These are
    observable response statistics, never the hidden quality or clickbait themselves.
    """
    n_items = world.num_items
    items = np.take_along_axis(log.candidate_ids, log.slates, axis=1).reshape(-1)
    sig = log.signals.reshape(-1, NUM_SIGNALS).astype(np.float64)
    click = sig[:, SIGNAL_NAMES.index("click")]
    frac = sig[:, SIGNAL_NAMES.index("dwell_s")] / np.take(world.item_length_s, items)
    skip = sig[:, SIGNAL_NAMES.index("skip")]
    like = sig[:, SIGNAL_NAMES.index("like")]
    k = float(prior_strength)
    shown = np.bincount(items, minlength=n_items).astype(np.float64)
    clicks = np.bincount(items, weights=click, minlength=n_items)

    def shrunk(values: npt.ArrayLike, count: npt.ArrayLike) -> npt.NDArray[np.float64]:
        n = np.asarray(count, dtype=np.float64)
        total = np.bincount(items, weights=np.asarray(values, np.float64), minlength=n_items)
        mean = total.sum() / max(n.sum(), 1.0)
        out: npt.NDArray[np.float64] = (total + k * mean) / (n + k)
        return out

    ctr = shrunk(click, shown)
    stats = np.stack([ctr, shrunk(frac, clicks), shrunk(skip, clicks), shrunk(like, clicks)], 1)
    return stats.astype(np.float32)


def session_transitions(
    log: SessionLog, features: SimulatorFeatures, rows: IntArray, reward: FloatArray
) -> Transition:
    """Logged rows as a :class:`Transition` (next observation from the user's next row).

    Rows at the end of a life or of the log are terminal (``done``), so a TD target never
    bootstraps past what was logged. ``reward`` ``[len(rows), S]`` is the per-slot reward.
    """
    obs = features.obs(log.user_features[rows], log.candidate_ids[rows])
    nxt = log.next_row[rows]
    has_next = nxt >= 0
    src = np.where(has_next, nxt, rows)
    next_obs = features.obs(log.user_features[src], log.candidate_ids[src])
    props = log.propensities[rows]
    action = SlateAction(
        slates=log.slates[rows],
        propensities=props,
        log_prob=np.log(props.astype(np.float64)).sum(axis=1).astype(np.float32),
        scores=None,
    )
    next_action = SlateAction(
        slates=log.slates[src],
        propensities=log.propensities[src],
        log_prob=np.log(log.propensities[src].astype(np.float64)).sum(1).astype(np.float32),
    )
    return Transition(
        obs=SlateObs(*obs),
        action=action,
        response=SlateResponse.from_signals(log.signals[rows]),
        reward=np.asarray(reward, dtype=np.float32),
        next_obs=next_obs,
        done=~has_next | log.done[rows],
        next_action=next_action,
    )


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


def _life_sums(log: SessionLog, rows: IntArray) -> tuple[FloatArray, npt.NDArray[np.float64]]:
    """Per-user summed signals ``[L, 6]`` and hidden LTV ``[L]`` of the given rows."""
    _, inverse = np.unique(log.user[rows], return_inverse=True)
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
        fit_sums[a][:, None, :], fit_sums[b][:, None, :], pref, epochs=epochs, lr=0.05
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
