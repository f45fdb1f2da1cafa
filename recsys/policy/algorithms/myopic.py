"""The myopic baseline: rank by predicted immediate affinity, explore with Plackett-Luce.

It ignores long-term effects (fatigue, interest drift) on purpose: it is the baseline every RL
slate policy must beat, and the first policy the service can run before any RL is trained.
Sampling rather than taking the top-k keeps every candidate's propensity positive, so the
impressions it logs are usable for off-policy evaluation of later policies.
"""

from __future__ import annotations

import numpy as np

from recsys.config import PolicySettings
from recsys.policy.exploration import plackett_luce_sample, plackett_luce_sample_batch
from recsys.types import CandidateBatch, Candidates, FloatArray, InvalidRequestError, Slate


class MyopicPolicy:
    """Scores candidates by their retrieval score and samples a slate from ``softmax(s / T)``.

    The retrieval score is the candidate generator's estimate of immediate affinity; a small
    ``temperature`` approaches greedy top-k, a large one approaches uniform exploration.
    Implements :class:`recsys.protocols.SlatePolicy`.
    """

    name: str = "myopic"

    def __init__(self, temperature: float, version: str = "myopic-0") -> None:
        if not (np.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be finite and > 0, got {temperature}")
        self.temperature = float(temperature)
        self.version = version

    @classmethod
    def from_settings(cls, settings: PolicySettings, version: str = "myopic-0") -> MyopicPolicy:
        """Build from the ``policy`` slice of the settings."""
        return cls(temperature=settings.temperature, version=version)

    def select(
        self,
        user_features: FloatArray,
        candidates: Candidates,
        slate_size: int,
        rng: np.random.Generator,
    ) -> Slate:
        """Choose ``slate_size`` distinct candidates with exact Plackett-Luce propensities.

        Raises :class:`InvalidRequestError` (field ``slate_size``) when the slate cannot be
        filled from the candidates.
        """
        if isinstance(slate_size, bool) or not isinstance(slate_size, int | np.integer):
            raise InvalidRequestError("slate_size", f"must be an integer, got {slate_size!r}")
        if not 1 <= slate_size <= len(candidates):
            raise InvalidRequestError(
                "slate_size",
                f"must be between 1 and the number of candidates ({len(candidates)}), "
                f"got {slate_size}",
            )
        idx, propensities = plackett_luce_sample(
            candidates.scores, int(slate_size), self.temperature, rng
        )
        return Slate(
            item_ids=candidates.item_ids[idx].astype(np.int64, copy=False),
            positions=np.arange(idx.shape[0], dtype=np.int64),
            scores=candidates.scores[idx].astype(np.float32, copy=False),
            propensities=propensities,
            policy=self.name,
            version=self.version,
        )

    def select_batch(
        self,
        user_features: FloatArray,
        candidates: CandidateBatch,
        slate_size: int,
        rng: np.random.Generator,
    ) -> list[Slate]:
        """One slate per row of ``candidates`` (padding never chosen), sampled for all rows
        at once; :class:`InvalidRequestError` when some row has fewer valid candidates than
        ``slate_size``."""
        mask = np.asarray(candidates.mask, dtype=np.bool_)
        short = int(mask.sum(axis=1).min()) if mask.size else 0
        if not 1 <= slate_size <= short:
            raise InvalidRequestError(
                "slate_size",
                f"must be between 1 and the number of candidates ({short}), got {slate_size}",
            )
        scores = np.asarray(candidates.scores, dtype=np.float64)
        idx, props, _ = plackett_luce_sample_batch(
            scores, int(slate_size), self.temperature, rng, mask=mask
        )
        ids = np.take_along_axis(np.asarray(candidates.item_ids, np.int64), idx, axis=1)
        chosen = np.take_along_axis(scores, idx, axis=1).astype(np.float32)
        return Slate.rows(ids, chosen, props, self.name, self.version)
