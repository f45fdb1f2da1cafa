"""FAISS index choice, construction and recall measurement for inner-product retrieval.

The retriever serves maximum inner product over item embeddings (cosine for the two-tower
model, whose vectors are unit length). Which index to build depends on the catalog:

- ``flat`` (``IndexFlatIP``) up to :data:`FLAT_MAX_ITEMS`: an exact scan of 50k x 64 floats
  takes ~1 ms on one core, so an approximate index would buy nothing and cost recall.
- ``ivf_sq8`` (``IVF{nlist},SQ8``) up to :data:`IVF_MAX_ITEMS`: k-means partitions the
  catalog into ``nlist ~ 4 sqrt(N)`` lists and a query scans the ``nprobe`` nearest lists,
  reading 8-bit scalar-quantised vectors (64 + 8 bytes per item at dim 64).
- ``ivfpq`` (``IVF{nlist},PQ{m}``) beyond that: product-quantised codes (``m`` bytes per
  item) keep billion-scale catalogs in RAM; the search over-fetches ``rerank_factor * k``.
- ``hnsw`` (``IndexHNSWFlat``) and ``ivf_flat`` are available through an explicit spec. On the
  1M x 64 simulator benchmark (docs/benchmarks.md) IVF-SQ8 reached recall@100 0.95 at less
  than half of HNSW's (M=32) single-query latency, with a seventh of its memory and a
  quarter of its build time, which is why it is the default for mid-size catalogs.

Scores from quantised codes are approximate, so lossy indexes are always re-scored exactly
from the embeddings the retriever holds anyway (it returns them with the candidates):
returned scores are exact inner products whatever the index.

:func:`build_index` builds the chosen index, then raises the search-time knob (``efSearch``
or ``nprobe``) until recall@k against exact search on a sample of queries reaches the target,
and reports the measured recall. That report goes into the artifact manifest, so a served
index always comes with the recall it was measured at. This module and
:mod:`recsys.candidates.faiss_index` are the only importers of :mod:`faiss`.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import faiss
import numpy as np
import numpy.typing as npt

from recsys.types import FloatArray, IntArray

IndexKind = Literal["flat", "hnsw", "ivf_flat", "ivf_sq8", "ivfpq"]
FLAT_MAX_ITEMS = 50_000
IVF_MAX_ITEMS = 5_000_000
# Search-time knobs grow through these multiples of k (HNSW efSearch) and of 1 (IVF nprobe).
_EF_STEPS = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0)
_NPROBE_STEPS = tuple(sorted({int(b * 2**p) for p in range(16) for b in (1, 1.25, 1.5, 1.75)}))
_MAX_EF = 8192
_FAISS: Any = faiss


@dataclass(frozen=True, slots=True)
class IndexSpec:
    """How to build and search one index; stored in the artifact manifest.

    ``ef_search`` (HNSW) and ``nprobe`` (IVF) are search-time knobs that :func:`build_index`
    tunes; the rest are fixed at build time. ``rerank_factor > 1`` over-fetches that many
    times ``k`` before exact re-scoring (for coarse PQ codes).
    """

    kind: IndexKind = "flat"
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 128
    nlist: int = 0
    nprobe: int = 1
    pq_m: int = 0
    rerank_factor: int = 1

    def __post_init__(self) -> None:
        if self.kind not in ("flat", "hnsw", "ivf_flat", "ivf_sq8", "ivfpq"):
            raise ValueError(f"unknown index kind {self.kind!r}")
        if min(self.hnsw_m, self.ef_construction, self.ef_search, self.nprobe) < 1:
            raise ValueError(f"index parameters must be positive: {self}")
        if self.rerank_factor < 1:
            raise ValueError(f"rerank_factor must be >= 1, got {self.rerank_factor}")
        if self.is_ivf and self.nlist < 1:
            raise ValueError(f"{self.kind} needs nlist >= 1")
        if self.kind == "ivfpq" and self.pq_m < 1:
            raise ValueError("ivfpq needs pq_m >= 1")

    @property
    def exact(self) -> bool:
        """True when search is exhaustive and exact (recall 1 by construction)."""
        return self.kind == "flat"

    @property
    def is_ivf(self) -> bool:
        """True for the inverted-file kinds (searched with ``nprobe``)."""
        return self.kind in ("ivf_flat", "ivf_sq8", "ivfpq")

    @property
    def lossy(self) -> bool:
        """True when the index scores from compressed codes (results are re-scored)."""
        return self.kind in ("ivf_sq8", "ivfpq")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for manifests."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IndexSpec:
        """Inverse of :meth:`to_dict`; unknown keys are an error (a newer writer's format)."""
        return cls(**data)


def choose_index(num_items: int, dim: int, recall_target: float = 0.95) -> IndexSpec:
    """The index for a catalog of ``num_items`` vectors of width ``dim`` (see module docs).

    ``recall_target`` 1.0 always gives exact search; lower targets allow approximate
    indexes, whose search knob starts low and is tuned by :func:`build_index`.
    """
    if num_items < 1:
        raise ValueError("cannot index an empty catalog")
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    if not 0.0 < recall_target <= 1.0:
        raise ValueError(f"recall_target must be in (0, 1], got {recall_target}")
    if num_items <= FLAT_MAX_ITEMS or recall_target >= 1.0:
        return IndexSpec(kind="flat")
    nlist = int(2 ** round(math.log2(4 * math.sqrt(num_items))))
    if num_items <= IVF_MAX_ITEMS:
        return IndexSpec(kind="ivf_sq8", nlist=nlist, nprobe=8)
    pq_m = next(m for m in (dim // 4, dim // 2, dim, 1) if m >= 1 and dim % m == 0)
    return IndexSpec(
        kind="ivfpq",
        nlist=nlist,
        nprobe=8,
        pq_m=pq_m,
        rerank_factor=4 if recall_target <= 0.95 else 8,
    )


def create_index(items: FloatArray, spec: IndexSpec, seed: int = 0) -> Any:
    """Build (train and add) an inner-product index over ``items`` as ``spec`` says."""
    n, dim = items.shape
    if spec.kind == "flat":
        index: Any = faiss.IndexFlatIP(dim)
    elif spec.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, spec.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = spec.ef_construction
    else:
        nlist = min(spec.nlist, n)
        codes = {"ivf_flat": "Flat", "ivf_sq8": "SQ8", "ivfpq": f"PQ{spec.pq_m}"}[spec.kind]
        index = faiss.index_factory(dim, f"IVF{nlist},{codes}", faiss.METRIC_INNER_PRODUCT)
        # ~64 training points per list is plenty for k-means; more only costs build time.
        rng = np.random.default_rng(seed)
        size = min(n, max(64 * nlist, 10_000))
        sample = items[np.sort(rng.choice(n, size, replace=False))]
        ivf: Any = faiss.extract_index_ivf(index)
        ivf.cp.seed = seed
        if spec.kind == "ivfpq":
            # Polysemous codes only pay off with Hamming-filtered search, which is not used;
            # their training dominates build time.
            index.do_polysemous_training = False
        index.train(np.ascontiguousarray(sample))
    index.add(items)
    apply_search_params(index, spec)
    return index


def apply_search_params(index: Any, spec: IndexSpec) -> None:
    """Set the search-time knobs on ``index`` (FAISS does not serialise ``efSearch``)."""
    if spec.kind == "hnsw":
        index.hnsw.efSearch = spec.ef_search
    elif spec.is_ivf:
        faiss.extract_index_ivf(index).nprobe = spec.nprobe


def ann_search(
    index: Any, spec: IndexSpec, items: FloatArray, queries: FloatArray, k: int
) -> tuple[FloatArray, IntArray]:
    """Top-``k`` scores and ids ``[B, k]`` for ``queries``, best first; ``-1`` pads misses.

    HNSW's ``efSearch`` is raised to ``k`` for this call (a beam narrower than ``k`` cannot
    return ``k`` results); lossy indexes fetch ``rerank_factor * k`` and are re-scored
    exactly, so every returned score is the exact inner product.
    """
    n = int(index.ntotal)
    fetch = min(n, k * spec.rerank_factor)
    params: Any = None
    if spec.kind == "hnsw":
        # Typed as Any: faiss's bundled stubs lag its SWIG module (no SearchParametersHNSW).
        params = _FAISS.SearchParametersHNSW()
        params.efSearch = max(spec.ef_search, fetch)
    elif spec.is_ivf:
        params = faiss.SearchParametersIVF()
        params.nprobe = spec.nprobe
    scores, ids = index.search(queries, fetch, params=params)
    scores = np.asarray(scores, dtype=np.float32)
    ids = np.asarray(ids, dtype=np.int64)
    if spec.lossy:
        safe = np.where(ids >= 0, ids, 0)
        exact = np.einsum("bkd,bd->bk", items[safe], queries).astype(np.float32)
        exact[ids < 0] = -np.inf
        order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        ids = np.take_along_axis(ids, order, axis=1)
        scores = np.take_along_axis(exact, order, axis=1)
    return scores[:, :k], ids[:, :k]


def exact_top_k(items: FloatArray, queries: FloatArray, k: int) -> IntArray:
    """Exact top-``k`` ids by inner product (the ground truth recall is measured against)."""
    flat = faiss.IndexFlatIP(items.shape[1])
    flat.add(items)
    _, ids = flat.search(queries, k)
    return np.asarray(ids, dtype=np.int64)


def recall_at_k(found: IntArray, truth: IntArray) -> float:
    """Mean over queries of ``|found_q ∩ truth_q| / |truth_q|`` (``-1`` entries never match)."""
    if found.shape[0] != truth.shape[0]:
        raise ValueError(f"{found.shape[0]} result rows but {truth.shape[0]} truth rows")
    if truth.size == 0:
        return 1.0
    hits = (found[:, :, None] == truth[:, None, :]) & (truth[:, None, :] >= 0)
    return float(hits.any(axis=1).sum() / truth.size)


@dataclass(frozen=True, slots=True)
class IndexReport:
    """What :func:`build_index` built and what it measured (goes into the manifest)."""

    spec: IndexSpec
    recall: float
    k: int
    num_queries: int
    recall_target: float
    build_seconds: float
    tune_seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; ``recall_at_k`` is the figure the target is checked against."""
        return {
            "spec": self.spec.to_dict(),
            "recall_at_k": self.recall,
            "k": self.k,
            "num_queries": self.num_queries,
            "recall_target": self.recall_target,
            "build_seconds": self.build_seconds,
            "tune_seconds": self.tune_seconds,
            "metric": "inner_product",
        }


def sample_queries(
    items: FloatArray, queries: FloatArray | None, num_queries: int, seed: int
) -> FloatArray:
    """Queries to measure recall on: rows of ``queries`` with non-zero norm, else items.

    Real user vectors are the right distribution; without them, catalog vectors stand in
    (the usual practice for ANN benchmarks).
    """
    rng = np.random.default_rng(seed)
    pool = items
    if queries is not None and queries.shape[0]:
        nonzero = queries[np.linalg.norm(queries, axis=1) > 0]
        if nonzero.shape[0]:
            pool = nonzero
    pick = rng.choice(pool.shape[0], min(num_queries, pool.shape[0]), replace=False)
    out: FloatArray = np.ascontiguousarray(pool[np.sort(pick)], dtype=np.float32)
    return out


def build_index(
    items: FloatArray,
    *,
    recall_target: float = 0.95,
    spec: IndexSpec | None = None,
    queries: FloatArray | None = None,
    k: int = 100,
    num_queries: int = 200,
    seed: int = 0,
) -> tuple[Any, IndexReport]:
    """Build the index for ``items`` and tune its search knob to reach ``recall_target``.

    ``spec`` defaults to :func:`choose_index`. Recall@k (``k`` capped at the catalog) is
    measured against exact search on ``num_queries`` sample queries (see
    :func:`sample_queries`). If even the largest knob misses the target, the index is kept
    at that setting and the report says what it reached: the manifest records the truth,
    and callers decide whether it is good enough.
    """
    n, dim = items.shape
    spec = spec or choose_index(n, dim, recall_target)
    k = min(k, n)
    started = time.perf_counter()
    index = create_index(items, spec, seed)
    built = time.perf_counter()
    if spec.exact:
        return index, IndexReport(spec, 1.0, k, 0, recall_target, built - started, 0.0)
    q = sample_queries(items, queries, num_queries, seed)
    truth = exact_top_k(items, q, k)
    tuned, recall = spec, 0.0
    for candidate in _knob_candidates(spec, k, n):
        _, found = ann_search(index, candidate, items, q, k)
        tuned, recall = candidate, recall_at_k(found, truth)
        if recall >= recall_target:
            break
    apply_search_params(index, tuned)
    report = IndexReport(
        tuned,
        recall,
        k,
        int(q.shape[0]),
        recall_target,
        built - started,
        time.perf_counter() - built,
    )
    return index, report


def _knob_candidates(spec: IndexSpec, k: int, n: int) -> list[IndexSpec]:
    if spec.kind == "hnsw":
        efs = sorted(
            {min(_MAX_EF, max(spec.ef_search, math.ceil(k * s))) for s in _EF_STEPS}
            | {spec.ef_search}
        )
        return [replace(spec, ef_search=ef) for ef in efs if ef >= spec.ef_search]
    if spec.is_ivf:
        nlist = min(spec.nlist, n)
        start = min(spec.nprobe, nlist)
        probes = sorted({p for p in _NPROBE_STEPS if start <= p < nlist} | {start, nlist})
        return [replace(spec, nprobe=p) for p in probes]
    return [spec]


def bytes_per_vector(index: Any) -> float:
    """Serialized index size divided by the number of vectors (vectors, links, codes, ids)."""
    size = int(np.asarray(faiss.serialize_index(index), dtype=np.uint8).size)
    return size / max(int(index.ntotal), 1)


def as_float_matrix(x: npt.ArrayLike) -> FloatArray:
    """``x`` as a C-contiguous float32 matrix (what FAISS requires)."""
    out: FloatArray = np.ascontiguousarray(x, dtype=np.float32)
    return out
