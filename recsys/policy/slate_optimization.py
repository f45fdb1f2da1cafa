"""Choosing the slate that maximises SlateQ's decomposed value, batched over users.

With conditional-logit attractions ``v_i = exp(utility_i) > 0``, a no-click attraction
``v_0 > 0``, item values ``q_i`` and a no-click value ``q_0``, the value of a slate ``A`` is
(Ie et al. 2019, eq. 4, with the null item made explicit)

    Q(A) = (v_0 q_0 + sum_{i in A} v_i q_i) / (v_0 + sum_{i in A} v_i)
         = q_0 + sum_{i in A} v_i (q_i - q_0) / (v_0 + sum_{i in A} v_i),

so every optimiser works on the shifted values ``q'_i = q_i - q_0`` with a zero no-click value.
Slates have exactly ``S`` items (a served slate is always full), at most ``max_ads`` ads and at
least ``m = min(min_ads, valid ads in the row)`` of them (the ad load; a slate shorter than
``m`` is all ads). The slot-by-slot builders enforce the floor as the samplers of
:mod:`recsys.policy.exploration` do: slot ``t`` takes only ads when the ads still needed,
``m - ads so far``, fill every remaining slot (``>= S - t``).

- ``top_k``: the ``S`` items with the largest ``v_i q'_i`` (the paper's cheap heuristic).
- ``greedy``: add, one slot at a time, the item that most increases ``Q`` (the paper's greedy).
- ``exact_lp``: the exact optimum of the linear-fractional program. Ie et al. solve its LP
  relaxation after the Charnes-Cooper transform and note the LP has an integral optimum; we
  solve the same fractional program exactly by Dinkelbach's parametric method: for a guess
  ``lam``, ``max_A sum_{i in A} v_i (q'_i - lam)`` is a max-weight basis of the matroid
  "S items, at most max_ads ads, at least m ads", found greedily (see :func:`_best_basis`);
  ``lam <- Q(A)`` increases strictly until the parametric optimum is 0, which certifies
  ``lam = max_A Q(A)``. Finitely many slates make it terminate, typically in 2-4 iterations,
  with no LP solver dependency.
- ``enumerate``: brute force over all ``C choose S`` subsets (tests and tiny problems).

Every optimiser returns its slate ordered by ``v_i q'_i`` (largest first), so with a position
bias the most valuable contributions get the most attention.
"""

from __future__ import annotations

import itertools
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch

from recsys.policy.exploration import available_at_slot, check_ad_load

SlateOptimizer = Literal["top_k", "greedy", "exact_lp", "enumerate"]
SLATE_OPTIMIZERS: tuple[SlateOptimizer, ...] = ("top_k", "greedy", "exact_lp", "enumerate")
_MAX_ENUMERATED = 200_000


def slate_values(
    attraction: torch.Tensor,
    no_click: torch.Tensor,
    q: torch.Tensor,
    slates: torch.Tensor,
    q_null: torch.Tensor | None = None,
) -> torch.Tensor:
    """``Q(A)`` ``[B]`` of given slates ``[B, S]`` (indices into the candidate axis)."""
    v = torch.gather(attraction, 1, slates)
    qs = torch.gather(q, 1, slates)
    q0 = torch.zeros_like(no_click) if q_null is None else q_null
    return (no_click * q0 + (v * qs).sum(1)) / (no_click + v.sum(1))


