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
- **ads**: every :class:`recsys.types.Candidates` carries ``is_ad`` (from the catalog) and
  ``bid`` (from the item table when the retriever has one, else 0).
- **history-based blocks**: :meth:`FaissRetriever.candidates_for_histories` answers a batch
  of users described only by their recent clicks (the event-derived state) with the best
  organic items and, separately, the best ads per user, vectorised over users (see
  :mod:`recsys.candidates.blocks`); :meth:`FaissRetriever.candidates_for_history` is the
  same path for one user. Unlike :meth:`FaissRetriever.generate` it pads instead of
  raising when too few items are eligible, and does not blend short histories with the
  fallback list.
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

from recsys.candidates.blocks import (
    CandidateBatch,
    HistoryEncoder,
    ItemBlock,
    RowExclusions,
    first_k,
    padded,
    sort_rows,
    top_k_dense,
)
from recsys.candidates.index import (
    IndexKind,
    IndexReport,
    IndexSpec,
    ann_search,
    apply_search_params,
    build_index,
    create_index,
)
from recsys.features import ItemTable
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
# Scores held at once by the exact block scan (float32, 16 MiB): bounds its memory for large
# catalogs while keeping BLAS calls few (on a busy 2-core box each multi-threaded call can
# stall on a descheduled thread; 4 MiB chunks measured ~1.5x slower there, same when idle).
_DENSE_CHUNK = 1 << 22


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

    @classmethod
    def from_item_table(cls, table: ItemTable) -> ItemCatalog:
        """The catalog an :class:`~recsys.features.ItemTable` implies: its popularity prior
        orders the fallback, its ad flags drive the ads filter; nothing fresh, no categories."""
        n = table.num_items
        return cls(
            popularity=np.maximum(np.asarray(table.popularity, dtype=np.float32), 0.0),
            fresh=np.zeros(n, dtype=np.bool_),
            categories=np.zeros((n, 0), dtype=np.bool_),
            is_ad=np.asarray(table.is_ad, dtype=np.bool_).copy(),
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
    always match the index. ``item_table`` (observable item attributes) supplies the bids
    candidates carry and, without a ``catalog``, the ad flags and fallback popularity;
    ``history_encoder`` (the batched user tower) enables :meth:`candidates_for_histories`.
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
        item_table: ItemTable | None = None,
        history_encoder: HistoryEncoder | None = None,
    ) -> None:
        items = _check_item_embeddings(item_embeddings)
        spec = spec or IndexSpec()
        index = create_index(items, spec, seed)
        self._init(
            items,
            index,
            version,
            spec,
            catalog,
            user_encoder,
            blend_history,
            None,
            item_table=item_table,
            history_encoder=history_encoder,
        )

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
        item_table: ItemTable | None = None,
        history_encoder: HistoryEncoder | None = None,
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
        self._init(
            items,
            index,
            version,
            report.spec,
            catalog,
            user_encoder,
            blend_history,
            report,
            item_table=item_table,
            history_encoder=history_encoder,
        )
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
        item_table: ItemTable | None = None,
        history_encoder: HistoryEncoder | None = None,
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
        self._init(
            items,
            index,
            version,
            spec,
            catalog,
            user_encoder,
            blend_history,
            report,
            item_table=item_table,
            history_encoder=history_encoder,
        )
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
        *,
        item_table: ItemTable | None = None,
        history_encoder: HistoryEncoder | None = None,
    ) -> None:
        # A private read-only copy: a caller mutating its array must not desynchronise the
        # embeddings returned with candidates from the vectors inside the index.
        items = items.copy()
        items.flags.writeable = False
        n = items.shape[0]
        if item_table is not None and item_table.num_items != n:
            raise ValueError(f"item_table describes {item_table.num_items} items, index has {n}")
        if catalog is None:
            catalog = (
                ItemCatalog.uniform(n)
                if item_table is None
                else ItemCatalog.from_item_table(item_table)
            )
        if catalog.num_items != n:
            raise ValueError(f"catalog describes {catalog.num_items} items, index has {n}")
        if item_table is not None and not np.array_equal(item_table.is_ad, catalog.is_ad):
            differ = np.flatnonzero(item_table.is_ad != catalog.is_ad)
            raise ValueError(
                f"item_table and catalog disagree on which items are ads ({differ.size} items, "
                f"e.g. item {int(differ[0])})"
            )
        if blend_history < 1:
            raise ValueError(f"blend_history must be >= 1, got {blend_history}")
        self._items: FloatArray = items
        self._index: Any = index
        self._version = version
        self._spec = spec
        self._catalog = catalog
        self._encoder = user_encoder
        self._history_encoder = history_encoder
        self._item_table = item_table
        bid = (
            np.zeros(n, dtype=np.float32)
            if item_table is None
            else np.asarray(item_table.bid, dtype=np.float32).copy()
        )
        bid.flags.writeable = False
        self._bid: FloatArray = bid
        self._blocks: dict[CandidateFilters | None, tuple[ItemBlock, ItemBlock]] = {}
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

    @property
    def history_encoder(self) -> HistoryEncoder | None:
        """Batched user tower over ``[B, K]`` histories, for :meth:`candidates_for_histories`."""
        return self._history_encoder

    @property
    def item_table(self) -> ItemTable | None:
        """Observable item attributes (bids, topics) the retriever was given, if any."""
        return self._item_table

    def bids(self, item_ids: npt.ArrayLike) -> FloatArray:
        """Bids of item ids of any shape: the item table's bid, 0 for organic items, for
        padding (-1) and when the retriever has no item table."""
        ids = np.asarray(item_ids, dtype=np.int64)
        out: FloatArray = np.where(ids >= 0, self._bid[np.maximum(ids, 0)], np.float32(0.0))
        return out.astype(np.float32, copy=False)

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
        item_table: ItemTable | None = None,
        history_encoder: HistoryEncoder | None = None,
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
            item_table=item_table,
            history_encoder=history_encoder,
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

    # ---------------------------------------------------------- history-based candidates

    def candidates_for_histories(
        self,
        histories: npt.ArrayLike,
        num_organic: int,
        num_ads: int,
        *,
        exclude: Sequence[npt.ArrayLike] | None = None,
        filters: CandidateFilters | None = None,
        exclude_history: bool = True,
    ) -> CandidateBatch:
        """Organic and ad candidates for a batch of users described by their recent clicks.

        ``histories`` ``[B, K]``: each row's last clicked item ids, newest first, ``-1`` for
        an empty slot (``state["recent"]`` of :mod:`recsys.features`). Row ``b`` of the
        :class:`~recsys.candidates.blocks.CandidateBatch` holds, in ``num_organic +
        num_ads`` columns, the best non-ad items for the row's query and then the best ads
        for the same query, each block best first (score descending, ties by id).

        - **query**: the history encoder (the two-tower's user tower, mean of history-item
          embeddings then MLP) on the row's valid ids, one forward for all rows. There is
          no blending with the popularity list for short histories, unlike
          :meth:`generate`: one click makes a row personal (the policy downstream sees the
          scores and the state, and can explore).
        - **cold rows** (no valid id, or an encoder output that is zero or not finite) get
          the fallback list (popular first, fresh items interleaved) restricted to each
          block, in fallback order, scored by popularity relative to the most popular item.
        - **exclusions**: the row's history items (recently consumed; skipped with
          ``exclude_history=False``) and ``exclude[b]`` never appear.
        - **filters**: categories restrict both blocks; ``ads="exclude"`` leaves the ad
          block empty and ``ads="only"`` the organic block.
        - **padding**: a block with fewer eligible items than columns is padded (id -1,
          score 0, ``mask`` and ``is_ad`` False); "too few" is never an error here.

        Search: for an exact (flat) index, each block is one BLAS product of the queries
        with the block's items followed by a top-k selection (the same exhaustive scan
        FAISS's flat index does, without its per-result heap updates, which dominate at
        this batch size); for an approximate index, one FAISS search over-fetches for both
        blocks at once, rows that come up short are re-fetched fourfold, and rows still
        short past a cap (or blocks too selective to over-fetch for) are scanned exactly
        over the block's items, vectorised over rows. Deterministic: the same inputs give
        the same output. Raises :class:`InvalidRequestError` naming ``histories``,
        ``num_organic``, ``num_ads``, ``exclude`` or ``filters``, and ``RuntimeError``
        when the retriever has no history encoder.
        """
        hist = self._check_histories(histories, field="histories")
        return self._history_candidates(
            hist, num_organic, num_ads, exclude, filters, exclude_history
        )

    def candidates_for_history(
        self,
        history: npt.ArrayLike,
        num_organic: int,
        num_ads: int,
        *,
        exclude: npt.ArrayLike | None = None,
        filters: CandidateFilters | None = None,
        exclude_history: bool = True,
    ) -> Candidates:
        """:meth:`candidates_for_histories` for one user (``history`` ``[K]``), for serving.

        The same code path with a batch of one; padding is dropped, so the result holds the
        organic candidates best first, then the ads best first, with embeddings, ad flags
        and bids.
        """
        row = np.asarray(history)
        if row.ndim != 1:
            raise InvalidRequestError(
                "history", f"must be a 1-D list of item ids, got shape {row.shape}"
            )
        hist = self._check_histories(row[None, :], field="history")
        batch = self._history_candidates(
            hist,
            num_organic,
            num_ads,
            None if exclude is None else [exclude],
            filters,
            exclude_history,
        )
        keep = batch.mask[0]
        ids = batch.item_ids[0, keep]
        return Candidates(
            item_ids=ids,
            scores=batch.scores[0, keep],
            embeddings=self._items[ids],
            is_ad=batch.is_ad[0, keep],
            bid=self._bid[ids],
        )

    def _history_candidates(
        self,
        hist: IntArray,
        num_organic: int,
        num_ads: int,
        exclude: Sequence[npt.ArrayLike] | None,
        filters: CandidateFilters | None,
        exclude_history: bool,
    ) -> CandidateBatch:
        k_organic = _check_count(num_organic, "num_organic")
        k_ads = _check_count(num_ads, "num_ads")
        organic, ads = self._item_blocks(filters)
        wants = [(organic, k_organic), (ads, k_ads)]
        encoder = self._history_encoder
        if encoder is None:
            raise RuntimeError(
                "this FaissRetriever has no history_encoder: build it with "
                "history_encoder=TwoTowerModel.history_vectors, or load it with "
                "recsys.candidates.load_retrieval from a two-tower artifact"
            )
        batch = hist.shape[0]
        parts = [hist] if exclude_history else []
        if exclude is not None:
            parts.append(self._exclusion_matrix(exclude, batch))
        excl = RowExclusions.build(self.num_items, batch, parts)
        out = [
            padded(np.zeros((batch, 0), np.int64), np.zeros((batch, 0), np.float32), k)
            for _, k in wants
        ]

        warm = np.flatnonzero((hist >= 0).any(axis=1))
        if warm.size:
            queries = self._encode_histories(encoder, hist[warm])
            usable = np.isfinite(queries).all(axis=1) & (queries != 0.0).any(axis=1)
            warm, queries = warm[usable], queries[usable]
        if warm.size:
            for (ids, scores), (got_ids, got_scores) in zip(
                out, self._personal_blocks(queries, warm, wants, excl), strict=True
            ):
                ids[warm], scores[warm] = got_ids, got_scores
        is_cold = np.ones(batch, dtype=np.bool_)
        is_cold[warm] = False
        cold = np.flatnonzero(is_cold)
        if cold.size:
            for (ids, scores), (block, k) in zip(out, wants, strict=True):
                ids[cold], scores[cold] = self._fallback_block(cold, block, k, excl)

        item_ids = np.concatenate([ids for ids, _ in out], axis=1)
        mask = item_ids >= 0
        return CandidateBatch(
            item_ids=item_ids,
            scores=np.concatenate([scores for _, scores in out], axis=1),
            mask=mask,
            is_ad=self._catalog.is_ad[np.maximum(item_ids, 0)] & mask,
        )

    def _personal_blocks(
        self,
        queries: FloatArray,
        rows: IntArray,
        wants: Sequence[tuple[ItemBlock, int]],
        excl: RowExclusions,
    ) -> list[tuple[IntArray, FloatArray]]:
        """Each block's top-k for warm rows (``rows`` index the batch, queries align)."""
        empty = (np.zeros((rows.size, 0), np.int64), np.zeros((rows.size, 0), np.float32))
        out = [padded(*empty, k) for _, k in wants]
        ann: list[int] = []
        for i, (block, k) in enumerate(wants):
            if k == 0 or block.size == 0:
                continue
            if self._spec.exact or self._ann_fetch(block, k, excl.width) > _MAX_ANN_FETCH:
                out[i] = self._dense_block(queries, rows, block, k, excl)
            else:
                ann.append(i)
        if ann:
            self._ann_blocks(queries, rows, [wants[i] for i in ann], excl, [out[i] for i in ann])
        return out

    def _ann_fetch(self, block: ItemBlock, k: int, width: int) -> int:
        """How many neighbours to fetch so ``k`` survive the block mask and exclusions."""
        n = self.num_items
        if block.size == n:
            return min(n, k + width)
        return min(n, math.ceil((k + width) / max(block.size / n, 1.0 / n) * 1.2))

    def _ann_blocks(
        self,
        queries: FloatArray,
        rows: IntArray,
        wants: Sequence[tuple[ItemBlock, int]],
        excl: RowExclusions,
        outs: Sequence[tuple[IntArray, FloatArray]],
    ) -> None:
        """Fill ``outs`` from one over-fetching index search shared by the blocks."""
        n = self.num_items
        targets = [np.minimum(k, block.size - excl.count_in(block)[rows]) for block, k in wants]
        need = [np.ones(rows.size, dtype=np.bool_) for _ in wants]
        fetch = max(self._ann_fetch(block, k, excl.width) for block, k in wants)
        while fetch <= _MAX_ANN_FETCH:
            pending = np.flatnonzero(np.logical_or.reduce(need))
            if not pending.size:
                break
            scores, ids = ann_search(self._index, self._spec, self._items, queries[pending], fetch)
            keep_any = (ids >= 0) & ~excl.hits(rows[pending], ids)
            safe = np.maximum(ids, 0)
            for (block, k), target, todo, (out_ids, out_scores) in zip(
                wants, targets, need, outs, strict=True
            ):
                got_ids, got_scores, counts = first_k(ids, scores, keep_any & block.member[safe], k)
                done = todo[pending] & (counts >= target[pending])
                out_ids[pending[done]] = got_ids[done]
                out_scores[pending[done]] = got_scores[done]
                todo[pending[done]] = False
            if fetch >= n:
                break
            fetch = min(n, fetch * 4)
        # Rows an approximate index could not fill: an exact scan over the block's items.
        for (block, k), todo, (out_ids, out_scores) in zip(wants, need, outs, strict=True):
            left = np.flatnonzero(todo)
            if left.size:
                out_ids[left], out_scores[left] = self._dense_block(
                    queries[left], rows[left], block, k, excl
                )
            out_ids[:], out_scores[:] = sort_rows(out_ids, out_scores)

    def _dense_block(
        self,
        queries: FloatArray,
        rows: IntArray,
        block: ItemBlock,
        k: int,
        excl: RowExclusions,
    ) -> tuple[IntArray, FloatArray]:
        """Exact top-k over a block's items: one product per chunk of rows, no heap."""
        out_ids = np.full((rows.size, k), -1, dtype=np.int64)
        out_scores = np.zeros((rows.size, k), dtype=np.float32)
        if k == 0 or block.size == 0:
            return out_ids, out_scores
        items = self._items[block.ids]
        step = max(1, _DENSE_CHUNK // block.size)
        for start in range(0, rows.size, step):
            stop = min(rows.size, start + step)
            scores = queries[start:stop] @ items.T
            ex = excl.matrix[rows[start:stop]]
            col = block.column[np.maximum(ex, 0)]
            r, c = np.nonzero((ex >= 0) & (col >= 0))
            scores[r, col[r, c]] = -np.inf
            out_ids[start:stop], out_scores[start:stop] = top_k_dense(scores, block.ids, k)
        return out_ids, out_scores

    def _fallback_block(
        self, rows: IntArray, block: ItemBlock, k: int, excl: RowExclusions
    ) -> tuple[IntArray, FloatArray]:
        """The block's fallback list minus each row's exclusions, first ``k``, vectorised."""
        head = block.fallback[: min(block.size, k + excl.width)]
        ids = np.broadcast_to(head, (rows.size, head.size))
        scores = np.broadcast_to(self._fallback_scores[head], ids.shape)
        got_ids, got_scores, _ = first_k(ids, scores, ~excl.hits(rows, ids), k)
        return got_ids, got_scores

    def _item_blocks(self, filters: CandidateFilters | None) -> tuple[ItemBlock, ItemBlock]:
        """(organic, ads) blocks under ``filters``, cached per distinct filter."""
        mask = self._filter_mask(filters)
        key = None if mask is None else filters
        with self._masks_lock:
            cached = self._blocks.get(key)
        if cached is not None:
            return cached
        base = np.ones(self.num_items, dtype=np.bool_) if mask is None else mask
        is_ad = self._catalog.is_ad
        blocks = (
            ItemBlock.from_mask(base & ~is_ad, self._fallback),
            ItemBlock.from_mask(base & is_ad, self._fallback),
        )
        with self._masks_lock:
            if len(self._blocks) >= 32:
                self._blocks.clear()
            self._blocks[key] = blocks
        return blocks

    def _encode_histories(self, encoder: HistoryEncoder, hist: IntArray) -> FloatArray:
        vecs = np.asarray(encoder(hist), dtype=np.float32)
        if vecs.shape != (hist.shape[0], self.dim):
            raise ValueError(
                f"history_encoder returned shape {vecs.shape} for {hist.shape[0]} histories, "
                f"expected ({hist.shape[0]}, {self.dim})"
            )
        return vecs

    def _check_histories(self, histories: npt.ArrayLike, *, field: str) -> IntArray:
        hist = np.asarray(histories)
        if hist.ndim != 2:
            raise InvalidRequestError(
                field, f"must be a [batch, K] matrix of item ids, got shape {hist.shape}"
            )
        if hist.size and not np.issubdtype(hist.dtype, np.integer):
            raise InvalidRequestError(field, f"ids must be integers, got dtype {hist.dtype}")
        hist = hist.astype(np.int64)
        bad = hist[(hist < -1) | (hist >= self.num_items)]
        if bad.size:
            raise InvalidRequestError(
                field,
                f"{bad.size} ids are neither -1 (empty) nor in the catalog "
                f"[0, {self.num_items}), e.g. {int(bad[0])}",
            )
        return hist

    def _exclusion_matrix(self, exclude: Sequence[npt.ArrayLike], batch: int) -> IntArray:
        """``[B, E]`` excluded ids per row, ``-1`` padded, validated in one pass."""
        if len(exclude) != batch:
            raise InvalidRequestError(
                "exclude", f"needs one id list per row: {len(exclude)} for {batch} rows"
            )
        arrays = [np.asarray(e) for e in exclude]
        if any(a.ndim != 1 for a in arrays):
            raise InvalidRequestError("exclude", "each row must be a 1-D list of ids")
        lengths = np.fromiter((a.size for a in arrays), dtype=np.int64, count=batch)
        matrix = np.full((batch, int(lengths.max(initial=0))), -1, dtype=np.int64)
        total = int(lengths.sum())
        if total:
            flat = np.concatenate([a for a in arrays if a.size])
            if not np.issubdtype(flat.dtype, np.integer):
                raise InvalidRequestError("exclude", f"ids must be integers, got {flat.dtype}")
            bad = flat[(flat < 0) | (flat >= self.num_items)]
            if bad.size:
                raise InvalidRequestError(
                    "exclude",
                    f"{bad.size} ids are not in the catalog [0, {self.num_items}), "
                    f"e.g. {int(bad[0])}",
                )
            rows = np.repeat(np.arange(batch), lengths)
            cols = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
            matrix[rows, cols] = flat
        return matrix

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
        ids = ids.astype(np.int64, copy=False)
        return Candidates(
            item_ids=ids,
            scores=scores.astype(np.float32, copy=False),
            embeddings=self._items[ids],
            is_ad=self._catalog.is_ad[ids],
            bid=self._bid[ids],
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


def _check_count(value: int, field: str) -> int:
    if isinstance(value, bool):
        raise InvalidRequestError(field, f"must be an integer, got {value!r}")
    try:
        count = operator.index(value)
    except TypeError:
        raise InvalidRequestError(field, f"must be an integer, got {value!r}") from None
    if count < 0:
        raise InvalidRequestError(field, f"must be >= 0, got {count}")
    return count


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
