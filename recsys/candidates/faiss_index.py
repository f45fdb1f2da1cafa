"""FAISS retrieval over item embeddings: exclusion, filters, cold-user fallback, batching.

:class:`FaissRetriever` implements :class:`recsys.protocols.CandidateGenerator`. Its
guarantees, whatever index sits underneath (exact ``Flat``, ``HNSW`` or ``IVF-PQ``, see
:mod:`recsys.candidates.index`):

- **exactly k**: excluded ids and items failing the filters are never returned, and when at
  least ``k`` items are eligible exactly ``k`` come back. The index is asked for ``k`` plus
  the excluded count, divided by the filter's selectivity (*over-fetch*); if an approximate
  index still comes up short the fetch grows fourfold, and past a cap the eligible items are
  scanned exactly (*refill*). The exact scan is also the answer for very selective filters.
- **filters**: categories and ads/organic are precomputed boolean masks over the catalog,
  one per distinct :class:`recsys.types.CandidateFilters` (cached), so a request costs a
  lookup, not a pass over item metadata.
- **cold users**: a user with no embedding (zero vector) but some clicks gets a vector from
  the user encoder (the two-tower's user tower), blended with the popularity/fresh fallback
  list in proportion to how little history there is; a user with neither gets the fallback
  list alone: most popular first, with a share of fresh (never-trained-on) items
  interleaved so new items get exposure.
- **bad input** raises :class:`recsys.types.InvalidRequestError` naming ``k``, ``exclude``,
  ``user``, ``filters`` or ``queries``; a bad catalog (empty, NaN) raises ``ValueError`` at
  construction, so a serving process never starts with one.

Searches only read shared state, so one retriever serves concurrent requests.
"""

from __future__ import annotations

import math
import operator
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from recsys.candidates.index import (
    IndexKind,
    IndexReport,
    IndexSpec,
    ann_search,
    apply_search_params,
    build_index,
    create_index,
)
from recsys.types import (
    CandidateFilters,
    Candidates,
    FloatArray,
    IntArray,
    InvalidRequestError,
    UserState,
)

DEFAULT_VERSION = "in-memory"
# History -> user vector (the two-tower's user tower), for users without a stored vector.
UserEncoder = Callable[[IntArray], FloatArray]
BoolArray = npt.NDArray[np.bool_]
# Largest fetch asked of an approximate index before switching to an exact scan.
_MAX_ANN_FETCH = 8192


def _check_item_embeddings(item_embeddings: npt.ArrayLike) -> FloatArray:
    items = np.ascontiguousarray(item_embeddings, dtype=np.float32)
    if items.ndim != 2:
        raise ValueError(f"item_embeddings must be 2-D [num_items, dim], got shape {items.shape}")
    if items.shape[0] == 0:
        raise ValueError("item_embeddings is empty: cannot retrieve from an empty catalog")
    if items.shape[1] == 0:
        raise ValueError("item_embeddings has zero width")
    finite = np.isfinite(items).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ValueError(f"item_embeddings has NaN/inf in {bad.size} rows, e.g. item {int(bad[0])}")
    return items


