"""A seeded synthetic world: items with topic mixtures, quality and popularity, and users.

The demo, the simulator and the tests all need a catalog whose ground truth is known, so a
learned retriever or policy can be checked against it. Every array is drawn from its own child
of one :class:`numpy.random.SeedSequence`, so the same seed always yields identical arrays and
adding a new per-item or per-user attribute later (an ad flag, a clickbait score, a time
budget) does not shift the ones that already exist.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recsys.config import CatalogSettings
from recsys.types import FloatArray

# Child stream indices of the world's SeedSequence. Append new ones; never renumber, or worlds
# built from the same seed stop being identical across versions.
_STREAM_TOPICS = 0
_STREAM_QUALITY = 1
_STREAM_POPULARITY = 2
_STREAM_INTERESTS = 3
_NUM_STREAMS = 4


@dataclass(frozen=True, slots=True, eq=False)
class SyntheticWorld:
    """Ground truth of a simulated catalog and user population (arrays are read-only).

    - ``item_topics`` ``[num_items, num_topics]`` float32: each row is a Dirichlet topic mixture
      on the simplex (non-negative, sums to 1). A small concentration makes most mass sit on one
      or two topics, like real genres.
    - ``item_quality`` ``[num_items]`` float32 in ``[-1, 1]``: topic-independent appeal, so
      that "what the user likes" and "what is good" are separable signals.
    - ``item_popularity`` ``[num_items]`` float32, sums to 1: a Zipf-like prior (rank ``r`` gets
      mass proportional to ``(r + 1) ** -exponent``; ranks are a random permutation of items),
      for popularity baselines and biased logging policies.
    - ``user_interests`` ``[num_users, num_topics]`` float32 in ``[-1, 1]``: signed interests,
      as in RecSim's interest-evolution model; a negative value means the user dislikes the
      topic. With topic mixtures on the simplex, ``user_interests @ item_topics.T`` is then an
      affinity in ``[-1, 1]``.
    - ``user_ids``: wire ids ``"u0" .. "u{num_users-1}"``, in the same order as the rows.
    """

    item_topics: FloatArray
    item_quality: FloatArray
    item_popularity: FloatArray
    user_interests: FloatArray
    user_ids: list[str]

    def __post_init__(self) -> None:
        if self.item_topics.ndim != 2:
            raise ValueError(
                f"item_topics must be 2-D [num_items, num_topics], got shape "
                f"{self.item_topics.shape}"
            )
        num_items, num_topics = self.item_topics.shape
        expected = {
            "item_quality": (self.item_quality.shape, (num_items,)),
            "item_popularity": (self.item_popularity.shape, (num_items,)),
            "user_interests": (self.user_interests.shape, (len(self.user_ids), num_topics)),
        }
        for name, (got, want) in expected.items():
            if got != want:
                raise ValueError(f"{name} has shape {got}, expected {want}")
        for name, arr in (
            ("item_topics", self.item_topics),
            ("item_quality", self.item_quality),
            ("item_popularity", self.item_popularity),
            ("user_interests", self.user_interests),
        ):
            if arr.dtype != np.float32:
                raise ValueError(f"{name} must be float32, got {arr.dtype}")

    @property
    def num_items(self) -> int:
        """Catalog size; item ids are dense indices ``0 .. num_items - 1``."""
        return int(self.item_topics.shape[0])

    @property
    def num_users(self) -> int:
        """Population size; user indices are ``0 .. num_users - 1``."""
        return int(self.user_interests.shape[0])

    @property
    def num_topics(self) -> int:
        """Dimension of the topic space shared by items and users."""
        return int(self.item_topics.shape[1])


def make_world(
    settings: CatalogSettings,
    *,
    topic_concentration: float = 0.1,
    zipf_exponent: float = 1.0,
    quality_scale: float = 0.35,
) -> SyntheticWorld:
    """Draw a world from ``settings`` (sizes and seed); the same settings give identical arrays.

    ``topic_concentration`` is the symmetric Dirichlet parameter (smaller = sparser mixtures),
    ``zipf_exponent`` shapes the popularity prior and ``quality_scale`` is the standard
    deviation of item quality before clipping to ``[-1, 1]``.
    """
    for name, value in (
        ("num_items", settings.num_items),
        ("num_users", settings.num_users),
        ("num_topics", settings.num_topics),
    ):
        if value < 1:
            raise ValueError(f"catalog.{name} must be >= 1, got {value}")
    if not (np.isfinite(topic_concentration) and topic_concentration > 0):
        raise ValueError(f"topic_concentration must be > 0, got {topic_concentration}")
    if not (np.isfinite(zipf_exponent) and zipf_exponent >= 0):
        raise ValueError(f"zipf_exponent must be >= 0, got {zipf_exponent}")
    if not (np.isfinite(quality_scale) and quality_scale >= 0):
        raise ValueError(f"quality_scale must be >= 0, got {quality_scale}")

    num_items, num_users, num_topics = settings.num_items, settings.num_users, settings.num_topics
    streams = [
        np.random.default_rng(child)
        for child in np.random.SeedSequence(settings.seed).spawn(_NUM_STREAMS)
    ]

    topics = streams[_STREAM_TOPICS].dirichlet(
        np.full(num_topics, topic_concentration), size=num_items
    )
    quality = np.clip(streams[_STREAM_QUALITY].normal(0.0, quality_scale, size=num_items), -1, 1)
    ranks = streams[_STREAM_POPULARITY].permutation(num_items)
    popularity = (ranks + 1.0) ** -zipf_exponent
    popularity /= popularity.sum()
    interests = streams[_STREAM_INTERESTS].uniform(-1.0, 1.0, size=(num_users, num_topics))

    arrays = [a.astype(np.float32) for a in (topics, quality, popularity, interests)]
    for arr in arrays:
        arr.setflags(write=False)
    return SyntheticWorld(
        item_topics=arrays[0],
        item_quality=arrays[1],
        item_popularity=arrays[2],
        user_interests=arrays[3],
        user_ids=[f"u{i}" for i in range(num_users)],
    )
