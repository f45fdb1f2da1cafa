"""Offline jobs that connect the simulator to the models: simulate logs, train, save artifacts.

This sits above the component packages (it imports the simulator and the candidate trainer)
and below the CLI and serving composition, which call it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from recsys.artifacts import Artifact
from recsys.candidates import (
    EmbeddingModel,
    FaissRetriever,
    catalog_from_dataset,
    dataset_from_clicks,
    roc_auc,
    save_retrieval_artifact,
    train_two_tower,
)
from recsys.config import Settings
from recsys.data.synthetic import SyntheticWorld, make_world
from recsys.simulator import SlateEnv, simulate_logs

LOG_SLATE_SIZE = 10
VALIDATION_SLATES = 0.1


@dataclass(frozen=True)
class SkeletonModels:
    """Everything the demo needs: the simulated world, the trained embeddings, the artifact."""

    world: SyntheticWorld
    model: EmbeddingModel
    artifact: Artifact


def make_env(world: SyntheticWorld, seed: int) -> SlateEnv:
    """The simulator that stands in for real users (same world, own random stream)."""
    return SlateEnv(world, seed=seed)  # choice model built from SimulatorSettings defaults


def train_skeleton(settings: Settings, progress: bool = False) -> SkeletonModels:
    """Simulate logged impressions under a uniform logging policy and train retrieval on them.

    Clicks are the positives of a two-tower model whose item tower reads the world's topic
    mixtures (the simulator's item features), so it personalises from what items are about,
    not just from per-id statistics, and embeds never-clicked items from their features.
    A random 10% of logged slates is held out: ``val_auc`` is the AUC of the retrieval score
    between clicked and skipped items on those slates (0.5 = no better than chance).
    """
    world = make_world(settings.catalog)
    env = make_env(world, seed=settings.catalog.seed + 1)
    rng = np.random.default_rng(settings.catalog.seed + 2)
    logs = simulate_logs(world, env, settings.candidates.log_sessions, LOG_SLATE_SIZE, rng)
    num_slates = int(logs.slate_idx.max()) + 1 if logs.num_rows else 0
    held_out = rng.random(num_slates) < VALIDATION_SLATES
    val = held_out[logs.slate_idx]
    train_clicks = (logs.clicked > 0) & ~val
    topics = np.asarray(world.item_topics, dtype=np.float32)
    dataset = dataset_from_clicks(
        name="simulator",
        user_idx=logs.user_idx[train_clicks],
        item_idx=logs.item_idx[train_clicks],
        timestamp=logs.slate_idx[train_clicks].astype(np.float64),
        user_ids=world.user_ids,
        item_features=topics,
        item_is_ad=np.asarray(world.item_is_ad, dtype=np.bool_),
    )
    model = train_two_tower(
        dataset, settings.candidates, seed=settings.catalog.seed, progress=progress
    )
    scores = model.logits(logs.user_idx[val], logs.item_idx[val])
    metrics = {
        **model.metrics,
        "val_auc": roc_auc(logs.clicked[val], scores),
        "num_val_impressions": float(val.sum()),
    }
    model = replace(model, metrics=metrics)
    retriever = FaissRetriever.build(
        model.item_embeddings,
        recall_target=settings.candidates.recall_target,
        queries=model.user_embeddings,
        catalog=catalog_from_dataset(dataset),
        user_encoder=model.user_vector,
        seed=settings.catalog.seed,
    )
    artifact = save_retrieval_artifact(
        settings.artifacts.root,
        model,
        metadata={
            "user_ids": list(world.user_ids),
            "catalog": settings.catalog.model_dump(),
            "candidates": settings.candidates.model_dump(mode="json"),
            "train_impressions": int((~val).sum()),
            "train_clicks": int(train_clicks.sum()),
            "train_click_rate": float(np.mean(logs.clicked[~val])) if (~val).any() else 0.0,
        },
        retriever=retriever,
    )
    return SkeletonModels(world=world, model=model.embedding_model(), artifact=artifact)
