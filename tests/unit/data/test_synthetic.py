"""The synthetic world: seeded, well-shaped, and guarded against nonsense sizes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.config import CatalogSettings
from recsys.data import SyntheticWorld, make_world


def _arrays(world: SyntheticWorld) -> list[np.ndarray]:
    return [
        world.item_topics,
        world.item_quality,
        world.item_popularity,
        world.user_interests,
        world.item_length_s,
        world.item_clickbait,
        world.item_is_ad,
        world.item_bid,
        world.user_activity,
    ]


def test_adding_attributes_did_not_shift_existing_streams() -> None:
    # Fingerprints of the arrays drawn before clickbait, ads, length and activity existed.
    world = make_world(CatalogSettings(num_items=50, num_users=7, num_topics=5, seed=3))
    np.testing.assert_allclose(
        world.item_quality[:3], [-0.45446595549583435, 0.02620997652411461, 0.08864624798297882]
    )
    np.testing.assert_allclose(
        world.user_interests.ravel()[:3], [-0.2547107934951782, 0.0013515148311853409, 0.873]
    )
    np.testing.assert_allclose(
        world.item_popularity[:3], [0.008890459313988686, 0.007169724907726049, 0.00926089473]
    )
    assert float(world.item_quality.astype(np.float64).sum()) == pytest.approx(-2.67197420168)


def test_same_seed_gives_identical_world() -> None:
    cfg = CatalogSettings(num_items=300, num_users=50, num_topics=8, seed=7)
    a, b = make_world(cfg), make_world(cfg)
    for x, y in zip(_arrays(a), _arrays(b), strict=True):
        np.testing.assert_array_equal(x, y)
    assert a.user_ids == b.user_ids


def test_different_seed_gives_different_world() -> None:
    a = make_world(CatalogSettings(num_items=300, num_users=50, num_topics=8, seed=1))
    b = make_world(CatalogSettings(num_items=300, num_users=50, num_topics=8, seed=2))
    for x, y in zip(_arrays(a)[:4], _arrays(b)[:4], strict=True):
        assert not np.array_equal(x, y)


def test_shapes_dtypes_and_ranges() -> None:
    world = make_world(CatalogSettings(num_items=500, num_users=40, num_topics=12, seed=0))
    assert (world.num_items, world.num_users, world.num_topics) == (500, 40, 12)
    assert world.item_topics.shape == (500, 12)
    assert world.item_quality.shape == (500,)
    assert world.item_popularity.shape == (500,)
    assert world.user_interests.shape == (40, 12)
    for arr in _arrays(world):
        assert arr.dtype == (np.bool_ if arr is world.item_is_ad else np.float32)
        assert np.all(np.isfinite(arr))
        assert not arr.flags.writeable
    assert world.user_ids[:3] == ["u0", "u1", "u2"]
    assert world.user_ids[-1] == "u39"
    assert len(world.user_ids) == 40
    assert np.all(world.item_topics >= 0)
    np.testing.assert_allclose(world.item_topics.sum(axis=1), 1.0, atol=1e-5)
    assert np.all(np.abs(world.item_quality) <= 1)
    assert np.all(np.abs(world.user_interests) <= 1)
    assert np.all(world.item_popularity > 0)
    assert world.item_popularity.sum() == pytest.approx(1.0, abs=1e-5)


def test_clickbait_ads_lengths_and_activity() -> None:
    world = make_world(CatalogSettings(num_items=4000, num_users=3000, num_topics=8, seed=5))
    bait = world.item_clickbait > 0
    assert 0.07 < bait.mean() < 0.13
    assert world.item_clickbait[bait].min() >= 0.5
    assert world.item_clickbait.max() <= 1.0
    assert 0.07 < world.item_is_ad.mean() < 0.13
    assert np.all(world.item_bid[~world.item_is_ad] == 0)
    assert np.all(world.item_bid[world.item_is_ad] > 0)
    assert 1.5 < np.median(world.item_bid[world.item_is_ad]) < 2.5
    assert np.median(world.item_length_s[world.item_is_ad]) < 45
    assert 100 < np.median(world.item_length_s[~world.item_is_ad]) < 200
    assert world.user_activity.mean() == pytest.approx(1.0, abs=1e-4)
    assert world.user_activity.min() > 0
    flat = make_world(
        CatalogSettings(num_items=10, num_users=5, num_topics=2),
        clickbait_fraction=0.0,
        ad_fraction=0.0,
        activity_spread=0.0,
    )
    assert not flat.item_clickbait.any()
    assert not flat.item_is_ad.any()
    np.testing.assert_allclose(flat.user_activity, 1.0)


def test_external_arrays_replace_their_draws_only() -> None:
    cfg = CatalogSettings(num_items=6, num_users=3, num_topics=2, seed=9)
    drawn = make_world(cfg)
    genres = np.array([[1, 0], [1, 1], [0, 1], [2, 2], [0, 3], [1, 0]])
    counts = np.array([10, 5, 0, 1, 2, 2])
    world = make_world(
        cfg,
        item_topics=genres,
        item_quality=[0.5, -0.5, 0.0, 1.0, -1.0, 0.2],
        item_popularity=counts,
        user_interests=np.zeros((3, 2)),
        user_activity=[0.5, 1.0, 3.0],
    )
    np.testing.assert_allclose(world.item_topics[1], [0.5, 0.5])
    np.testing.assert_allclose(world.item_topics.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(world.item_popularity, counts / counts.sum(), rtol=1e-6)
    np.testing.assert_allclose(world.user_activity, [0.5, 1.0, 3.0])
    assert world.item_quality.dtype == np.float32
    # Everything not supplied is still the seeded draw.
    np.testing.assert_array_equal(world.item_clickbait, drawn.item_clickbait)
    np.testing.assert_array_equal(world.item_is_ad, drawn.item_is_ad)
    np.testing.assert_array_equal(world.item_length_s, drawn.item_length_s)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"item_topics": np.ones((5, 2))}, r"item_topics has shape \(5, 2\), expected \(6, 2\)"),
        ({"item_topics": -np.ones((6, 2))}, "non-negative"),
        ({"item_topics": np.zeros((6, 2))}, "positive mass"),
        ({"item_quality": [0.0] * 5 + [np.nan]}, "item_quality must be finite"),
        ({"item_quality": [2.0] * 6}, r"\[-1, 1\]"),
        ({"item_popularity": [-1.0] * 6}, "item_popularity"),
        ({"user_interests": np.ones((3, 3))}, "user_interests has shape"),
        ({"user_activity": [1.0, 0.0, 1.0]}, "user_activity must be > 0"),
        ({"user_activity": [1.0, 1.0]}, "catalog.num_users"),
    ],
)
def test_bad_external_arrays_raise(kwargs: dict[str, object], match: str) -> None:
    cfg = CatalogSettings(num_items=6, num_users=3, num_topics=2)
    with pytest.raises(ValueError, match=match):
        make_world(cfg, **kwargs)  # type: ignore[arg-type]


def test_hand_built_world_gets_neutral_simulator_attributes() -> None:
    world = SyntheticWorld(
        item_topics=np.eye(3, dtype=np.float32),
        item_quality=np.zeros(3, dtype=np.float32),
        item_popularity=np.full(3, 1 / 3, dtype=np.float32),
        user_interests=np.zeros((2, 3), dtype=np.float32),
        user_ids=["a", "b"],
    )
    assert not world.item_is_ad.any()
    assert not world.item_clickbait.any()
    np.testing.assert_array_equal(world.item_bid, 0.0)
    np.testing.assert_array_equal(world.user_activity, 1.0)
    assert np.all(world.item_length_s > 0)
    with pytest.raises(ValueError, match="item_length_s must be > 0"):
        SyntheticWorld(
            item_topics=world.item_topics,
            item_quality=world.item_quality,
            item_popularity=world.item_popularity,
            user_interests=world.user_interests,
            user_ids=world.user_ids,
            item_length_s=np.zeros(3, dtype=np.float32),
        )
    with pytest.raises(ValueError, match="item_clickbait must lie"):
        SyntheticWorld(
            item_topics=world.item_topics,
            item_quality=world.item_quality,
            item_popularity=world.item_popularity,
            user_interests=world.user_interests,
            user_ids=world.user_ids,
            item_clickbait=np.full(3, 2.0, dtype=np.float32),
        )


def test_select_users_builds_a_population_view() -> None:
    world = make_world(CatalogSettings(num_items=20, num_users=4, num_topics=3, seed=2))
    sub = world.select_users(np.array([3, 3, 0]))
    assert sub.num_users == 3
    assert sub.user_ids == ["u3", "u3", "u0"]
    np.testing.assert_array_equal(sub.user_interests[0], world.user_interests[3])
    np.testing.assert_array_equal(sub.user_activity[2], world.user_activity[0])
    assert sub.item_topics is world.item_topics
    with pytest.raises(ValueError, match="user_idx"):
        world.select_users(np.array([4]))


def test_topic_mixtures_are_sparse_ish() -> None:
    world = make_world(CatalogSettings(num_items=2000, num_users=1, num_topics=16, seed=0))
    # Uniform mixtures would put 1/16 on the top topic; Dirichlet(0.1) concentrates mass.
    assert world.item_topics.max(axis=1).mean() > 0.4


def test_popularity_is_zipf_like() -> None:
    world = make_world(CatalogSettings(num_items=1000, num_users=1, num_topics=4, seed=3))
    ranked = np.sort(world.item_popularity)[::-1]
    # Exponent 1: the r-th most popular item has mass proportional to 1 / r.
    np.testing.assert_allclose(ranked[:4] / ranked[0], [1, 1 / 2, 1 / 3, 1 / 4], rtol=1e-5)


def test_world_arrays_are_read_only() -> None:
    world = make_world(CatalogSettings(num_items=10, num_users=5, num_topics=3))
    with pytest.raises(ValueError, match="read-only"):
        world.item_quality[0] = 1.0


@pytest.mark.parametrize("name", ["num_items", "num_users", "num_topics"])
def test_bad_sizes_raise(name: str) -> None:
    # model_construct skips pydantic validation, as a hand-built settings object might.
    cfg = CatalogSettings.model_construct(**{**CatalogSettings().model_dump(), name: 0})
    with pytest.raises(ValueError, match=name):
        make_world(cfg)


def test_settings_reject_bad_sizes_too() -> None:
    with pytest.raises(ValueError, match="num_items"):
        CatalogSettings(num_items=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"topic_concentration": 0.0}, "topic_concentration"),
        ({"zipf_exponent": -1.0}, "zipf_exponent"),
        ({"quality_scale": float("nan")}, "quality_scale"),
        ({"clickbait_fraction": 1.5}, "clickbait_fraction"),
        ({"ad_fraction": float("nan")}, "ad_fraction"),
        ({"activity_spread": -0.1}, "activity_spread"),
    ],
)
def test_bad_world_parameters_raise(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_world(CatalogSettings(num_items=10, num_users=5, num_topics=3), **kwargs)


def test_world_rejects_inconsistent_arrays() -> None:
    ok = make_world(CatalogSettings(num_items=10, num_users=5, num_topics=3))
    with pytest.raises(ValueError, match="item_quality"):
        SyntheticWorld(
            item_topics=ok.item_topics,
            item_quality=np.zeros(9, dtype=np.float32),
            item_popularity=ok.item_popularity,
            user_interests=ok.user_interests,
            user_ids=ok.user_ids,
        )
    with pytest.raises(ValueError, match="user_interests"):
        SyntheticWorld(
            item_topics=ok.item_topics,
            item_quality=ok.item_quality,
            item_popularity=ok.item_popularity,
            user_interests=ok.user_interests,
            user_ids=ok.user_ids[:-1],
        )
    with pytest.raises(ValueError, match="float32"):
        SyntheticWorld(
            item_topics=ok.item_topics.astype(np.float64),
            item_quality=ok.item_quality,
            item_popularity=ok.item_popularity,
            user_interests=ok.user_interests,
            user_ids=ok.user_ids,
        )


@settings(max_examples=25, deadline=None)
@given(
    num_items=st.integers(1, 60),
    num_users=st.integers(1, 30),
    num_topics=st.integers(1, 10),
    seed=st.integers(0, 2**32 - 1),
)
def test_world_invariants_hold_for_any_size(
    num_items: int, num_users: int, num_topics: int, seed: int
) -> None:
    world = make_world(
        CatalogSettings(num_items=num_items, num_users=num_users, num_topics=num_topics, seed=seed)
    )
    assert world.item_topics.shape == (num_items, num_topics)
    assert np.all(np.isfinite(world.item_topics))
    np.testing.assert_allclose(world.item_topics.sum(axis=1), 1.0, atol=1e-5)
    assert world.item_popularity.sum() == pytest.approx(1.0, abs=1e-5)
    assert len(world.user_ids) == num_users
    assert world.item_bid.shape == world.item_is_ad.shape == (num_items,)
    assert world.user_activity.shape == (num_users,)
    assert np.all(world.user_activity > 0)