@dataclass(frozen=True, eq=False)
class ItemCatalog:
    """Per-item serving metadata: fallback ranking inputs and filter attributes.

    ``popularity`` ``[N]`` non-negative (e.g. training interaction counts) orders the
    fallback list; ``fresh`` ``[N]`` marks new items the fallback mixes in at
    ``fresh_fraction``; ``categories`` ``[N, C]`` tags items for category filters;
    ``is_ad`` ``[N]`` marks sponsored items for the ads filter.
    """

    popularity: FloatArray
    fresh: BoolArray
    categories: BoolArray
    is_ad: BoolArray
    fresh_fraction: float = 0.2

    def __post_init__(self) -> None:
        n = self.popularity.shape[0]
        if self.popularity.ndim != 1:
            raise ValueError(f"popularity must be 1-D, got shape {self.popularity.shape}")
        if not np.isfinite(self.popularity).all() or (self.popularity < 0).any():
            raise ValueError("popularity must be finite and non-negative")
        for name, arr, ndim in (
            ("fresh", self.fresh, 1),
            ("categories", self.categories, 2),
            ("is_ad", self.is_ad, 1),
        ):
            if arr.dtype != np.bool_ or arr.ndim != ndim or arr.shape[0] != n:
                raise ValueError(f"{name} must be a bool array with {n} rows, got {arr.shape}")
        if not 0.0 <= self.fresh_fraction <= 1.0:
            raise ValueError(f"fresh_fraction must be in [0, 1], got {self.fresh_fraction}")

    @classmethod
    def uniform(cls, num_items: int) -> ItemCatalog:
        """No metadata: equal popularity, nothing fresh, no categories, no ads."""
        return cls(
            popularity=np.zeros(num_items, dtype=np.float32),
            fresh=np.zeros(num_items, dtype=np.bool_),
            categories=np.zeros((num_items, 0), dtype=np.bool_),
            is_ad=np.zeros(num_items, dtype=np.bool_),
        )

    @property
    def num_items(self) -> int:
        """Rows of every array."""
        return int(self.popularity.shape[0])

    @property
    def num_categories(self) -> int:
        """Category ids a filter may name: ``0 .. num_categories - 1``."""
        return int(self.categories.shape[1])

    def fallback_order(self) -> IntArray:
        """All items, best fallback first: popular items with fresh ones interleaved.

        Popular (non-fresh) items at rank ``r`` get key ``(r + 1) / (1 - f)`` and fresh items
        ``(r + 1) / f``, so any prefix holds about a fraction ``f`` of fresh items.
        """
        f = self.fresh_fraction
        by_pop = np.argsort(-self.popularity, kind="stable")
        fresh_sorted = by_pop[self.fresh[by_pop]]
        old_sorted = by_pop[~self.fresh[by_pop]]
        keys = np.concatenate(
            [
                (np.arange(old_sorted.size) + 1.0) / max(1.0 - f, 1e-9),
                (np.arange(fresh_sorted.size) + 1.0) / max(f, 1e-9),
            ]
        )
        ids = np.concatenate([old_sorted, fresh_sorted])
        out: IntArray = ids[np.argsort(keys, kind="stable")].astype(np.int64)
        return out


