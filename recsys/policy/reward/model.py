"""A learned reward over many response signals (click, dwell, like, conversion, revenue, skip).

Clicks alone reward clickbait; what the product wants is long-term engagement and revenue,
which are only observed later (return visits, session length) or only as comparisons. So, as
RLHF learns a reward model before optimising a policy against it, the per-item reward
``r(signals, context)`` is learned first, two ways:

- **Regression** (:meth:`LearnedRewardModel.fit_regression`): the summed reward of a group of
  impressions (a session, or a single impression) regresses a long-term outcome ``y``
  (future engagement, return, the simulator's hidden LTV): ``min E[(sum_l r(x_l) - y)^2]``.
- **Bradley-Terry** (:meth:`LearnedRewardModel.fit_bradley_terry`): pairs of sessions ranked
  by their outcome, ``P(a > b) = sigmoid(R_a - R_b)`` with ``R = sum_l r(x_l)``, fitted by
  logistic loss (the RLHF reward-model objective, Christiano et al. 2017, eq. 1). It needs only
  orderings, so it works where outcomes are noisy or on incomparable scales, and it identifies
  ``r`` up to an additive constant per impression.

The objective a policy optimises per slot is ``r(signals) + revenue_weight * revenue``
(:meth:`LearnedRewardModel.slate_rewards`): the learned term scores engagement, the explicit
term is the business's ad-revenue trade-off, kept separate so it can be tuned without
retraining the reward model.

Signals are standardised with statistics frozen at fit time (dwell is in seconds, clicks are
0/1), so one learning rate suits every signal; :meth:`LearnedRewardModel.linear_weights`
converts a linear model's weights back to raw signal units.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from recsys.policy._nets import mlp, seeded, to_numpy, to_tensor
from recsys.policy.batch import NUM_SIGNALS, SlateResponse, signals_array
from recsys.types import FloatArray, IntArray, Signals

BoolArray = npt.NDArray[np.bool_]


class LearnedRewardModel(nn.Module):
    """``r(signals[, context]) -> scalar``: linear by default, an MLP when ``hidden`` is given.

    Implements :class:`recsys.protocols.RewardModel` (``reward(Signals) -> float``) for the
    online updater, plus batched :meth:`rewards` for training. With ``context_dim > 0`` the
    reward may depend on context (e.g. ``is_ad``, position); :meth:`reward`, which has no
    context, uses the average training context.
    """

    def __init__(self, context_dim: int = 0, hidden: Sequence[int] = (), seed: int = 0) -> None:
        super().__init__()
        if context_dim < 0:
            raise ValueError(f"context_dim must be >= 0, got {context_dim}")
        self.context_dim = int(context_dim)
        self.hidden = tuple(int(h) for h in hidden)
        width = NUM_SIGNALS + self.context_dim
        with seeded(seed):
            self.net = mlp(width, self.hidden, 1)
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("std", torch.ones(width))
        self.seed = seed

    # ---- inference ------------------------------------------------------------------------

    def forward(self, signals: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Reward of each impression: ``[..., 6]`` signals (+ ``[..., k]`` context) → ``[...]``."""
        x = signals
        if self.context_dim:
            if context is None:
                context = self.mean[NUM_SIGNALS:].expand(*signals.shape[:-1], self.context_dim)
            x = torch.cat([signals, context], dim=-1)
        elif context is not None and context.shape[-1]:
            raise ValueError("this reward model was built with context_dim=0")
        out: torch.Tensor = self.net((x - self.mean) / self.std).squeeze(-1)
        return out

    def reward(self, signals: Signals) -> float:
        """Reward of one impressed item's responses (:class:`recsys.protocols.RewardModel`)."""
        with torch.no_grad():
            return float(self(to_tensor(signals_array(signals))[None, :])[0])

    def rewards(self, signals: npt.ArrayLike, context: npt.ArrayLike | None = None) -> FloatArray:
        """Batched rewards: ``[..., 6]`` signals → ``[...]`` float32 numpy."""
        with torch.no_grad():
            ctx = None if context is None else to_tensor(context)
            return to_numpy(self(to_tensor(signals), ctx))

    def group_rewards(
        self,
        signals: npt.ArrayLike,
        mask: npt.ArrayLike | None = None,
        context: npt.ArrayLike | None = None,
    ) -> FloatArray:
        """Summed reward per group (session, slate) ``[N]`` of ``[N, L, 6]`` signals: what
        :func:`rank_correlation` compares with a hidden long-term value."""
        x, m, ctx = self._inputs(signals, mask, context)
        with torch.no_grad():
            return to_numpy(self._group_reward(x, m, ctx))

    def slate_rewards(
        self,
        response: SlateResponse,
        revenue_weight: float = 0.0,
        context: npt.ArrayLike | None = None,
    ) -> FloatArray:
        """Per-slot objective ``[B, S]``: learned reward + ``revenue_weight * revenue``.

        This is the ``reward`` field of a :class:`recsys.policy.batch.Transition`.
        """
        engagement = self.rewards(response.signals(), context)
        out: FloatArray = engagement + np.float32(revenue_weight) * np.asarray(
            response.revenue, np.float32
        )
        return out

    def linear_weights(self) -> FloatArray:
        """Per-signal weights in raw units (``[6]``, context excluded) of a linear model."""
        if self.hidden:
            raise ValueError("linear_weights is only defined for a linear reward model")
        layer = self.net[0]
        assert isinstance(layer, nn.Linear)
        w = layer.weight.detach()[0] / self.std
        return to_numpy(w[:NUM_SIGNALS])

    # ---- training -------------------------------------------------------------------------

    def _set_normalizer(self, x: torch.Tensor, mask: torch.Tensor) -> None:
        rows = x[mask]
        if rows.shape[0] == 0:
            raise ValueError("no valid impressions to fit on")
        self.mean.copy_(rows.mean(dim=0))
        self.std.copy_(rows.std(dim=0, unbiased=False).clamp_min(1e-6))

    def _inputs(
        self,
        signals: npt.ArrayLike,
        mask: npt.ArrayLike | None,
        context: npt.ArrayLike | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Signals as ``[N, L, 6]`` groups, mask ``[N, L]``, context ``[N, L, k]``."""
        x = to_tensor(signals)
        if x.dim() == 2:
            x = x[:, None, :]
        if x.dim() != 3 or x.shape[-1] != NUM_SIGNALS:
            raise ValueError(f"signals must be [N, {NUM_SIGNALS}] or [N, L, {NUM_SIGNALS}]")
        m = (
            torch.ones(x.shape[:2], dtype=torch.bool)
            if mask is None
            else to_tensor(mask, torch.bool).reshape(x.shape[:2])
        )
        ctx = None
        if context is not None:
            ctx = to_tensor(context)
            ctx = ctx.reshape(*x.shape[:2], ctx.shape[-1])
            if ctx.shape[-1] != self.context_dim:
                raise ValueError(f"context must have width {self.context_dim}")
        elif self.context_dim:
            raise ValueError(f"this model needs context of width {self.context_dim}")
        return x, m, ctx

    def _group_reward(
        self, x: torch.Tensor, m: torch.Tensor, ctx: torch.Tensor | None
    ) -> torch.Tensor:
        per_item: torch.Tensor = self(x, ctx)
        return (per_item * m).sum(dim=1)

    def _fit_normalizer(
        self, parts: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]
    ) -> None:
        feats = [x if c is None else torch.cat([x, c], dim=-1) for x, _, c in parts]
        width = feats[0].shape[-1]
        self._set_normalizer(
            torch.cat([f.reshape(-1, width) for f in feats]),
            torch.cat([m.reshape(-1) for _, m, _ in parts]),
        )

    def fit_regression(
        self,
        signals: npt.ArrayLike,
        target: npt.ArrayLike,
        mask: npt.ArrayLike | None = None,
        *,
        context: npt.ArrayLike | None = None,
        epochs: int = 200,
        lr: float = 0.05,
        batch_size: int = 4096,
        weight_decay: float = 0.0,
    ) -> dict[str, float]:
        """Fit ``sum_l r(signals[n, l]) ≈ target[n]`` by least squares (Adam, minibatches).

        ``signals`` is ``[N, 6]`` (one impression per outcome) or ``[N, L, 6]`` with ``mask``
        ``[N, L]`` (a session of up to ``L`` impressions per outcome). Returns the final MSE
        and the R² on the training data.
        """
        x, m, ctx = self._inputs(signals, mask, context)
        y = to_tensor(target).reshape(-1)
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"target has {y.shape[0]} rows, signals {x.shape[0]}")
        self._fit_normalizer([(x, m, ctx)])

        def loss_fn(rows: torch.Tensor) -> torch.Tensor:
            c = None if ctx is None else ctx[rows]
            return torch.mean((self._group_reward(x[rows], m[rows], c) - y[rows]) ** 2)

        self._train(loss_fn, x.shape[0], epochs, lr, batch_size, weight_decay)
        with torch.no_grad():
            mse = float(loss_fn(torch.arange(x.shape[0])))
        var = float(y.var(unbiased=False)) or 1.0
        return {"mse": mse, "r2": 1.0 - mse / var}

    def fit_bradley_terry(
        self,
        signals_a: npt.ArrayLike,
        signals_b: npt.ArrayLike,
        pref: npt.ArrayLike,
        mask_a: npt.ArrayLike | None = None,
        mask_b: npt.ArrayLike | None = None,
        *,
        context_a: npt.ArrayLike | None = None,
        context_b: npt.ArrayLike | None = None,
        epochs: int = 200,
        lr: float = 0.05,
        batch_size: int = 4096,
        weight_decay: float = 0.0,
    ) -> dict[str, float]:
        """Fit ``P(a preferred) = sigmoid(R_a - R_b)`` by logistic loss on session pairs.

        ``pref[n]`` is 1 when session ``a`` had the better outcome, 0 when ``b`` did, and may
        be fractional (ties = 0.5). Returns the final loss and pairwise accuracy.
        """
        xa, ma, ca = self._inputs(signals_a, mask_a, context_a)
        xb, mb, cb = self._inputs(signals_b, mask_b, context_b)
        p = to_tensor(pref).reshape(-1)
        if not xa.shape[0] == xb.shape[0] == p.shape[0]:
            raise ValueError("signals_a, signals_b and pref must have the same number of rows")
        self._fit_normalizer([(xa, ma, ca), (xb, mb, cb)])
        bce = nn.BCEWithLogitsLoss()

        def margin(rows: torch.Tensor) -> torch.Tensor:
            a = self._group_reward(xa[rows], ma[rows], None if ca is None else ca[rows])
            b = self._group_reward(xb[rows], mb[rows], None if cb is None else cb[rows])
            return a - b

        def loss_fn(rows: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = bce(margin(rows), p[rows])
            return out

        self._train(loss_fn, xa.shape[0], epochs, lr, batch_size, weight_decay)
        with torch.no_grad():
            everything = torch.arange(xa.shape[0])
            loss = float(loss_fn(everything))
            decided = p != 0.5
            agree = (margin(everything) > 0) == (p > 0.5)
            acc = float(agree[decided].float().mean()) if bool(decided.any()) else float("nan")
        return {"loss": loss, "pair_accuracy": acc}

    def _train(
        self,
        loss_fn: Callable[[torch.Tensor], torch.Tensor],
        n: int,
        epochs: int,
        lr: float,
        batch_size: int,
        weight_decay: float,
    ) -> None:
        if epochs < 1 or batch_size < 1 or n < 1:
            raise ValueError("epochs, batch_size and the number of rows must all be >= 1")
        opt = torch.optim.Adam(self.net.parameters(), lr=lr, weight_decay=weight_decay)
        gen = torch.Generator().manual_seed(self.seed)
        self.train()
        for _ in range(epochs):
            perm = torch.randperm(n, generator=gen)
            for start in range(0, n, batch_size):
                opt.zero_grad()
                loss = loss_fn(perm[start : start + batch_size])
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
        self.eval()


# ---- evaluation and data shaping ----------------------------------------------------------


def _average_ranks(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Ranks ``0..n-1`` with ties sharing their mean rank (what Spearman needs)."""
    order = np.argsort(x, kind="stable")
    _, inverse, counts = np.unique(x[order], return_inverse=True, return_counts=True)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    mean_rank = starts + (counts - 1) / 2.0
    ranks = np.empty(x.shape[0], dtype=np.float64)
    ranks[order] = mean_rank[inverse]
    return ranks


def rank_correlation(pred: npt.ArrayLike, truth: npt.ArrayLike) -> float:
    """Spearman rank correlation (Pearson correlation of tie-averaged ranks), in ``[-1, 1]``.

    How well a learned reward *orders* sessions by their hidden long-term value: a reward is
    only used through the policy it induces, so its scale does not matter. NaN when either
    side is constant.
    """
    a = np.asarray(pred, dtype=np.float64).reshape(-1)
    b = np.asarray(truth, dtype=np.float64).reshape(-1)
    if a.shape != b.shape or a.size < 2:
        raise ValueError(f"pred and truth must have the same length >= 2, got {a.size}, {b.size}")
    ra, rb = _average_ranks(a), _average_ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denom = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


class SessionSignals(NamedTuple):
    """Impressions grouped by session: ``signals`` ``[N, L, 6]``, ``mask`` ``[N, L]``,
    ``outcome`` ``[N]`` (the session's long-term value) and the ``session_ids`` ``[N]``."""

    signals: FloatArray
    mask: BoolArray
    outcome: FloatArray
    session_ids: IntArray


def group_sessions(
    session_ids: npt.ArrayLike, signals: npt.ArrayLike, outcome: npt.ArrayLike
) -> SessionSignals:
    """Group per-impression rows (e.g. a logged-feedback file) into padded sessions.

    ``session_ids`` ``[n]``, ``signals`` ``[n, 6]`` in :data:`recsys.policy.batch.SIGNAL_NAMES`
    order and ``outcome`` ``[n]`` (constant within a session, e.g. ``hidden_ltv``; the first
    row's value is kept). Row order within a session is preserved.
    """
    sid = np.asarray(session_ids, dtype=np.int64).reshape(-1)
    sig = np.asarray(signals, dtype=np.float32)
    out = np.asarray(outcome, dtype=np.float32).reshape(-1)
    if sig.shape != (sid.shape[0], NUM_SIGNALS) or out.shape != sid.shape:
        raise ValueError("session_ids [n], signals [n, 6] and outcome [n] must agree")
    order = np.argsort(sid, kind="stable")
    uniq, first, counts = np.unique(sid[order], return_index=True, return_counts=True)
    width = int(counts.max()) if counts.size else 0
    group = np.repeat(np.arange(uniq.shape[0]), counts)
    slot = np.arange(sid.shape[0]) - np.repeat(first, counts)
    padded = np.zeros((uniq.shape[0], width, NUM_SIGNALS), dtype=np.float32)
    mask = np.zeros((uniq.shape[0], width), dtype=np.bool_)
    padded[group, slot] = sig[order]
    mask[group, slot] = True
    return SessionSignals(padded, mask, out[order][first], uniq.astype(np.int64))


def preference_pairs(
    outcome: npt.ArrayLike, num_pairs: int, rng: np.random.Generator, min_gap: float = 0.0
) -> tuple[IntArray, IntArray, FloatArray]:
    """Random session pairs ``(a, b)`` labelled ``pref = 1[outcome_a > outcome_b]``.

    Pairs whose outcomes differ by ``min_gap`` or less are dropped (a comparison nobody would
    make confidently), so fewer than ``num_pairs`` may come back.
    """
    y = np.asarray(outcome, dtype=np.float64).reshape(-1)
    a = rng.integers(0, y.shape[0], size=num_pairs)
    b = rng.integers(0, y.shape[0], size=num_pairs)
    keep = np.abs(y[a] - y[b]) > min_gap
    a, b = a[keep], b[keep]
    return a.astype(np.int64), b.astype(np.int64), (y[a] > y[b]).astype(np.float32)
