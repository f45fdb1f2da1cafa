"""Slate sampling with exact per-slot propensities: Plackett-Luce, epsilon-greedy, ad load.

A stochastic policy needs two things from its exploration step: a slate drawn from
``softmax(scores / T)`` without replacement, and the exact probability of every slot given the
slots above it, which off-policy evaluation divides by. The Gumbel-top-k trick gives the first
in one vectorized pass (perturb, partial sort); the second is computed in log space with
per-slot normalizers built from non-negative sums only, so tiny temperatures (near-greedy)
give propensities near 1 instead of ``0 / 0``.

The ``*_batch`` functions do the same for ``[B, C]`` score matrices, with a candidate mask and
an ad load per slate (a cap ``max_ads`` and a floor ``min_ads``), for Plackett-Luce (Boltzmann)
and epsilon-greedy exploration, and
evaluate the exact per-slot propensities of given slates under either (the target-policy side
of off-policy evaluation). The single-row functions are the serving baseline's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import numpy.typing as npt

from recsys.types import FloatArray, IntArray

# Scaled logits below this are clamped, so that (score - max) / T never becomes -inf and no
# inf - inf = NaN can arise; such items have probability ~exp(-1e300), i.e. exactly 0 anyway.
_LOGIT_FLOOR = -1e300
_F32_TINY = np.float32(np.finfo(np.float32).tiny)

Float64Array = npt.NDArray[np.float64]


def _scaled_logits(scores: npt.ArrayLike, temperature: float) -> Float64Array:
    """``(scores - max(scores)) / T`` in float64, validated and clamped below."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f"scores must be a non-empty 1-D array, got shape {s.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must all be finite")
    if not (np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be finite and > 0, got {temperature}")
    with np.errstate(over="ignore"):
        z: Float64Array = (s - s.max()) / temperature
    clamped: Float64Array = np.maximum(z, _LOGIT_FLOOR)
    return clamped


def _as_order(indices: npt.ArrayLike, n: int) -> IntArray:
    """Validate an ordered slate of candidate indices and return it as int64."""
    raw = np.asarray(indices)
    if raw.size and raw.dtype.kind not in "iu":
        raise ValueError(f"indices must be integers, got dtype {raw.dtype}")
    order = raw.astype(np.int64)
    if order.ndim != 1 or not 1 <= order.shape[0] <= n:
        raise ValueError(f"indices must be 1-D with 1..{n} entries, got shape {order.shape}")
    if order.min() < 0 or order.max() >= n:
        raise ValueError(f"indices must lie in [0, {n}), got [{order.min()}, {order.max()}]")
    if np.unique(order).shape[0] != order.shape[0]:
        raise ValueError("indices must be distinct")
    return order


def _conditional_log_probs(z: Float64Array, order: IntArray) -> Float64Array:
    """``log P(order[i] | order[:i])`` under Plackett-Luce with logits ``z``.

    The normalizer of slot ``i`` is the log-sum-exp over the candidates still available: the
    never-chosen ones plus ``order[i:]``. It is accumulated with ``logaddexp`` from the back
    instead of subtracting chosen mass from a total, which would cancel catastrophically (and
    give 0/0) once the chosen items hold nearly all the mass.
    """
    available = np.ones(z.shape[0], dtype=bool)
    available[order] = False
    rest = z[available]
    if rest.size:
        peak = rest.max()
        log_rest = peak + np.log(np.exp(rest - peak).sum())
    else:
        log_rest = -np.inf
    chosen = z[order]
    suffix = np.logaddexp.accumulate(chosen[::-1])[::-1]
    log_norm = np.logaddexp(suffix, log_rest)
    # A log-probability is <= 0; rounding can push it a hair above.
    log_probs: Float64Array = np.minimum(chosen - log_norm, 0.0)
    return log_probs


def _to_propensities(log_probs: Float64Array) -> FloatArray:
    # Floored at the smallest normal float32 so an importance weight never divides by zero;
    # only slots with probability below ~1e-38 are affected.
    return np.maximum(np.exp(log_probs).astype(np.float32), _F32_TINY)


def plackett_luce_sample(
    scores: FloatArray,
    slate_size: int,
    temperature: float,
    rng: np.random.Generator,
) -> tuple[IntArray, FloatArray]:
    """Sample an ordered slate of distinct indices from ``softmax(scores / temperature)``.

    Returns ``(indices [slate_size] int64, propensities [slate_size] float32)`` where
    ``propensities[i]`` is the exact probability that slot ``i`` received ``indices[i]`` given
    ``indices[:i]``: the softmax restricted to the candidates not yet chosen. Their product is
    the probability of the whole ordered slate.
    """
    z = _scaled_logits(scores, temperature)
    n = z.shape[0]
    if not 1 <= slate_size <= n:
        raise ValueError(f"slate_size must be in [1, {n}], got {slate_size}")
    # Gumbel-top-k: the k largest of logits + Gumbel noise, in order, are a PL sample.
    keys = z + rng.gumbel(size=n)
    top = np.argpartition(-keys, slate_size - 1)[:slate_size] if slate_size < n else np.arange(n)
    order = top[np.argsort(-keys[top], kind="stable")].astype(np.int64)
    return order, _to_propensities(_conditional_log_probs(z, order))


def plackett_luce_propensities(
    scores: FloatArray, indices: IntArray, temperature: float
) -> FloatArray:
    """Exact per-slot propensities of a given ordered slate under ``softmax(scores / T)``.

    This is what a *target* policy assigns to a logged slate, needed for off-policy estimates.
    """
    z = _scaled_logits(scores, temperature)
    order = _as_order(indices, z.shape[0])
    return _to_propensities(_conditional_log_probs(z, order))


def slate_log_probability(scores: FloatArray, indices: IntArray, temperature: float) -> float:
    """Log-probability of the whole ordered slate ``indices`` (sum of per-slot log-probs).

    Computed in float64 without the propensity floor, so it stays exact for very unlikely
    slates where the product of float32 propensities would underflow.
    """
    z = _scaled_logits(scores, temperature)
    order = _as_order(indices, z.shape[0])
    return float(_conditional_log_probs(z, order).sum())


# --------------------------------------------------------------------------------------------
# Batched slate construction: [B, C] scores, candidate masks and an ad load per slate.
#
# Every sampler walks the S slots in order (a loop over slots, vectorized over users and
# candidates) and records, for each slot, the exact conditional probability of what it put
# there given the slots above. The candidates *available* at a slot are the valid ones not yet
# chosen, minus every ad once the slate already holds ``max_ads`` ads (the cap), minus every
# organic item once the remaining slots are all needed for ads (the floor): with
# ``need = min(min_ads, valid ads in the row) - ads so far``, slot ``t`` of ``S`` takes only ads
# when ``need >= S - t``. Because availability depends only on which items were chosen (never on
# the random draws themselves), the masked samplers are still exact: each slot is a draw from
# the policy's distribution restricted to the available set, and that restricted distribution
# is what the propensity reports.
#
# The floor never makes a row unfillable: it only ever forces ads that exist (the floor is
# clipped to the row's valid ads) and that the cap allows (``min_ads <= max_ads``). Counted
# differently, it caps organic items at ``S - floor``, so the available sets only shrink from
# slot to slot, as under the cap alone; the Gumbel-top-k sampler relies on that.
# --------------------------------------------------------------------------------------------

BoolArray = npt.NDArray[np.bool_]


def check_ad_load(max_ads: int | None, min_ads: int) -> None:
    """Validate an ad load: ``0 <= min_ads <= max_ads`` (``max_ads=None``: no cap)."""
    if max_ads is not None and max_ads < 0:
        raise ValueError(f"max_ads must be >= 0 or None, got {max_ads}")
    if min_ads < 0:
        raise ValueError(f"min_ads must be >= 0, got {min_ads}")
    if max_ads is not None and min_ads > max_ads:
        raise ValueError(f"min_ads must be <= max_ads, got min_ads={min_ads} > max_ads={max_ads}")


def _ads_floor(valid: BoolArray, ads: BoolArray, min_ads: int) -> IntArray | None:
    """Per-row floor ``min(min_ads, valid ads)`` ``[B]``; None without a floor (fast path)."""
    if min_ads == 0:
        return None
    floor: IntArray = np.minimum((valid & ads).sum(axis=1), min_ads).astype(np.int64)
    return floor


def _batch_scores(
    scores: npt.ArrayLike,
    slate_size: int,
    mask: BoolArray | None,
    is_ad: BoolArray | None,
    max_ads: int | None,
    min_ads: int = 0,
) -> tuple[Float64Array, BoolArray, BoolArray]:
    """Validate a ``[B, C]`` problem; return float64 scores (0 where invalid), valid, ads."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] == 0:
        raise ValueError(f"scores must be [B, C] with C >= 1, got shape {s.shape}")
    valid = np.ones(s.shape, dtype=np.bool_) if mask is None else np.asarray(mask, np.bool_)
    ads = np.zeros(s.shape, dtype=np.bool_) if is_ad is None else np.asarray(is_ad, np.bool_)
    if valid.shape != s.shape or ads.shape != s.shape:
        raise ValueError(f"mask and is_ad must have the shape of scores {s.shape}")
    if not np.all(np.isfinite(s[valid])):
        raise ValueError("scores must all be finite on valid candidates")
    check_ad_load(max_ads, min_ads)
    if slate_size < 1:
        raise ValueError(f"slate_size must be >= 1, got {slate_size}")
    # Organic items plus the ads the cap allows; the floor only forces ads from this count
    # (see the section comment), so it never lowers it.
    fillable = valid.sum(axis=1)
    if max_ads is not None:
        fillable = (valid & ~ads).sum(axis=1) + np.minimum((valid & ads).sum(axis=1), max_ads)
    if s.shape[0] and int(fillable.min()) < slate_size:
        row = int(np.argmin(fillable))
        raise ValueError(
            f"slate_size {slate_size} cannot be filled: row {row} has only {int(fillable[row])} "
            f"usable candidates (valid, at most max_ads={max_ads} of them ads)"
        )
    return np.where(valid, s, 0.0), valid, ads


def _scaled_logits_batch(s: Float64Array, valid: BoolArray, temperature: float) -> Float64Array:
    """Row-wise ``(s - max over valid) / T``, clamped below like the single-row version."""
    if not (np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be finite and > 0, got {temperature}")
    peak = np.max(np.where(valid, s, -np.inf), axis=1, keepdims=True)
    with np.errstate(over="ignore", invalid="ignore"):
        z = (s - peak) / temperature
    out: Float64Array = np.where(valid, np.maximum(z, _LOGIT_FLOOR), _LOGIT_FLOOR)
    return out


def available_at_slot(
    valid: BoolArray,
    taken: BoolArray,
    ads: BoolArray | None,
    ads_used: IntArray,
    max_ads: int | None,
    floor: IntArray | None = None,
    slots_left: int = 1,
) -> BoolArray:
    """Candidates allowed at a slot with ``slots_left`` slots to fill (this one included);
    ``ads`` None: no ad flags, so no ad load applies."""
    avail = valid & ~taken
    if ads is not None and max_ads is not None:
        avail &= ~(ads & (ads_used >= max_ads)[:, None])
    if ads is not None and floor is not None:
        avail &= ~(~ads & (floor - ads_used >= slots_left)[:, None])
    return avail


def _masked_logsumexp(z: Float64Array, avail: BoolArray) -> Float64Array:
    """``log sum_{avail} exp(z)`` per row; ``-inf`` for rows with nothing available."""
    peak = np.max(np.where(avail, z, -np.inf), axis=1, keepdims=True)
    safe_peak = np.where(np.isfinite(peak), peak, 0.0)
    total = np.exp(np.where(avail, z - safe_peak, -np.inf)).sum(axis=1)
    with np.errstate(divide="ignore"):
        out: Float64Array = safe_peak[:, 0] + np.log(total)
    return out


def _slot_log_prob_pl(z: Float64Array, avail: BoolArray, pick: IntArray) -> Float64Array:
    rows = np.arange(z.shape[0])
    lp = np.minimum(z[rows, pick] - _masked_logsumexp(z, avail), 0.0)
    out: Float64Array = np.where(avail[rows, pick], lp, -np.inf)
    return out


def _slot_log_prob_eps(
    s: Float64Array,
    avail: BoolArray,
    pick: IntArray,
    epsilon: float,
    greedy: IntArray | None = None,
) -> Float64Array:
    """Epsilon-greedy conditional at one slot (``greedy``: the slot's greedy pick, when the
    caller already has it)."""
    rows = np.arange(s.shape[0])
    if greedy is None:
        greedy = np.argmax(np.where(avail, s, -np.inf), axis=1)
    n_avail = np.maximum(avail.sum(axis=1), 1)
    p = (1.0 - epsilon) * (pick == greedy) + epsilon / n_avail
    with np.errstate(divide="ignore"):
        out: Float64Array = np.where(avail[rows, pick], np.log(np.minimum(p, 1.0)), -np.inf)
    return out


def _finish(slates: IntArray, log_probs: Float64Array) -> tuple[IntArray, FloatArray, FloatArray]:
    propensities = np.maximum(np.exp(log_probs).astype(np.float32), _F32_TINY)
    return slates, propensities, log_probs.sum(axis=1).astype(np.float32)


def plackett_luce_sample_batch(
    scores: npt.ArrayLike,
    slate_size: int,
    temperature: float,
    rng: np.random.Generator,
    *,
    mask: BoolArray | None = None,
    is_ad: BoolArray | None = None,
    max_ads: int | None = None,
    min_ads: int = 0,
) -> tuple[IntArray, FloatArray, FloatArray]:
    """Sample ``B`` ordered slates from ``softmax(scores / T)`` without replacement.

    Gumbel-top-k, batched: perturb every logit once, then fill each slot with the largest
    perturbed logit among the available candidates. With a common set of perturbations the
    argmax over *any* available subset is distributed as the softmax over that subset, so this
    is an exact Plackett-Luce sample even when ads are masked out mid-slate.

    ``min_ads`` (clipped per row to its valid ads) makes every slate hold at least that many
    ads: the last slots take only ads when the floor needs them all. The available sets still
    only shrink from slot to slot, which is what the common perturbations need.

    Returns ``(slates [B, S] int64, propensities [B, S] float32, log_prob [B] float32)``;
    ``propensities[b, s]`` is the softmax of slot ``s`` over the candidates available there.
    """
    s, valid, ads = _batch_scores(scores, slate_size, mask, is_ad, max_ads, min_ads)
    floor = _ads_floor(valid, ads, min_ads)
    z = _scaled_logits_batch(s, valid, temperature)
    b, c = z.shape
    keys = z + rng.gumbel(size=(b, c))
    rows = np.arange(b)
    taken = np.zeros((b, c), dtype=np.bool_)
    ads_used = np.zeros(b, dtype=np.int64)
    slates = np.empty((b, slate_size), dtype=np.int64)
    log_probs = np.empty((b, slate_size), dtype=np.float64)
    for t in range(slate_size):
        avail = available_at_slot(valid, taken, ads, ads_used, max_ads, floor, slate_size - t)
        pick = np.argmax(np.where(avail, keys, -np.inf), axis=1)
        slates[:, t] = pick
        log_probs[:, t] = _slot_log_prob_pl(z, avail, pick)
        taken[rows, pick] = True
        ads_used += ads[rows, pick]
    return _finish(slates, log_probs)


def _candidate_matrix(x: npt.ArrayLike, valid: BoolArray, name: str, shape: str) -> IntArray:
    """``x`` validated as a ``[B, *]`` int64 matrix of candidate indices of ``valid``'s rows."""
    out = np.asarray(x)
    if out.ndim != 2 or out.shape[0] != valid.shape[0]:
        raise ValueError(f"{name} must be {shape} with B={valid.shape[0]}, got {out.shape}")
    if out.size and out.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integers, got dtype {out.dtype}")
    order: IntArray = out.astype(np.int64)
    if order.size and (order.min() < 0 or order.max() >= valid.shape[1]):
        raise ValueError(f"{name} must index candidates in [0, {valid.shape[1]})")
    return order


def _walk_log_probs(
    slates: npt.ArrayLike,
    valid: BoolArray,
    ads: BoolArray,
    max_ads: int | None,
    min_ads: int,
    slot_log_prob: Callable[[BoolArray, IntArray], Float64Array],
) -> Float64Array:
    """Per-slot log-probabilities of given slates (``-inf`` where a slot was impossible)."""
    check_ad_load(max_ads, min_ads)
    order = _candidate_matrix(slates, valid, "slates", "[B, S]")
    b, slate_size = order.shape
    rows = np.arange(b)
    floor = _ads_floor(valid, ads, min_ads)
    taken = np.zeros(valid.shape, dtype=np.bool_)
    ads_used = np.zeros(b, dtype=np.int64)
    out = np.empty(order.shape, dtype=np.float64)
    for t in range(slate_size):
        avail = available_at_slot(valid, taken, ads, ads_used, max_ads, floor, slate_size - t)
        out[:, t] = slot_log_prob(avail, order[:, t])
        taken[rows, order[:, t]] = True
        ads_used += ads[rows, order[:, t]]
    return out


def plackett_luce_log_propensities_batch(
    scores: npt.ArrayLike,
    slates: IntArray,
    temperature: float,
    *,
    mask: BoolArray | None = None,
    is_ad: BoolArray | None = None,
    max_ads: int | None = None,
    min_ads: int = 0,
) -> Float64Array:
    """Exact per-slot log-propensities ``[B, S]`` (float64) of given slates under masked PL.

    What a *target* policy assigns to logged slates (off-policy evaluation); ``-inf`` for slots
    the policy could never fill that way (an invalid or repeated item, an ad past the cap, an
    organic item where the ads floor needs every remaining slot).
    """
    s, valid, ads = _batch_scores(scores, 1, mask, is_ad, None)
    z = _scaled_logits_batch(s, valid, temperature)
    return _walk_log_probs(
        slates, valid, ads, max_ads, min_ads, lambda a, p: _slot_log_prob_pl(z, a, p)
    )


def epsilon_greedy_sample_batch(
    scores: npt.ArrayLike,
    slate_size: int,
    epsilon: float,
    rng: np.random.Generator,
    *,
    mask: BoolArray | None = None,
    is_ad: BoolArray | None = None,
    max_ads: int | None = None,
    min_ads: int = 0,
) -> tuple[IntArray, FloatArray, FloatArray]:
    """Epsilon-greedy slates: each slot is the best available item w.p. ``1 - epsilon``, else
    a uniformly random available item (the greedy one included).

    The conditional propensity of slot ``s`` is ``(1 - eps) * [item is greedy] + eps / n_s``,
    ``n_s`` = candidates available at that slot, so every available item keeps a positive
    probability. Ties in the scores go to the lowest candidate index (deterministic, so the
    propensities stay exact). The ad load (``max_ads``, ``min_ads``) restricts the available
    items as in :func:`plackett_luce_sample_batch`. Returns ``(slates, propensities, log_prob)``
    like it.
    """
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon must lie in [0, 1], got {epsilon}")
    s, valid, ads = _batch_scores(scores, slate_size, mask, is_ad, max_ads, min_ads)
    floor = _ads_floor(valid, ads, min_ads)
    b, c = s.shape
    rows = np.arange(b)
    taken = np.zeros((b, c), dtype=np.bool_)
    ads_used = np.zeros(b, dtype=np.int64)
    slates = np.empty((b, slate_size), dtype=np.int64)
    log_probs = np.empty((b, slate_size), dtype=np.float64)
    for t in range(slate_size):
        avail = available_at_slot(valid, taken, ads, ads_used, max_ads, floor, slate_size - t)
        greedy = np.argmax(np.where(avail, s, -np.inf), axis=1)
        if epsilon > 0.0:
            uniform = np.argmax(np.where(avail, rng.random((b, c)), -1.0), axis=1)
            pick = np.where(rng.random(b) < epsilon, uniform, greedy)
        else:
            pick = greedy
        slates[:, t] = pick
        log_probs[:, t] = _slot_log_prob_eps(s, avail, pick, epsilon, greedy)
        taken[rows, pick] = True
        ads_used += ads[rows, pick]
    return _finish(slates, log_probs)


def epsilon_greedy_log_propensities_batch(
    scores: npt.ArrayLike,
    slates: IntArray,
    epsilon: float,
    *,
    mask: BoolArray | None = None,
    is_ad: BoolArray | None = None,
    max_ads: int | None = None,
    min_ads: int = 0,
) -> Float64Array:
    """Exact per-slot log-propensities ``[B, S]`` of given slates under epsilon-greedy."""
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon must lie in [0, 1], got {epsilon}")
    s, valid, ads = _batch_scores(scores, 1, mask, is_ad, None)
    return _walk_log_probs(
        slates, valid, ads, max_ads, min_ads, lambda a, p: _slot_log_prob_eps(s, a, p, epsilon)
    )


def greedy_slate_batch(
    scores: npt.ArrayLike,
    slate_size: int,
    *,
    mask: BoolArray | None = None,
    is_ad: BoolArray | None = None,
    max_ads: int | None = None,
    min_ads: int = 0,
) -> IntArray:
    """Deterministic top-``S`` by score under the mask and the ad load (ties: lowest index).

    Taking the best available item slot by slot is optimal for any additive score: "``S``
    items, at most ``max_ads`` ads and at most ``S - floor`` organic ones" (the floor's per-slot
    rule is exactly that organic cap) is a laminar matroid.
    """
    slates, _, _ = epsilon_greedy_sample_batch(
        scores,
        slate_size,
        0.0,
        np.random.default_rng(0),
        mask=mask,
        is_ad=is_ad,
        max_ads=max_ads,
        min_ads=min_ads,
    )
    return slates


def _available_after(
    valid: BoolArray,
    ads: BoolArray,
    prefixes: npt.ArrayLike,
    slate_size: int,
    max_ads: int | None,
    min_ads: int,
) -> BoolArray:
    """What slot ``k`` may hold after the prefixes ``[B, k]`` of a slate of ``slate_size``:
    exactly the availability the walk of :func:`_walk_log_probs` reaches at that slot."""
    check_ad_load(max_ads, min_ads)
    prefix = _candidate_matrix(prefixes, valid, "prefixes", "[B, k]")
    if not 0 <= prefix.shape[1] < slate_size:
        raise ValueError(f"a prefix of {prefix.shape[1]} slots leaves no slot of {slate_size}")
    rows = np.arange(valid.shape[0])[:, None]
    taken = np.zeros(valid.shape, dtype=np.bool_)
    taken[rows, prefix] = True
    ads_used = ads[rows, prefix].sum(axis=1).astype(np.int64)
    floor = _ads_floor(valid, ads, min_ads)
    return available_at_slot(
        valid, taken, ads, ads_used, max_ads, floor, slate_size - prefix.shape[1]
    )


def slot_log_probs_after_prefix(
    scores: npt.ArrayLike,
    prefixes: npt.ArrayLike,
    picks: npt.ArrayLike,
    slate_size: int,
    *,
    kind: Literal["epsilon", "boltzmann"],
    epsilon: float = 0.0,
    temperature: float = 1.0,
    mask: BoolArray | None = None,
    is_ad: BoolArray | None = None,
    max_ads: int | None = None,
    min_ads: int = 0,
) -> Float64Array:
    """Exact ``log P(picks | prefixes)`` ``[B]`` at slot ``k`` of a ``slate_size`` slate,
    after the given first ``k`` slots ``[B, k]``, under epsilon-greedy or Plackett-Luce with
    the ad load (``-inf`` where the pick is not available there).

    Averaged over prefixes sampled from the policy, this is the Rao-Blackwellised Monte Carlo
    estimate of the marginal ``P(item @ k)`` that the item-position estimators divide by. It
    stays positive for every item the policy can put there, where a frequency of sampled
    slates is 0 for most rarely explored items: a logger's marginal then has to be floored,
    and the weight of a logged exploratory item is off by orders of magnitude.
    """
    if kind == "epsilon" and not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon must lie in [0, 1], got {epsilon}")
    if kind not in ("epsilon", "boltzmann"):
        raise ValueError(f"kind must be epsilon or boltzmann, got {kind!r}")
    s, valid, ads = _batch_scores(scores, 1, mask, is_ad, None)
    avail = _available_after(valid, ads, prefixes, slate_size, max_ads, min_ads)
    pick = np.asarray(picks, dtype=np.int64)
    if pick.shape != (s.shape[0],):
        raise ValueError(f"picks must be [B] with B={s.shape[0]}, got {pick.shape}")
    if kind == "boltzmann":
        return _slot_log_prob_pl(_scaled_logits_batch(s, valid, temperature), avail, pick)
    return _slot_log_prob_eps(s, avail, pick, epsilon)
