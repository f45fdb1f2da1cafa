"""Splits and full-ranking metrics: RecBole's rules, hand-checked values, baselines."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recsys.candidates import (
    ItemKNNScorer,
    PopularityScorer,
    full_ranking_metrics,
    leave_last_out_split,
    random_split,
)
from recsys.candidates.training import dataset_from_clicks
from recsys.types import InteractionDataset


def _dataset(
    users: list[int], items: list[int], ts: list[float] | None = None
) -> InteractionDataset:
    n_users, n_items = max(users) + 1, max(items) + 1
    return dataset_from_clicks(
        name="t",
        user_idx=np.array(users),
        item_idx=np.array(items),
        timestamp=np.arange(len(users), dtype=np.float64) if ts is None else np.array(ts),
        user_ids=[str(u) for u in range(n_users)],
        item_features=np.zeros((n_items, 0), np.float32),
    )


def _recbole_counts(n: int) -> tuple[int, int, int]:
    """RecBole 1.2.1's Dataset._calcu_split_ids for ratios [0.8, 0.1, 0.1], verbatim logic."""
    ratios = [0.8, 0.1, 0.1]
    cnt = [int(ratios[i] * n) for i in range(3)]
    cnt[0] = n - sum(cnt[1:])
    for i in range(1, 3):
        if cnt[0] <= 1:
            break
        if 0 < ratios[-i] * n < 1:
            cnt[-i] += 1
            cnt[0] -= 1
    return cnt[0], cnt[1], cnt[2]


def test_random_split_follows_recbole_counts_per_user() -> None:
    sizes = [1, 2, 3, 5, 9, 10, 11, 20, 37, 70, 123]
    users = np.repeat(np.arange(len(sizes)), sizes)
    ds = _dataset(users.tolist(), list(range(users.size)))
    split = random_split(ds, seed=3)
    parts = np.concatenate([split.train, split.valid, split.test])
    np.testing.assert_array_equal(np.sort(parts), np.arange(users.size))
    for u, n in enumerate(sizes):
        got = tuple(int((users[p] == u).sum()) for p in (split.train, split.valid, split.test))
        assert got == _recbole_counts(n), (n, got)


def test_random_split_is_seeded_and_shuffles_within_users() -> None:
    users = np.repeat(np.arange(50), 20)
    ds = _dataset(users.tolist(), list(range(users.size)))
    a, b, c = random_split(ds, 1), random_split(ds, 1), random_split(ds, 2)
    np.testing.assert_array_equal(a.test, b.test)
    assert not np.array_equal(a.test, c.test)
    # Not simply the last rows of each user: the order is random (RO), not temporal.
    last_two = np.concatenate([np.arange(u * 20 + 18, u * 20 + 20) for u in range(50)])
    assert not np.array_equal(np.sort(a.test), last_two)


def test_leave_last_out_takes_the_latest_interactions() -> None:
    ds = _dataset(
        [0, 0, 0, 0, 1, 1, 2, 2, 2],
        [0, 1, 2, 3, 0, 1, 0, 1, 2],
        ts=[5, 1, 9, 3, 1, 2, 7, 7, 1],
    )
    split = leave_last_out_split(ds)
    np.testing.assert_array_equal(split.test, [2, 7])  # user 0: ts 9; user 2: tie -> later row
    np.testing.assert_array_equal(split.valid, [0, 6])
    np.testing.assert_array_equal(split.train, [1, 3, 4, 5, 8])  # user 1 too short to hold out


def test_full_ranking_metrics_match_a_hand_computed_case() -> None:
    # Two users, six items. History (masked) and targets:
    ds = _dataset([0, 0, 0, 0, 1, 1, 1], [0, 1, 2, 3, 0, 4, 5])
    history = np.array([0, 4])  # user 0 saw item 0, user 1 saw item 0
    targets = np.array([1, 2, 3, 5, 6])  # user 0: {1, 2, 3}; user 1: {4, 5}
    scores = np.array(
        [
            [9.0, 1.0, 8.0, 0.0, 7.0, 6.0],  # ranking without item 0: 2, 4, 5, 1, 3
            [9.0, 0.0, 0.0, 0.0, 1.0, 5.0],  # ranking without item 0: 5, 4, ...
        ],
        dtype=np.float32,
    )
    out = full_ranking_metrics(lambda u: scores[u], ds, history, targets, ks=(1, 2, 5))
    assert out["num_users"] == 2
    d = [1 / math.log2(i + 2) for i in range(5)]
    # User 0 hits at ranks 0, 3, 4; user 1 at ranks 0, 1.
    assert out["recall@1"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert out["recall@2"] == pytest.approx((1 / 3 + 1) / 2)
    assert out["recall@5"] == pytest.approx(1.0)
    ndcg0_5 = (d[0] + d[3] + d[4]) / (d[0] + d[1] + d[2])
    assert out["ndcg@5"] == pytest.approx((ndcg0_5 + 1.0) / 2)
    assert out["ndcg@2"] == pytest.approx((d[0] / (d[0] + d[1]) + 1.0) / 2)


def test_metrics_reject_k_larger_than_catalog_and_bad_scorer_shapes() -> None:
    ds = _dataset([0, 0], [0, 1])
    with pytest.raises(ValueError, match="exceeds the catalog"):
        full_ranking_metrics(lambda u: np.zeros((u.size, 2)), ds, np.array([0]), np.array([1]))
    with pytest.raises(ValueError, match="scorer returned"):
        full_ranking_metrics(
            lambda u: np.zeros((u.size, 5)), ds, np.array([0]), np.array([1]), ks=(1,)
        )


def test_baselines_score_as_expected() -> None:
    # Items 0 and 1 always co-occur; item 2 is the most popular; user 5 saw only item 0.
    ds = _dataset([0, 0, 0, 1, 1, 1, 2, 3, 4, 5], [0, 1, 2, 0, 1, 2, 2, 2, 3, 0])
    rows = np.arange(ds.num_interactions)
    pop = PopularityScorer(ds, rows)(np.array([0, 4]))
    np.testing.assert_array_equal(pop, [[3, 2, 4, 1], [3, 2, 4, 1]])
    knn = ItemKNNScorer(ds, rows, k=1)
    # User 4 saw only item 3, which co-occurs with nothing: all-zero scores.
    np.testing.assert_array_equal(knn(np.array([4]))[0], 0.0)
    # Item 1's nearest neighbour is item 0 (cosine 2 / sqrt(3 * 2)), so user 5 scores it.
    scores = knn(np.array([5]))[0]
    assert scores[1] == pytest.approx(2 / math.sqrt(6), rel=1e-5)
    assert scores[3] == 0.0
    with pytest.raises(ValueError, match="dense"):
        ItemKNNScorer(ds, rows, max_items=3)


def test_itemknn_and_popularity_reproduce_recbole_scale_on_ml100k(
    ml100k: InteractionDataset,
) -> None:
    split = random_split(ml100k, 2020)
    history = np.concatenate([split.train, split.valid])
    pop = full_ranking_metrics(PopularityScorer(ml100k, split.train), ml100k, history, split.test)
    knn = full_ranking_metrics(ItemKNNScorer(ml100k, split.train), ml100k, history, split.test)
    # RecBole's ml-100k tables put Pop near NDCG@10 0.14 and ItemKNN near 0.26-0.28.
    assert 0.12 < pop["ndcg@10"] < 0.17
    assert 0.24 < knn["ndcg@10"] < 0.31
    assert pop["num_users"] == 943
