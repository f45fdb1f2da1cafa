"""FaissRetriever: exact top-k, exclusion that never leaks and never short-changes, errors."""

from __future__ import annotations

from functools import cache

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from recsys.candidates import FaissRetriever
from recsys.protocols import CandidateGenerator
from recsys.types import FloatArray, IntArray, InvalidRequestError, UserState

NUM_ITEMS, DIM = 60, 8
NONE: IntArray = np.zeros(0, dtype=np.int64)


def _items(seed: int = 0, distinct: int | None = None) -> FloatArray:
    rng = np.random.default_rng(seed)
    if distinct is None:
        return rng.normal(size=(NUM_ITEMS, DIM)).astype(np.float32)
    # Few distinct vectors: many exact score ties, the hard case for "exactly k, none excluded".
    protos = rng.normal(size=(distinct, DIM)).astype(np.float32)
    return protos[rng.integers(0, distinct, NUM_ITEMS)]


@cache
def _retriever(kind: str) -> FaissRetriever:
    return FaissRetriever(_items(distinct=3 if kind == "ties" else None), version="v-test")


def _user(embedding: FloatArray) -> UserState:
    return UserState(user_id="u", embedding=embedding)


def _query(seed: int) -> FloatArray:
    return np.random.default_rng(seed + 1000).normal(size=DIM).astype(np.float32)


def _brute_force_scores(
    items: FloatArray, query: FloatArray, exclude: IntArray, k: int
) -> npt.NDArray[np.float64]:
    scores = items.astype(np.float64) @ query.astype(np.float64)
    scores[np.unique(exclude)] = -np.inf
    return np.sort(scores)[::-1][:k]


def test_implements_candidate_generator_protocol() -> None:
    retriever = _retriever("random")
    assert isinstance(retriever, CandidateGenerator)
    assert retriever.num_items == NUM_ITEMS
    assert retriever.dim == DIM
    assert retriever.version == "v-test"
    assert retriever.index_type == "IndexFlatIP"


@pytest.mark.parametrize("seed", range(5))
def test_matches_brute_force_top_k_sorted(seed: int) -> None:
    retriever, items, query = _retriever("random"), _items(), _query(seed)
    got = retriever.generate(_user(query), 10, NONE)

    assert len(got) == 10
    assert got.item_ids.dtype == np.int64
    assert got.scores.dtype == got.embeddings.dtype == np.float32
    assert np.all(np.diff(got.scores) <= 0), "best first"
    np.testing.assert_allclose(got.scores, _brute_force_scores(items, query, NONE, 10), rtol=1e-5)
    np.testing.assert_allclose(got.scores, items[got.item_ids] @ query, rtol=1e-5)
    np.testing.assert_array_equal(got.embeddings, items[got.item_ids])
    expected_ids = np.argsort(-(items.astype(np.float64) @ query))[:10]
    np.testing.assert_array_equal(got.item_ids, expected_ids)


