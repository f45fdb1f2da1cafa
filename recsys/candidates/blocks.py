"""Vectorised pieces of history-based candidate generation: organic and ad blocks per row.

:meth:`recsys.candidates.FaissRetriever.candidates_for_histories` answers a batch of users
(rows), each described by its last clicked items, with ``C = num_organic + num_ads``
candidates per row: the best non-ad items for the row's query, then the best ads for the same
query, so a slate policy always has ads to place. This module holds the types it returns and
the batch operations it is built from, each one vectorised over rows:

- :class:`ItemBlock`: the items one block may return under one filter (cached per filter);
- :class:`RowExclusions`: each row's excluded ids as a padded matrix and as sorted
  ``row * num_items + id`` keys, so membership tests over a whole batch are one
  ``searchsorted``;
- :func:`top_k_dense` / :func:`first_k`: top-``k`` selection from a dense score matrix or
  from best-first search results, padding rows that have fewer than ``k`` eligible items;
- :func:`sort_rows`: the canonical order within a block (score descending, ties by id), so
  a row's answer does not depend on which search path or batch produced it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from recsys.types import CandidateBatch, FloatArray, IntArray

__all__ = ["CandidateBatch", "HistoryEncoder", "ItemBlock"]

BoolArray = npt.NDArray[np.bool_]

HistoryEncoder = Callable[[IntArray], FloatArray]
"""The user tower on a batch of histories: ``[B, K]`` item ids (``-1`` = empty slot) to
``[B, dim]`` query vectors, in one forward pass
(:meth:`recsys.candidates.TwoTowerModel.history_vectors`)."""


@dataclass(frozen=True, eq=False)
class ItemBlock:
    """The items one block (organic or ads) may return under one filter.

    ``ids`` ``[N_b]`` ascending item ids; ``column`` ``[N]`` each item's position in ``ids``
    (-1 outside the block), to map excluded ids onto a dense score matrix over the block;
    ``member`` ``[N]`` the block as a mask; ``fallback`` the block's items in the retriever's
    fallback order (popular first, fresh interleaved), the answer for cold rows.
    """

    ids: IntArray
    column: IntArray
    member: BoolArray
    fallback: IntArray

    @classmethod
    def from_mask(cls, member: BoolArray, fallback_order: IntArray) -> ItemBlock:
        """The block of the items ``member`` marks; ``fallback_order`` lists every item."""
        member = member.copy()
        member.flags.writeable = False
        ids = np.flatnonzero(member).astype(np.int64)
        column = np.full(member.shape[0], -1, dtype=np.int64)
        column[ids] = np.arange(ids.size)
        fallback = fallback_order[member[fallback_order]]
        for arr in (ids, column, fallback):
            arr.flags.writeable = False
        return cls(ids=ids, column=column, member=member, fallback=fallback)

    @property
    def size(self) -> int:
        """Items in the block."""
        return int(self.ids.shape[0])


@dataclass(frozen=True, eq=False)
class RowExclusions:
    """Each row's excluded item ids, in the two forms the batch operations need.

    ``matrix`` ``[B, E]`` ids with ``-1`` padding (duplicates allowed); ``keys`` sorted unique
    ``row * num_items + id`` of every excluded (row, id) pair.
    """

    matrix: IntArray
    keys: IntArray
    num_items: int
    width: int

    @classmethod
    def build(cls, num_items: int, batch: int, parts: list[IntArray]) -> RowExclusions:
        """Exclusions from ``[B, *]`` id matrices (``-1`` = nothing), concatenated per row.

        ``width`` is the most distinct ids any one row excludes (how far past ``k`` a
        best-first list must be read to be sure of ``k`` survivors).
        """
        matrix = np.concatenate(parts, axis=1) if parts else np.full((batch, 0), -1, np.int64)
        rows, cols = np.nonzero(matrix >= 0)
        keys = np.sort(rows * np.int64(num_items) + matrix[rows, cols])
        if keys.size:
            keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])]
        width = int(np.bincount(keys // num_items).max()) if keys.size else 0
        return cls(matrix=matrix, keys=keys, num_items=num_items, width=width)

    def hits(self, rows: IntArray, ids: IntArray) -> BoolArray:
        """``[P, F]`` True where ``ids[p, f]`` is excluded for row ``rows[p]`` (-1 never is)."""
        if not self.keys.size:
            return np.zeros(ids.shape, dtype=np.bool_)
        query = rows[:, None] * np.int64(self.num_items) + np.maximum(ids, 0)
        pos = np.minimum(np.searchsorted(self.keys, query), self.keys.size - 1)
        out: BoolArray = (self.keys[pos] == query) & (ids >= 0)
        return out

    def count_in(self, block: ItemBlock) -> IntArray:
        """``[B]`` distinct excluded ids of each row that lie in ``block``."""
        rows = self.keys // self.num_items
        inside = block.member[self.keys % self.num_items]
        batch = self.matrix.shape[0]
        out: IntArray = np.bincount(rows[inside], minlength=batch).astype(np.int64)
        return out


def padded(ids: IntArray, scores: FloatArray, k: int) -> tuple[IntArray, FloatArray]:
    """``[R, k]`` copies of ``[R, j]`` (``j <= k``) results, padded with id -1 and score 0."""
    out_ids = np.full((ids.shape[0], k), -1, dtype=np.int64)
    out_scores = np.zeros((ids.shape[0], k), dtype=np.float32)
    out_ids[:, : ids.shape[1]] = ids
    out_scores[:, : ids.shape[1]] = scores
    return out_ids, out_scores


def sort_rows(ids: IntArray, scores: FloatArray) -> tuple[IntArray, FloatArray]:
    """Each row best first (score descending, ties by ascending id), padding (-1) last.

    One integer sort: the float32 score's bits, mapped to an order-preserving int32, in the
    high half of an int64 key and the id in the low half.
    """
    neg = -scores.astype(np.float32) + np.float32(0.0)  # + 0.0 turns -0.0 into +0.0
    bits = neg.view(np.int32).astype(np.int64)
    ordered = np.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
    key = np.where(ids >= 0, (ordered << 32) | ids, np.iinfo(np.int64).max)
    order = np.argsort(key, axis=1)
    return np.take_along_axis(ids, order, axis=1), np.take_along_axis(scores, order, axis=1)


def top_k_dense(scores: FloatArray, block_ids: IntArray, k: int) -> tuple[IntArray, FloatArray]:
    """Top-``k`` of a ``[R, N_b]`` score matrix over a block (``-inf`` = ineligible).

    Returns ``[R, k]`` item ids and scores in :func:`sort_rows` order, padded where a row has
    fewer than ``k`` finite scores.
    """
    rows, n_b = scores.shape
    kk = min(k, n_b)
    if kk == 0 or rows == 0:
        return padded(np.zeros((rows, 0), np.int64), np.zeros((rows, 0), np.float32), k)
    part = np.argpartition(scores, n_b - kk, axis=1)[:, n_b - kk :]
    top = np.take_along_axis(scores, part, axis=1)
    ok = np.isfinite(top)
    ids = np.where(ok, block_ids[part], -1)
    top = np.where(ok, top, 0.0).astype(np.float32)
    return padded(*sort_rows(ids, top), k)


def first_k(
    ids: IntArray, scores: FloatArray, keep: BoolArray, k: int
) -> tuple[IntArray, FloatArray, IntArray]:
    """The first ``k`` kept entries of each row of best-first results, and how many there were.

    ``ids``/``scores``/``keep`` are ``[P, F]``; returns ``[P, k]`` ids and scores (in the
    input's order, padded with -1 / 0) and ``[P]`` counts ``min(k, kept)``.
    """
    rank = np.cumsum(keep, axis=1) - 1
    take = keep & (rank < k)
    out_ids = np.full((ids.shape[0], k), -1, dtype=np.int64)
    out_scores = np.zeros((ids.shape[0], k), dtype=np.float32)
    r, c = np.nonzero(take)
    out_ids[r, rank[r, c]] = ids[r, c]
    out_scores[r, rank[r, c]] = scores[r, c]
    counts: IntArray = take.sum(axis=1).astype(np.int64)
    return out_ids, out_scores, counts
