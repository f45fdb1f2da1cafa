"""`recsys train candidates --data`: logged-feedback Parquet and MovieLens sources end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recsys.candidates import (
    dataset_from_logged_feedback,
    load_retrieval_artifact,
    load_training_data,
    train_candidates,
)
from recsys.config import CandidateSettings, CatalogSettings
from recsys.data.synthetic import make_world
from recsys.recording import RecordingConfig, write_sessions
from recsys.simulator import SlateEnv
from recsys.types import CandidateFilters, UserState
from tests.unit.data.test_movielens import _write_grouplens


@pytest.fixture(scope="module")
def logged_parquet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A real simulator log: 120 users x 15 random slates of 10 over a 300-item world."""
    world = make_world(CatalogSettings(num_items=300, num_users=120, num_topics=8, seed=3))
    path = tmp_path_factory.mktemp("logs") / "sessions.parquet"
    write_sessions(path, SlateEnv(world, seed=0), RecordingConfig(steps=15, slate_size=10))
    return path, np.asarray(world.item_is_ad)


def test_logged_feedback_becomes_clicked_positives(
    logged_parquet: tuple[Path, np.ndarray],
) -> None:
    from recsys.data.logged import read_logged_feedback

    path, is_ad = logged_parquet
    log = read_logged_feedback(path)
    ds = dataset_from_logged_feedback(path)
    assert ds.num_interactions == int(log.click.sum()) > 0
    assert ds.num_users == np.unique(log.user_id).size
    assert ds.num_items == int(log.item_id.max()) + 1
    assert ds.item_features.shape[1] == log.item_features.shape[1]
    seen = np.unique(log.item_id)
    assert ds.item_is_ad is not None
    np.testing.assert_array_equal(ds.item_is_ad[seen], is_ad[seen])
    clicked = log.click.astype(bool)
    np.testing.assert_array_equal(np.sort(ds.item_idx), np.sort(log.item_id[clicked]))


def test_train_candidates_from_parquet_writes_a_servable_artifact(
    logged_parquet: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    path, _ = logged_parquet
    trained = train_candidates(path, CandidateSettings(dim=8, epochs=3), tmp_path, seed=1)
    model, retriever, artifact = load_retrieval_artifact(trained.artifact.path)
    assert artifact.metadata["dataset"] == "sessions"
    assert artifact.metadata["index"]["recall_at_k"] == 1.0  # small catalog: exact Flat
    assert len(artifact.metadata["user_ids"]) == model.num_users == trained.dataset.num_users
    user = UserState("x", model.user_embeddings[0])
    got = retriever.generate(user, 10, np.array([0, 1]), CandidateFilters(ads="exclude"))
    assert len(got) == 10
    assert not retriever.catalog.is_ad[got.item_ids].any()


def test_load_training_data_resolves_sources(tmp_path: Path) -> None:
    gl = _write_grouplens(tmp_path / "gl")
    assert load_training_data(gl).num_interactions == 5
    with pytest.raises(ValueError, match="no MovieLens data"):
        load_training_data(tmp_path / "missing")
