"""MyopicPolicy: a valid SlatePolicy with exact propensities and request validation."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.config import PolicySettings
from recsys.policy import MyopicPolicy, plackett_luce_propensities
from recsys.protocols import SlatePolicy
from recsys.types import Candidates, InvalidRequestError, UserState

USER = UserState(user_id="u0", embedding=np.zeros(4, dtype=np.float32))


def _candidates(n: int = 20, seed: int = 0) -> Candidates:
    rng = np.random.default_rng(seed)
    return Candidates(
        item_ids=rng.choice(10_000, size=n, replace=False).astype(np.int64),
        scores=np.sort(rng.normal(size=n).astype(np.float32))[::-1].copy(),
        embeddings=rng.normal(size=(n, 4)).astype(np.float32),
    )


def test_implements_slate_policy() -> None:
    assert isinstance(MyopicPolicy(0.1), SlatePolicy)


def test_select_returns_a_valid_slate() -> None:
    cands = _candidates()
    policy = MyopicPolicy(temperature=0.5, version="v7")
    slate = policy.select(USER, cands, 6, np.random.default_rng(0))
    assert len(slate) == 6
    assert slate.policy == "myopic"
    assert slate.version == "v7"
    assert slate.item_ids.dtype == slate.positions.dtype == np.int64
    assert slate.scores.dtype == slate.propensities.dtype == np.float32
    assert np.unique(slate.item_ids).shape[0] == 6
    assert set(slate.item_ids.tolist()) <= set(cands.item_ids.tolist())
    np.testing.assert_array_equal(slate.positions, np.arange(6))
    assert np.all((slate.propensities > 0) & (slate.propensities <= 1))
    # Scores and propensities belong to the items they sit next to.
    where = {int(item): i for i, item in enumerate(cands.item_ids)}
    idx = np.array([where[int(item)] for item in slate.item_ids])
    np.testing.assert_array_equal(slate.scores, cands.scores[idx])
    np.testing.assert_allclose(
        slate.propensities, plackett_luce_propensities(cands.scores, idx, 0.5), rtol=1e-6
    )


def test_low_temperature_is_greedy_top_k() -> None:
    cands = _candidates()
    slate = MyopicPolicy(temperature=1e-6).select(USER, cands, 5, np.random.default_rng(0))
    np.testing.assert_array_equal(slate.item_ids, cands.item_ids[:5])
    np.testing.assert_allclose(slate.propensities, 1.0)


def test_same_rng_seed_same_slate() -> None:
    cands = _candidates()
    policy = MyopicPolicy(temperature=1.0)
    a = policy.select(USER, cands, 5, np.random.default_rng(3))
    b = policy.select(USER, cands, 5, np.random.default_rng(3))
    np.testing.assert_array_equal(a.item_ids, b.item_ids)


def test_slate_can_use_every_candidate() -> None:
    cands = _candidates(n=5)
    slate = MyopicPolicy(temperature=1.0).select(USER, cands, 5, np.random.default_rng(0))
    assert sorted(slate.item_ids.tolist()) == sorted(cands.item_ids.tolist())


@pytest.mark.parametrize("slate_size", [0, -1, 21, 2.0, True])
def test_bad_slate_size_raises_invalid_request(slate_size: object) -> None:
    with pytest.raises(InvalidRequestError) as info:
        MyopicPolicy(0.1).select(USER, _candidates(), slate_size, np.random.default_rng(0))  # type: ignore[arg-type]
    assert info.value.field == "slate_size"


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan")])
def test_bad_temperature_raises(temperature: float) -> None:
    with pytest.raises(ValueError, match="temperature"):
        MyopicPolicy(temperature)


def test_from_settings() -> None:
    policy = MyopicPolicy.from_settings(PolicySettings(temperature=0.25))
    assert policy.temperature == 0.25
    assert policy.name == "myopic"
    assert policy.version == "myopic-0"
