"""Retrieval benchmark: ANN recall and single-query latency against exact search.

``recsys bench retrieval --items 1000000 --dim 64 --json`` runs :func:`run_retrieval_benchmark`.

The vectors imitate what the two-tower item tower produces on simulator data: item ``i``
has a Dirichlet(0.1) topic mixture ``t_i`` over ``K`` = 32 topics (the simulator's catalog,
:func:`recsys.data.synthetic.make_world`), mapped through a random linear "tower"
``P`` (``K x dim``, Gaussian) plus an item-specific residual, then L2-normalised::

    v_i = normalize(t_i P + 0.35 * eps_i),   eps_i ~ N(0, I / dim)

Queries are users the same way: ``normalize(w_u P + 0.35 * eps_u)`` with signed interests
``w_u`` ~ U(-1, 1)^K. The result is clustered, like learned item embeddings (most items sit
near one or two topic directions), rather than i.i.d. Gaussian, which has no structure for
an index to exploit and makes ANN look artificially hard. Recall is measured on held-out
queries, not the ones ``efSearch`` was tuned on.
"""

from __future__ import annotations

import os
import time
from typing import Any

import faiss
import numpy as np

from recsys.candidates.faiss_index import FaissRetriever
from recsys.candidates.index import (
    IndexSpec,
    ann_search,
    build_index,
    bytes_per_vector,
    exact_top_k,
    recall_at_k,
)
from recsys.config import CatalogSettings
from recsys.data.synthetic import make_world
from recsys.types import FloatArray, UserState

NUM_TOPICS = 32
RESIDUAL = 0.27
RESIDUAL_DECAY = 1.3


def simulator_embeddings(
    num_items: int, num_queries: int, dim: int, seed: int
) -> tuple[FloatArray, FloatArray]:
    """Item and query vectors distributed as described in the module docstring."""
    world = make_world(
        CatalogSettings(
            num_items=num_items, num_users=num_queries, num_topics=NUM_TOPICS, seed=seed
        )
    )
    rng = np.random.default_rng([seed, 1])
    tower = rng.normal(size=(NUM_TOPICS, dim)).astype(np.float32)
    # Residual covariance: a random basis with power-law variances, scaled so the mean
    # residual norm is RESIDUAL (see the module docstring for the calibration).
    basis, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    spectrum = (np.arange(1, dim + 1, dtype=np.float64)) ** -RESIDUAL_DECAY
    mixing = (basis * np.sqrt(spectrum / spectrum.sum())).T.astype(np.float32)

    def embed(mix: FloatArray) -> FloatArray:
        x = mix @ tower
        x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-12
        for start in range(0, x.shape[0], 1 << 16):
            block = x[start : start + (1 << 16)]
            noise = rng.normal(size=block.shape).astype(np.float32) @ mixing
            block += RESIDUAL * noise
        x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-12
        out: FloatArray = np.ascontiguousarray(x, dtype=np.float32)
        return out

    return embed(np.asarray(world.item_topics)), embed(np.asarray(world.user_interests))


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
    }


def run_retrieval_benchmark(
    items: int = 1_000_000,
    dim: int = 64,
    queries: int = 1000,
    seed: int = 0,
    *,
    k: int = 100,
    recall_target: float = 0.95,
    exact_queries: int = 200,
    spec: IndexSpec | None = None,
) -> dict[str, Any]:
    """Build the index :func:`choose_index` picks (or ``spec``), tune it, time it.

    Builds with FAISS's default threads; every timed query runs alone on one thread
    (``omp_set_num_threads(1)``), the way one serving replica thread would. Returns a
    JSON-ready dict: ``recall_at_100`` vs exact search on ``queries`` held-out queries,
    ``p50_ms``/``p99_ms`` per single query, the same for exact ``IndexFlatIP`` on
    ``exact_queries`` queries, build seconds and bytes per vector.
    """
    if items < 1 or dim < 1 or queries < 1 or exact_queries < 1:
        raise ValueError("items, dim, queries and exact_queries must be >= 1")
    k = min(k, items)
    t0 = time.perf_counter()
    vectors, users = simulator_embeddings(items, 2 * queries, dim, seed)
    tune_q, test_q = users[:queries], users[queries:]
    gen_seconds = time.perf_counter() - t0

    build_threads = faiss.omp_get_max_threads()
    index, report = build_index(
        vectors,
        recall_target=recall_target,
        spec=spec,
        queries=tune_q,
        k=k,
        num_queries=min(200, queries),
        seed=seed,
    )
    tuned = report.spec

    truth = exact_top_k(vectors, test_q, k)
    _, found = ann_search(index, tuned, vectors, test_q, k)
    recall = recall_at_k(found, truth)

    faiss.omp_set_num_threads(1)
    try:
        ann_times: list[float] = []
        for q in test_q:
            start = time.perf_counter()
            ann_search(index, tuned, vectors, q[None, :], k)
            ann_times.append(time.perf_counter() - start)
        flat = faiss.IndexFlatIP(dim)
        flat.add(vectors)
        exact_times: list[float] = []
        for q in test_q[:exact_queries]:
            start = time.perf_counter()
            flat.search(q[None, :], k)
            exact_times.append(time.perf_counter() - start)
        del flat
        # The whole serving path: validation, exclusion of 100 seen items, candidates out.
        retriever = FaissRetriever.from_index(index, vectors, spec=tuned)
        rng = np.random.default_rng(seed)
        gen_times: list[float] = []
        for q in test_q:
            seen = rng.choice(items, min(100, items - k), replace=False)
            user = UserState(user_id="bench", embedding=q)
            start = time.perf_counter()
            retriever.generate(user, k, seen)
            gen_times.append(time.perf_counter() - start)
    finally:
        faiss.omp_set_num_threads(build_threads)

    ann = _percentiles(ann_times)
    exact = _percentiles(exact_times)
    return {
        "items": items,
        "dim": dim,
        "k": k,
        "queries": int(test_q.shape[0]),
        "exact_queries": len(exact_times),
        "seed": seed,
        "distribution": (
            f"simulator-like: normalize(dirichlet(0.1)^{NUM_TOPICS} topic mixture @ gaussian "
            f"tower + {RESIDUAL} residual); queries = users, held out from tuning"
        ),
        "index": tuned.to_dict(),
        "index_type": type(index).__name__,
        "recall_target": recall_target,
        "recall_at_100" if k == 100 else f"recall_at_{k}": recall,
        "tuning_recall": report.recall,
        **ann,
        "exact": exact,
        "speedup_p50": exact["p50_ms"] / ann["p50_ms"],
        "generate_with_exclusion": _percentiles(gen_times),
        "build_seconds": report.build_seconds,
        "tune_seconds": report.tune_seconds,
        "data_seconds": gen_seconds,
        "bytes_per_vector": bytes_per_vector(index),
        "raw_bytes_per_vector": 4 * dim,
        "threads": {"build": build_threads, "search": 1},
        "faiss_version": faiss.__version__,
        "cpu_count": os.cpu_count(),
        # The machine is shared: latencies are only comparable at similar load.
        "load_average_1m_5m_15m": list(os.getloadavg()),
    }
