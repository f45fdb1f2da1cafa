"""Popularity-weighted candidate sampling with exact inclusion probabilities.

Real logs are not uniform: what a user could click depends on what the service exposed, and
exposure follows popularity. :class:`PopularityCandidateSampler` plugs that into
:class:`~recsys.simulator.env.SlateEnv` (``candidate_sampler=...``) so that a simulated log
inherits a catalog's popularity skew instead of having to produce it from click appeal alone.

The sampler draws ``C`` distinct items per row with inclusion probability
``pi_i = min(1, lambda * w_i)`` (``lambda`` such that ``sum(pi) = C``: items that would exceed
1 are always included and the rest share the remaining slots in proportion to their weight).
Successive weighted draws without replacement (Gumbel top-k, ``rng.choice(replace=False)``)
would not do: their inclusion probabilities are a concave function of the weight, so the
head of the catalog is under-exposed and the simulated popularity curve comes out flatter
than the one it was fitted to. Exact proportionality comes from *systematic* sampling: lay
the items on a line with interval lengths ``pi_i`` (total ``C``), draw one uniform offset
``u`` per row and take the items whose intervals hold the points ``u, u + 1, ..., u + C - 1``.
No interval is longer than 1, so no item is hit twice; an interval of length ``pi_i`` holds a
point with probability exactly ``pi_i``. The item order is a fresh random permutation per
call (randomized systematic sampling), so which items tend to co-occur is not fixed.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from recsys.types import IntArray

F64Array = npt.NDArray[np.float64]

# Interval lengths are integers in units of 2**-32: cumulative sums are then exact, so an
# interval never holds two of the points (which are exactly one unit of 2**32 apart), with no
# floating-point edge cases. Weights below ~2e-10 of a slot round to zero.
_RESOLUTION_BITS = 32
_ONE = np.int64(1) << _RESOLUTION_BITS


def inclusion_probabilities(weights: npt.ArrayLike, num_candidates: int) -> F64Array:
    """``pi_i = min(1, lambda w_i)`` with ``sum(pi) = num_candidates`` (capped proportional).

    Items whose proportional share would exceed one slot are included with certainty and the
    remaining slots are shared by the others in proportion to weight; repeated until no share
    exceeds 1 (a loop over capping rounds, at most ``num_candidates`` of them, each vectorized
    over the catalog). Raises :class:`ValueError` when fewer than ``num_candidates`` items have
    positive weight, since ``C`` distinct items cannot then be drawn.
    """
    w = _validated_weights(weights)
    positive = int(np.count_nonzero(w))
    if not 1 <= num_candidates <= positive:
        raise ValueError(
            f"num_candidates must be in [1, {positive}] (items with positive weight), "
            f"got {num_candidates}"
        )
    certain = np.zeros(w.shape[0], dtype=np.bool_)
    pi = np.zeros_like(w)
    while (remaining := num_candidates - int(certain.sum())) > 0:
        free = np.where(certain, 0.0, w)
        pi = free * (remaining / free.sum())  # free.sum() > 0: >= C items have weight
        over = pi >= 1.0
        if not over.any():
            break
        certain |= over
    else:
        pi = np.zeros_like(w)
    pi[certain] = 1.0
    return pi


def _validated_weights(weights: npt.ArrayLike) -> F64Array:
    w = np.array(weights, dtype=np.float64)
    if w.ndim != 1 or w.shape[0] < 1:
        raise ValueError(f"weights must be a non-empty 1-D array, got shape {w.shape}")
    if not np.all(np.isfinite(w)) or w.min() < 0 or w.sum() <= 0:
        raise ValueError("weights must be finite, non-negative and have a positive sum")
    return w


class PopularityCandidateSampler:
    """Each row holds ``C`` distinct items, item ``i`` present with probability ``pi_i`` ∝ weight.

    ``weights`` ``[num_items]`` are any non-negative scores (popularity shares, counts, an
    exposure model); only their proportions matter. A uniformly random ordered slate of ``S``
    of a row's candidates then shows item ``i`` with probability ``S pi_i / C``, so impressions
    follow the weights exactly (up to the cap at 1 for items heavier than one slot).

    Cost per call: one permutation of the catalog (``O(num_items)``) and a binary search per
    candidate (``O(B C log num_items)``); never ``O(B num_items)``. As with
    :class:`~recsys.simulator.candidates.UniformCandidateSampler`, rows of the same call share
    the permutation, so they are dependent; each row on its own is exact.
    """

    def __init__(self, weights: npt.ArrayLike) -> None:
        w = _validated_weights(weights)
        self.weights: F64Array = w / w.sum()
        self.weights.setflags(write=False)
        self._widths: dict[int, IntArray] = {}

    @property
    def num_items(self) -> int:
        """Catalog size the weights cover."""
        return int(self.weights.shape[0])

    def __repr__(self) -> str:
        return f"PopularityCandidateSampler(num_items={self.num_items})"

    def inclusion_probabilities(self, num_candidates: int) -> F64Array:
        """Probability that each item is among a row's ``num_candidates`` candidates."""
        return inclusion_probabilities(self.weights, num_candidates)

    def _interval_widths(self, num_candidates: int) -> IntArray:
        """``pi`` in integer units of ``2**-32`` summing to exactly ``C * 2**32`` (cached).

        Floors, then hands the missing units to the largest remainders (at most one each), so
        no width exceeds one slot and certain items stay exactly one slot wide.
        """
        cached = self._widths.get(num_candidates)
        if cached is not None:
            return cached
        scaled = self.inclusion_probabilities(num_candidates) * float(_ONE)
        widths = np.floor(scaled).astype(np.int64)
        frac = scaled - widths
        missing = int(num_candidates * _ONE - widths.sum())
        missing = max(0, min(missing, int(np.count_nonzero(frac > 0))))
        if missing:
            top = np.argpartition(-frac, missing - 1)[:missing]
            widths[top] += 1
        widths.setflags(write=False)
        self._widths[num_candidates] = widths
        return widths

    def sample(self, user_idx: IntArray, num_candidates: int, rng: np.random.Generator) -> IntArray:
        """``[len(user_idx), num_candidates]`` distinct ids per row (users do not matter)."""
        widths = self._interval_widths(num_candidates)
        perm = rng.permutation(self.num_items)
        ends = np.cumsum(widths[perm])  # exact integers; ends[-1] == C * 2**32
        offsets = rng.integers(0, _ONE, size=(user_idx.shape[0], 1), dtype=np.int64)
        points = offsets + np.arange(num_candidates, dtype=np.int64) * _ONE
        # Item j covers [ends[j-1], ends[j]); the first end strictly above a point owns it
        # (zero-width items are never hit).
        out: IntArray = perm[np.searchsorted(ends, points, side="right")]
        return out
