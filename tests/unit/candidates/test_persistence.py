"""Retrieval artifacts: round trip through safetensors + FAISS bytes, recall in the manifest,
the two-tower towers, tamper detection."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from recsys.artifacts import latest_version, save_artifact
from recsys.candidates import (
    RETRIEVAL_ARTIFACT,
    EmbeddingModel,
    FaissRetriever,
    IndexSpec,
    LoadedRetrieval,
    TwoTowerModel,
    catalog_from_dataset,
    load_retrieval,
    load_retrieval_artifact,
    load_two_tower,
    save_retrieval_artifact,
)
from recsys.features import ItemTable
from recsys.types import ArtifactError, CandidateFilters, UserState
from tests.unit.candidates.conftest import SmallSplit, random_two_tower


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


def _item_table(num_items: int, seed: int = 0, ads: float = 0.2) -> ItemTable:
    rng = np.random.default_rng(seed)
    is_ad = rng.random(num_items) < ads
    return ItemTable(
        topics=rng.dirichlet(np.ones(3), size=num_items).astype(np.float32),
        is_ad=is_ad,
        bid=np.where(is_ad, rng.uniform(0.1, 3.0, num_items), 0.0).astype(np.float32),
        length_s=rng.uniform(5, 600, num_items).astype(np.float32),
        popularity=rng.dirichlet(np.ones(num_items)).astype(np.float32),
    )


def _rewrite_tensors(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Edit the stored tensors and re-sign the manifest: consistent checksums, bad content."""
    file = path / "tensors.safetensors"
    tensors = dict(load_safetensors(file.read_bytes()))
    change(tensors)
    data = save_safetensors(tensors)
    file.write_bytes(data)
    manifest_path = path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["tensors.safetensors"]["sha256"] = hashlib.sha256(data).hexdigest()
    manifest_path.write_text(json.dumps(manifest))


def test_item_table_round_trip_gives_a_retriever_ready_for_histories(tmp_path: Path) -> None:
    two_tower = random_two_tower(120, dim=8, seed=2)
    table = _item_table(120)
    built = FaissRetriever(
        two_tower.item_embeddings,
        item_table=table,
        history_encoder=two_tower.history_vectors,
    )
    saved = save_retrieval_artifact(tmp_path, two_tower, {"seed": 1}, retriever=built)
    assert any(name.startswith("catalog/") for name in saved.tensors())

    loaded = load_retrieval(saved.path)
    assert isinstance(loaded, LoadedRetrieval)
    assert loaded.item_table is not None
    assert loaded.two_tower is not None
    for name in ("topics", "is_ad", "bid", "length_s", "popularity"):
        np.testing.assert_array_equal(getattr(loaded.item_table, name), getattr(table, name))
    assert loaded.retriever.item_table is loaded.item_table
    assert loaded.retriever.version == loaded.artifact.version == saved.version
    np.testing.assert_array_equal(loaded.retriever.catalog.is_ad, table.is_ad)
    np.testing.assert_array_equal(loaded.model.item_embeddings, two_tower.item_embeddings)

    hist = np.random.default_rng(0).integers(-1, 120, size=(30, 5))
    a = built.candidates_for_histories(hist, 10, 3)
    b = loaded.retriever.candidates_for_histories(hist, 10, 3)
    np.testing.assert_array_equal(a.item_ids, b.item_ids)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)
    one = loaded.retriever.candidates_for_history(hist[0], 10, 3)
    np.testing.assert_array_equal(one.bid, table.bid[one.item_ids])
    assert one.is_ad.sum() == 3

    # The tuple loader serving uses is the same load.
    model, retriever, artifact = load_retrieval_artifact(saved.path)
    assert artifact.version == saved.version
    assert retriever.item_table is not None
    np.testing.assert_array_equal(model.user_embeddings, loaded.model.user_embeddings)


def test_an_explicit_item_table_is_stored_and_checked(
    model: EmbeddingModel, tmp_path: Path
) -> None:
    table = _item_table(model.num_items, seed=1)
    saved = save_retrieval_artifact(tmp_path, model, {}, item_table=table)
    loaded = load_retrieval(saved.path)
    assert loaded.two_tower is None  # matrix factorisation: no towers, no history encoder
    assert loaded.retriever.history_encoder is None
    assert loaded.item_table is not None
    np.testing.assert_array_equal(loaded.item_table.bid, table.bid)
    np.testing.assert_array_equal(loaded.retriever.catalog.is_ad, table.is_ad)

    with pytest.raises(ValueError, match="describes 49 items"):
        save_retrieval_artifact(tmp_path, model, {}, item_table=_item_table(49))
    plain = FaissRetriever(model.item_embeddings)  # its catalog has no ads
    if table.is_ad.any():
        with pytest.raises(ValueError, match="disagree on which items are ads"):
            save_retrieval_artifact(tmp_path, model, {}, retriever=plain, item_table=table)
    without = load_retrieval(save_retrieval_artifact(tmp_path, model, {}, version="v0").path)
    assert without.item_table is None
    assert without.retriever.item_table is None


def _shrink_table(tensors: dict[str, Any]) -> None:
    for name in [n for n in tensors if n.startswith("catalog/")]:
        tensors[name] = np.ascontiguousarray(tensors[name][:-1])


def _flip_an_ad(tensors: dict[str, Any]) -> None:
    tensors["catalog/is_ad"] = tensors["catalog/is_ad"].copy()
    tensors["catalog/is_ad"][0] ^= 1


def _nan_bid(tensors: dict[str, Any]) -> None:
    tensors["catalog/bid"] = tensors["catalog/bid"].copy()
    tensors["catalog/bid"][3] = np.nan


def _drop_a_field(tensors: dict[str, Any]) -> None:
    del tensors["catalog/length_s"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_shrink_table, "describes 49 items, but the index holds 50"),
        (_flip_an_ad, "disagrees with the catalog on which items are ads"),
        (_nan_bid, "invalid item table.*bid contains NaN"),
        (_drop_a_field, "invalid item table.*missing catalog/length_s"),
    ],
)
def test_an_inconsistent_item_table_is_refused(
    model: EmbeddingModel,
    tmp_path: Path,
    change: Callable[[dict[str, Any]], None],
    message: str,
) -> None:
    saved = save_retrieval_artifact(tmp_path, model, {}, item_table=_item_table(50, seed=5))
    _rewrite_tensors(saved.path, change)
    with pytest.raises(ArtifactError, match=message):
        load_retrieval(saved.path)
    with pytest.raises(ArtifactError, match=message):
        load_retrieval_artifact(saved.path)


def test_a_tampered_item_table_fails_its_checksum(model: EmbeddingModel, tmp_path: Path) -> None:
    saved = save_retrieval_artifact(tmp_path, model, {}, item_table=_item_table(50, seed=6))
    file = saved.path / "tensors.safetensors"
    tensors = dict(load_safetensors(file.read_bytes()))
    tensors["catalog/bid"] = tensors["catalog/bid"] * 2  # richer advertisers, same manifest
    file.write_bytes(save_safetensors(tensors))
    with pytest.raises(ArtifactError, match=r"checksum mismatch for tensors\.safetensors"):
        load_retrieval(saved.path)
