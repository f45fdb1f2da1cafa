"""Shared fixtures: planted low-rank click logs and a model trained on them once per session."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pytest

from recsys.candidates import EmbeddingModel, train_embeddings
from recsys.config import CandidateSettings
from recsys.types import FloatArray, IntArray


@dataclass(frozen=True)
class PlantedLogs:
    """Impressions logged uniformly at random from users with known rank-``r`` tastes.

    ``true_logits[u, i]`` is the click logit the labels were drawn from, so a learned model
    can be compared against the truth, not only against held-out labels.
    """

    user_idx: IntArray
    item_idx: IntArray
    labels: FloatArray
    true_logits: npt.NDArray[np.float64]
    num_users: int
    num_items: int


def make_planted_logs(
    num_users: int = 200,
    num_items: int = 300,
    num_impressions: int = 20_000,
    rank: int = 4,
    scale: float = 3.0,
    seed: int = 7,
) -> PlantedLogs:
    """Clicks ~ Bernoulli(sigmoid(scale * <u, v> / sqrt(rank) - 1)); ~30% click rate."""
    rng = np.random.default_rng(seed)
    users = rng.normal(size=(num_users, rank))
    items = rng.normal(size=(num_items, rank))
    true_logits = scale * users @ items.T / np.sqrt(rank) - 1.0
    u = rng.integers(0, num_users, num_impressions)
    i = rng.integers(0, num_items, num_impressions)
    p = 1.0 / (1.0 + np.exp(-true_logits[u, i]))
    y = (rng.random(num_impressions) < p).astype(np.float32)
    return PlantedLogs(u, i, y, true_logits, num_users, num_items)


@pytest.fixture(scope="session")
def planted() -> PlantedLogs:
    """The default planted world (200 users, 300 items, 20k impressions)."""
    return make_planted_logs()


@pytest.fixture(scope="session")
def settings() -> CandidateSettings:
    """Production defaults: dim 32, 8 epochs."""
    return CandidateSettings()


@pytest.fixture(scope="session")
def trained(planted: PlantedLogs, settings: CandidateSettings) -> EmbeddingModel:
    """Embeddings trained once on the planted logs and shared by the tests that read them."""
    return train_embeddings(
        planted.user_idx,
        planted.item_idx,
        planted.labels,
        planted.num_users,
        planted.num_items,
        settings,
        seed=0,
    )
