"""`recsys evaluate candidates` and `recsys bench retrieval` functions on tiny budgets."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recsys.candidates import IndexSpec, evaluate_candidates
from recsys.candidates.bench import run_retrieval_benchmark, simulator_embeddings
from recsys.config import CandidateSettings
from recsys.types import InteractionDataset


def test_evaluate_reports_every_model_on_every_protocol(ml100k: InteractionDataset) -> None:
    small = ml100k.subset(np.flatnonzero(ml100k.user_idx < 100))
    result = evaluate_candidates(small, seed=1, settings=CandidateSettings(dim=8, epochs=2))
    json.dumps(result)  # JSON-ready: no numpy scalars, no NaN surprises
    assert set(result["protocols"]) == {"random_80_10_10", "temporal_leave_last_out"}
    for protocol in result["protocols"].values():
        for model in ("popularity", "itemknn", "two_tower"):
            test = protocol[model]["test"]
            assert set(test) >= {"recall@10", "ndcg@10", "recall@100", "num_users"}
            assert 0.0 <= test["ndcg@10"] <= 1.0
            assert test["num_users"] == 100
        assert protocol["two_tower"]["training"]["epochs"] <= 2
    temporal = result["protocols"]["temporal_leave_last_out"]
    assert temporal["test"] == temporal["valid"] == 100  # one held-out item per user each
    assert result["reference"]["ndcg@10"] == [0.277, 0.292]
    with pytest.raises(ValueError, match="unknown models"):
        evaluate_candidates(small, models=("bpr",))


def test_retrieval_benchmark_reports_recall_latency_and_size() -> None:
    spec = IndexSpec(kind="ivf_sq8", nlist=32, nprobe=1)
    result = run_retrieval_benchmark(
        items=4000, dim=16, queries=60, seed=0, k=50, exact_queries=20, spec=spec
    )
    json.dumps(result)
    assert result["recall_at_50"] >= 0.95
    assert result["index"]["kind"] == "ivf_sq8"
    assert result["index"]["nprobe"] > 1
    assert result["p50_ms"] > 0
    assert result["exact"]["p50_ms"] > 0
    assert result["exact_queries"] == 20
    assert result["threads"]["search"] == 1
    # SQ8 codes (1 byte per dim) + an 8-byte id, plus amortised centroids.
    assert 16 + 8 <= result["bytes_per_vector"] < 4 * 16


def test_benchmark_vectors_are_clustered_unit_vectors() -> None:
    items, queries = simulator_embeddings(3000, 50, 32, seed=0)
    np.testing.assert_allclose(np.linalg.norm(items, axis=1), 1.0, rtol=1e-5)
    assert queries.shape == (50, 32)
    # Clustered: an item's nearest neighbour is much closer than a random item.
    sims = items[:200] @ items.T
    sims[np.arange(200), np.arange(200)] = -1.0
    assert sims.max(axis=1).mean() > 0.8
    assert abs(float(sims.mean())) < 0.2
