"""Training entry points: turn a data source into a trained, indexed, saved retrieval model.

``recsys train candidates --data ml-100k|PATH`` lands here. Sources:

- ``ml-100k``: MovieLens-100K from the local cache (fetched on first use);
- a ``.parquet`` file in the logged-feedback format (:mod:`recsys.data.logged`): every
  clicked slot is a positive interaction, items keep the features logged with them;
- a directory or file in a MovieLens layout (RecBole atomic or GroupLens).

:func:`dataset_from_clicks` is the adapter the simulator pipeline and the Parquet reader
share, so every source reaches the trainer as the same :class:`InteractionDataset`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from recsys.artifacts import Artifact
from recsys.candidates.faiss_index import FaissRetriever, ItemCatalog
from recsys.candidates.persistence import save_retrieval_artifact
from recsys.candidates.two_tower import TwoTowerModel, TwoTowerOptions, train_two_tower
from recsys.config import CandidateSettings
from recsys.types import FloatArray, IntArray, InteractionDataset


@dataclass(frozen=True)
class TrainedCandidates:
    """A trained two-tower model, its tuned retriever and the artifact they were saved as."""

    dataset: InteractionDataset
    model: TwoTowerModel
    retriever: FaissRetriever
    artifact: Artifact


def dataset_from_clicks(
    *,
    name: str,
    user_idx: IntArray,
    item_idx: IntArray,
    timestamp: npt.ArrayLike,
    user_ids: Sequence[str],
    item_features: FloatArray,
    item_categories: npt.NDArray[np.bool_] | None = None,
    user_features: FloatArray | None = None,
    item_ids: Sequence[str] | None = None,
    item_is_ad: npt.NDArray[np.bool_] | None = None,
) -> InteractionDataset:
    """An :class:`InteractionDataset` of positive (user, item) events with item features.

    The catalog is ``item_features``' rows (items never clicked stay in it: they are exactly
    the cold-start items the item tower must embed from features). ``item_categories``
    defaults to the feature argmax (one category per item), which suits topic mixtures.
    """
    num_items = int(item_features.shape[0])
    if item_categories is None:
        item_categories = np.zeros((num_items, item_features.shape[1]), dtype=np.bool_)
        if item_features.shape[1]:
            item_categories[np.arange(num_items), np.argmax(item_features, axis=1)] = True
    n = int(np.asarray(user_idx).shape[0])
    return InteractionDataset(
        name=name,
        user_idx=np.asarray(user_idx, dtype=np.int64),
        item_idx=np.asarray(item_idx, dtype=np.int64),
        rating=np.ones(n, dtype=np.float32),
        timestamp=np.asarray(timestamp, dtype=np.float64),
        user_ids=tuple(user_ids),
        item_ids=tuple(item_ids) if item_ids is not None else tuple(map(str, range(num_items))),
        item_features=np.ascontiguousarray(item_features, dtype=np.float32),
        user_features=(
            np.zeros((len(user_ids), 0), dtype=np.float32)
            if user_features is None
            else np.ascontiguousarray(user_features, dtype=np.float32)
        ),
        item_categories=item_categories,
        item_is_ad=None if item_is_ad is None else np.asarray(item_is_ad, dtype=np.bool_),
        item_feature_names=tuple(f"f{j}" for j in range(item_features.shape[1])),
        category_names=tuple(f"c{j}" for j in range(item_categories.shape[1])),
    )


def dataset_from_logged_feedback(path: Path, *, num_items: int | None = None) -> InteractionDataset:
    """Clicked slots of a logged-feedback Parquet file as positives, with logged features.

    Users are the distinct ``user_id`` strings (sorted); the catalog spans item ids
    ``0 .. max(item_id)`` (or ``num_items``), each item taking the features and ad flag
    logged with its first impression (zeros / organic for items never impressed).
    Categories come from the feature argmax (the simulator logs topic mixtures).
    """
    from recsys.data.logged import read_logged_feedback  # pyarrow only when reading Parquet

    log = read_logged_feedback(path)
    if len(log) == 0:
        raise ValueError(f"{path} holds no logged slots")
    n_items = int(log.item_id.max()) + 1 if num_items is None else num_items
    if int(log.item_id.max()) >= n_items or int(log.item_id.min()) < 0:
        raise ValueError(f"{path} logs item ids outside [0, {n_items})")
    item_features = np.zeros((n_items, log.item_features.shape[1]), dtype=np.float32)
    first = np.unique(log.item_id, return_index=True)[1]
    item_features[log.item_id[first]] = log.item_features[first]
    is_ad = np.zeros(n_items, dtype=np.bool_)
    is_ad[log.item_id[first]] = log.is_ad[first]
    user_ids, user_idx = np.unique(log.user_id, return_inverse=True)
    clicked = log.click.astype(np.bool_)
    return dataset_from_clicks(
        name=Path(path).stem,
        user_idx=user_idx[clicked].astype(np.int64),
        item_idx=log.item_id[clicked].astype(np.int64),
        timestamp=log.ts[clicked],
        user_ids=[str(u) for u in user_ids],
        item_features=item_features,
        item_is_ad=is_ad,
    )


def load_training_data(data: str | Path, data_dir: Path | None = None) -> InteractionDataset:
    """Resolve ``--data``: ``ml-100k``, a logged-feedback ``.parquet`` file, or a MovieLens dir."""
    from recsys.data.movielens import load_ml100k, load_movielens

    if str(data) == "ml-100k":
        return load_ml100k(data_dir)
    path = Path(data).expanduser()
    if path.suffix == ".parquet":
        return dataset_from_logged_feedback(path)
    return load_movielens(path)


def catalog_from_dataset(dataset: InteractionDataset, rows: IntArray | None = None) -> ItemCatalog:
    """Serving metadata from training data: popularity = interaction counts in ``rows``.

    Items with no training interactions are "fresh": the fallback mixes them in so they
    collect feedback. Ad flags come from ``dataset.item_is_ad`` (all organic without it).
    """
    is_ad = dataset.item_is_ad
    items = dataset.item_idx if rows is None else dataset.item_idx[rows]
    counts = np.bincount(items, minlength=dataset.num_items).astype(np.float32)
    return ItemCatalog(
        popularity=counts,
        fresh=counts == 0,
        categories=dataset.item_categories,
        is_ad=np.zeros(dataset.num_items, np.bool_) if is_ad is None else is_ad.astype(np.bool_),
    )


def train_candidates(
    data: str | Path | InteractionDataset,
    settings: CandidateSettings,
    artifacts_root: Path,
    *,
    seed: int = 0,
    options: TwoTowerOptions | None = None,
    progress: bool = False,
    metadata: dict[str, Any] | None = None,
) -> TrainedCandidates:
    """Train the two-tower model on ``data``, build and tune its index, save an artifact.

    The index type follows the catalog size and ``settings.recall_target``; the recall it
    measured goes into the manifest. Returns everything so a caller can print metrics.
    """
    dataset = (
        data
        if isinstance(data, InteractionDataset)
        else load_training_data(data, settings.data_dir)
    )
    model = train_two_tower(dataset, settings, seed=seed, options=options, progress=progress)
    retriever = FaissRetriever.build(
        model.item_embeddings,
        recall_target=settings.recall_target,
        queries=model.user_embeddings,
        catalog=catalog_from_dataset(dataset),
        user_encoder=model.user_vector,
        seed=seed,
    )
    artifact = save_retrieval_artifact(
        artifacts_root,
        model,
        {
            **(metadata or {}),
            "user_ids": list(dataset.user_ids),
            "item_ids": list(dataset.item_ids),
            "dataset": dataset.name,
            "num_interactions": dataset.num_interactions,
            "candidates": settings.model_dump(mode="json"),
            "seed": seed,
        },
        retriever=retriever,
    )
    return TrainedCandidates(dataset, model, retriever, artifact)
