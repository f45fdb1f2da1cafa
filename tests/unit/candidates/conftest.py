"""Shared fixtures: planted click logs (MF), and a small real ML-100K split (two-tower).

The real-data fixtures fetch MovieLens-100K once into the configured cache
(``RECSYS_CANDIDATES__DATA_DIR``, default ``~/.cache/recsys``), so re-runs are offline.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pytest

from recsys.candidates import (
    EmbeddingModel,
    Split,
    TwoTowerModel,
    random_split,
    train_embeddings,
    train_two_tower,
)
from recsys.config import CandidateSettings, load_settings
from recsys.data.movielens import load_ml100k
from recsys.types import FloatArray, IntArray, InteractionDataset


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
    """The MF skeleton's tuned budget: dim 32, 8 epochs."""
    return CandidateSettings(dim=32, epochs=8)


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


SMALL_USERS = 250


@pytest.fixture(scope="session")
def ml100k() -> InteractionDataset:
    """All of MovieLens-100K (downloaded from the recbole wheel on first use, then cached)."""
    return load_ml100k(load_settings().candidates.data_dir)


@dataclass(frozen=True)
class SmallSplit:
    """The first 250 users of ML-100K with RecBole's random 80/10/10 split."""

    dataset: InteractionDataset
    split: Split


@pytest.fixture(scope="session")
def small_split(ml100k: InteractionDataset) -> SmallSplit:
    """A small real split: 250 users (~26k ratings), the full 1682-item catalog."""
    subset = ml100k.subset(np.flatnonzero(ml100k.user_idx < SMALL_USERS))
    return SmallSplit(subset, random_split(subset, seed=0))


@pytest.fixture(scope="session")
def small_two_tower(small_split: SmallSplit) -> TwoTowerModel:
    """A two-tower model trained once on the small split (train rows, early stop on valid)."""
    split = small_split.split
    return train_two_tower(
        small_split.dataset,
        CandidateSettings(dim=32, epochs=8),
        seed=0,
        train_rows=split.train,
        valid_rows=split.valid,
        history_rows=split.train,
    )


def random_two_tower(num_items: int, dim: int = 16, seed: int = 0) -> TwoTowerModel:
    """An untrained two-tower model with random weights: a fast, deterministic user tower.

    Item embeddings are random unit vectors (not the item tower's output: retrieval only
    needs a consistent table), and a few users get stored vectors from random histories.
    """
    rng = np.random.default_rng(seed)
    hidden, item_feats = 2 * dim, 3

    def mat(*shape: int) -> FloatArray:
        out: FloatArray = (rng.normal(size=shape) / np.sqrt(shape[-1])).astype(np.float32)
        return out

    weights = {
        "item_id": mat(num_items + 1, dim),
        "item_feat": mat(item_feats, dim),
        "item_w1": mat(hidden, dim),
        "item_b1": mat(hidden),
        "item_w2": mat(dim, hidden),
        "item_b2": mat(dim),
        "hist": mat(num_items + 1, dim),
        "user_feat": np.zeros((0, dim), dtype=np.float32),
        "user_w1": mat(hidden, 2 * dim),
        "user_b1": mat(hidden),
        "user_w2": mat(dim, hidden),
        "user_b2": mat(dim),
    }
    items = rng.normal(size=(num_items, dim)).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    config = {"dim": dim, "hidden": hidden, "num_items": num_items, "max_history": 256}
    model = TwoTowerModel(items, np.zeros((0, dim), np.float32), weights, config)
    users = model.history_vectors(rng.integers(0, num_items, size=(20, 4)))
    return TwoTowerModel(items, users, weights, config)
