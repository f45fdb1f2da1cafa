"""Save and load the retrieval model as one versioned artifact.

Layout under ``<root>/retrieval/<version>/``:

- ``tensors.safetensors``: user and item embeddings, global bias, the item catalog the
  retriever filters and falls back on (``item_popularity``, ``item_fresh``,
  ``item_categories``, ``item_is_ad``) and, when given, the observable item table the event
  fold and featurisers read (``catalog/*``, :meth:`recsys.features.ItemTable.to_tensors`;
  its bids fill the candidates' ``bid``);
- ``index.faiss``: the FAISS index in its own binary format;
- ``two_tower.safetensors`` (two-tower models only): the towers' weights, so serving can
  compute vectors for users and items that were not in the training data;
- ``manifest.json``: sha256 of every file plus metadata, including ``index`` (the index
  spec, its search knobs and the recall@k measured against exact search at build time).

The index is stored rather than rebuilt on load because approximate indexes (IVF, HNSW) are
costly to build and must be served exactly as evaluated. Nothing is unpickled.

:func:`load_retrieval` returns everything serving and training need in one
:class:`LoadedRetrieval`; :func:`load_retrieval_artifact` is its older tuple form.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from recsys.artifacts import Artifact, load_artifact, save_artifact
from recsys.candidates.embeddings import EmbeddingModel
from recsys.candidates.faiss_index import FaissRetriever, ItemCatalog
from recsys.candidates.index import IndexReport, IndexSpec
from recsys.candidates.two_tower import TwoTowerModel
from recsys.features import ItemTable
from recsys.types import ArtifactError

RETRIEVAL_ARTIFACT = "retrieval"
INDEX_FILE = "index.faiss"
TENSORS_FILE = "tensors.safetensors"
TWO_TOWER_FILE = "two_tower.safetensors"
_RESERVED_METADATA = frozenset(
    {
        "num_users",
        "num_items",
        "dim",
        "index_type",
        "bias_coordinate",
        "model",
        "index",
        "two_tower",
    }
)
_CATALOG_TENSORS = ("item_popularity", "item_fresh", "item_categories", "item_is_ad")
ITEM_TABLE_PREFIX = "catalog/"


@dataclass(frozen=True, eq=False)
class LoadedRetrieval:
    """One verified ``retrieval`` artifact, loaded: what serving and training read from it.

    ``model`` the embedding tables; ``retriever`` the FAISS retriever over them, with the
    stored catalog, tuned search knobs and, for two-tower artifacts, the user tower as its
    ``user_encoder`` and ``history_encoder`` (so
    :meth:`FaissRetriever.candidates_for_histories` works); ``two_tower`` the full model
    (``None`` for matrix factorisation); ``item_table`` the stored observable item table
    (``None`` when the artifact has none); ``artifact`` the manifest and its metadata.
    """

    model: EmbeddingModel
    retriever: FaissRetriever
    two_tower: TwoTowerModel | None
    item_table: ItemTable | None
    artifact: Artifact


def save_retrieval_artifact(
    root: Path,
    model: EmbeddingModel | TwoTowerModel,
    metadata: Mapping[str, Any],
    *,
    retriever: FaissRetriever | None = None,
    version: str | None = None,
    recall_target: float = 0.95,
    item_table: ItemTable | None = None,
) -> Artifact:
    """Write embeddings, their FAISS index and the catalog as a new ``retrieval`` version.

    ``retriever`` lets a caller persist an index it already built and tuned; by default one
    is built with :meth:`FaissRetriever.build` for ``recall_target`` (index type from the
    catalog size, recall measured on the model's user vectors). ``metadata`` (e.g. the
    training settings and seed) is stored beside the model's own description; a ``metrics``
    mapping in it is merged with the model's metrics, the model's values winning.
    ``item_table`` (default: the retriever's own, if any) is stored under ``catalog/``; it
    must describe the model's items and agree with the retriever's catalog on which are ads
    (``ValueError`` otherwise).
    """
    clash = _RESERVED_METADATA & set(metadata)
    if clash:
        raise ValueError(f"metadata keys {sorted(clash)} are reserved for the retrieval artifact")
    two_tower = model if isinstance(model, TwoTowerModel) else None
    tables = model.embedding_model() if isinstance(model, TwoTowerModel) else model
    if item_table is not None and item_table.num_items != tables.num_items:
        raise ValueError(
            f"item_table describes {item_table.num_items} items, the model {tables.num_items}"
        )
    if retriever is None:
        retriever = FaissRetriever.build(
            tables.item_embeddings,
            recall_target=recall_target,
            queries=tables.user_embeddings,
            item_table=item_table,
        )
    elif not np.array_equal(retriever.item_embeddings, tables.item_embeddings):
        raise ValueError("retriever was built from different item embeddings than the model")
    if item_table is None:
        item_table = retriever.item_table
    elif not np.array_equal(item_table.is_ad, retriever.catalog.is_ad):
        raise ValueError("item_table and the retriever's catalog disagree on which items are ads")
    report = retriever.index_report
    index_meta: dict[str, Any] = (
        report.to_dict()
        if report is not None
        else {"spec": retriever.spec.to_dict(), "recall_at_k": None, "metric": "inner_product"}
    )
    if report is None and retriever.spec.exact:
        index_meta["recall_at_k"] = 1.0  # exhaustive exact search, recall 1 by construction
    full_metadata = {
        **metadata,
        "model": "two_tower" if two_tower is not None else "matrix_factorisation",
        "num_users": tables.num_users,
        "num_items": tables.num_items,
        "dim": tables.dim,
        "index_type": retriever.index_type,
        "index": index_meta,
        # MF folds the item bias into the last coordinate; two-tower vectors are unit-norm.
        "bias_coordinate": "none" if two_tower is not None else "last",
        "metrics": _json_metrics({**dict(metadata.get("metrics") or {}), **tables.metrics}),
    }
    catalog = retriever.catalog
    tensors: dict[str, np.ndarray[Any, Any]] = {
        "user_embeddings": tables.user_embeddings,
        "item_embeddings": tables.item_embeddings,
        "global_bias": np.array([tables.global_bias], dtype=np.float64),
        "item_popularity": catalog.popularity.astype(np.float32),
        "item_fresh": catalog.fresh,
        "item_categories": catalog.categories,
        "item_is_ad": catalog.is_ad,
    }
    if item_table is not None:
        tensors.update(item_table.to_tensors(ITEM_TABLE_PREFIX))
    files = {INDEX_FILE: retriever.serialize()}
    if two_tower is not None:
        full_metadata["two_tower"] = dict(two_tower.config)
        weights = {k: v for k, v in two_tower.to_tensors().items() if k.startswith("w.")}
        files[TWO_TOWER_FILE] = save_safetensors(weights)
    return save_artifact(
        root,
        RETRIEVAL_ARTIFACT,
        tensors=tensors,
        files=files,
        metadata=full_metadata,
        version=version,
    )


def load_retrieval(path: Path) -> LoadedRetrieval:
    """Verify and load one ``retrieval`` artifact version directory.

    Every file's sha256 is checked against the manifest, and the bytes that are parsed are
    the bytes that were hashed. Raises :class:`ArtifactError` for anything missing, corrupt
    or inconsistent (e.g. an item table whose size differs from the index, or that marks
    other items as ads than the catalog). The retriever's ``version`` is the artifact
    version; it carries the stored catalog (filters, fallback), the tuned search knobs, the
    item table's bids, and for two-tower artifacts the user tower as its encoders.
    """
    artifact = _load_checked(path)
    where = f"{artifact.name}/{artifact.version}"
    try:
        tensors = load_safetensors(_verified_bytes(artifact, TENSORS_FILE))
        model = EmbeddingModel(
            user_embeddings=tensors["user_embeddings"],
            item_embeddings=tensors["item_embeddings"],
            global_bias=float(tensors["global_bias"].reshape(-1)[0]),
            metrics={
                str(k): math.nan if v is None else float(v)
                for k, v in dict(artifact.metadata.get("metrics") or {}).items()
            },
        )
        catalog = None
        if all(name in tensors for name in _CATALOG_TENSORS):
            catalog = ItemCatalog(
                popularity=tensors["item_popularity"].astype(np.float32),
                fresh=tensors["item_fresh"].astype(np.bool_),
                categories=tensors["item_categories"].astype(np.bool_),
                is_ad=tensors["item_is_ad"].astype(np.bool_),
            )
        item_table = _item_table_from(tensors, model.num_items, catalog, where)
        index_meta = dict(artifact.metadata.get("index") or {})
        spec = IndexSpec.from_dict(dict(index_meta["spec"])) if "spec" in index_meta else None
        report = _report_from(index_meta, spec)
        two_tower = _two_tower_from(artifact, model) if TWO_TOWER_FILE in artifact.files else None
        retriever = FaissRetriever.deserialize(
            _verified_bytes(artifact, INDEX_FILE),
            model.item_embeddings,
            artifact.version,
            spec=spec,
            catalog=catalog,
            user_encoder=two_tower.user_vector if two_tower is not None else None,
            report=report,
            item_table=item_table,
            history_encoder=two_tower.history_vectors if two_tower is not None else None,
        )
    except ArtifactError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, SafetensorError) as exc:
        raise ArtifactError(f"invalid retrieval artifact {where}: {exc}") from exc
    return LoadedRetrieval(
        model=model,
        retriever=retriever,
        two_tower=two_tower,
        item_table=item_table,
        artifact=artifact,
    )


def load_retrieval_artifact(path: Path) -> tuple[EmbeddingModel, FaissRetriever, Artifact]:
    """``(model, retriever, artifact)`` of :func:`load_retrieval`, same checks and errors."""
    loaded = load_retrieval(path)
    return loaded.model, loaded.retriever, loaded.artifact


def load_two_tower(path: Path) -> TwoTowerModel:
    """The full two-tower model (towers included) from a ``retrieval`` artifact directory.

    For online updates: recompute a user's vector from fresh history with
    :meth:`TwoTowerModel.user_vector`, or embed new items with
    :meth:`TwoTowerModel.item_vectors`. Raises :class:`ArtifactError` when the artifact
    holds no two-tower model.
    """
    artifact = _load_checked(path)
    if TWO_TOWER_FILE not in artifact.files:
        raise ArtifactError(
            f"{artifact.name}/{artifact.version} holds a "
            f"{artifact.metadata.get('model', 'different')} model, not a two-tower model"
        )
    try:
        tensors = load_safetensors(_verified_bytes(artifact, TENSORS_FILE))
        tables = EmbeddingModel(tensors["user_embeddings"], tensors["item_embeddings"])
        return _two_tower_from(artifact, tables)
    except (KeyError, IndexError, TypeError, ValueError, SafetensorError) as exc:
        raise ArtifactError(f"invalid two-tower artifact {path}: {exc}") from exc


def _load_checked(path: Path) -> Artifact:
    artifact = load_artifact(path)
    if artifact.name != RETRIEVAL_ARTIFACT:
        raise ArtifactError(
            f"{path} holds a {artifact.name!r} artifact, not {RETRIEVAL_ARTIFACT!r}"
        )
    return artifact


def _two_tower_from(artifact: Artifact, tables: EmbeddingModel) -> TwoTowerModel:
    weights = load_safetensors(_verified_bytes(artifact, TWO_TOWER_FILE))
    return TwoTowerModel.from_tensors(
        {
            **weights,
            "item_embeddings": tables.item_embeddings,
            "user_embeddings": tables.user_embeddings,
        },
        dict(artifact.metadata["two_tower"]),
        tables.metrics,
    )


def _item_table_from(
    tensors: Mapping[str, np.ndarray[Any, Any]],
    num_items: int,
    catalog: ItemCatalog | None,
    where: str,
) -> ItemTable | None:
    """The stored item table, checked against the index it must describe (or ``None``)."""
    if not any(name.startswith(ITEM_TABLE_PREFIX) for name in tensors):
        return None
    try:
        table = ItemTable.from_tensors(tensors, ITEM_TABLE_PREFIX)
    except ValueError as exc:
        raise ArtifactError(f"invalid item table in {where}: {exc}") from exc
    if table.num_items != num_items:
        raise ArtifactError(
            f"item table in {where} describes {table.num_items} items, but the index holds "
            f"{num_items}"
        )
    if catalog is not None and not np.array_equal(table.is_ad, catalog.is_ad):
        differ = int(np.count_nonzero(table.is_ad != catalog.is_ad))
        raise ArtifactError(
            f"item table in {where} disagrees with the catalog on which items are ads "
            f"({differ} items)"
        )
    return table


def _report_from(meta: Mapping[str, Any], spec: IndexSpec | None) -> IndexReport | None:
    if spec is None or meta.get("recall_at_k") is None or "k" not in meta:
        return None
    return IndexReport(
        spec=spec,
        recall=float(meta["recall_at_k"]),
        k=int(meta["k"]),
        num_queries=int(meta.get("num_queries", 0)),
        recall_target=float(meta.get("recall_target", math.nan)),
        build_seconds=float(meta.get("build_seconds", math.nan)),
        tune_seconds=float(meta.get("tune_seconds", math.nan)),
    )


def _json_metrics(metrics: Mapping[str, Any]) -> dict[str, float | None]:
    # JSON has no NaN; an undefined metric (e.g. AUC on a one-class split) becomes null.
    out: dict[str, float | None] = {}
    for key, value in metrics.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"metric {key!r} is not a number: {value!r}") from None
        out[str(key)] = number if math.isfinite(number) else None
    return out


def _verified_bytes(artifact: Artifact, name: str) -> bytes:
    # Re-hash what is actually parsed, so a file swapped after load_artifact's check is
    # caught too (verify-then-read would otherwise be a time-of-check/time-of-use gap).
    data = artifact.file(name).read_bytes()
    if hashlib.sha256(data).hexdigest() != artifact.files[name]:
        raise ArtifactError(f"checksum mismatch for {name} in {artifact.name}/{artifact.version}")
    return data
