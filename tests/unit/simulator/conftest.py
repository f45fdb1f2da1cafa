"""Small hand-built worlds whose behaviour can be reasoned about exactly."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from recsys.config import CatalogSettings, SimulatorSettings
from recsys.data import SyntheticWorld, make_world


def pure_topic_world(
    num_topics: int = 4,
    items_per_topic: int = 5,
    *,
    interests: npt.ArrayLike | None = None,
    quality: npt.ArrayLike | None = None,
    clickbait: npt.ArrayLike | None = None,
    is_ad: npt.ArrayLike | None = None,
    bid: npt.ArrayLike | None = None,
    length_s: float = 100.0,
) -> SyntheticWorld:
    """Item ``i`` belongs to exactly topic ``i % num_topics``.

    By default quality is zero, nothing is clickbait or an ad, and user ``t`` loves topic ``t``
    (+1) and dislikes every other topic (-1); each attribute can be overridden.
    """
    num_items = num_topics * items_per_topic
    topics = np.zeros((num_items, num_topics), dtype=np.float32)
    topics[np.arange(num_items), np.arange(num_items) % num_topics] = 1.0
    if interests is None:
        user_interests = np.full((num_topics, num_topics), -1.0, dtype=np.float32)
        np.fill_diagonal(user_interests, 1.0)
    else:
        user_interests = np.asarray(interests, dtype=np.float32).reshape(-1, num_topics)

    def items(value: npt.ArrayLike | None, default: float) -> npt.NDArray[np.float32]:
        if value is None:
            return np.full(num_items, default, dtype=np.float32)
        return np.broadcast_to(np.asarray(value, dtype=np.float32), (num_items,)).copy()

    ads = np.zeros(num_items, dtype=np.bool_) if is_ad is None else np.asarray(is_ad, np.bool_)
    return SyntheticWorld(
        item_topics=topics,
        item_quality=items(quality, 0.0),
        item_popularity=np.full(num_items, 1.0 / num_items, dtype=np.float32),
        user_interests=user_interests,
        user_ids=[f"u{i}" for i in range(user_interests.shape[0])],
        item_length_s=items(None, length_s),
        item_clickbait=items(clickbait, 0.0),
        item_is_ad=ads,
        item_bid=items(bid, 0.0) * ads,
    )


def settings(**overrides: object) -> SimulatorSettings:
    """Simulator settings for small worlds (few candidates), with overrides."""
    base: dict[str, object] = {"num_candidates": 4, "slate_size": 2}
    base.update(overrides)
    return SimulatorSettings(**base)  # type: ignore[arg-type]


@pytest.fixture
def small_world() -> SyntheticWorld:
    return make_world(CatalogSettings(num_items=200, num_users=50, num_topics=8, seed=11))


@pytest.fixture
def topic_world() -> SyntheticWorld:
    return pure_topic_world()
