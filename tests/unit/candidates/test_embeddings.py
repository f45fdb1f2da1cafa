"""Matrix-factorisation embeddings: recovery of planted structure, determinism, validation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recsys.candidates import (
    EmbeddingModel,
    FaissRetriever,
    TrainingOptions,
    roc_auc,
    train_embeddings,
)
from recsys.config import CandidateSettings
from tests.unit.candidates.conftest import PlantedLogs, make_planted_logs


def test_recovers_planted_structure(trained: EmbeddingModel, planted: PlantedLogs) -> None:
    # Bayes-optimal AUC on this world is about 0.90; a model that learned nothing gets 0.5.
    assert trained.metrics["val_auc"] >= 0.75
    learned = trained.user_embeddings @ trained.item_embeddings.T
    assert np.corrcoef(learned.ravel(), planted.true_logits.ravel())[0, 1] > 0.7


def test_beats_shuffled_label_control(
    trained: EmbeddingModel, planted: PlantedLogs, settings: CandidateSettings
) -> None:
    shuffled = np.random.default_rng(1).permutation(planted.labels)
    control = train_embeddings(
        planted.user_idx,
        planted.item_idx,
        shuffled,
        planted.num_users,
        planted.num_items,
        settings,
        seed=0,
    )
    assert control.metrics["val_auc"] < 0.6
    assert trained.metrics["val_auc"] > control.metrics["val_auc"] + 0.15


def test_retrieved_items_are_truly_better(trained: EmbeddingModel, planted: PlantedLogs) -> None:
    ids, _ = FaissRetriever(trained.item_embeddings).generate_batch(trained.user_embeddings, 10)
    retrieved = planted.true_logits[np.arange(planted.num_users)[:, None], ids].mean()
    oracle = np.sort(planted.true_logits, axis=1)[:, -10:].mean()
    average = planted.true_logits.mean()
    # Top-10 by learned embeddings should close most of the gap from random to oracle.
    assert retrieved > average + 0.6 * (oracle - average)


def test_shapes_dtypes_and_folded_bias(trained: EmbeddingModel, planted: PlantedLogs) -> None:
    assert trained.user_embeddings.shape == (planted.num_users, 32)
    assert trained.item_embeddings.shape == (planted.num_items, 32)
    assert trained.user_embeddings.dtype == trained.item_embeddings.dtype == np.float32
    assert trained.dim == 32
    np.testing.assert_array_equal(trained.user_embeddings[:, -1], 1.0)
    u, i = planted.user_idx[:50], planted.item_idx[:50]
    expected = (
        np.einsum("nd,nd->n", trained.user_embeddings[u], trained.item_embeddings[i])
        + trained.global_bias
    )
    np.testing.assert_allclose(trained.logits(u, i), expected, rtol=1e-6)
    assert {"train_loss", "val_loss", "val_auc", "num_train", "num_val"} <= set(trained.metrics)
    assert trained.metrics["num_val"] == pytest.approx(0.1 * planted.user_idx.size)


def test_same_seed_is_deterministic_and_other_seed_differs() -> None:
    logs = make_planted_logs(num_users=30, num_items=40, num_impressions=2000)
    settings = CandidateSettings(dim=8, epochs=2)

    def fit(seed: int) -> EmbeddingModel:
        return train_embeddings(
            logs.user_idx, logs.item_idx, logs.labels, 30, 40, settings, seed=seed
        )

    a, b, c = fit(3), fit(3), fit(4)
    np.testing.assert_array_equal(a.user_embeddings, b.user_embeddings)
    np.testing.assert_array_equal(a.item_embeddings, b.item_embeddings)
    assert a.global_bias == b.global_bias
    assert not np.array_equal(a.item_embeddings, c.item_embeddings)


@pytest.mark.parametrize("progress", [True, False])
def test_progress_bar_goes_to_stderr_only_when_asked(
    progress: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    logs = make_planted_logs(num_users=10, num_items=10, num_impressions=200)
    settings = CandidateSettings(dim=4, epochs=2)
    train_embeddings(
        logs.user_idx, logs.item_idx, logs.labels, 10, 10, settings, seed=0, progress=progress
    )
    captured = capsys.readouterr()
    assert captured.out == ""
    assert ("embeddings epoch 2" in captured.err) is progress


def test_tiny_log_without_validation_split_reports_no_auc() -> None:
    model = train_embeddings(
        np.array([0]),
        np.array([1]),
        np.array([1.0], np.float32),
        1,
        2,
        CandidateSettings(dim=2, epochs=1),
        seed=0,
    )
    assert model.metrics["num_val"] == 0
    assert "val_auc" not in model.metrics
    assert model.item_embeddings.shape == (2, 2)


_U = np.array([0, 1, 2])
_I = np.array([0, 1, 2])
_Y = np.array([1.0, 0.0, 1.0], np.float32)


@pytest.mark.parametrize(
    ("users", "items", "labels", "match"),
    [
        (_U[:2], _I, _Y, "equal lengths"),
        (np.array([0, 1, 3]), _I, _Y, r"user_idx has 1 ids outside \[0, 3\), e.g. 3"),
        (_U, np.array([0, -1, 2]), _Y, r"item_idx .* e.g. -1"),
        (_U, _I, np.array([1.0, np.nan, 0.0], np.float32), "NaN"),
        (_U, _I, np.array([1.0, 2.0, 0.0], np.float32), r"\[0, 1\]"),
        (_U.astype(np.float64), _I, _Y, "user_idx must hold integers"),
        (_U[:0], _I[:0], _Y[:0], "no impressions"),
        (_U.reshape(3, 1), _I, _Y, "1-D"),
    ],
)
def test_rejects_bad_logs(
    users: np.ndarray, items: np.ndarray, labels: np.ndarray, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        train_embeddings(users, items, labels, 3, 3, CandidateSettings(dim=4, epochs=1), seed=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"batch_size": 0}, "batch_size"),
        ({"l2": -1.0}, "l2"),
        ({"init_std": 0.0}, "init_std"),
        ({"validation_fraction": 1.0}, "validation_fraction"),
    ],
)
def test_training_options_validate(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TrainingOptions(**kwargs)  # type: ignore[arg-type]


def test_embedding_model_rejects_mismatched_tables() -> None:
    with pytest.raises(ValueError, match="dim"):
        EmbeddingModel(np.zeros((2, 3), np.float32), np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="float32"):
        EmbeddingModel(np.zeros((2, 3)), np.zeros((2, 3), np.float32))  # type: ignore[arg-type]


def test_roc_auc_matches_pairwise_definition() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.3
    s = rng.integers(0, 10, 300).astype(np.float64)  # many ties
    pos, neg = s[y], s[~y]
    diff = pos[:, None] - neg[None, :]
    expected = ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size
    assert roc_auc(y, s) == pytest.approx(expected)
    assert roc_auc([0, 1, 1], [0.1, 0.5, 0.9]) == 1.0
    assert math.isnan(roc_auc([1, 1], [0.2, 0.3]))
