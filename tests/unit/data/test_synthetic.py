"""The synthetic world: seeded, well-shaped, and guarded against nonsense sizes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.config import CatalogSettings
from recsys.data import SyntheticWorld, make_world


def _arrays(world: SyntheticWorld) -> list[np.ndarray]:
    return [world.item_topics, world.item_quality, world.item_popularity, world.user_interests]


def test_same_seed_gives_identical_world() -> None:
    cfg = CatalogSettings(num_items=300, num_users=50, num_topics=8, seed=7)
    a, b = make_world(cfg), make_world(cfg)
    for x, y in zip(_arrays(a), _arrays(b), strict=True):
        np.testing.assert_array_equal(x, y)
    assert a.user_ids == b.user_ids


def test_different_seed_gives_different_world() -> None:
    a = make_world(CatalogSettings(num_items=300, num_users=50, num_topics=8, seed=1))
    b = make_world(CatalogSettings(num_items=300, num_users=50, num_topics=8, seed=2))
    for x, y in zip(_arrays(a), _arrays(b), strict=True):
        assert not np.array_equal(x, y)


def test_shapes_dtypes_and_ranges() -> None:
    world = make_world(CatalogSettings(num_items=500, num_users=40, num_topics=12, seed=0))
    assert (world.num_items, world.num_users, world.num_topics) == (500, 40, 12)
    assert world.item_topics.shape == (500, 12)
    assert world.item_quality.shape == (500,)
    assert world.item_popularity.shape == (500,)
    assert world.user_interests.shape == (40, 12)
    for arr in _arrays(world):
        assert arr.dtype == np.float32
        assert np.all(np.isfinite(arr))
    assert world.user_ids[:3] == ["u0", "u1", "u2"]
    assert world.user_ids[-1] == "u39"
    assert len(world.user_ids) == 40
    assert np.all(world.item_topics >= 0)
    np.testing.assert_allclose(world.item_topics.sum(axis=1), 1.0, atol=1e-5)
    assert np.all(np.abs(world.item_quality) <= 1)
    assert np.all(np.abs(world.user_interests) <= 1)
    assert np.all(world.item_popularity > 0)
    assert world.item_popularity.sum() == pytest.approx(1.0, abs=1e-5)


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
