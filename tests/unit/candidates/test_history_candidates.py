"""History-based candidates: an organic block and an ad block per row, vectorised over rows.

Checked against a brute-force reference (per row, in a Python loop): blocks are disjoint and
correctly flagged, each warm block is the exact top-k of its eligible items, history and
exclusions never leak, cold rows get the fallback order, filters restrict, short blocks pad,
and a row's answer does not depend on the batch it came in.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import numpy.typing as npt
import pytest

from recsys.candidates import (
    CandidateBatch,
    FaissRetriever,
    IndexSpec,
    ItemCatalog,
    TwoTowerModel,
)
from recsys.features import FeatureSpec, ItemTable, StateCodec
from recsys.types import (
    CandidateFilters,
    Candidates,
    FloatArray,
    IntArray,
    InvalidRequestError,
    UserState,
)
from tests.unit.candidates.conftest import random_two_tower

NUM_ITEMS, DIM, K = 300, 16, 5
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class World:
    """A catalog with ads, categories, popularity and bids, and a random user tower."""

    model: TwoTowerModel
    catalog: ItemCatalog
    table: ItemTable

    @property
    def items(self) -> FloatArray:
        return self.model.item_embeddings


@cache
def _world(num_ads: int | None = None) -> World:
    rng = np.random.default_rng(11)
    model = random_two_tower(NUM_ITEMS, DIM, seed=3)
    if num_ads is None:
        is_ad = rng.random(NUM_ITEMS) < 0.15
    else:
        is_ad = np.zeros(NUM_ITEMS, dtype=np.bool_)
        is_ad[rng.choice(NUM_ITEMS, num_ads, replace=False)] = True
    catalog = ItemCatalog(
        popularity=rng.gamma(0.5, size=NUM_ITEMS).astype(np.float32),
        fresh=rng.random(NUM_ITEMS) < 0.1,
        categories=rng.random((NUM_ITEMS, 3)) < 0.3,
        is_ad=is_ad,
    )
    table = ItemTable(
        topics=rng.dirichlet(np.ones(4), size=NUM_ITEMS).astype(np.float32),
        is_ad=is_ad,
        bid=np.where(is_ad, rng.uniform(0.5, 2.0, NUM_ITEMS), 0.0).astype(np.float32),
        length_s=rng.uniform(10, 300, NUM_ITEMS).astype(np.float32),
        popularity=rng.dirichlet(np.ones(NUM_ITEMS)).astype(np.float32),
    )
    return World(model, catalog, table)


@cache
def _retriever(kind: str = "flat", num_ads: int | None = None) -> FaissRetriever:
    world = _world(num_ads)
    specs = {
        "flat": IndexSpec(),
        "ivf": IndexSpec(kind="ivf_flat", nlist=16, nprobe=4),
        "ivf_narrow": IndexSpec(kind="ivf_flat", nlist=16, nprobe=1),
    }
    spec = specs[kind]
    return FaissRetriever(
        world.items,
        spec=spec,
        catalog=world.catalog,
        item_table=world.table,
        history_encoder=world.model.history_vectors,
    )


def _histories(batch: int, seed: int, cold_every: int = 4) -> IntArray:
    """Random recent-click matrices: ``-1`` slots anywhere, every ``cold_every``-th row cold."""
    rng = np.random.default_rng(seed)
    hist = rng.integers(0, NUM_ITEMS, size=(batch, K))
    hist[rng.random((batch, K)) < 0.3] = -1
    hist[::cold_every] = -1
    return hist


def _exclusions(batch: int, seed: int) -> list[IntArray]:
    rng = np.random.default_rng(seed + 500)
    return [rng.choice(NUM_ITEMS, rng.integers(0, 12), replace=False) for _ in range(batch)]


def _filter_mask(world: World, filters: CandidateFilters | None) -> BoolArray:
    mask = np.ones(NUM_ITEMS, dtype=np.bool_)
    if filters is not None and filters.categories is not None:
        mask &= world.catalog.categories[:, list(filters.categories)].any(axis=1)
    if filters is not None and filters.ads == "only":
        mask &= world.catalog.is_ad
    if filters is not None and filters.ads == "exclude":
        mask &= ~world.catalog.is_ad
    return mask


def _check_against_reference(
    world: World,
    batch: CandidateBatch,
    hist: IntArray,
    num_organic: int,
    num_ads: int,
    *,
    exclude: list[IntArray] | None = None,
    filters: CandidateFilters | None = None,
    exclude_history: bool = True,
) -> None:
    """Brute force, one row at a time: the blocks must be the top-k of their eligible items."""
    allowed = _filter_mask(world, filters)
    fallback = world.catalog.fallback_order()
    peak = float(world.catalog.popularity.max())
    for b in range(hist.shape[0]):
        history = hist[b][hist[b] >= 0]
        banned = set(exclude[b].tolist()) if exclude is not None else set()
        if exclude_history:
            banned |= set(history.tolist())
        row_ids, row_scores = batch.item_ids[b], batch.scores[b]
        real = row_ids[row_ids >= 0]
        assert real.size == np.unique(real).size, f"row {b} repeats an item"
        for lo, hi, ad in ((0, num_organic, False), (num_organic, num_organic + num_ads, True)):
            ids, scores = row_ids[lo:hi], row_scores[lo:hi]
            eligible = np.array(
                [
                    i
                    for i in range(NUM_ITEMS)
                    if allowed[i] and world.catalog.is_ad[i] == ad and i not in banned
                ],
                dtype=np.int64,
            )
            n_real = min(hi - lo, eligible.size)
            # Padding sits at the end of the block and is fully marked.
            np.testing.assert_array_equal(ids[n_real:], -1)
            np.testing.assert_array_equal(scores[n_real:], 0.0)
            assert not batch.mask[b, lo + n_real : hi].any()
            assert batch.mask[b, lo : lo + n_real].all()
            got = ids[:n_real]
            assert np.isin(got, eligible).all(), f"row {b}: ineligible item returned"
            np.testing.assert_array_equal(batch.is_ad[b, lo : lo + n_real], ad)
            np.testing.assert_array_equal(world.catalog.is_ad[got], ad)
            if history.size == 0:
                expected = [i for i in fallback if i in set(eligible.tolist())][:n_real]
                np.testing.assert_array_equal(got, expected)
                np.testing.assert_allclose(
                    scores[:n_real], world.catalog.popularity[got] / peak, rtol=1e-6
                )
                continue
            query = world.model.user_vector(history)
            truth = world.items @ query
            np.testing.assert_allclose(scores[:n_real], truth[got], atol=1e-5)
            assert np.all(np.diff(scores[:n_real]) <= 0), "best first"
            rest = np.setdiff1d(eligible, got)
            if n_real and rest.size:
                assert truth[got].min() >= truth[rest].max() - 1e-5, f"row {b}: not the top-k"


def test_blocks_are_the_exact_top_k_flagged_and_disjoint() -> None:
    world, retriever = _world(), _retriever()
    hist = _histories(96, seed=0)
    exclude = _exclusions(96, seed=0)
    batch = retriever.candidates_for_histories(hist, 12, 4, exclude=exclude)

    assert isinstance(batch, CandidateBatch)
    assert batch.item_ids.shape == batch.scores.shape == batch.mask.shape == (96, 16)
    assert batch.item_ids.dtype == np.int64
    assert batch.scores.dtype == np.float32
    assert batch.mask.dtype == batch.is_ad.dtype == np.bool_
    np.testing.assert_array_equal(batch.mask, batch.item_ids >= 0)
    assert not batch.is_ad[:, :12].any()
    assert batch.is_ad[:, 12:].all()
    _check_against_reference(world, batch, hist, 12, 4, exclude=exclude)


def test_history_and_exclusions_never_appear() -> None:
    retriever = _retriever()
    hist = _histories(64, seed=1, cold_every=1000)
    exclude = _exclusions(64, seed=1)
    batch = retriever.candidates_for_histories(hist, 30, 10, exclude=exclude)
    for b in range(64):
        banned = np.concatenate([hist[b][hist[b] >= 0], exclude[b]])
        assert not np.isin(batch.item_ids[b], banned).any(), f"row {b} leaks an excluded item"


def test_exclude_history_false_may_return_history_items() -> None:
    world, retriever = _world(), _retriever()
    hist = _histories(48, seed=2, cold_every=1000)
    batch = retriever.candidates_for_histories(hist, 40, 10, exclude_history=False)
    _check_against_reference(world, batch, hist, 40, 10, exclude_history=False)
    # The tower's query sits near its history, so some history item is among the top 40.
    returned_history = sum(
        np.isin(hist[b][hist[b] >= 0], batch.item_ids[b]).any() for b in range(48)
    )
    assert returned_history > 0


def test_cold_rows_get_the_fallback_order_in_each_block() -> None:
    world, retriever = _world(), _retriever()
    hist = np.full((3, K), -1, dtype=np.int64)
    exclude = [np.zeros(0, np.int64), world.catalog.fallback_order()[:3], np.array([7, 8])]
    batch = retriever.candidates_for_histories(hist, 10, 5, exclude=exclude)
    _check_against_reference(world, batch, hist, 10, 5, exclude=exclude)
    order = world.catalog.fallback_order()
    np.testing.assert_array_equal(batch.item_ids[0, :10], order[~world.catalog.is_ad[order]][:10])
    np.testing.assert_array_equal(batch.item_ids[0, 10:], order[world.catalog.is_ad[order]][:5])


def test_a_zero_query_is_treated_as_cold() -> None:
    world = _world()
    silent = FaissRetriever(
        world.items,
        catalog=world.catalog,
        history_encoder=lambda h: np.zeros((h.shape[0], DIM), np.float32),
    )
    hist = _histories(4, seed=3, cold_every=1000)
    got = silent.candidates_for_histories(hist, 6, 2)
    history_only = [h[h >= 0] for h in hist]
    cold = silent.candidates_for_histories(np.full((4, K), -1), 6, 2, exclude=history_only)
    np.testing.assert_array_equal(got.item_ids, cold.item_ids)
    np.testing.assert_array_equal(got.scores, cold.scores)


@pytest.mark.parametrize("kind", ["flat", "ivf"])
@pytest.mark.parametrize(
    "filters", [None, CandidateFilters(categories=(0, 2)), CandidateFilters(ads="any")]
)
def test_each_row_equals_its_single_row_call(kind: str, filters: CandidateFilters | None) -> None:
    world, retriever = _world(), _retriever(kind)
    hist = _histories(40, seed=4)
    exclude = _exclusions(40, seed=4)
    batch = retriever.candidates_for_histories(hist, 20, 6, exclude=exclude, filters=filters)
    again = retriever.candidates_for_histories(hist, 20, 6, exclude=exclude, filters=filters)
    for first, second in zip(batch, again, strict=True):
        np.testing.assert_array_equal(first, second)  # deterministic
    for b in range(40):
        one = retriever.candidates_for_histories(
            hist[b : b + 1], 20, 6, exclude=[exclude[b]], filters=filters
        )
        np.testing.assert_array_equal(one.item_ids[0], batch.item_ids[b])
        np.testing.assert_allclose(one.scores[0], batch.scores[b], atol=1e-6)
        np.testing.assert_array_equal(one.mask[0], batch.mask[b])
        np.testing.assert_array_equal(one.is_ad[0], batch.is_ad[b])
        single = retriever.candidates_for_history(
            hist[b], 20, 6, exclude=exclude[b], filters=filters
        )
        keep = batch.mask[b]
        assert isinstance(single, Candidates)
        np.testing.assert_array_equal(single.item_ids, batch.item_ids[b, keep])
        np.testing.assert_allclose(single.scores, batch.scores[b, keep], atol=1e-6)
        np.testing.assert_array_equal(single.embeddings, world.items[single.item_ids])
        np.testing.assert_array_equal(single.is_ad, world.catalog.is_ad[single.item_ids])
        np.testing.assert_array_equal(single.bid, world.table.bid[single.item_ids])
    if kind == "flat":
        _check_against_reference(world, batch, hist, 20, 6, exclude=exclude, filters=filters)


@pytest.mark.parametrize("kind", ["ivf", "ivf_narrow"])
def test_approximate_index_returns_eligible_best_first_blocks(kind: str) -> None:
    # "ivf_narrow" probes one list of ~19 items: too few for the blocks, so rows are
    # re-fetched and finally filled by the exact scan; every row must still come back full.
    world, retriever = _world(), _retriever(kind)
    hist = _histories(64, seed=5)
    exclude = _exclusions(64, seed=5)
    batch = retriever.candidates_for_histories(hist, 15, 5, exclude=exclude)
    exact = _retriever("flat").candidates_for_histories(hist, 15, 5, exclude=exclude)
    for b in range(64):
        banned = np.concatenate([hist[b][hist[b] >= 0], exclude[b]])
        ids = batch.item_ids[b]
        assert not np.isin(ids, banned).any()
        np.testing.assert_array_equal(world.catalog.is_ad[ids[:15]], False)
        np.testing.assert_array_equal(world.catalog.is_ad[ids[15:]], True)
        assert batch.mask[b].all()  # enough items in both blocks: refill fills every row
        if (hist[b] >= 0).any():
            query = world.model.user_vector(hist[b][hist[b] >= 0])
            np.testing.assert_allclose(batch.scores[b], world.items[ids] @ query, atol=1e-5)
            assert np.all(np.diff(batch.scores[b, :15]) <= 0)
    overlap = np.mean([np.isin(batch.item_ids[b], exact.item_ids[b]).mean() for b in range(64)])
    if kind == "ivf":  # four of sixteen lists probed: most of the exact candidates
        assert overlap > 0.8, f"IVF candidates overlap the exact ones by only {overlap:.2f}"


@pytest.mark.parametrize(
    "filters",
    [
        CandidateFilters(categories=(1,)),
        CandidateFilters(categories=(0, 1), ads="exclude"),
        CandidateFilters(ads="only"),
        CandidateFilters(ads="exclude"),
    ],
)
def test_filters_restrict_both_blocks(filters: CandidateFilters) -> None:
    world, retriever = _world(), _retriever()
    hist = _histories(32, seed=6)
    batch = retriever.candidates_for_histories(hist, 10, 4, filters=filters)
    _check_against_reference(world, batch, hist, 10, 4, filters=filters)
    allowed = _filter_mask(world, filters)
    assert allowed[batch.item_ids[batch.mask]].all()
    if filters.ads == "exclude":
        assert not batch.mask[:, 10:].any()
        assert batch.mask[:, :10].all()
    if filters.ads == "only":
        assert not batch.mask[:, :10].any()
        assert batch.mask[:, 10:].all()


def test_blocks_pad_when_the_catalog_has_too_few_ads() -> None:
    world, retriever = _world(num_ads=3), _retriever(num_ads=3)
    ads = np.flatnonzero(world.catalog.is_ad)
    hist = _histories(16, seed=7)
    hist[1] = [ads[0], -1, -1, -1, -1]  # a warm row that clicked one of the three ads
    batch = retriever.candidates_for_histories(hist, 8, 10)
    _check_against_reference(world, batch, hist, 8, 10)
    counts = batch.mask[:, 8:].sum(axis=1)
    clicked_ads = [np.intersect1d(h, ads).size for h in hist]
    np.testing.assert_array_equal(counts, 3 - np.array(clicked_ads))
    assert counts.min() < 3 <= counts.max()  # the seed gives rows with and without ad clicks
    assert set(batch.item_ids[0, 8:11].tolist()) == set(ads.tolist())
    single = retriever.candidates_for_history(hist[1], 8, 10)
    assert len(single) == 8 + 2
    assert single.is_ad.sum() == 2


def test_everything_excluded_gives_all_padding_not_an_error() -> None:
    retriever = _retriever()
    hist = _histories(4, seed=8)
    everything = [np.arange(NUM_ITEMS)] * 4
    batch = retriever.candidates_for_histories(hist, 5, 5, exclude=everything)
    assert not batch.mask.any()
    np.testing.assert_array_equal(batch.item_ids, -1)
    assert len(retriever.candidates_for_history(hist[0], 5, 5, exclude=everything[0])) == 0
    big = retriever.candidates_for_histories(hist, NUM_ITEMS, NUM_ITEMS)
    assert big.mask.sum(axis=1).max() <= NUM_ITEMS


def test_event_states_feed_it_directly() -> None:
    # The fold's ``recent`` field is int32 and -1 padded: a fresh user is a cold row.
    states = StateCodec(FeatureSpec(num_topics=4)).empty(3)
    states["recent"][1, :2] = [17, 42]
    batch = _retriever().candidates_for_histories(states["recent"], 6, 2)
    assert batch.mask.all()
    assert not np.isin(batch.item_ids[1], [17, 42]).any()
    np.testing.assert_array_equal(batch.item_ids[0], batch.item_ids[2])  # both cold


def test_empty_batch_and_empty_blocks() -> None:
    retriever = _retriever()
    empty = retriever.candidates_for_histories(np.zeros((0, K), np.int64), 4, 2)
    assert empty.item_ids.shape == (0, 6)
    none = retriever.candidates_for_histories(_histories(3, seed=9), 0, 0)
    assert none.item_ids.shape == (3, 0)
    no_ads = retriever.candidates_for_histories(_histories(3, seed=9), 4, 0)
    assert no_ads.mask.all()
    assert not no_ads.is_ad.any()


def test_bad_input_is_refused_by_name() -> None:
    retriever = _retriever()
    hist = _histories(2, seed=10)
    cases: list[tuple[str, dict[str, object]]] = [
        ("histories", {"histories": np.array([[0, -2]])}),
        ("histories", {"histories": np.array([[NUM_ITEMS]])}),
        ("histories", {"histories": np.array([1, 2])}),
        ("histories", {"histories": np.array([[1.0, 2.0]])}),
        ("num_organic", {"num_organic": -1}),
        ("num_ads", {"num_ads": True}),
        ("num_ads", {"num_ads": 2.5}),
        ("exclude", {"exclude": [np.array([1])]}),
        ("exclude", {"exclude": [np.array([1]), np.array([NUM_ITEMS])]}),
        ("exclude", {"exclude": [np.array([1.5]), np.array([2])]}),
        ("filters", {"filters": CandidateFilters(categories=(9,))}),
    ]
    for field, override in cases:
        kwargs: dict[str, object] = {
            "histories": hist,
            "num_organic": 3,
            "num_ads": 1,
            **override,
        }
        with pytest.raises(InvalidRequestError) as info:
            retriever.candidates_for_histories(**kwargs)  # type: ignore[arg-type]
        assert info.value.field == field, (field, override)
    with pytest.raises(InvalidRequestError) as info:
        retriever.candidates_for_history(hist, 3, 1)
    assert info.value.field == "history"


def test_a_retriever_without_history_encoder_says_so() -> None:
    world = _world()
    plain = FaissRetriever(world.items, catalog=world.catalog)
    with pytest.raises(RuntimeError, match="history_encoder"):
        plain.candidates_for_histories(np.full((2, K), -1), 3, 1)
    wrong = FaissRetriever(
        world.items, history_encoder=lambda h: np.zeros((h.shape[0], DIM + 1), np.float32)
    )
    with pytest.raises(ValueError, match="history_encoder returned shape"):
        wrong.candidates_for_histories(_histories(2, seed=11, cold_every=1000), 3, 1)


def test_generate_fills_ad_flags_and_bids() -> None:
    world, retriever = _world(), _retriever()
    user = UserState("u", world.model.user_embeddings[0])
    got = retriever.generate(user, 40, np.zeros(0, np.int64))
    np.testing.assert_array_equal(got.is_ad, world.catalog.is_ad[got.item_ids])
    np.testing.assert_array_equal(got.bid, world.table.bid[got.item_ids])
    assert got.is_ad.any(), "40 of 300 items with ~15% ads should include an ad"
    np.testing.assert_array_equal(retriever.bids(np.array([[-1, 3]])), [[0.0, world.table.bid[3]]])
    plain = FaissRetriever(world.items, catalog=world.catalog).generate(
        user, 40, np.zeros(0, np.int64)
    )
    np.testing.assert_array_equal(plain.is_ad, got.is_ad)
    np.testing.assert_array_equal(plain.bid, 0.0)  # no item table, no bids


def test_candidates_default_ad_fields_and_validate_shapes() -> None:
    ids = np.array([3, 1], dtype=np.int64)
    scores = np.array([0.5, 0.25], dtype=np.float32)
    emb = np.zeros((2, DIM), dtype=np.float32)
    plain = Candidates(item_ids=ids, scores=scores, embeddings=emb)
    assert plain.is_ad.dtype == np.bool_
    assert plain.bid.dtype == np.float32
    np.testing.assert_array_equal(plain.is_ad, [False, False])
    np.testing.assert_array_equal(plain.bid, [0.0, 0.0])
    other = Candidates(item_ids=ids[:1], scores=scores[:1], embeddings=emb[:1])
    assert other.is_ad.shape == (1,)  # defaults are per instance, sized to the ids
    flagged = Candidates(ids, scores, emb, is_ad=np.array([1, 0]), bid=np.array([2.0, 0.0]))
    np.testing.assert_array_equal(flagged.is_ad, [True, False])
    assert flagged.bid.dtype == np.float32
    with pytest.raises(ValueError, match="is_ad"):
        Candidates(ids, scores, emb, is_ad=np.array([True]))
    with pytest.raises(ValueError, match="bid"):
        Candidates(ids, scores, emb, bid=np.zeros(3, np.float32))
