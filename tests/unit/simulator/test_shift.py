"""Preference shifts: a segment's appeal for chosen items changes; nobody else's does."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.config import SimulatorSettings
from recsys.data import SyntheticWorld
from recsys.simulator import SlateEnv
from tests.unit.simulator.slates import uniform_random_slates


def _env(world: SyntheticWorld, seed: int = 3) -> SlateEnv:
    return SlateEnv(world, seed=seed, settings=SimulatorSettings(num_candidates=20, slate_size=5))


def test_shift_moves_only_the_segments_appeal_for_the_chosen_items(
    small_world: SyntheticWorld,
) -> None:
    env = _env(small_world)
    rng = np.random.default_rng(0)
    users = np.arange(small_world.num_users)
    slates = uniform_random_slates(small_world.num_items, 5, users.shape[0], rng)
    before = env.appeal(users, slates)
    delta = np.zeros(small_world.num_items, np.float32)
    hit = np.arange(0, small_world.num_items, 3)
    delta[hit] = -2.5
    segment = users[::2]
    env.shift_preferences(segment, delta)
    after = env.appeal(users, slates)

    in_segment = np.isin(users, segment)[:, None]
    expected = before + in_segment * delta[slates]
    np.testing.assert_allclose(after, expected, rtol=0, atol=1e-5)
    assert (after[~in_segment[:, 0]] == before[~in_segment[:, 0]]).all()
    touched = in_segment[:, 0] & np.isin(slates, hit).any(axis=1)
    assert touched.any()
    assert (after[touched].sum(axis=1) < before[touched].sum(axis=1)).all()


def test_a_shifted_segment_stops_clicking_what_it_turned_against(
    small_world: SyntheticWorld,
) -> None:
    """Stepping uses the shifted appeal: slates of only the dropped items lose their clicks
    for the segment, and the unshifted users' responses are the unshifted run's exactly."""
    rng = np.random.default_rng(1)
    n = small_world.num_users
    users = np.arange(n)
    slates = uniform_random_slates(small_world.num_items, 5, n, rng)
    plain, shifted = _env(small_world), _env(small_world)
    shifted.shift_preferences(users[: n // 2], np.full(small_world.num_items, -8.0, np.float32))
    a = plain.step(users, slates)
    b = shifted.step(users, slates)
    clicked_a = a.observable.click_position >= 0
    clicked_b = b.observable.click_position >= 0
    assert clicked_a[: n // 2].sum() > 0
    assert clicked_b[: n // 2].sum() < clicked_a[: n // 2].sum() / 4
    np.testing.assert_array_equal(b.hidden.appeal[n // 2 :], a.hidden.appeal[n // 2 :])


def test_shift_rejects_a_wrong_shape_or_non_finite_deltas(small_world: SyntheticWorld) -> None:
    env = _env(small_world)
    with pytest.raises(ValueError, match="shape"):
        env.shift_preferences([0], np.zeros(small_world.num_items + 1))
    with pytest.raises(ValueError, match="finite"):
        env.shift_preferences([0], np.full(small_world.num_items, np.nan))
    with pytest.raises(ValueError, match="user_idx"):
        env.shift_preferences([small_world.num_users], np.zeros(small_world.num_items))