class FaissRetriever:
    """Top-k inner-product retrieval with exclusion, filters and a cold-user fallback.

    Implements :class:`recsys.protocols.CandidateGenerator`. The constructor builds the index
    ``spec`` names (exact ``IndexFlatIP`` by default) without tuning; :meth:`build` chooses
    and tunes one for a recall target and records the measured recall in
    :attr:`index_report`. Item embeddings are copied read-only, so candidates' embeddings
    always match the index.
    """

    def __init__(
        self,
        item_embeddings: FloatArray,
        version: str = DEFAULT_VERSION,
        *,
        spec: IndexSpec | None = None,
        catalog: ItemCatalog | None = None,
        user_encoder: UserEncoder | None = None,
        blend_history: int = 5,
        seed: int = 0,
    ) -> None:
        items = _check_item_embeddings(item_embeddings)
        spec = spec or IndexSpec()
        index = create_index(items, spec, seed)
        self._init(items, index, version, spec, catalog, user_encoder, blend_history, None)

    @classmethod
    def build(
        cls,
        item_embeddings: FloatArray,
        *,
        recall_target: float = 0.95,
        queries: FloatArray | None = None,
        spec: IndexSpec | None = None,
        version: str = DEFAULT_VERSION,
        catalog: ItemCatalog | None = None,
        user_encoder: UserEncoder | None = None,
        blend_history: int = 5,
        seed: int = 0,
    ) -> FaissRetriever:
        """Choose the index for this catalog, tune it to ``recall_target``, measure recall.

        ``queries`` (e.g. the trained user vectors) are the sample recall is measured on;
        see :func:`recsys.candidates.index.build_index`.
        """
        items = _check_item_embeddings(item_embeddings)
        index, report = build_index(
            items, recall_target=recall_target, spec=spec, queries=queries, seed=seed
        )
        self = cls.__new__(cls)
        self._init(items, index, version, report.spec, catalog, user_encoder, blend_history, report)
        return self

    @classmethod
    def from_index(
        cls,
        index: Any,
        item_embeddings: FloatArray,
        version: str = DEFAULT_VERSION,
        *,
        spec: IndexSpec | None = None,
        catalog: ItemCatalog | None = None,
        user_encoder: UserEncoder | None = None,
        blend_history: int = 5,
        report: IndexReport | None = None,
    ) -> FaissRetriever:
        """Wrap an already built (e.g. deserialized) inner-product index over these items.

        Raises ``ValueError`` when the index does not cover exactly these items with inner
        product, since a mismatched index would return ids the embeddings cannot describe.
        """
        items = _check_item_embeddings(item_embeddings)
        if int(index.metric_type) != faiss.METRIC_INNER_PRODUCT:
            raise ValueError(f"index metric must be inner product, got {index.metric_type}")
        if int(index.d) != items.shape[1] or int(index.ntotal) != items.shape[0]:
            raise ValueError(
                f"index holds {index.ntotal} vectors of dim {index.d}, but item_embeddings is "
                f"{items.shape[0]} x {items.shape[1]}"
            )
        spec = spec or _spec_of(index)
        apply_search_params(index, spec)
        self = cls.__new__(cls)
        self._init(items, index, version, spec, catalog, user_encoder, blend_history, report)
        return self

    def _init(
        self,
        items: FloatArray,
        index: Any,
        version: str,
        spec: IndexSpec,
        catalog: ItemCatalog | None,
        user_encoder: UserEncoder | None,
        blend_history: int,
        report: IndexReport | None,
    ) -> None:
        # A private read-only copy: a caller mutating its array must not desynchronise the
        # embeddings returned with candidates from the vectors inside the index.
        items = items.copy()
        items.flags.writeable = False
        n = items.shape[0]
        catalog = catalog or ItemCatalog.uniform(n)
        if catalog.num_items != n:
            raise ValueError(f"catalog describes {catalog.num_items} items, index has {n}")
        if blend_history < 1:
            raise ValueError(f"blend_history must be >= 1, got {blend_history}")
        self._items: FloatArray = items
        self._index: Any = index
        self._version = version
        self._spec = spec
        self._catalog = catalog
        self._encoder = user_encoder
        self._blend_history = blend_history
        self._report = report
        self._fallback = catalog.fallback_order()
        peak = float(catalog.popularity.max())
        # Fallback scores for users without a vector: popularity relative to the top item.
        self._fallback_scores: FloatArray = (
            catalog.popularity / peak if peak > 0 else np.zeros(n)
        ).astype(np.float32)
        self._masks: dict[CandidateFilters, BoolArray] = {}
        # Eligible-item count per cached mask, keyed by the mask's identity (masks are kept
        # alive by ``_masks``, and a cleared cache only costs a recount).
        self._mask_counts: dict[int, int] = {}
        self._masks_lock = threading.Lock()

    # ----------------------------------------------------------------------- properties

    @property
    def num_items(self) -> int:
        """Size of the catalog the retriever searches."""
        return int(self._items.shape[0])

    @property
    def dim(self) -> int:
        """Width a query embedding must have."""
        return int(self._items.shape[1])

    @property
    def version(self) -> str:
        """Model version of the embeddings and index (the artifact version when loaded)."""
        return self._version

    @property
    def item_embeddings(self) -> FloatArray:
        """Read-only ``[num_items, dim]`` item embeddings the index was built from."""
        return self._items

    @property
    def index_type(self) -> str:
        """FAISS class name of the underlying index, recorded in artifact metadata."""
        return type(self._index).__name__

    @property
    def spec(self) -> IndexSpec:
        """How the index was built and is searched."""
        return self._spec

    @property
    def index_report(self) -> IndexReport | None:
        """Recall measured when the index was built by :meth:`build` (else ``None``)."""
        return self._report

    @property
    def catalog(self) -> ItemCatalog:
        """Popularity, freshness, categories and ad flags used by fallback and filters."""
        return self._catalog

    @property
    def user_encoder(self) -> UserEncoder | None:
        """History -> vector function for users without a stored embedding, if any."""
        return self._encoder

    def serialize(self) -> bytes:
        """The index in FAISS's own binary format (no pickle), for artifact files."""
        return np.asarray(faiss.serialize_index(self._index), dtype=np.uint8).tobytes()

    @classmethod
    def deserialize(
        cls,
        data: bytes,
        item_embeddings: FloatArray,
        version: str = DEFAULT_VERSION,
        *,
        spec: IndexSpec | None = None,
        catalog: ItemCatalog | None = None,
        user_encoder: UserEncoder | None = None,
        report: IndexReport | None = None,
    ) -> FaissRetriever:
        """Rebuild a retriever from :meth:`serialize` output and the matching item embeddings.

        FAISS's reader parses only its own binary format; it never executes code, unlike
        pickle. Raises ``ValueError`` on bytes that are not an index matching the embeddings.
        """
        try:
            index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        except RuntimeError as exc:
            raise ValueError(f"not a readable FAISS index: {exc}") from exc
        return cls.from_index(
            index,
            item_embeddings,
            version,
            spec=spec,
            catalog=catalog,
            user_encoder=user_encoder,
            report=report,
        )

    # ----------------------------------------------------------------------- retrieval

    def generate(
        self,
        user: UserState,
        k: int,
        exclude: IntArray,
        filters: CandidateFilters | None = None,
    ) -> Candidates:
        """The ``k`` best eligible items for ``user``, best first (see the module docs).

        Personalised candidates carry inner-product scores (cosines for unit vectors);
        fallback candidates for users without a vector carry popularity relative to the
        most popular item. Raises :class:`InvalidRequestError` naming ``k``, ``exclude``,
        ``user`` or ``filters``.
        """
        excluded = self._check_exclude(exclude)
        mask = self._filter_mask(filters)
        k = self._check_k_eligible(k, excluded, mask)
        query, weight = self._user_query(user)
        return self._generate_one(query, weight, k, excluded, mask)

    def count_eligible(self, exclude: IntArray, filters: CandidateFilters | None = None) -> int:
        """How many items pass ``filters`` and are not in ``exclude`` (the most k can be)."""
        excluded = self._check_exclude(exclude)
        mask = self._filter_mask(filters)
        if mask is None:
            return self.num_items - int(excluded.size)
        return self._mask_count(mask) - int(mask[excluded].sum())

    def generate_many(
        self,
        users: Sequence[UserState],
        k: int,
        exclude: Sequence[IntArray] | None = None,
        filters: CandidateFilters | None = None,
    ) -> list[Candidates]:
        """:meth:`generate` for many users with one batched index search for all of them.

        ``exclude`` holds one id array per user (or ``None`` for no exclusions). Users with
        a stored vector share one FAISS call; cold users take the fallback path.
        """
        if exclude is not None and len(exclude) != len(users):
            raise InvalidRequestError(
                "exclude", f"needs one id list per user: {len(exclude)} for {len(users)} users"
            )
        mask = self._filter_mask(filters)
        excluded = [
            self._check_exclude(exclude[i] if exclude is not None else _NONE)
            for i in range(len(users))
        ]
        k = self._check_k(k)
        for ex in excluded:
            self._check_k_eligible(k, ex, mask)
        queries = [self._user_query(u) for u in users]
        warm = [i for i, (_, w) in enumerate(queries) if w == 1.0]
        out: list[Candidates | None] = [None] * len(users)
        if warm:
            q = np.stack([vec for vec, w in queries if w == 1.0 and vec is not None])
            ids, scores = self._search_batch(q, k, [excluded[i] for i in warm], mask)
            for row, i in enumerate(warm):
                out[i] = self._candidates(ids[row], scores[row])
        for i, (query, weight) in enumerate(queries):
            if out[i] is None:
                out[i] = self._generate_one(query, weight, k, excluded[i], mask)
        return [c for c in out if c is not None]

    def generate_batch(
        self,
        queries: FloatArray,
        k: int,
        exclude: Sequence[IntArray] | None = None,
        filters: CandidateFilters | None = None,
    ) -> tuple[IntArray, FloatArray]:
        """Top-``k`` ids and scores ``[B, k]`` for a batch of query embeddings ``[B, dim]``.

        One FAISS call for many users (offline evaluation, simulator rollouts), with the
        same exclusion and filter guarantees as :meth:`generate` (``exclude``: one id array
        per row).
        """
        q = self._check_queries(queries, field="queries", single=False)
        k = self._check_k(k)
        if exclude is not None and len(exclude) != q.shape[0]:
            raise InvalidRequestError(
                "exclude", f"needs one id list per query row: {len(exclude)} for {q.shape[0]}"
            )
        mask = self._filter_mask(filters)
        excluded = [self._check_exclude(e) for e in exclude] if exclude is not None else None
        rows = excluded if excluded is not None else [_NONE] * q.shape[0]
        for ex in rows:
            self._check_k_eligible(k, ex, mask)
        return self._search_batch(q, k, rows, mask)

    # ----------------------------------------------------------------------- internals

    def _generate_one(
        self,
        query: FloatArray | None,
        weight: float,
        k: int,
        excluded: IntArray,
        mask: BoolArray | None,
    ) -> Candidates:
        if query is None or weight == 0.0:
            ids = self._fallback_ids(k, excluded, mask, taken=_NONE)
            return self._candidates(ids, self._fallback_scores[ids])
        ids, scores = self._search_batch(query[None, :], k, [excluded], mask)
        ids, scores = ids[0], scores[0]
        if weight < 1.0:
            # Blend: a share (1 - weight) of the slots goes to fallback items, interleaved
            # by relative rank; they are scored with the same query so scores stay comparable.
            n_fb = min(k, max(1, round(k * (1.0 - weight))))
            personal = ids[: k - n_fb]
            fb = self._fallback_ids(n_fb, excluded, mask, taken=personal)
            keys = np.concatenate(
                [
                    (np.arange(personal.size) + 1.0) / max(personal.size, 1),
                    (np.arange(fb.size) + 1.0) / max(fb.size, 1),
                ]
            )
            ids = np.concatenate([personal, fb])[np.argsort(keys, kind="stable")]
            scores = (self._items[ids] @ query).astype(np.float32)
        return self._candidates(ids, scores)

    def _candidates(self, ids: IntArray, scores: FloatArray) -> Candidates:
        return Candidates(
            item_ids=ids.astype(np.int64, copy=False),
            scores=scores.astype(np.float32, copy=False),
            embeddings=self._items[ids],
        )

    def _search_batch(
        self,
        queries: FloatArray,
        k: int,
        excluded: Sequence[IntArray],
        mask: BoolArray | None,
    ) -> tuple[IntArray, FloatArray]:
        """Over-fetch once for the whole batch, then refill the rows that came up short."""
        n = self.num_items
        batch = queries.shape[0]
        selectivity = 1.0 if mask is None else max(self._mask_count(mask) / n, 1.0 / n)
        most_excluded = max((e.size for e in excluded), default=0)
        fetch = min(
            n, math.ceil((k + most_excluded) / selectivity * (1.0 if mask is None else 1.2))
        )
        out_ids = np.empty((batch, k), dtype=np.int64)
        out_scores = np.empty((batch, k), dtype=np.float32)
        pending = np.arange(batch)
        while pending.size:
            if fetch > _MAX_ANN_FETCH and not self._spec.exact:
                break
            scores, ids = ann_search(self._index, self._spec, self._items, queries[pending], fetch)
            still: list[int] = []
            for row, b in enumerate(pending.tolist()):
                keep = self._admit(ids[row], excluded[b], mask)
                if keep.sum() >= k:
                    out_ids[b] = ids[row][keep][:k]
                    out_scores[b] = scores[row][keep][:k]
                else:
                    still.append(b)
            pending = np.asarray(still, dtype=np.int64)
            if fetch >= n:
                break
            fetch = min(n, fetch * 4)
        for b in pending.tolist():
            out_ids[b], out_scores[b] = self._exact_eligible(queries[b], k, excluded[b], mask)
        return out_ids, out_scores

    def _admit(self, ids: IntArray, excluded: IntArray, mask: BoolArray | None) -> BoolArray:
        # ids < 0 are FAISS's "no result" padding from approximate indexes.
        keep = ids >= 0
        safe = np.where(keep, ids, 0)
        if mask is not None:
            keep &= mask[safe]
        if excluded.size:
            pos = np.minimum(np.searchsorted(excluded, safe), excluded.size - 1)
            keep &= excluded[pos] != safe
        return keep

    def _exact_eligible(
        self, query: FloatArray, k: int, excluded: IntArray, mask: BoolArray | None
    ) -> tuple[IntArray, FloatArray]:
        """Exact top-k over the eligible items: the refill that makes "exactly k" certain."""
        eligible = np.ones(self.num_items, dtype=np.bool_) if mask is None else mask.copy()
        eligible[excluded] = False
        ids = np.flatnonzero(eligible)
        scores = (self._items[ids] @ query).astype(np.float32)
        if ids.size > k:
            top = np.argpartition(-scores, k - 1)[:k]
            ids, scores = ids[top], scores[top]
        order = np.lexsort((ids, -scores))
        return ids[order], scores[order]

    def _fallback_ids(
        self, k: int, excluded: IntArray, mask: BoolArray | None, taken: IntArray
    ) -> IntArray:
        blocked = np.union1d(excluded, taken)
        fetch = min(self.num_items, 2 * (k + blocked.size))
        while True:
            head = self._fallback[:fetch]
            keep = self._admit(head, blocked, mask)
            if keep.sum() >= k or fetch >= self.num_items:
                out: IntArray = head[keep][:k]
                return out
            fetch = min(self.num_items, fetch * 4)

    def _user_query(self, user: UserState) -> tuple[FloatArray | None, float]:
        """The query vector and the weight of personalisation (1 = fully personal)."""
        emb = np.asarray(user.embedding)
        if emb.size == 0:
            query = None
        else:
            query = self._check_queries(emb, field="user", single=True)[0]
            if np.any(query != 0.0):
                return query, 1.0
        history = np.asarray(user.clicked)
        if self._encoder is None or history.size == 0:
            return None, 0.0
        history = self._check_exclude(history, field="user", keep_order=True)
        vec = np.asarray(self._encoder(history), dtype=np.float32).reshape(-1)
        if vec.shape != (self.dim,) or not np.isfinite(vec).all() or not np.any(vec != 0.0):
            return None, 0.0
        n = int(history.size)
        return vec, n / (n + self._blend_history)

    def _filter_mask(self, filters: CandidateFilters | None) -> BoolArray | None:
        if filters is None:
            return None
        if not isinstance(filters, CandidateFilters):
            raise InvalidRequestError("filters", f"must be CandidateFilters, got {filters!r}")
        if filters.is_noop:
            return None
        with self._masks_lock:
            cached = self._masks.get(filters)
        if cached is not None:
            return cached
        cat = self._catalog
        mask = np.ones(self.num_items, dtype=np.bool_)
        if filters.categories is not None:
            bad = [c for c in filters.categories if not 0 <= c < cat.num_categories]
            if bad:
                raise InvalidRequestError(
                    "filters",
                    f"unknown category {bad[0]} (this catalog has categories "
                    f"0..{cat.num_categories - 1})"
                    if cat.num_categories
                    else "this catalog has no categories to filter on",
                )
            mask &= cat.categories[:, list(filters.categories)].any(axis=1)
        if filters.ads == "only":
            mask &= cat.is_ad
        elif filters.ads == "exclude":
            mask &= ~cat.is_ad
        mask.flags.writeable = False
        with self._masks_lock:
            # Distinct filters are few (business rules), but bound the cache anyway.
            if len(self._masks) >= 256:
                self._masks.clear()
                self._mask_counts.clear()
            self._masks[filters] = mask
            self._mask_counts[id(mask)] = int(mask.sum())
        return mask

    def _mask_count(self, mask: BoolArray) -> int:
        count = self._mask_counts.get(id(mask))
        return int(mask.sum()) if count is None else count

    def _check_k(self, k: int) -> int:
        if isinstance(k, bool):
            raise InvalidRequestError("k", f"must be an integer, got {k!r}")
        try:
            k = operator.index(k)
        except TypeError:
            raise InvalidRequestError("k", f"must be an integer, got {k!r}") from None
        if k <= 0:
            raise InvalidRequestError("k", f"must be >= 1, got {k}")
        if k > self.num_items:
            raise InvalidRequestError(
                "k",
                f"asks for {k} items but only {self.num_items} are available "
                f"({self.num_items} in the catalog)",
            )
        return k

    def _check_k_eligible(self, k: int, excluded: IntArray, mask: BoolArray | None) -> int:
        k = self._check_k(k)
        available = self.num_items - excluded.size
        if k > available:
            raise InvalidRequestError(
                "k",
                f"asks for {k} items but only {available} are available "
                f"({self.num_items} in the catalog, {excluded.size} distinct ids excluded)",
            )
        if mask is not None:
            eligible = self._mask_count(mask) - int(mask[excluded].sum())
            if k > eligible:
                raise InvalidRequestError(
                    "filters",
                    f"only {eligible} items match the filters after exclusions, fewer than k={k}",
                )
        return k

    def _check_exclude(
        self, exclude: npt.ArrayLike, *, field: str = "exclude", keep_order: bool = False
    ) -> IntArray:
        ids = np.asarray(exclude)
        if ids.ndim != 1:
            raise InvalidRequestError(field, f"must be a 1-D list of ids, got {ids.shape}")
        if ids.size == 0:
            return np.zeros(0, dtype=np.int64)
        if not np.issubdtype(ids.dtype, np.integer):
            raise InvalidRequestError(field, f"ids must be integers, got dtype {ids.dtype}")
        bad = ids[(ids < 0) | (ids >= self.num_items)]
        if bad.size:
            raise InvalidRequestError(
                field,
                f"{bad.size} ids are not in the catalog [0, {self.num_items}), e.g. {int(bad[0])}",
            )
        ids = ids.astype(np.int64, copy=False)
        return ids if keep_order else np.unique(ids)

    def _check_queries(self, queries: npt.ArrayLike, *, field: str, single: bool) -> FloatArray:
        try:
            q = np.ascontiguousarray(queries, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError(field, f"embedding is not numeric: {exc}") from None
        expected = "[dim]" if single else "[batch, dim]"
        if q.ndim != (1 if single else 2) or q.shape[-1] != self.dim:
            raise InvalidRequestError(
                field, f"embedding must have shape {expected} with dim {self.dim}, got {q.shape}"
            )
        if not np.isfinite(q).all():
            raise InvalidRequestError(field, "embedding contains NaN or inf")
        return q.reshape(-1, self.dim)


_NONE: IntArray = np.zeros(0, dtype=np.int64)
_NONE.flags.writeable = False


def _spec_of(index: Any) -> IndexSpec:
    """Best-effort spec for an index built elsewhere (knobs read back from the index)."""
    name = type(index).__name__
    if name.startswith("IndexHNSW"):
        return IndexSpec(
            kind="hnsw",
            hnsw_m=max(1, int(index.hnsw.nb_neighbors(1))),
            ef_search=max(1, int(index.hnsw.efSearch)),
        )
    if name.startswith("IndexIVF"):
        ivf: Any = faiss.extract_index_ivf(index)
        kind: IndexKind = (
            "ivfpq" if "PQ" in name else "ivf_sq8" if "ScalarQuantizer" in name else "ivf_flat"
        )
        pq_m = int(ivf.pq.M) if kind == "ivfpq" else 0
        return IndexSpec(
            kind=kind,
            nlist=int(ivf.nlist),
            nprobe=int(ivf.nprobe),
            pq_m=pq_m,
            rerank_factor=4 if kind == "ivfpq" else 1,
        )
    return IndexSpec(kind="flat")
