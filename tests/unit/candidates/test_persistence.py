"""Retrieval artifacts: round trip through safetensors + FAISS bytes, recall in the manifest,
the two-tower towers, tamper detection."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from recsys.artifacts import latest_version, save_artifact
from recsys.candidates import (
    RETRIEVAL_ARTIFACT,
    EmbeddingModel,
    FaissRetriever,
    IndexSpec,
    TwoTowerModel,
    catalog_from_dataset,
    load_retrieval_artifact,
    load_two_tower,
    save_retrieval_artifact,
)
from recsys.types import ArtifactError, CandidateFilters, UserState
from tests.unit.candidates.conftest import SmallSplit


@pytest.fixture
def model() -> EmbeddingModel:
    rng = np.random.default_rng(0)
    return EmbeddingModel(
        user_embeddings=rng.normal(size=(20, 6)).astype(np.float32),
        item_embeddings=rng.normal(size=(50, 6)).astype(np.float32),
        global_bias=-0.75,
        metrics={"val_auc": 0.81, "train_loss": 0.42, "undefined": float("nan")},
    )


def test_round_trip_gives_identical_search_results(model: EmbeddingModel, tmp_path: Path) -> None:
    saved = save_retrieval_artifact(tmp_path, model, {"seed": 3, "epochs": 8})
    assert saved.name == RETRIEVAL_ARTIFACT
    assert set(saved.files) == {"tensors.safetensors", "index.faiss"}
    assert latest_version(tmp_path, RETRIEVAL_ARTIFACT) == saved.path

    loaded, retriever, artifact = load_retrieval_artifact(saved.path)

    np.testing.assert_array_equal(loaded.user_embeddings, model.user_embeddings)
    np.testing.assert_array_equal(loaded.item_embeddings, model.item_embeddings)
    assert loaded.global_bias == model.global_bias
    assert loaded.metrics["val_auc"] == pytest.approx(0.81)
    assert np.isnan(loaded.metrics["undefined"])
    assert retriever.version == artifact.version == saved.version
    assert artifact.metadata["seed"] == 3
    assert artifact.metadata["index_type"] == "IndexFlatIP"
    assert artifact.metadata["dim"] == 6

    fresh = FaissRetriever(model.item_embeddings)
    exclude = np.array([0, 5, 7], dtype=np.int64)
    for u in range(model.num_users):
        user = UserState(user_id=str(u), embedding=model.user_embeddings[u])
        a = fresh.generate(user, 10, exclude)
        b = retriever.generate(user, 10, exclude)
        np.testing.assert_array_equal(a.item_ids, b.item_ids)
        np.testing.assert_array_equal(a.scores, b.scores)
        np.testing.assert_array_equal(a.embeddings, b.embeddings)
    ids_a, scores_a = fresh.generate_batch(model.user_embeddings, 12)
    ids_b, scores_b = retriever.generate_batch(model.user_embeddings, 12)
    np.testing.assert_array_equal(ids_a, ids_b)
    np.testing.assert_array_equal(scores_a, scores_b)


@pytest.mark.parametrize("file", ["index.faiss", "tensors.safetensors"])
def test_flipped_byte_fails_checksum(model: EmbeddingModel, tmp_path: Path, file: str) -> None:
    saved = save_retrieval_artifact(tmp_path, model, {})
    path = saved.path / file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=f"checksum mismatch for {file}"):
        load_retrieval_artifact(saved.path)


def test_corrupt_index_with_matching_manifest_is_an_artifact_error(
    model: EmbeddingModel, tmp_path: Path
) -> None:
    # Someone rewrote both the file and its checksum: the bytes still must parse as an index.
    saved = save_retrieval_artifact(tmp_path, model, {})
    garbage = b"not a faiss index" * 4
    (saved.path / "index.faiss").write_bytes(garbage)
    manifest_path = saved.path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["index.faiss"]["sha256"] = hashlib.sha256(garbage).hexdigest()
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="not a readable FAISS index"):
        load_retrieval_artifact(saved.path)


def test_other_artifact_kinds_are_rejected(tmp_path: Path) -> None:
    other = save_artifact(tmp_path, "reward", tensors={"w": np.zeros(3, np.float32)})
    with pytest.raises(ArtifactError, match="not 'retrieval'"):
        load_retrieval_artifact(other.path)


def test_missing_tensor_is_an_artifact_error(model: EmbeddingModel, tmp_path: Path) -> None:
    bogus = save_artifact(
        tmp_path,
        RETRIEVAL_ARTIFACT,
        tensors={"item_embeddings": model.item_embeddings},
        files={"index.faiss": FaissRetriever(model.item_embeddings).serialize()},
    )
    with pytest.raises(ArtifactError, match="user_embeddings"):
        load_retrieval_artifact(bogus.path)


def test_caller_metrics_merge_with_model_metrics(model: EmbeddingModel, tmp_path: Path) -> None:
    saved = save_retrieval_artifact(
        tmp_path, model, {"metrics": {"recall_at_100": 0.97, "val_auc": 0.1}}
    )
    loaded, _, artifact = load_retrieval_artifact(saved.path)
    assert artifact.metadata["metrics"]["recall_at_100"] == 0.97
    assert loaded.metrics["val_auc"] == pytest.approx(0.81)  # the model's own value wins
    assert artifact.metadata["metrics"]["undefined"] is None  # NaN is not JSON
    with pytest.raises(ValueError, match="'note' is not a number"):
        save_retrieval_artifact(tmp_path, model, {"metrics": {"note": "hi"}})


def test_reserved_metadata_keys_are_refused(model: EmbeddingModel, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="reserved"):
        save_retrieval_artifact(tmp_path, model, {"dim": 3})


def test_saving_a_prebuilt_retriever_checks_it_matches(
    model: EmbeddingModel, tmp_path: Path
) -> None:
    other = FaissRetriever(model.item_embeddings + 1.0)
    with pytest.raises(ValueError, match="different item embeddings"):
        save_retrieval_artifact(tmp_path, model, {}, retriever=other)
    same = FaissRetriever(model.item_embeddings)
    saved = save_retrieval_artifact(tmp_path, model, {}, retriever=same, version="v1")
    assert saved.version == "v1"


def test_two_tower_artifact_round_trip_with_index_recall_and_checksums(
    small_two_tower: TwoTowerModel, small_split: SmallSplit, tmp_path: Path
) -> None:
    ds = small_split.dataset
    catalog = catalog_from_dataset(ds, small_split.split.train)
    # Force an approximate index so the manifest carries a measured (not assumed) recall.
    built = FaissRetriever.build(
        small_two_tower.item_embeddings,
        recall_target=0.95,
        queries=small_two_tower.user_embeddings,
        spec=IndexSpec(kind="ivf_flat", nlist=32, nprobe=1),
        catalog=catalog,
        user_encoder=small_two_tower.user_vector,
    )
    saved = save_retrieval_artifact(
        tmp_path, small_two_tower, {"user_ids": list(ds.user_ids)}, retriever=built
    )
    assert set(saved.files) == {"tensors.safetensors", "index.faiss", "two_tower.safetensors"}
    index_meta = saved.metadata["index"]
    assert saved.metadata["model"] == "two_tower"
    assert saved.metadata["bias_coordinate"] == "none"
    assert index_meta["spec"]["kind"] == "ivf_flat"
    assert index_meta["recall_at_k"] >= 0.95
    assert index_meta["spec"]["nprobe"] > 1  # tuned up from 1 to reach the target
    manifest = json.loads((saved.path / "manifest.json").read_text())
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == hashlib.sha256((saved.path / name).read_bytes()).hexdigest()

    model, retriever, _ = load_retrieval_artifact(saved.path)
    assert retriever.spec == built.spec
    assert retriever.index_report is not None
    assert retriever.index_report.recall == pytest.approx(index_meta["recall_at_k"])
    np.testing.assert_array_equal(retriever.catalog.popularity, catalog.popularity)
    np.testing.assert_array_equal(retriever.catalog.categories, catalog.categories)
    users = [UserState(str(u), model.user_embeddings[u]) for u in range(0, 200, 7)]
    for a, b in zip(
        built.generate_many(users, 30, None, CandidateFilters((1,))),
        retriever.generate_many(users, 30, None, CandidateFilters((1,))),
        strict=True,
    ):
        np.testing.assert_array_equal(a.item_ids, b.item_ids)
    # The stored user tower answers for users who only have fresh clicks.
    tower = load_two_tower(saved.path)
    history = np.array([10, 20, 30], dtype=np.int64)
    np.testing.assert_allclose(
        tower.user_vector(history), small_two_tower.user_vector(history), atol=1e-6
    )
    cold = UserState("new", np.zeros(model.dim, np.float32), clicked=history)
    assert len(retriever.generate(cold, 10, history)) == 10

    data = bytearray((saved.path / "two_tower.safetensors").read_bytes())
    data[len(data) // 2] ^= 0x01
    (saved.path / "two_tower.safetensors").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"checksum mismatch for two_tower\.safetensors"):
        load_retrieval_artifact(saved.path)


def test_default_save_builds_and_measures_an_index(model: EmbeddingModel, tmp_path: Path) -> None:
    saved = save_retrieval_artifact(tmp_path, model, {})
    assert saved.metadata["model"] == "matrix_factorisation"
    assert saved.metadata["index"]["spec"]["kind"] == "flat"
    assert saved.metadata["index"]["recall_at_k"] == 1.0
    with pytest.raises(ArtifactError, match="not a two-tower model"):
        load_two_tower(saved.path)
