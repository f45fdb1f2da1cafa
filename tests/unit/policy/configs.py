"""Training configurations shared by the policy tests, and the small policies trained on them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from recsys.config import CandidateSettings
from recsys.policy.training.config import PolicyTrainConfig, documented_config

if TYPE_CHECKING:
    from recsys.pipeline import SimulatorSetup

#: The project simulator shrunk so a full setup (logs, retriever, learned reward, item
#: statistics) and two training iterations take seconds: enough to produce real checkpoints.
SMALL_SIMULATOR: PolicyTrainConfig = replace(
    documented_config("slateq"),
    num_items=300,
    num_topics=6,
    num_candidates=15,
    slate_size=3,
    num_ads=3,
    min_ads=1,
    max_ads=1,
    log_users=300,
    log_max_steps=20,
    users=64,
    iterations=2,
    steps_per_iteration=2,
    updates_per_iteration=2,
    pretrain_updates=2,
    batch_size=64,
    hidden=(8,),
)
#: The small two-tower retriever of :data:`SMALL_SIMULATOR`'s setup.
SMALL_CANDIDATES = CandidateSettings(dim=8, epochs=2)
#: The same catalog and retriever as ``RECSYS_*`` settings, for CLI runs of the small setup.
SMALL_SIMULATOR_ENV = {
    "RECSYS_CATALOG__NUM_ITEMS": str(SMALL_SIMULATOR.num_items),
    "RECSYS_CATALOG__NUM_TOPICS": str(SMALL_SIMULATOR.num_topics),
    "RECSYS_CANDIDATES__DIM": str(SMALL_CANDIDATES.dim),
    "RECSYS_CANDIDATES__EPOCHS": str(SMALL_CANDIDATES.epochs),
}


def build_small_setup(root: Path) -> SimulatorSetup:
    """:data:`SMALL_SIMULATOR`'s setup (logs, retriever published under ``root``, item
    statistics, learned reward; ~3 s)."""
    from recsys.pipeline import build_simulator_setup

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return build_simulator_setup(SMALL_SIMULATOR, root, candidates=SMALL_CANDIDATES)
    finally:
        torch.set_num_threads(before)


def publish_small_policies(root: Path, setup: SimulatorSetup | None = None) -> dict[str, Path]:
    """SlateQ and REINFORCE trained on :data:`SMALL_SIMULATOR`'s setup (``setup``, or one
    built under ``root``) and published under ``root`` as ``policy-<algo>``: their artifact
    paths by algo.

    They observe event-derived user features of the world ``CatalogSettings(num_items=300,
    num_topics=6, seed=0)``, as every policy trained by :mod:`recsys.pipeline` does.
    """
    from recsys.pipeline import publish_trained, train_simulator_policy

    setup = setup or build_small_setup(root)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out: dict[str, Path] = {}
        for algo in ("slateq", "reinforce"):
            config = replace(SMALL_SIMULATOR, algo=algo)
            result = train_simulator_policy(config, setup)
            artifact = publish_trained(root, algo, result, setup)
            out[algo] = artifact.path
        return out
    finally:
        torch.set_num_threads(before)