class _SlotRule:
    """The slot-by-slot state of a slate being built: taken items and ads used so far.

    The builders below run in numpy: they are a short Python loop over slots of a few
    elementwise operations on ``[B, C]``, where torch's per-operation dispatch cost more
    than the arithmetic on the serving path's batches of 1-16 users (numpy gives the same
    IEEE results: no reduction changes order).
    """

    def __init__(
        self,
        valid: torch.Tensor,
        ads: torch.Tensor | None,
        cap: int | None,
        floor: torch.Tensor | None,
    ) -> None:
        self.valid = valid.numpy()
        self.ads = None if ads is None else ads.numpy()
        self.cap = cap
        self.floor = None if floor is None else floor.numpy().astype(np.int64)
        self.rows = np.arange(self.valid.shape[0])
        self.taken = np.zeros_like(self.valid)
        self.used = np.zeros(self.valid.shape[0], dtype=np.int64)

    def available(self, slots_left: int) -> npt.NDArray[np.bool_]:
        return available_at_slot(
            self.valid, self.taken, self.ads, self.used, self.cap, self.floor, slots_left
        )

    def take(self, pick: npt.NDArray[np.intp]) -> None:
        self.taken[self.rows, pick] = True
        if self.ads is not None:
            self.used += self.ads[self.rows, pick]


def _best_basis(
    weights: torch.Tensor,
    slate_size: int,
    valid: torch.Tensor,
    ads: torch.Tensor | None,
    cap: int | None,
    floor: torch.Tensor | None,
) -> torch.Tensor:
    """Max-weight ``S``-subset with at most ``cap`` and at least ``floor`` ``[B]`` ads: take the
    best available item per slot.

    Exact for any additive weights, negative ones included. The floor's rule ("only ads once
    the ads still needed fill every remaining slot") masks organic items exactly when
    ``organic so far >= S - floor``, so the greedy is the matroid greedy of "at most ``cap``
    ads, at most ``S - floor`` organic, ``S`` in all" (a laminar matroid, whose bases are the
    ``S``-sets with ``min(floor, S) <= ads <= cap``), and the matroid greedy is optimal (the
    floor is per row, already clipped to the row's valid ads). Directly: with
    ``k`` ads the best set is the top-``k`` ads plus the top-``S - k`` organic, a concave
    function of ``k``; the greedy takes the unconstrained best ``k`` when it meets the floor,
    and otherwise ``k = floor`` with the forced tail picking the best ads not yet taken.
    """
    w = weights.numpy()
    rule = _SlotRule(valid, ads, cap, floor)
    out = np.empty((w.shape[0], slate_size), dtype=np.int64)
    for t in range(slate_size):
        pick = np.where(rule.available(slate_size - t), w, -np.inf).argmax(axis=1)
        out[:, t] = pick
        rule.take(pick)
    return torch.from_numpy(out)


def _greedy(
    v: torch.Tensor,
    v0: torch.Tensor,
    qp: torch.Tensor,
    slate_size: int,
    valid: torch.Tensor,
    ads: torch.Tensor | None,
    cap: int | None,
    floor: torch.Tensor | None,
) -> torch.Tensor:
    vn = v.numpy()
    vq = vn * qp.numpy()
    rule = _SlotRule(valid, ads, cap, floor)
    rows = rule.rows
    num = np.zeros(vn.shape[0], dtype=vn.dtype)
    den = v0.numpy().copy()
    out = np.empty((vn.shape[0], slate_size), dtype=np.int64)
    for t in range(slate_size):
        gain = (num[:, None] + vq) / (den[:, None] + vn)
        pick = np.where(rule.available(slate_size - t), gain, -np.inf).argmax(axis=1)
        out[:, t] = pick
        rule.take(pick)
        num = num + vq[rows, pick]
        den = den + vn[rows, pick]
    return torch.from_numpy(out)


def _value(
    v: torch.Tensor, v0: torch.Tensor, qp: torch.Tensor, slates: torch.Tensor
) -> torch.Tensor:
    return slate_values(v, v0, qp, slates)


def _dinkelbach(
    v: torch.Tensor,
    v0: torch.Tensor,
    qp: torch.Tensor,
    slate_size: int,
    valid: torch.Tensor,
    ads: torch.Tensor | None,
    cap: int | None,
    floor: torch.Tensor | None,
    max_iter: int = 100,
) -> torch.Tensor:
    best = _best_basis(v * qp, slate_size, valid, ads, cap, floor)
    lam = _value(v, v0, qp, best)
    for _ in range(max_iter):
        cand = _best_basis(v * (qp - lam[:, None]), slate_size, valid, ads, cap, floor)
        val = _value(v, v0, qp, cand)
        improved = val > lam + 1e-12 * (1.0 + lam.abs())
        if not bool(improved.any()):
            break
        best = torch.where(improved[:, None], cand, best)
        lam = torch.where(improved, val, lam)
    return best