@settings(max_examples=150, deadline=None)
@given(
    kind=st.sampled_from(["random", "ties"]),
    exclude=st.lists(st.integers(0, NUM_ITEMS - 1), max_size=NUM_ITEMS + 20),
    query_seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_exclusion_never_leaks_and_returns_exactly_k(
    kind: str, exclude: list[int], query_seed: int, data: st.DataObject
) -> None:
    available = NUM_ITEMS - len(set(exclude))
    assume(available > 0)
    k = data.draw(st.integers(1, available), label="k")
    retriever, query = _retriever(kind), _query(query_seed)
    excluded = np.array(exclude, dtype=np.int64)

    got = retriever.generate(_user(query), k, excluded)

    assert len(got) == k
    assert not np.isin(got.item_ids, excluded).any()
    assert np.unique(got.item_ids).size == k
    assert np.all(np.diff(got.scores) <= 1e-6)
    items = retriever.item_embeddings
    np.testing.assert_allclose(
        got.scores, _brute_force_scores(items, query, excluded, k), rtol=1e-5, atol=1e-5
    )


def test_excluding_the_whole_top_still_fills_k() -> None:
    retriever, items, query = _retriever("random"), _items(), _query(0)
    order = np.argsort(-(items @ query))
    k = 5
    got = retriever.generate(_user(query), k, order[: NUM_ITEMS - k])
    np.testing.assert_array_equal(np.sort(got.item_ids), np.sort(order[NUM_ITEMS - k :]))


def test_k_equal_to_catalog_returns_everything() -> None:
    got = _retriever("random").generate(_user(_query(0)), NUM_ITEMS, NONE)
    np.testing.assert_array_equal(np.sort(got.item_ids), np.arange(NUM_ITEMS))


def test_generate_batch_matches_single_queries() -> None:
    retriever = _retriever("random")
    queries = np.stack([_query(s) for s in range(4)])
    ids, scores = retriever.generate_batch(queries, 7)
    assert ids.shape == scores.shape == (4, 7)
    assert ids.dtype == np.int64
    for row, query in enumerate(queries):
        single = retriever.generate(_user(query), 7, NONE)
        np.testing.assert_array_equal(ids[row], single.item_ids)
        np.testing.assert_allclose(scores[row], single.scores, rtol=1e-6)


def test_item_embeddings_are_a_read_only_copy() -> None:
    items = _items()
    retriever = FaissRetriever(items)
    items[:] = 0.0
    assert not retriever.item_embeddings.flags.writeable
    assert np.abs(retriever.item_embeddings).sum() > 0


def test_accepts_float64_user_embedding() -> None:
    got = _retriever("random").generate(_user(_query(0).astype(np.float64)), 3, NONE)
    assert len(got) == 3


@pytest.mark.parametrize(
    ("k", "exclude", "match"),
    [
        (0, NONE, "must be >= 1"),
        (-3, NONE, "must be >= 1"),
        (NUM_ITEMS + 1, NONE, f"only {NUM_ITEMS} are available"),
        (NUM_ITEMS - 1, np.array([1, 2, 2]), f"only {NUM_ITEMS - 2} are available"),
        (2.5, NONE, "integer"),
        (True, NONE, "integer"),
    ],
)
def test_bad_k_names_field_k(k: int, exclude: IntArray, match: str) -> None:
    with pytest.raises(InvalidRequestError, match=match) as info:
        _retriever("random").generate(_user(_query(0)), k, exclude)
    assert info.value.field == "k"


@pytest.mark.parametrize(
    ("exclude", "match"),
    [
        (np.array([3, NUM_ITEMS]), f"e.g. {NUM_ITEMS}"),
        (np.array([-1]), "e.g. -1"),
        (np.array([1.0, 2.0]), "integers"),
        (np.array([[1, 2]]), "1-D"),
    ],
)
def test_bad_exclude_names_field_exclude(exclude: IntArray, match: str) -> None:
    with pytest.raises(InvalidRequestError, match=match) as info:
        _retriever("random").generate(_user(_query(0)), 3, exclude)
    assert info.value.field == "exclude"


@pytest.mark.parametrize(
    ("embedding", "match"),
    [
        (np.full(DIM, np.nan, np.float32), "NaN"),
        (np.array([np.inf] + [0.0] * (DIM - 1), np.float32), "inf"),
        (np.zeros(DIM + 1, np.float32), f"dim {DIM}"),
        (np.zeros((1, DIM), np.float32), "shape"),
    ],
)
def test_bad_user_embedding_names_field_user(embedding: FloatArray, match: str) -> None:
    with pytest.raises(InvalidRequestError, match=match) as info:
        _retriever("random").generate(_user(embedding), 3, NONE)
    assert info.value.field == "user"


def test_generate_batch_validates() -> None:
    retriever = _retriever("random")
    with pytest.raises(InvalidRequestError) as info:
        retriever.generate_batch(np.zeros(DIM, np.float32), 3)
    assert info.value.field == "queries"
    with pytest.raises(InvalidRequestError) as info:
        retriever.generate_batch(np.zeros((2, DIM), np.float32), NUM_ITEMS + 1)
    assert info.value.field == "k"


@pytest.mark.parametrize(
    ("items", "match"),
    [
        (np.zeros((0, DIM), np.float32), "empty catalog"),
        (np.zeros(DIM, np.float32), "2-D"),
        (np.zeros((3, 0), np.float32), "zero width"),
        (np.array([[0.0, 1.0], [np.nan, 0.0]], np.float32), "e.g. item 1"),
        (np.array([[np.inf, 1.0]], np.float32), "NaN/inf"),
    ],
)
def test_constructor_rejects_bad_catalogs(items: FloatArray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FaissRetriever(items)


def test_deserialize_rejects_mismatched_or_garbage_index() -> None:
    retriever = _retriever("random")
    data = retriever.serialize()
    with pytest.raises(ValueError, match="index holds"):
        FaissRetriever.deserialize(data, _items()[:-1])
    with pytest.raises(ValueError, match="not a readable FAISS index"):
        FaissRetriever.deserialize(b"garbage!" * 8, _items())
