"""Offline retrieval evaluation machinery: RecBole-style splits and full-ranking top-K metrics.

Everything follows RecBole's defaults so figures are comparable with its published tables:

- :func:`random_split` is RecBole's ``RS [0.8, 0.1, 0.1]`` with ``order: RO, group_by: user``:
  each user's interactions are shuffled and cut into train/valid/test by ratio, with
  RecBole's rounding rule (``int(ratio * n)`` for valid and test, the rest for train, moving
  one interaction out of train whenever a ratio would round a non-empty part to zero).
- :func:`leave_last_out_split` is the temporal alternative: each user's last interaction by
  timestamp is the test item, the one before it the validation item.
- :func:`full_ranking_metrics` ranks *every* item for each evaluated user, masks the items
  the user interacted with in earlier parts of the split (train for validation, train and
  valid for test, exactly as RecBole's ``FullSortEvalDataLoader`` does), and computes
  Recall@K and NDCG@K against that user's held-out items, averaged over users that have any.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from recsys.types import FloatArray, IntArray, InteractionDataset

# scores[u_batch, num_items] for a batch of user indices.
Scorer = Callable[[IntArray], FloatArray]
_MAX_SCORE_CELLS = 50_000_000


@dataclass(frozen=True, slots=True)
class Split:
    """Row indices of one dataset's train/valid/test parts (disjoint, covering every row)."""

    name: str
    train: IntArray
    valid: IntArray
    test: IntArray


def _rank_within_user(user_idx: IntArray, order: IntArray) -> tuple[IntArray, IntArray]:
    """Rows sorted by (user, ``order``), each row's position within its user, and user sizes."""
    counts = np.bincount(user_idx, minlength=int(user_idx.max()) + 1 if user_idx.size else 0)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(order.size) - starts[user_idx[order]]
    return rank.astype(np.int64), counts.astype(np.int64)


def random_split(
    dataset: InteractionDataset, seed: int, ratios: Sequence[float] = (0.8, 0.1, 0.1)
) -> Split:
    """RecBole's per-user random ratio split (``RS``, ``RO``, grouped by user), seeded."""
    if len(ratios) != 3 or any(r < 0 for r in ratios) or not np.isclose(sum(ratios), 1.0):
        raise ValueError(f"ratios must be three non-negative numbers summing to 1, got {ratios}")
    users = dataset.user_idx
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(users.size)
    # Stable sort by user keeps the shuffled order within each user.
    order = shuffled[np.argsort(users[shuffled], kind="stable")]
    rank, counts = _rank_within_user(users, order)
    n = counts.astype(np.float64)
    cnt_valid = (ratios[1] * n).astype(np.int64)
    cnt_test = (ratios[2] * n).astype(np.int64)
    cnt_train = counts - cnt_valid - cnt_test
    # RecBole's rule: while train keeps more than one row, a part whose exact share is in
    # (0, 1) gets one row taken from train (test first, then valid).
    for cnt, ratio in ((cnt_test, ratios[2]), (cnt_valid, ratios[1])):
        share = ratio * n
        bump = (cnt_train > 1) & (share > 0) & (share < 1)
        cnt += bump
        cnt_train -= bump
    u_sorted = users[order]
    part = np.where(
        rank < cnt_train[u_sorted], 0, np.where(rank < (cnt_train + cnt_valid)[u_sorted], 1, 2)
    )
    return Split(
        name="random_80_10_10",
        train=np.sort(order[part == 0]),
        valid=np.sort(order[part == 1]),
        test=np.sort(order[part == 2]),
    )


def leave_last_out_split(dataset: InteractionDataset) -> Split:
    """Temporal split: per user, the latest interaction is test, the one before it valid.

    Users with fewer than three interactions keep everything in train (too short to hold
    anything out). Ties in timestamp are broken by row order, so the split is deterministic.
    """
    users = dataset.user_idx
    order = np.lexsort((np.arange(users.size), dataset.timestamp, users))
    rank, counts = _rank_within_user(users, order)
    size = counts[users[order]]
    from_end = size - 1 - rank
    held = size >= 3
    test = held & (from_end == 0)
    valid = held & (from_end == 1)
    train = ~(test | valid)
    return Split(
        name="temporal_leave_last_out",
        train=np.sort(order[train]),
        valid=np.sort(order[valid]),
        test=np.sort(order[test]),
    )


def user_item_lists(
    user_idx: IntArray, item_idx: IntArray, num_users: int
) -> tuple[IntArray, IntArray]:
    """CSR ``(indptr, items)`` of each user's distinct items (sorted), for masks and histories."""
    key = np.unique(user_idx * np.int64(1 << 32) + item_idx)
    users = key >> 32
    items = key & np.int64((1 << 32) - 1)
    indptr = np.zeros(num_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(users, minlength=num_users), out=indptr[1:])
    return indptr, items.astype(np.int64)