def _enumerate(
    v: torch.Tensor,
    v0: torch.Tensor,
    qp: torch.Tensor,
    slate_size: int,
    valid: torch.Tensor,
    ads: torch.Tensor | None,
    cap: int | None,
    floor: torch.Tensor | None,
) -> torch.Tensor:
    c = v.shape[1]
    combos = list(itertools.combinations(range(c), slate_size))
    if len(combos) > _MAX_ENUMERATED:
        raise ValueError(f"{len(combos)} slates are too many to enumerate; use exact_lp")
    subsets = torch.tensor(combos, dtype=torch.int64)  # [M, S]
    num = (v * qp)[:, subsets].sum(-1)  # [B, M]
    den = v0[:, None] + v[:, subsets].sum(-1)
    ok = valid[:, subsets].all(-1)
    if ads is not None and cap is not None:
        ok &= ads[:, subsets].sum(-1) <= cap
    if ads is not None and floor is not None:
        # A slate shorter than the floor is all ads, as the slot-by-slot builders make it.
        ok &= ads[:, subsets].sum(-1) >= floor.clamp(max=slate_size)[:, None]
    value = torch.where(ok, num / den, torch.tensor(float("-inf"), dtype=v.dtype))
    return subsets[value.argmax(dim=1)]


def optimize_slates(
    attraction: torch.Tensor,
    no_click: torch.Tensor,
    q: torch.Tensor,
    slate_size: int,
    method: SlateOptimizer = "greedy",
    *,
    q_null: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
    is_ad: torch.Tensor | None = None,
    max_ads: int | None = None,
    min_ads: int = 0,
) -> torch.Tensor:
    """Best slates ``[B, S]`` (candidate indices) for ``[B, C]`` attractions and values.

    ``attraction`` ``> 0`` are ``exp(utility)`` on a common scale with ``no_click`` ``[B]``;
    ``valid`` ``[B, C]`` masks padding, ``is_ad`` with ``max_ads`` caps ads per slate and with
    ``min_ads`` sets a floor, clipped per row to its valid ads (``0 <= min_ads <= max_ads``).
    Runs in float64 without gradients. The caller guarantees each row can be filled (see
    :func:`recsys.policy.exploration.greedy_slate_batch`, which checks it; the floor never
    makes a row unfillable).
    """
    check_ad_load(max_ads, min_ads)
    with torch.no_grad():
        v = attraction.detach().double()
        v0 = no_click.detach().double()
        qq = q.detach().double()
        qp = qq - (q_null.detach().double()[:, None] if q_null is not None else 0.0)
        ok = torch.ones_like(v, dtype=torch.bool) if valid is None else valid.bool()
        ads = None if is_ad is None else is_ad.bool()
        if not 1 <= slate_size <= v.shape[1]:
            raise ValueError(f"slate_size must lie in [1, {v.shape[1]}], got {slate_size}")
        floor = None
        if ads is not None and min_ads > 0:
            floor = (ok & ads).sum(dim=1).clamp(max=min_ads)
        rule = (ok, ads, max_ads, floor)
        if method == "top_k":
            slates = _best_basis(v * qp, slate_size, *rule)
        elif method == "greedy":
            slates = _greedy(v, v0, qp, slate_size, *rule)
        elif method == "exact_lp":
            slates = _dinkelbach(v, v0, qp, slate_size, *rule)
        elif method == "enumerate":
            slates = _enumerate(v, v0, qp, slate_size, *rule)
        else:
            raise ValueError(f"unknown slate optimizer {method!r}; use one of {SLATE_OPTIMIZERS}")
        contribution = torch.gather(v * qp, 1, slates)
        order = torch.argsort(contribution, dim=1, descending=True, stable=True)
        return torch.gather(slates, 1, order)
