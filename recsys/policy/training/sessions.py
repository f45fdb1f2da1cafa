"""Logged sessions of the simulator: the one record type and the one path that produces it.

Before any RL runs, a production system has logs of an exploring policy. Everything the
policies may know beyond the raw observable features is learned from such logs, and the same
records feed the two-tower retriever (clicks), the learned reward, SlateQ's log replay, the
baselines and the logged-feedback Parquet files of ``recsys simulate``:

- :func:`record_sessions`: a :class:`SessionLogger` serves :class:`SimulatedUsers`, step by
  step, batched over users; each step is one :class:`SessionLog` row with what the logger
  saw (event-derived and latent user features, candidates), what it did (slate, exact
  propensities), what the user did (every signal) and the hidden value kept apart
  (evaluation and reward-model targets only).
- :class:`RandomLogger`: uniformly random slates (propensity ``1 / (C - slot)``, marginal
  ``1 / C``), the textbook choice for bootstrapping.
- :func:`item_statistics`: per-item response aggregates (CTR, consumed fraction, skip and like
  rates, shrunk towards the catalog mean), the feature-store columns that make the hidden
  quality and clickbait of an item learnable.
- :func:`session_transitions`: logged rows as transitions (SlateQ's log replay, baselines).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

from recsys.features import ItemFeaturizer
from recsys.policy.batch import (
    NUM_SIGNALS,
    SIGNAL_NAMES,
    SlateAction,
    SlateObs,
    SlateResponse,
    Transition,
)
from recsys.policy.training.envs import FeatureKind, SimulatedUsers, response_from_step_result
from recsys.types import FloatArray, IntArray

BoolArray = npt.NDArray[np.bool_]

__all__ = [
    "LoggerDecision",
    "RandomLogger",
    "SessionLog",
    "SessionLogger",
    "item_statistics",
    "record_sessions",
    "session_transitions",
]


class LoggerDecision(NamedTuple):
    """A logging policy's slates ``[B, S]`` (candidate indices) with their exact conditional
    per-slot ``propensities`` and marginal ``position_propensity`` (P(item at that slot))."""

    slates: IntArray
    propensities: FloatArray
    position_propensity: FloatArray


class SessionLogger(Protocol):
    """A logging policy: picks slates for the users of a step, with exact propensities."""

    name: str

    def decide(
        self, users: SimulatedUsers, rows: IntArray, obs: SlateObs, rng: np.random.Generator
    ) -> LoggerDecision:
        """Slates for ``users`` ``rows`` given their observation ``obs``."""
        ...


class RandomLogger:
    """Uniformly random slates: each row's first ``S`` candidates of a random permutation."""

    name = "random"

    def decide(
        self, users: SimulatedUsers, rows: IntArray, obs: SlateObs, rng: np.random.Generator
    ) -> LoggerDecision:
        """Exact propensities ``1 / (C - slot)``, marginals ``1 / C``."""
        b, c = obs.candidate_ids.shape
        s = users.slate_size
        slates = np.argsort(rng.random((b, c)), axis=1)[:, :s]
        cond = np.broadcast_to((1.0 / (c - np.arange(s))).astype(np.float32), (b, s)).copy()
        marginal = np.full((b, s), 1.0 / c, dtype=np.float32)
        return LoggerDecision(slates.astype(np.int64), cond, marginal)


class SessionLog(NamedTuple):
    """One row per served slate, rows ordered by (step, user).

    ``user`` is the population index, ``life`` the user's life (a churned user who is served
    again is a new user, with a new life) and ``step`` the time step of the log; ``session``
    and ``session_step`` place the row in the simulated user's life. ``event_features`` are
    what the service would know (the event fold), ``latent_features`` the simulator's truth
    (for the partial-observability comparison). ``slates`` are candidate indices ``[N, S]``
    with the logger's ``propensities`` (conditional) and ``position_propensity`` (marginal);
    ``signals`` ``[N, S, 6]`` in :data:`~recsys.policy.batch.SIGNAL_NAMES` order;
    ``hidden_reward`` the step's lifetime-value increment (minutes), ``return_to_go`` its sum
    from this step to the end of the logged life, ``life_ltv`` the whole logged life's value
    (hidden truth: reward-model targets and evaluation only). ``next_row`` is the row of the
    same life's next step (``-1`` at the end of the life or of the log).
    """

    user: IntArray
    life: IntArray
    step: IntArray
    session: IntArray
    session_step: IntArray
    event_features: FloatArray
    latent_features: FloatArray
    candidate_ids: IntArray
    slates: IntArray
    propensities: FloatArray
    position_propensity: FloatArray
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

    def user_features(self, kind: FeatureKind) -> FloatArray:
        """The user features of one kind (``event`` or ``latent``)."""
        return self.event_features if kind == "event" else self.latent_features

    def items(self) -> IntArray:
        """``[N, S]`` catalog ids of the served slates."""
        out: IntArray = np.take_along_axis(self.candidate_ids, self.slates, axis=1)
        return out

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


