"""FaissRetriever: exact and approximate top-k, exclusion and filters that never leak and never
short-change, the cold-user fallback, batched retrieval, errors."""

from __future__ import annotations

from functools import cache

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from recsys.candidates import FaissRetriever, IndexSpec, ItemCatalog
from recsys.protocols import CandidateGenerator
from recsys.types import (
    CandidateFilters,
    FloatArray,
    IntArray,
    InvalidRequestError,
    UserState,
)

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


# --------------------------------------------------------------------------------------------
# Approximate indexes, filters, cold users, batches.

N_BIG, DIM_BIG = 3000, 8


@cache
def _catalog() -> ItemCatalog:
    rng = np.random.default_rng(5)
    categories = np.zeros((N_BIG, 4), dtype=np.bool_)
    categories[np.arange(N_BIG), rng.integers(0, 4, N_BIG)] = True
    categories[:, 3] = False  # category 3 stays empty
    categories[rng.random(N_BIG) < 0.2, 1] = True  # some items carry two categories
    popularity = rng.pareto(1.0, N_BIG).astype(np.float32)
    fresh = np.zeros(N_BIG, dtype=np.bool_)
    fresh[rng.choice(N_BIG, 50, replace=False)] = True
    popularity[fresh] = 0.0
    is_ad = rng.random(N_BIG) < 0.1
    return ItemCatalog(popularity, fresh, categories, is_ad, fresh_fraction=0.2)


@cache
def _ann(kind: str) -> FaissRetriever:
    items = np.random.default_rng(6).normal(size=(N_BIG, DIM_BIG)).astype(np.float32)
    # nprobe=1 over 64 lists: each search sees ~2% of the catalog, so exclusions and
    # filters routinely leave fewer than k survivors and the refill path must kick in.
    spec = {
        "ivf": IndexSpec(kind="ivf_flat", nlist=64, nprobe=1),
        "hnsw": IndexSpec(kind="hnsw", hnsw_m=8, ef_construction=20, ef_search=8),
        "flat": IndexSpec(kind="flat"),
    }[kind]
    return FaissRetriever(items, spec=spec, catalog=_catalog())


def _eligible(filters: CandidateFilters | None) -> np.ndarray:
    cat = _catalog()
    mask = np.ones(N_BIG, dtype=np.bool_)
    if filters is not None and filters.categories is not None:
        mask &= cat.categories[:, list(filters.categories)].any(axis=1)
    if filters is not None and filters.ads == "only":
        mask &= cat.is_ad
    if filters is not None and filters.ads == "exclude":
        mask &= ~cat.is_ad
    return mask


_FILTERS = st.one_of(
    st.none(),
    st.builds(
        CandidateFilters,
        categories=st.one_of(st.none(), st.sets(st.integers(0, 3), min_size=1).map(tuple)),
        ads=st.sampled_from(["any", "only", "exclude"]),
    ),
)


