"""Roll a batch policy through whole user lifetimes and summarize short- vs long-term value.

This is how the simulator's central claim is measured: a policy's click-through rate (what a
click model optimizes) against the hidden lifetime value (engagement until churn). Only the
users still alive are stepped, so each user lives exactly one life.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from recsys.simulator.env import SlateEnv
from recsys.simulator.policies import ReferencePolicy
from recsys.types import IntArray

F64Array = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class LifetimeSummary:
    """Per-user totals over one life each (arrays ``[U]``) plus the survival curve.

    ``truncated`` marks users still alive at ``max_steps`` (their totals are lower bounds).
    ``alive_after[t]`` is the fraction of users alive after ``t + 1`` steps.
    """

    users: IntArray
    steps: IntArray
    sessions: IntArray
    clicks: F64Array
    dwell_s: F64Array
    likes: F64Array
    skips: F64Array
    conversions: F64Array
    revenue: F64Array
    first_step_ctr: float
    truncated: npt.NDArray[np.bool_]
    alive_after: F64Array

    @property
    def ctr(self) -> float:
        """Clicks per served slate over all lives (the short-term metric)."""
        return float(self.clicks.sum() / max(int(self.steps.sum()), 1))

    @property
    def lifetime_value_min(self) -> float:
        """Mean hidden lifetime value: dwell minutes per user life (the long-term metric)."""
        return float(self.dwell_s.mean() / 60.0)

    def as_dict(self) -> dict[str, float]:
        """Headline numbers, JSON-ready."""
        return {
            "users": float(self.users.shape[0]),
            "ctr": self.ctr,
            "first_step_ctr": self.first_step_ctr,
            "clicks_per_life": float(self.clicks.mean()),
            "lifetime_value_min": self.lifetime_value_min,
            "steps_per_life": float(self.steps.mean()),
            "sessions_per_life": float(self.sessions.mean()),
            "likes_per_life": float(self.likes.mean()),
            "skip_rate": float(self.skips.sum() / max(self.clicks.sum(), 1.0)),
            "revenue_per_life": float(self.revenue.mean()),
            "truncated_fraction": float(self.truncated.mean()),
        }


def rollout_lifetimes(
    env: SlateEnv,
    policy: ReferencePolicy,
    users: IntArray,
    *,
    slate_size: int,
    max_steps: int,
    rng: np.random.Generator,
) -> LifetimeSummary:
    """Serve ``users`` (distinct, alive) with ``policy`` until each churns or ``max_steps``.

    Candidates come from ``env.sample_candidates``; ``rng`` drives the policy only. Call
    ``env.reset(seed)`` first for a reproducible comparison between policies.
    """
    users = np.asarray(users, dtype=np.int64)
    if np.unique(users).shape[0] != users.shape[0]:
        raise ValueError("users must be distinct: each lives one life")
    if not env.alive(users).all():
        raise ValueError("every user must be alive at the start (call env.reset first)")
    n = users.shape[0]
    totals = {k: np.zeros(n) for k in ("clicks", "dwell", "likes", "skips", "conv", "rev")}
    steps = np.zeros(n, dtype=np.int64)
    sessions = np.ones(n, dtype=np.int64)
    alive = np.ones(n, dtype=np.bool_)
    alive_after = np.zeros(max_steps)
    first_step_ctr = float("nan")
    for t in range(max_steps):  # a loop over time steps; every step is batched over users
        rows = np.flatnonzero(alive)
        if rows.size == 0:
            alive_after[t:] = 0.0
            break
        batch = users[rows]
        candidates = env.sample_candidates(batch)
        result = env.step(batch, policy(env, batch, candidates, slate_size, rng), check=False)
        obs = result.observable
        clicked = obs.click_position >= 0
        if t == 0:
            first_step_ctr = float(clicked.mean())
        totals["clicks"][rows] += clicked
        totals["dwell"][rows] += obs.dwell_s
        totals["likes"][rows] += obs.like
        totals["skips"][rows] += obs.skip
        totals["conv"][rows] += obs.conversion
        totals["rev"][rows] += obs.revenue
        steps[rows] += 1
        ended = result.session.session_end & ~result.session.terminated
        sessions[rows] += ended
        alive[rows[result.session.terminated]] = False
        alive_after[t] = alive.mean()
    return LifetimeSummary(
        users=users,
        steps=steps,
        sessions=sessions,
        clicks=totals["clicks"],
        dwell_s=totals["dwell"],
        likes=totals["likes"],
        skips=totals["skips"],
        conversions=totals["conv"],
        revenue=totals["rev"],
        first_step_ctr=first_step_ctr,
        truncated=alive.copy(),
        alive_after=alive_after,
    )
