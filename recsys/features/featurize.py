"""Featurisers: a user's state → the policy's user features; candidates → item features.

:class:`UserFeaturizer` reads only the compact state (:mod:`recsys.features.state`), with
operations that round identically on every path (``+ - * /`` in float32, sums in a fixed
order), so the simulator, the updater's state read back from Redis and the server produce the
same features bit for bit. Counts are squashed into ``[0, 1)`` with ``x / (x + c)`` rather than
``log1p``: as informative for a network, and exactly reproducible.

:class:`ItemFeaturizer` gathers each candidate's row of a static per-item table (catalog
columns, response statistics, the two-tower embedding) and appends user-item cross features
``topics_i · u_block`` for chosen ``T``-wide blocks of the user features (e.g. interest,
boredom, exposure, satiation), which a linear scorer could not form by itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from recsys.features.fold import EventFold
from recsys.features.spec import FeatureSpec
from recsys.features.state import StateArray
from recsys.types import FloatArray


def _squash(x: FloatArray, scale: float) -> FloatArray:
    out: FloatArray = x / (x + np.float32(scale))
    return out


def _row_sum(x: FloatArray) -> FloatArray:
    """Sum over the last axis in a fixed order (numpy's pairwise reduction may reorder)."""
    acc = x[:, 0].copy()
    for k in range(1, x.shape[1]):
        acc += x[:, k]
    return acc


class UserFeaturizer:
    """``[B]`` states → ``[B, spec.user_dim]`` float32 user features (names in the spec)."""

    def __init__(self, spec: FeatureSpec) -> None:
        self.spec = spec
        self.names = spec.user_feature_names

    @property
    def dim(self) -> int:
        """Width of the output."""
        return self.spec.user_dim

    def features(self, states: StateArray) -> FloatArray:
        """Features of the states as they are (call :meth:`features_at` at request time)."""
        t = self.spec.num_topics
        b = states.shape[0]
        out = np.empty((b, self.dim), dtype=np.float32)
        slow = states["clicks_slow"].astype(np.float32).reshape(b, t)
        out[:, 0:t] = slow / (_row_sum(slow) + np.float32(1.0))[:, None]
        out[:, t : 2 * t] = _squash(states["clicks_fast"].astype(np.float32).reshape(b, t), 1.0)
        out[:, 2 * t : 3 * t] = _squash(states["impressions"].astype(np.float32).reshape(b, t), 5.0)
        out[:, 3 * t : 4 * t] = _squash(
            states["conversions_topic"].astype(np.float32).reshape(b, t), 0.5
        )
        steps = states["steps"].astype(np.float32)
        clicks = states["clicks"].astype(np.float32)
        per_click = clicks + np.float32(1.0)
        c = 4 * t
        out[:, c] = _squash(states["ad_exposure"].astype(np.float32), 2.0)
        out[:, c + 1] = _squash(states["session_step"].astype(np.float32), 10.0)
        out[:, c + 2] = _squash(states["sessions"].astype(np.float32), 3.0)
        out[:, c + 3] = _squash(steps, 50.0)
        out[:, c + 4] = clicks / (steps + np.float32(1.0))
        out[:, c + 5] = states["likes"].astype(np.float32) / per_click
        out[:, c + 6] = states["skips"].astype(np.float32) / per_click
        out[:, c + 7] = states["conversions"].astype(np.float32) / per_click
        minutes = states["dwell_s"].astype(np.float32) / (np.float32(60.0) * per_click)
        out[:, c + 8] = _squash(minutes, 2.0)
        out[:, c + 9] = (steps == 0).astype(np.float32)
        return out

    def features_at(
        self,
        fold: EventFold,
        states: StateArray,
        ts: npt.ArrayLike,
        sessions: npt.ArrayLike,
    ) -> FloatArray:
        """Features for a request arriving now: :meth:`EventFold.begin` on a copy, then
        :meth:`features`. The stored states are not modified."""
        now = states.copy()
        fold.begin(now, ts, sessions)
        return self.features(now)


class ItemFeaturizer:
    """Per-candidate features: a static table row plus user-item cross features.

    ``table`` ``[num_items, F]`` holds what is known about each item without the user
    (``names`` its columns); ``topics`` ``[num_items, T]`` the topic mixtures the cross
    features use; ``cross_blocks`` the first column of each ``T``-wide block of the user
    features to cross with (``cross_names`` their names).
    """

    def __init__(
        self,
        table: npt.ArrayLike,
        topics: npt.ArrayLike,
        names: Sequence[str],
        cross_blocks: Sequence[int] = (),
        cross_names: Sequence[str] = (),
    ) -> None:
        tab = np.ascontiguousarray(table, dtype=np.float32)
        top = np.ascontiguousarray(topics, dtype=np.float32)
        if tab.ndim != 2 or top.ndim != 2 or tab.shape[0] != top.shape[0]:
            raise ValueError(
                f"table [N, F] and topics [N, T] must share N, got {tab.shape} and {top.shape}"
            )
        if len(names) != tab.shape[1]:
            raise ValueError(f"{len(names)} names for {tab.shape[1]} table columns")
        if len(cross_names) != len(cross_blocks):
            raise ValueError("one cross name per cross block")
        if not np.isfinite(tab).all():
            raise ValueError("item feature table contains NaN or inf")
        self.table = tab
        self.topics = top
        self.cross_blocks = tuple(int(c) for c in cross_blocks)
        self.names: tuple[str, ...] = (*names, *(f"x_{n}" for n in cross_names))

    @property
    def num_items(self) -> int:
        """Catalog size."""
        return int(self.table.shape[0])

    @property
    def dim(self) -> int:
        """Width of the output."""
        return int(self.table.shape[1]) + len(self.cross_blocks)

    def features(self, user_features: npt.ArrayLike, candidate_ids: npt.ArrayLike) -> FloatArray:
        """``[B, C, dim]`` for users ``[B, F_u]`` and candidate ids ``[B, C]``."""
        ids = np.asarray(candidate_ids, dtype=np.int64)
        items = np.take(self.table, ids, axis=0)
        if not self.cross_blocks:
            return items
        uf = np.asarray(user_features, dtype=np.float32)
        t = self.topics.shape[1]
        blocks = np.stack([uf[:, c : c + t] for c in self.cross_blocks], axis=2)  # [B, T, k]
        cross = np.matmul(np.take(self.topics, ids, axis=0), blocks)  # [B, C, k]
        out: FloatArray = np.concatenate([items, cross.astype(np.float32)], axis=2)
        return out


def event_cross_blocks(spec: FeatureSpec) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Cross-feature blocks of the event features: every per-topic block, by name."""
    t = spec.num_topics
    names = spec.topic_blocks
    return tuple(i * t for i in range(len(names))), names
