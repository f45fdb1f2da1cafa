"""Save and load the retrieval model as one versioned artifact.

Layout under ``<root>/retrieval/<version>/``: ``tensors.safetensors`` (user and item
embeddings, global bias), ``index.faiss`` (the FAISS index in its own binary format) and
``manifest.json`` (sha256 of both, plus metadata). The index is stored rather than rebuilt on
load because approximate indexes (IVF, HNSW) are costly to train and must be served exactly
as evaluated. Nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as load_safetensors

from recsys.artifacts import Artifact, load_artifact, save_artifact
from recsys.candidates.embeddings import EmbeddingModel
from recsys.candidates.faiss_index import FaissRetriever
from recsys.types import ArtifactError

RETRIEVAL_ARTIFACT = "retrieval"
INDEX_FILE = "index.faiss"
TENSORS_FILE = "tensors.safetensors"
_RESERVED_METADATA = frozenset({"num_users", "num_items", "dim", "index_type", "bias_coordinate"})


def save_retrieval_artifact(
    root: Path,
    model: EmbeddingModel,
    metadata: Mapping[str, Any],
    *,
    retriever: FaissRetriever | None = None,
    version: str | None = None,
) -> Artifact:
    """Write embeddings and their FAISS index as a new ``retrieval`` artifact version.

    ``retriever`` lets a caller persist an index it already built (an IVF index trained
    once); by default an exact index is built from ``model.item_embeddings``. ``metadata``
    (e.g. the training settings and seed) is stored beside the model's own description; a
    ``metrics`` mapping in it is merged with ``model.metrics``, the model's values winning.
    """
    clash = _RESERVED_METADATA & set(metadata)
    if clash:
        raise ValueError(f"metadata keys {sorted(clash)} are reserved for the retrieval artifact")
    if retriever is None:
        retriever = FaissRetriever(model.item_embeddings)
    elif not np.array_equal(retriever.item_embeddings, model.item_embeddings):
        raise ValueError("retriever was built from different item embeddings than the model")
    full_metadata = {
        **metadata,
        "num_users": model.num_users,
        "num_items": model.num_items,
        "dim": model.dim,
        "index_type": retriever.index_type,
        "bias_coordinate": "last",
        "metrics": _json_metrics({**dict(metadata.get("metrics") or {}), **model.metrics}),
    }
    return save_artifact(
        root,
        RETRIEVAL_ARTIFACT,
        tensors={
            "user_embeddings": model.user_embeddings,
            "item_embeddings": model.item_embeddings,
            "global_bias": np.array([model.global_bias], dtype=np.float64),
        },
        files={INDEX_FILE: retriever.serialize()},
        metadata=full_metadata,
        version=version,
    )


def load_retrieval_artifact(path: Path) -> tuple[EmbeddingModel, FaissRetriever, Artifact]:
    """Verify and load one ``retrieval`` artifact version directory.

    Every file's sha256 is checked against the manifest, and the bytes that are parsed are
    the bytes that were hashed. Raises :class:`ArtifactError` for anything missing, corrupt
    or inconsistent. The retriever's ``version`` is the artifact version.
    """
    artifact = load_artifact(path)
    if artifact.name != RETRIEVAL_ARTIFACT:
        raise ArtifactError(
            f"{path} holds a {artifact.name!r} artifact, not {RETRIEVAL_ARTIFACT!r}"
        )
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
        retriever = FaissRetriever.deserialize(
            _verified_bytes(artifact, INDEX_FILE), model.item_embeddings, artifact.version
        )
    except ArtifactError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, SafetensorError) as exc:
        raise ArtifactError(f"invalid retrieval artifact {where}: {exc}") from exc
    return model, retriever, artifact


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
