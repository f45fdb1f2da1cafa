"""Where a request's candidates come from inside the simulator.

In production the FAISS retriever narrows the catalog; the simulator must not depend on it
(``simulator`` and ``candidates`` are sibling packages), so it samples candidates itself and
accepts any :class:`CandidateSampler` a caller injects (for example one wrapping a trained
retriever).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from recsys.types import IntArray


@runtime_checkable
class CandidateSampler(Protocol):
    """Produces ``[B, C]`` distinct item ids per row for the users ``user_idx`` ``[B]``."""

    def sample(self, user_idx: IntArray, num_candidates: int, rng: np.random.Generator) -> IntArray:
        """Candidates for each user; rows hold ``num_candidates`` distinct ids."""
        ...


class UniformCandidateSampler:
    """Each row is a uniformly random ordered subset of the catalog, in O(B * C) time.

    One random permutation of the catalog per call (O(num_items), not O(B * num_items)), then
    each row is a window of ``C`` consecutive positions at a random offset (wrapping around).
    Any fixed window of a uniform permutation is a uniform ordered sample without replacement,
    so each row is exactly uniform; rows of the same call overlap more than independent draws
    would, which no per-user statistic can see.
    """

    def __init__(self, num_items: int) -> None:
        if num_items < 1:
            raise ValueError(f"num_items must be >= 1, got {num_items}")
        self.num_items = int(num_items)

    def __repr__(self) -> str:
        return f"UniformCandidateSampler(num_items={self.num_items})"

    def sample(self, user_idx: IntArray, num_candidates: int, rng: np.random.Generator) -> IntArray:
        """``[len(user_idx), num_candidates]`` distinct ids per row (users do not matter)."""
        if not 1 <= num_candidates <= self.num_items:
            raise ValueError(
                f"num_candidates must be in [1, num_items={self.num_items}], got {num_candidates}"
            )
        perm = rng.permutation(self.num_items)
        ring = np.concatenate([perm, perm[: num_candidates - 1]])
        windows = sliding_window_view(ring, num_candidates)  # [num_items, C] view, no copy
        offsets = rng.integers(0, self.num_items, size=user_idx.shape[0])
        out: IntArray = windows[offsets]
        return out