@settings(max_examples=120, deadline=None)
@given(
    kind=st.sampled_from(["ivf", "hnsw", "flat"]),
    exclude=st.lists(st.integers(0, N_BIG - 1), max_size=400),
    filters=_FILTERS,
    query_seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_approximate_indexes_never_leak_and_always_return_k(
    kind: str,
    exclude: list[int],
    filters: CandidateFilters | None,
    query_seed: int,
    data: st.DataObject,
) -> None:
    retriever = _ann(kind)
    excluded = np.array(exclude, dtype=np.int64)
    eligible = _eligible(filters)
    eligible[excluded] = False
    assume(eligible.sum() > 0)
    k = data.draw(st.integers(1, min(int(eligible.sum()), 300)), label="k")
    query = np.random.default_rng(query_seed).normal(size=DIM_BIG).astype(np.float32)

    got = retriever.generate(UserState("u", query), k, excluded, filters)

    assert len(got) == k
    assert np.unique(got.item_ids).size == k
    assert eligible[got.item_ids].all(), "returned an excluded or filtered-out item"
    np.testing.assert_allclose(
        got.scores, retriever.item_embeddings[got.item_ids] @ query, rtol=1e-4, atol=1e-5
    )
    assert np.all(np.diff(got.scores) <= 1e-5), "best first"
    if kind == "flat":
        truth = np.sort(np.where(eligible, retriever.item_embeddings @ query, -np.inf))[::-1][:k]
        np.testing.assert_allclose(got.scores, truth, rtol=1e-4, atol=1e-5)


def test_filters_that_leave_too_few_items_name_the_filters_field() -> None:
    retriever = _ann("flat")
    with pytest.raises(InvalidRequestError) as info:
        retriever.generate(UserState("u", _query(0)[:DIM_BIG]), 5, NONE, CandidateFilters((3,)))
    assert info.value.field == "filters"
    for bad in (CandidateFilters((7,)), CandidateFilters((-1,))):
        with pytest.raises(InvalidRequestError, match="unknown category") as info:
            retriever.generate(UserState("u", _query(0)[:DIM_BIG]), 5, NONE, bad)
        assert info.value.field == "filters"
    with pytest.raises(InvalidRequestError) as info:
        CandidateFilters(ads="sometimes")  # type: ignore[arg-type]
    assert info.value.field == "filters"
    with pytest.raises(InvalidRequestError) as info:
        CandidateFilters(categories=())
    assert info.value.field == "filters"
    # A catalog without categories cannot be filtered by category.
    with pytest.raises(InvalidRequestError, match="no categories"):
        _retriever("random").generate(_user(_query(0)), 3, NONE, CandidateFilters((0,)))


def test_cold_user_gets_popularity_with_fresh_items_mixed_in() -> None:
    retriever, cat = _ann("flat"), _catalog()
    k = 50
    got = retriever.generate(UserState("new", np.zeros(DIM_BIG, np.float32)), k, NONE)
    assert len(got) == k
    n_fresh = int(cat.fresh[got.item_ids].sum())
    assert n_fresh == pytest.approx(0.2 * k, abs=2)
    popular = got.item_ids[~cat.fresh[got.item_ids]]
    top = np.argsort(-np.where(cat.fresh, -1.0, cat.popularity), kind="stable")[: popular.size]
    np.testing.assert_array_equal(popular, top)
    # Scores: popularity relative to the most popular item (0 for fresh items).
    np.testing.assert_allclose(got.scores, cat.popularity[got.item_ids] / cat.popularity.max())
    # Exclusions and filters apply to the fallback as well.
    excluded = got.item_ids[:10]
    again = retriever.generate(
        UserState("new", np.zeros(0, np.float32)), k, excluded, CandidateFilters(ads="exclude")
    )
    assert not np.isin(again.item_ids, excluded).any()
    assert not cat.is_ad[again.item_ids].any()
    assert len(again) == k


def test_user_without_vector_but_with_clicks_blends_encoder_and_fallback() -> None:
    items = _ann("flat").item_embeddings
    target = items[7] / np.linalg.norm(items[7])
    calls: list[np.ndarray] = []

    def encoder(history: np.ndarray) -> np.ndarray:
        calls.append(history)
        return target

    retriever = FaissRetriever(items, catalog=_catalog(), user_encoder=encoder, blend_history=5)
    clicked = np.array([11, 12, 13, 14, 15], dtype=np.int64)  # 5 clicks: half personal
    user = UserState("warming", np.zeros(DIM_BIG, np.float32), clicked=clicked)
    got = retriever.generate(user, 20, clicked)
    np.testing.assert_array_equal(calls[0], clicked)
    personal = FaissRetriever(items).generate(UserState("x", target), 20, clicked).item_ids
    assert np.isin(got.item_ids, personal).sum() == 10
    assert not np.isin(got.item_ids, clicked).any()
    np.testing.assert_allclose(got.scores, items[got.item_ids] @ target, rtol=1e-5)


def test_generate_many_and_batch_agree_with_single_requests() -> None:
    retriever = _ann("ivf")
    rng = np.random.default_rng(9)
    queries = rng.normal(size=(6, DIM_BIG)).astype(np.float32)
    excludes = [rng.choice(N_BIG, size, replace=False) for size in (0, 5, 50, 500, 5, 0)]
    filters = CandidateFilters(categories=(0, 1), ads="exclude")
    users = [UserState(f"u{i}", q) for i, q in enumerate(queries)]
    users[5] = UserState("cold", np.zeros(DIM_BIG, np.float32))
    many = retriever.generate_many(users, 40, excludes, filters)
    ids, scores = retriever.generate_batch(queries[:5], 40, excludes[:5], filters)
    assert ids.shape == scores.shape == (5, 40)
    for i, user in enumerate(users):
        single = retriever.generate(user, 40, excludes[i], filters)
        np.testing.assert_array_equal(many[i].item_ids, single.item_ids)
        if i < 5:
            np.testing.assert_array_equal(ids[i], single.item_ids)
    with pytest.raises(InvalidRequestError) as info:
        retriever.generate_many(users, 40, excludes[:2])
    assert info.value.field == "exclude"


def test_loaded_catalog_shape_must_match() -> None:
    with pytest.raises(ValueError, match="catalog describes"):
        FaissRetriever(_items(), catalog=_catalog())
    with pytest.raises(ValueError, match="non-negative"):
        ItemCatalog(
            np.array([-1.0], np.float32),
            np.zeros(1, np.bool_),
            np.zeros((1, 0), np.bool_),
            np.zeros(1, np.bool_),
        )
