"""Small hand-built worlds whose click behaviour can be reasoned about exactly."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.config import CatalogSettings
from recsys.data import SyntheticWorld, make_world


def pure_topic_world(num_topics: int = 4, items_per_topic: int = 5) -> SyntheticWorld:
    """Each item belongs to exactly one topic (item ``i`` has topic ``i % num_topics``); quality
    is zero; user ``t`` loves topic ``t`` (+1) and dislikes every other topic (-1)."""
    num_items = num_topics * items_per_topic
    topics = np.zeros((num_items, num_topics), dtype=np.float32)
    topics[np.arange(num_items), np.arange(num_items) % num_topics] = 1.0
    interests = np.full((num_topics, num_topics), -1.0, dtype=np.float32)
    np.fill_diagonal(interests, 1.0)
    return SyntheticWorld(
        item_topics=topics,
        item_quality=np.zeros(num_items, dtype=np.float32),
        item_popularity=np.full(num_items, 1.0 / num_items, dtype=np.float32),
        user_interests=interests,
        user_ids=[f"u{i}" for i in range(num_topics)],
    )


@pytest.fixture
def small_world() -> SyntheticWorld:
    return make_world(CatalogSettings(num_items=200, num_users=50, num_topics=8, seed=11))


@pytest.fixture
def topic_world() -> SyntheticWorld:
    return pure_topic_world()
