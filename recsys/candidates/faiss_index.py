"""FAISS maximum-inner-product retrieval over item embeddings.

The skeleton uses an exact ``IndexFlatIP``: at demo catalog sizes a brute-force scan is
faster than building an approximate index and has recall 1 by construction. The index is
held behind :class:`FaissRetriever` so that swapping in IVF or HNSW later (with measured
recall) changes only how the index is built, not how candidates are filtered and returned.
This module is the only place in the package that imports :mod:`faiss`.
"""

from __future__ import annotations

import operator
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from recsys.types import Candidates, FloatArray, IntArray, InvalidRequestError, UserState

DEFAULT_VERSION = "in-memory"


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


class FaissRetriever:
    """Exact inner-product top-k over a fixed catalog, with per-request exclusion.

    Implements :class:`recsys.protocols.CandidateGenerator`. The item embeddings are copied
    and made read-only so the returned candidate embeddings always match the index. Searches
    only read the index, so one retriever can serve concurrent requests.
    """

    def __init__(self, item_embeddings: FloatArray, version: str = DEFAULT_VERSION) -> None:
        items = _check_item_embeddings(item_embeddings)
        index = faiss.IndexFlatIP(int(items.shape[1]))
        index.add(items)
        self._init(items, index, version)

    @classmethod
    def from_index(
        cls, index: Any, item_embeddings: FloatArray, version: str = DEFAULT_VERSION
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
        self = cls.__new__(cls)
        self._init(items, index, version)
        return self

    def _init(self, items: FloatArray, index: Any, version: str) -> None:
        # A private read-only copy: a caller mutating its array must not desynchronise the
        # embeddings returned with candidates from the vectors inside the index.
        items = items.copy()
        items.flags.writeable = False
        self._items: FloatArray = items
        self._index: Any = index
        self._version = version

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

    def serialize(self) -> bytes:
        """The index in FAISS's own binary format (no pickle), for artifact files."""
        return np.asarray(faiss.serialize_index(self._index), dtype=np.uint8).tobytes()

    @classmethod
    def deserialize(
        cls, data: bytes, item_embeddings: FloatArray, version: str = DEFAULT_VERSION
    ) -> FaissRetriever:
        """Rebuild a retriever from :meth:`serialize` output and the matching item embeddings.

        FAISS's reader parses only its own binary format; it never executes code, unlike
        pickle. Raises ``ValueError`` on bytes that are not an index matching the embeddings.
        """
        try:
            index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        except RuntimeError as exc:
            raise ValueError(f"not a readable FAISS index: {exc}") from exc
        return cls.from_index(index, item_embeddings, version)

    def generate(self, user: UserState, k: int, exclude: IntArray) -> Candidates:
        """Return the ``k`` highest inner-product items for ``user.embedding``, best first.

        Items in ``exclude`` are never returned, and exactly ``k`` items always are: the index
        is asked for ``k`` plus the number of distinct excluded ids (capped at the catalog), so
        even if every excluded item ranks on top, ``k`` survivors remain. Raises
        :class:`InvalidRequestError` naming ``k``, ``exclude`` or ``user``.
        """
        excluded = self._check_exclude(exclude)
        k = self._check_k(k, available=self.num_items - excluded.size, excluded=excluded.size)
        query = self._check_queries(user.embedding, field="user", single=True)

        fetch = min(k + excluded.size, self.num_items)
        scores, ids = self._search(query, fetch)
        scores, ids = scores[0], ids[0]
        # ids < 0 are FAISS's "no result" padding; exact search never yields them, but
        # approximate indexes can, so they are dropped with the excluded ids.
        keep = (ids >= 0) & ~np.isin(ids, excluded, assume_unique=True)
        ids, scores = ids[keep][:k], scores[keep][:k]
        if ids.shape[0] != k:
            raise RuntimeError(
                f"index returned {ids.shape[0]} of {k} requested items after exclusion "
                f"({self.index_type} may not be exhaustive)"
            )
        return Candidates(item_ids=ids, scores=scores, embeddings=self._items[ids])

    def generate_batch(self, queries: FloatArray, k: int) -> tuple[IntArray, FloatArray]:
        """Top-``k`` ids and scores ``[B, k]`` for a batch of query embeddings ``[B, dim]``.

        One FAISS call for many users (offline evaluation, simulator rollouts); no exclusion,
        since per-row exclusion lists belong to :meth:`generate`.
        """
        q = self._check_queries(queries, field="queries", single=False)
        k = self._check_k(k, available=self.num_items, excluded=0)
        scores, ids = self._search(q, k)
        return ids, scores

    def _search(self, queries: FloatArray, k: int) -> tuple[FloatArray, IntArray]:
        scores, ids = self._index.search(queries, k)
        return np.asarray(scores, dtype=np.float32), np.asarray(ids, dtype=np.int64)

    def _check_k(self, k: int, *, available: int, excluded: int) -> int:
        if isinstance(k, bool):
            raise InvalidRequestError("k", f"must be an integer, got {k!r}")
        try:
            k = operator.index(k)
        except TypeError:
            raise InvalidRequestError("k", f"must be an integer, got {k!r}") from None
        if k <= 0:
            raise InvalidRequestError("k", f"must be >= 1, got {k}")
        if k > available:
            raise InvalidRequestError(
                "k",
                f"asks for {k} items but only {available} are available "
                f"({self.num_items} in the catalog, {excluded} distinct ids excluded)",
            )
        return k

    def _check_exclude(self, exclude: IntArray) -> IntArray:
        ids = np.asarray(exclude)
        if ids.ndim != 1:
            raise InvalidRequestError("exclude", f"must be a 1-D list of ids, got {ids.shape}")
        if ids.size == 0:
            return np.zeros(0, dtype=np.int64)
        if not np.issubdtype(ids.dtype, np.integer):
            raise InvalidRequestError("exclude", f"ids must be integers, got dtype {ids.dtype}")
        bad = ids[(ids < 0) | (ids >= self.num_items)]
        if bad.size:
            raise InvalidRequestError(
                "exclude",
                f"{bad.size} ids are not in the catalog [0, {self.num_items}), e.g. {int(bad[0])}",
            )
        return np.unique(ids.astype(np.int64, copy=False))

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