def record_sessions(
    users: SimulatedUsers,
    logger: SessionLogger,
    *,
    max_steps: int,
    seed: int,
    one_life: bool = True,
) -> SessionLog:
    """Serve every user of ``users`` with ``logger`` for ``max_steps`` steps and log it.

    ``one_life``: each user is followed until churn (then no longer served); otherwise a
    churned user is served again as a new user (a new life) until ``max_steps``. A loop over
    time; each step is batched over the users served.
    """
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    rng = np.random.default_rng(seed)
    n = users.num_users
    alive = np.ones(n, dtype=np.bool_)
    parts: list[dict[str, npt.NDArray[np.generic]]] = []
    for t in range(max_steps):
        rows = np.flatnonzero(alive) if one_life else np.arange(n)
        if rows.size == 0:
            break
        life, session = users.core.upcoming_sessions(rows)
        latent = users.core.user_features(rows)
        obs = users.observe(rows)
        decision = logger.decide(users, rows, obs, rng)
        items = np.take_along_axis(obs.candidate_ids, decision.slates, axis=1)
        result = users.step(rows, items)
        done = result.session.terminated.copy()
        parts.append(
            {
                "user": rows,
                "life": life,
                "step": np.full(rows.shape[0], t, dtype=np.int64),
                "session": session,
                "session_step": result.session.step,
                "event_features": obs.user_features
                if users.features == "event"
                else users.event_features(rows),
                "latent_features": latent,
                "candidate_ids": obs.candidate_ids,
                "slates": decision.slates,
                "propensities": decision.propensities,
                "position_propensity": decision.position_propensity,
                "signals": response_from_step_result(result).signals(),
                "done": done,
                "hidden_reward": (result.observable.dwell_s / 60.0).astype(np.float32),
            }
        )
        if one_life:
            alive[rows[done]] = False
    cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    next_row, rtg, life_total = _link_lives(cat["user"], cat["life"], cat["step"], cat)
    return SessionLog(
        user=cat["user"].astype(np.int64),
        life=cat["life"].astype(np.int64),
        step=cat["step"],
        session=cat["session"].astype(np.int64),
        session_step=cat["session_step"].astype(np.int64),
        event_features=cat["event_features"].astype(np.float32),
        latent_features=cat["latent_features"].astype(np.float32),
        candidate_ids=cat["candidate_ids"].astype(np.int64),
        slates=cat["slates"].astype(np.int64),
        propensities=cat["propensities"].astype(np.float32),
        position_propensity=cat["position_propensity"].astype(np.float32),
        signals=cat["signals"].astype(np.float32),
        done=cat["done"],
        hidden_reward=cat["hidden_reward"],
        return_to_go=rtg,
        life_ltv=life_total,
        next_row=next_row,
    )


def _link_lives(
    user: IntArray, life: IntArray, step: IntArray, cat: dict[str, npt.NDArray[Any]]
) -> tuple[IntArray, FloatArray, FloatArray]:
    """Per row: the same life's next row, the return-to-go and the life's logged total."""
    rows = user.shape[0]
    order = np.lexsort((step, life, user))
    u, li = user[order], life[order]
    same = (u[1:] == u[:-1]) & (li[1:] == li[:-1])
    next_row = np.full(rows, -1, dtype=np.int64)
    next_row[order[:-1][same]] = order[1:][same]
    starts = np.flatnonzero(np.r_[True, ~same])
    group = np.cumsum(np.r_[True, ~same]) - 1
    r = cat["hidden_reward"][order].astype(np.float64)
    total = np.bincount(group, weights=r)
    before = np.cumsum(r) - r
    rtg_sorted = total[group] - (before - before[starts][group])
    rtg = np.empty(rows, dtype=np.float32)
    rtg[order] = rtg_sorted.astype(np.float32)
    life_total = np.empty(rows, dtype=np.float32)
    life_total[order] = total[group].astype(np.float32)
    return next_row, rtg, life_total


def item_statistics(
    log: SessionLog, item_length_s: npt.ArrayLike, prior_strength: float = 5.0
) -> FloatArray:
    """``[num_items, 4]`` shrunk per-item aggregates: CTR, consumed fraction, skip, like rate.

    Each is ``(sum + k * global_mean) / (count + k)`` so rarely seen items sit at the catalog
    mean; the consumed fraction is dwell over the item's (observable) length. These are
    observable response statistics, never the hidden quality or clickbait themselves.
    """
    lengths = np.asarray(item_length_s, dtype=np.float64)
    n_items = int(lengths.shape[0])
    items = log.items().reshape(-1)
    sig = log.signals.reshape(-1, NUM_SIGNALS).astype(np.float64)
    click = sig[:, SIGNAL_NAMES.index("click")]
    frac = sig[:, SIGNAL_NAMES.index("dwell_s")] / np.take(lengths, items)
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


ITEM_STATISTICS_NAMES = ("stat_ctr", "stat_consumed", "stat_skip", "stat_like")


def _obs(log: SessionLog, items: ItemFeaturizer, kind: FeatureKind, rows: IntArray) -> SlateObs:
    uf = log.user_features(kind)[rows]
    ids = log.candidate_ids[rows]
    return SlateObs(uf, items.features(uf, ids), ids, None, None)


def session_transitions(
    log: SessionLog,
    items: ItemFeaturizer,
    rows: IntArray,
    reward: FloatArray,
    kind: FeatureKind = "event",
    is_ad: npt.NDArray[np.bool_] | None = None,
) -> Transition:
    """Logged rows as a :class:`Transition` (next observation from the same life's next row).

    Rows at the end of a life or of the log are terminal (``done``), so a TD target never
    bootstraps past what was logged. ``reward`` ``[len(rows), S]`` is the per-slot reward;
    ``is_ad`` (the catalog's ad flags) marks ads among the candidates.
    """
    obs = _obs(log, items, kind, rows)
    nxt = log.next_row[rows]
    has_next = nxt >= 0
    src = np.where(has_next, nxt, rows)
    next_obs = _obs(log, items, kind, src)
    if is_ad is not None:
        obs = obs._replace(is_ad=is_ad[obs.candidate_ids])
        next_obs = next_obs._replace(is_ad=is_ad[next_obs.candidate_ids])
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
        obs=obs,
        action=action,
        response=SlateResponse.from_signals(log.signals[rows]),
        reward=np.asarray(reward, dtype=np.float32),
        next_obs=next_obs,
        done=~has_next | log.done[rows],
        next_action=next_action,
    )
