"""Logged random-policy sessions from the simulator, and the per-item statistics they give.

Before any RL runs, a production system has logs of an exploring policy. Everything the
policies may know beyond the raw observable features is learned from such logs here:

- :func:`collect_random_sessions`: every user of a world lives one life under a uniformly random
  logging policy (exact propensities), recorded step by step with the hidden lifetime value
  kept apart (evaluation and reward-model targets only).
- :func:`item_statistics`: per-item response aggregates (CTR, consumed fraction, skip and like
  rates, shrunk towards the catalog mean), the feature-store columns that make the hidden
  quality and clickbait of an item learnable.
- :func:`session_transitions`: logged rows as transitions, for SlateQ's log replay.

The learned reward is fit from the same logs by :func:`recsys.policy.reward.fit.fit_learned_reward`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

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
from recsys.policy.training.envs import SimulatorFeatures, response_from_step_result
from recsys.simulator.env import SlateEnv
from recsys.types import FloatArray, IntArray

BoolArray = npt.NDArray[np.bool_]

__all__ = [
    "SessionLog",
    "collect_random_sessions",
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