def full_ranking_metrics(
    scorer: Scorer,
    dataset: InteractionDataset,
    history_rows: IntArray,
    target_rows: IntArray,
    ks: Sequence[int] = (10, 100),
    batch_size: int = 1024,
) -> dict[str, float]:
    """Recall@K and NDCG@K over all items, masking each user's ``history_rows`` items.

    Evaluated users are those with at least one target item; targets that also appear in the
    history are still counted as targets but can never be ranked (RecBole behaves the same
    way, and with duplicate-free data it never happens). Returns ``recall@K`` and ``ndcg@K``
    for every ``K`` plus ``num_users``.
    """
    num_users, num_items = dataset.num_users, dataset.num_items
    max_k = max(ks)
    if max_k > num_items:
        raise ValueError(f"K={max_k} exceeds the catalog ({num_items} items)")
    h_ptr, h_items = user_item_lists(
        dataset.user_idx[history_rows], dataset.item_idx[history_rows], num_users
    )
    t_ptr, t_items = user_item_lists(
        dataset.user_idx[target_rows], dataset.item_idx[target_rows], num_users
    )
    n_targets = np.diff(t_ptr)
    eval_users = np.flatnonzero(n_targets > 0)
    discounts = 1.0 / np.log2(np.arange(2, max_k + 2, dtype=np.float64))
    ideal = np.concatenate([[0.0], np.cumsum(discounts)])
    sums = {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "ndcg")}
    # Keep the dense [batch, num_items] score block near 200 MB for million-item catalogs.
    batch_size = max(1, min(batch_size, _MAX_SCORE_CELLS // num_items))
    for start in range(0, eval_users.size, batch_size):
        batch = eval_users[start : start + batch_size]
        scores = torch.tensor(np.asarray(scorer(batch), dtype=np.float32))
        if scores.shape != (batch.size, num_items):
            raise ValueError(
                f"scorer returned {tuple(scores.shape)}, expected {batch.size, num_items}"
            )
        rows, cols = _csr_pairs(h_ptr, h_items, batch)
        scores[torch.from_numpy(rows), torch.from_numpy(cols)] = -torch.inf
        top = torch.topk(scores, max_k, dim=1).indices.numpy()
        # Membership of each retrieved (row, item) in the row's targets, via sorted keys:
        # O(batch * K) memory instead of a dense [batch, num_items] relevance matrix.
        hit_rows, hit_cols = _csr_pairs(t_ptr, t_items, batch)
        target_keys = np.sort(hit_rows * num_items + hit_cols)
        top_keys = np.arange(batch.size)[:, None] * num_items + top
        pos = np.minimum(np.searchsorted(target_keys, top_keys), target_keys.size - 1)
        hits = target_keys[pos] == top_keys
        n_pos = n_targets[batch].astype(np.float64)
        for k in ks:
            h = hits[:, :k]
            sums[f"recall@{k}"] += float((h.sum(axis=1) / n_pos).sum())
            dcg = (h * discounts[:k]).sum(axis=1)
            sums[f"ndcg@{k}"] += float((dcg / ideal[np.minimum(n_pos, k).astype(np.int64)]).sum())
    n_eval = max(eval_users.size, 1)
    out = {name: value / n_eval for name, value in sums.items()}
    out["num_users"] = float(eval_users.size)
    return out


def _csr_pairs(indptr: IntArray, items: IntArray, batch: IntArray) -> tuple[IntArray, IntArray]:
    """(row-in-batch, item) pairs of the CSR rows ``batch``, vectorised."""
    lengths = indptr[batch + 1] - indptr[batch]
    rows = np.repeat(np.arange(batch.size, dtype=np.int64), lengths)
    offsets = np.arange(lengths.sum(), dtype=np.int64) - np.repeat(
        np.cumsum(lengths) - lengths, lengths
    )
    return rows, items[np.repeat(indptr[batch], lengths) + offsets]


class PopularityScorer:
    """Scores every item by its interaction count in the training rows (same for all users)."""

    def __init__(self, dataset: InteractionDataset, train_rows: IntArray) -> None:
        counts = np.bincount(dataset.item_idx[train_rows], minlength=dataset.num_items)
        self.scores: FloatArray = counts.astype(np.float32)

    def __call__(self, users: IntArray) -> FloatArray:
        return np.broadcast_to(self.scores, (users.size, self.scores.size))


class ItemKNNScorer:
    """RecBole's ItemKNN: cosine item-item similarity on the binary train matrix, top-``k``.

    Each item keeps its ``k`` most similar items (``shrink`` damps similarities built on few
    co-occurrences), and a user's score for item ``i`` is the summed similarity of ``i`` to
    the user's training items. Dense matrices: fine for catalogs up to ~20k items.
    """

    def __init__(
        self,
        dataset: InteractionDataset,
        train_rows: IntArray,
        k: int = 100,
        shrink: float = 0.0,
        max_items: int = 20_000,
    ) -> None:
        n_items = dataset.num_items
        if n_items > max_items:
            raise ValueError(f"ItemKNN is dense; {n_items} items exceed max_items={max_items}")
        indptr, items = user_item_lists(
            dataset.user_idx[train_rows], dataset.item_idx[train_rows], dataset.num_users
        )
        r = np.zeros((dataset.num_users, n_items), dtype=np.float32)
        r[np.repeat(np.arange(dataset.num_users), np.diff(indptr)), items] = 1.0
        r_t = torch.from_numpy(r)
        co = r_t.T @ r_t
        norms = torch.sqrt(torch.diagonal(co)).clone()
        sim = co / (norms[:, None] * norms[None, :] + shrink + 1e-12)
        sim.fill_diagonal_(0.0)
        k = min(k, n_items - 1)
        # For each target item (column) keep its k most similar source items.
        top = torch.topk(sim, k, dim=0)
        pruned = torch.zeros_like(sim)
        pruned.scatter_(0, top.indices, top.values)
        self._r = r_t
        self._sim = pruned

    def __call__(self, users: IntArray) -> FloatArray:
        out: FloatArray = (self._r[torch.from_numpy(users)] @ self._sim).numpy()
        return out


def bool_mask(indices: IntArray, size: int) -> npt.NDArray[np.bool_]:
    """A ``[size]`` boolean mask with ``indices`` set."""
    mask = np.zeros(size, dtype=np.bool_)
    mask[indices] = True
    return mask
