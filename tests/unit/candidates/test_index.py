"""Index choice, build-time recall tuning and measurement, search semantics per index kind."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest

from recsys.candidates import IndexSpec, build_index, choose_index
from recsys.candidates.bench import simulator_embeddings
from recsys.candidates.index import ann_search, exact_top_k, recall_at_k
from recsys.types import FloatArray


@cache
def _clustered(n: int, dim: int = 16) -> tuple[FloatArray, FloatArray]:
    return simulator_embeddings(n, 400, dim, seed=1)


@pytest.mark.parametrize(
    ("n", "target", "kind"),
    [
        (1, 0.95, "flat"),
        (50_000, 0.95, "flat"),
        (50_001, 0.95, "ivf_sq8"),
        (1_000_000, 0.95, "ivf_sq8"),
        (1_000_000, 1.0, "flat"),
        (20_000_000, 0.95, "ivfpq"),
    ],
)
def test_choose_index_by_catalog_size(n: int, target: float, kind: str) -> None:
    spec = choose_index(n, 64, target)
    assert spec.kind == kind
    if kind == "ivf_sq8":
        assert spec.nlist == (4096 if n == 1_000_000 else 1024)
    if kind == "ivfpq":
        assert spec.pq_m == 16
        assert spec.rerank_factor >= 4


def test_choose_index_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="empty"):
        choose_index(0, 8)
    with pytest.raises(ValueError, match="recall_target"):
        choose_index(10, 8, 0.0)
    with pytest.raises(ValueError, match="unknown index kind"):
        IndexSpec(kind="annoy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="nlist"):
        IndexSpec(kind="ivf_flat")


def test_spec_round_trips_through_json_dict() -> None:
    spec = IndexSpec(kind="ivfpq", nlist=64, nprobe=4, pq_m=8, rerank_factor=4)
    assert IndexSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize(
    "spec",
    [
        IndexSpec(kind="ivf_sq8", nlist=64, nprobe=1),
        IndexSpec(kind="ivf_flat", nlist=64, nprobe=1),
        IndexSpec(kind="hnsw", hnsw_m=16, ef_construction=40, ef_search=16),
    ],
    ids=lambda s: s.kind,
)
def test_build_tunes_the_search_knob_to_the_recall_target(spec: IndexSpec) -> None:
    items, users = _clustered(8000)
    index, report = build_index(items, spec=spec, recall_target=0.95, queries=users[:200], k=50)
    assert report.recall >= 0.95
    assert report.spec.kind == spec.kind
    assert report.spec.nprobe >= spec.nprobe
    assert report.spec.ef_search >= spec.ef_search
    assert report.num_queries == 200
    assert report.k == 50
    # Held-out queries: the tuned knob generalises (a little slack for sampling noise).
    held_out = users[200:]
    _, found = ann_search(index, report.spec, items, held_out, 50)
    assert recall_at_k(found, exact_top_k(items, held_out, 50)) >= 0.93
    assert set(report.to_dict()) >= {"spec", "recall_at_k", "k", "build_seconds"}


def test_lossy_index_scores_are_exact_and_sorted() -> None:
    items, users = _clustered(4000)
    spec = IndexSpec(kind="ivfpq", nlist=32, nprobe=8, pq_m=4, rerank_factor=4)
    index, report = build_index(items, spec=spec, recall_target=0.9, queries=users, k=20)
    scores, ids = ann_search(index, report.spec, items, users[:10], 20)
    assert (ids >= 0).all()
    np.testing.assert_allclose(scores, np.einsum("bkd,bd->bk", items[ids], users[:10]), rtol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    assert 0.0 < report.recall <= 1.0


def test_flat_is_exact_without_measuring() -> None:
    items, users = _clustered(1000)
    index, report = build_index(items, queries=users)
    assert report.spec.kind == "flat"
    assert report.recall == 1.0
    assert report.num_queries == 0
    _, ids = ann_search(index, report.spec, items, users[:5], 10)
    np.testing.assert_array_equal(ids, exact_top_k(items, users[:5], 10))


def test_recall_at_k_counts_overlap_and_ignores_padding() -> None:
    truth = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    found = np.array([[4, 3, 9, -1], [5, 6, 7, 8]])
    assert recall_at_k(found, truth) == pytest.approx((2 / 4 + 1) / 2)
    with pytest.raises(ValueError, match="rows"):
        recall_at_k(found[:1], truth)
