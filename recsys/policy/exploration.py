"""Plackett-Luce slate sampling with exact per-slot propensities.

A stochastic policy needs two things from its exploration step: a slate drawn from
``softmax(scores / T)`` without replacement, and the exact probability of every slot given the
slots above it, which off-policy evaluation divides by. The Gumbel-top-k trick gives the first
in one vectorized pass (perturb, partial sort); the second is computed in log space with
per-slot normalizers built from non-negative sums only, so tiny temperatures (near-greedy)
give propensities near 1 instead of ``0 / 0``.
"""

from __future__ import annotations

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
