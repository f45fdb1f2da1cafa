"""Offline evaluation of candidate generators: ``recsys evaluate candidates``.

One run evaluates the two-tower model and two baselines on two protocols, all with full
ranking over every item (see :mod:`recsys.candidates.metrics`):

- ``random_80_10_10``: RecBole's default (per-user random 80/10/10 split, every rating a
  positive, seeded), the protocol of RecBole's published ML-100K tables;
- ``temporal_leave_last_out``: each user's last interaction is the test item (harder: the
  future is not a random sample of the past).

Baselines: ``popularity`` (train counts) and ``itemknn`` (cosine item-item, 100 neighbours,
RecBole's ItemKNN). The two-tower model trains on the train rows, early-stops on valid, and
is scored on test with user vectors built from train rows only, so it sees exactly what the
baselines see.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from recsys.candidates.metrics import (
    ItemKNNScorer,
    PopularityScorer,
    Scorer,
    Split,
    full_ranking_metrics,
    leave_last_out_split,
    random_split,
)
from recsys.candidates.two_tower import TwoTowerOptions, train_two_tower
from recsys.config import CandidateSettings
from recsys.types import InteractionDataset

PROTOCOLS = ("random_80_10_10", "temporal_leave_last_out")
MODELS = ("popularity", "itemknn", "two_tower")
# RecBole's published BPR on ML-100K under random_80_10_10 (the reference range).
REFERENCE = {
    "source": "RecBole BPR on ml-100k, RS 80/10/10 full ranking",
    "ndcg@10": [0.277, 0.292],
    "recall@10": [0.237, 0.252],
}


def evaluation_settings() -> CandidateSettings:
    """Settings the published figures were produced with: dim 64, up to 100 epochs."""
    return CandidateSettings(dim=64, epochs=100)


def make_split(dataset: InteractionDataset, protocol: str, seed: int) -> Split:
    """The split a protocol name stands for (see module docs)."""
    if protocol == "random_80_10_10":
        return random_split(dataset, seed)
    if protocol == "temporal_leave_last_out":
        return leave_last_out_split(dataset)
    raise ValueError(f"unknown protocol {protocol!r}; choose from {PROTOCOLS}")


def evaluate_candidates(
    dataset: InteractionDataset,
    seed: int = 2020,
    *,
    settings: CandidateSettings | None = None,
    options: TwoTowerOptions | None = None,
    protocols: Sequence[str] = PROTOCOLS,
    models: Sequence[str] = MODELS,
    ks: Sequence[int] = (10, 100),
    progress: bool = False,
) -> dict[str, Any]:
    """Recall@K and NDCG@K of every model on every protocol, as a JSON-ready dict.

    ``result["protocols"][protocol][model]`` holds ``test`` and ``valid`` metric dicts
    (``recall@10``, ``ndcg@10``, ``recall@100``, ...) and ``seconds``; the two-tower entry
    adds its training metrics. ``seed`` drives the random split and training (2020 is
    RecBole's default seed).
    """
    settings = settings or evaluation_settings()
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        raise ValueError(f"unknown models {unknown}; choose from {MODELS}")
    started = time.perf_counter()
    result: dict[str, Any] = {
        "dataset": dataset.name,
        "num_users": dataset.num_users,
        "num_items": dataset.num_items,
        "num_interactions": dataset.num_interactions,
        "seed": seed,
        "ranking": "full (all items; train items masked, train+valid for test)",
        "settings": {"dim": settings.dim, "max_epochs": settings.epochs},
        "reference": REFERENCE,
        "protocols": {},
    }
    for protocol in protocols:
        split = make_split(dataset, protocol, seed)
        history_for_test = np.concatenate([split.train, split.valid])
        entry: dict[str, Any] = {
            "train": int(split.train.size),
            "valid": int(split.valid.size),
            "test": int(split.test.size),
        }
        for name in models:
            t0 = time.perf_counter()
            extra: dict[str, Any] = {}
            scorer: Scorer
            if name == "popularity":
                scorer = PopularityScorer(dataset, split.train)
            elif name == "itemknn":
                scorer = ItemKNNScorer(dataset, split.train)
            else:
                model = train_two_tower(
                    dataset,
                    settings,
                    seed=seed,
                    train_rows=split.train,
                    valid_rows=split.valid,
                    history_rows=split.train,
                    options=options,
                    progress=progress,
                )
                users, items = model.user_embeddings, model.item_embeddings

                def scorer(batch: np.ndarray[Any, Any], u: Any = users, i: Any = items) -> Any:
                    return u[batch] @ i.T

                extra["training"] = dict(model.metrics)
            entry[name] = {
                "valid": full_ranking_metrics(scorer, dataset, split.train, split.valid, ks),
                "test": full_ranking_metrics(scorer, dataset, history_for_test, split.test, ks),
                **extra,
                "seconds": time.perf_counter() - t0,
            }
        result["protocols"][protocol] = entry
    result["seconds"] = time.perf_counter() - started
    return result
