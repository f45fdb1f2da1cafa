"""Offline jobs that connect the simulator to the models: simulate logs, train, save artifacts.

This sits above the component packages (it imports the simulator and the candidate trainer)
and below the CLI and serving composition, which call it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recsys.artifacts import Artifact
from recsys.candidates import EmbeddingModel, save_retrieval_artifact, train_embeddings
from recsys.config import Settings
from recsys.data.synthetic import SyntheticWorld, make_world
from recsys.simulator import MultinomialLogitChoice, SlateEnv, simulate_logs

LOG_SLATE_SIZE = 10


@dataclass(frozen=True)
class SkeletonModels:
    """Everything the demo needs: the simulated world, the trained embeddings, the artifact."""

    world: SyntheticWorld
    model: EmbeddingModel
    artifact: Artifact


def make_env(world: SyntheticWorld, seed: int) -> SlateEnv:
    """The simulator that stands in for real users (same world, own random stream)."""
    return SlateEnv(world, MultinomialLogitChoice(), seed=seed)


def train_skeleton(settings: Settings, progress: bool = False) -> SkeletonModels:
    """Simulate logged impressions under a uniform logging policy and train retrieval on them.

    A uniformly random logging policy makes the logged clicks an unbiased sample of the users'
    preferences, so a plain click model on them needs no propensity correction.
    """
    world = make_world(settings.catalog)
    env = make_env(world, seed=settings.catalog.seed + 1)
    rng = np.random.default_rng(settings.catalog.seed + 2)
    logs = simulate_logs(world, env, settings.candidates.log_sessions, LOG_SLATE_SIZE, rng)
    model = train_embeddings(
        logs.user_idx,
        logs.item_idx,
        logs.clicked,
        num_users=world.num_users,
        num_items=world.num_items,
        settings=settings.candidates,
        seed=settings.catalog.seed,
        progress=progress,
    )
    artifact = save_retrieval_artifact(
        settings.artifacts.root,
        model,
        metadata={
            "user_ids": list(world.user_ids),
            "catalog": settings.catalog.model_dump(),
            "candidates": settings.candidates.model_dump(),
            "train_impressions": int(logs.item_idx.shape[0]),
            "train_click_rate": float(np.mean(logs.clicked)),
        },
    )
    return SkeletonModels(world=world, model=model, artifact=artifact)
