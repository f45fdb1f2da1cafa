"""SlateEnv mechanics: seeded steps, subset vs whole-population paths, results, validation."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from recsys.config import CatalogSettings, SimulatorSettings
from recsys.data import SyntheticWorld, make_world
from recsys.simulator import MultinomialLogitChoice, SlateEnv, StepResult
from tests.unit.simulator.conftest import pure_topic_world, settings
from tests.unit.simulator.slates import uniform_random_slates


def _batch(world: SyntheticWorld, n: int, slate_size: int, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    users = rng.integers(0, world.num_users, size=n)
    return users, uniform_random_slates(world.num_items, slate_size, n, rng)


def _flat(result: StepResult) -> list[Any]:
    return [
        result.user_idx,
        result.slates,
        result.user_features,
        *result.observable,
        *result.session,
        *result.hidden,
    ]


def _assert_same(a: StepResult, b: StepResult) -> None:
    for x, y in zip(_flat(a), _flat(b), strict=True):
        np.testing.assert_array_equal(x, y)


def _trajectory(world: SyntheticWorld, seed: int, steps: int) -> list[StepResult]:
    env = SlateEnv(world, seed=seed, settings=SimulatorSettings(num_candidates=20, slate_size=5))
    out = []
    for _ in range(steps):
        out.append(env.step(None, env.sample_candidates()[:, :5]))
    return out


def test_same_seed_same_trajectory(small_world: SyntheticWorld) -> None:
    a = _trajectory(small_world, seed=5, steps=40)
    b = _trajectory(small_world, seed=5, steps=40)
    for x, y in zip(a, b, strict=True):
        _assert_same(x, y)
    # Long enough that sessions end and lives restart: the whole state machine is covered.
    assert any(r.session.session_end.any() for r in a)
    assert any(r.session.terminated.any() for r in a)
    c = _trajectory(small_world, seed=6, steps=2)
    assert not np.array_equal(a[0].slates, c[0].slates)


def test_reset_with_seed_replays(small_world: SyntheticWorld) -> None:
    users, slates = _batch(small_world, 300, 6, seed=0)
    env = SlateEnv(small_world, MultinomialLogitChoice(), seed=0)
    obs = env.reset(seed=42)
    assert obs.t == 0
    np.testing.assert_array_equal(obs.active_users, np.arange(small_world.num_users))
    first = [env.step(users, slates) for _ in range(3)]
    env.reset(seed=42)
    second = [env.step(users, slates) for _ in range(3)]
    for a, b in zip(first, second, strict=True):
        _assert_same(a, b)
    assert not np.array_equal(first[0].clicks, first[1].clicks)  # the stream moves on


def test_subset_and_population_paths_agree(small_world: SyntheticWorld) -> None:
    cfg = SimulatorSettings(num_candidates=20, slate_size=4)
    full = SlateEnv(small_world, seed=3, settings=cfg)
    subset = SlateEnv(small_world, seed=3, settings=cfg)
    everyone = np.arange(small_world.num_users)
    for _ in range(30):
        slates = full.sample_candidates()[:, :4]
        subset.sample_candidates()
        _assert_same(full.step(None, slates), subset.step(everyone, slates))


def test_stepping_a_subset_leaves_other_users_alone(small_world: SyntheticWorld) -> None:
    env = SlateEnv(small_world, seed=0, settings=settings(no_click_logit=-50.0))
    before = env.user_features()
    env.step([3, 7], [[0, 1], [2, 3]])
    after = env.user_features()
    changed = np.flatnonzero(np.any(before != after, axis=1))
    np.testing.assert_array_equal(changed, [3, 7])


def test_repeated_user_in_one_batch_keeps_last_row(small_world: SyntheticWorld) -> None:
    env = SlateEnv(small_world, seed=0, settings=settings(no_click_logit=-50.0))
    res = env.step([5, 5], [[0, 1], [2, 3]])
    # Both rows saw the same pre-step state ...
    np.testing.assert_array_equal(res.user_features[0], res.user_features[1])
    # ... and the state carried forward is the last row's.
    step_col = env.user_feature_names.index("log1p_session_step")
    np.testing.assert_allclose(env.user_features([5])[0, step_col], np.log1p(1))  # one step
    assert env.step([5], [[4, 5]]).session.step[0] == 1


def test_demo_style_single_user_steps(small_world: SyntheticWorld) -> None:
    env = SlateEnv(small_world, MultinomialLogitChoice(), seed=1)
    clicks = 0
    for u in range(20):
        res = env.step(np.array([u % 7]), np.arange(10)[None, :] + u)
        assert res.clicked_item.shape == (1,)
        clicks += int(res.clicked_item[0] >= 0)
    assert 0 < clicks < 20


def test_step_result_is_consistent(small_world: SyntheticWorld) -> None:
    users, slates = _batch(small_world, 500, 5, seed=1)
    env = SlateEnv(small_world, MultinomialLogitChoice(no_click_logit=-1.0), seed=0)
    res = env.step(users, slates)
    obs = res.observable
    assert res.clicked_item.shape == res.click_position.shape == (500,)
    assert res.clicked_item.dtype == res.click_position.dtype == np.int64
    assert res.clicks.shape == res.hidden.appeal.shape == (500, 5)
    assert res.clicks.dtype == np.bool_
    assert res.hidden.appeal.dtype == np.float32
    assert res.hidden.probabilities.shape == (500, 6)
    assert np.all(res.clicks.sum(axis=1) <= 1)
    none = res.click_position == -1
    assert 0 < none.sum() < 500
    np.testing.assert_array_equal(res.clicked_item[none], -1)
    np.testing.assert_array_equal(res.clicks.any(axis=1), ~none)
    rows = np.flatnonzero(~none)
    np.testing.assert_array_equal(res.clicked_item[rows], slates[rows, res.click_position[rows]])
    # Signals exist only with a click; revenue only for converted ads.
    for signal in (obs.dwell_s, obs.like, obs.conversion, obs.revenue, obs.skip):
        assert not np.any(signal[none])
    assert np.all(obs.dwell_s[rows] > 0)
    assert not np.any(obs.conversion & ~small_world.item_is_ad[np.maximum(obs.clicked_item, 0)])
    np.testing.assert_array_equal(obs.revenue > 0, obs.conversion)
    lengths = small_world.item_length_s[res.clicked_item[rows]]
    assert np.all(obs.dwell_s[rows] <= lengths)
    # Per-slot view for logging: one row per impressed item.
    per_slot = res.per_slot()
    np.testing.assert_allclose(per_slot.dwell_s.sum(axis=1), obs.dwell_s)
    np.testing.assert_array_equal(per_slot.click, res.clicks)
    # Logged context.
    assert res.user_features.shape == (500, len(env.user_feature_names))
    assert res.item_features.shape == (500, 5, len(env.item_feature_names))
    np.testing.assert_array_equal(res.item_features, env.item_features(slates))
    assert np.all(res.session.life == 0)
    assert np.all(res.session.session == 0)
    assert np.isnan(res.hidden.return_probability[~res.session.session_end]).all()


def test_appeal_is_topic_match_plus_quality_for_a_fresh_user() -> None:
    world = make_world(
        CatalogSettings(num_items=100, num_users=20, num_topics=5, seed=2),
        clickbait_fraction=0.0,
        ad_fraction=0.0,
    )
    users, slates = _batch(world, 20, 4, seed=2)
    env = SlateEnv(world, seed=0, settings=SimulatorSettings(quality_weight=0.3))
    expected = np.array(
        [
            [world.user_interests[u] @ world.item_topics[i] + 0.3 * world.item_quality[i]]
            for u, row in zip(users, slates, strict=True)
            for i in row
        ]
    ).reshape(20, 4)
    np.testing.assert_allclose(env.appeal(users, slates), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(env.step(users, slates).hidden.appeal, expected, atol=1e-6)


def test_interested_user_clicks_their_topic_much_more(topic_world: SyntheticWorld) -> None:
    # User 0 has interest +1 in topic 0 and -1 elsewhere; item i has topic i % 4.
    n, slate_size = 20_000, 4
    rng = np.random.default_rng(0)
    slates = uniform_random_slates(topic_world.num_items, slate_size, n, rng)
    choice = MultinomialLogitChoice(no_click_logit=0.0, position_bias=0.0, affinity_scale=1.0)
    env = SlateEnv(topic_world, choice, seed=0)
    res = env.step(np.zeros(n, dtype=np.int64), slates)
    on_topic = slates % 4 == 0
    ctr_on = res.clicks[on_topic].mean()
    ctr_off = res.clicks[~on_topic].mean()
    # Utility gap of 2 nats means about exp(2) = 7.4x; demand far less than that, and more
    # than any sampling noise at 20k slates could produce.
    assert ctr_on > 4 * ctr_off


def test_no_click_extremes(small_world: SyntheticWorld) -> None:
    users, slates = _batch(small_world, 200, 3, seed=3)
    never = SlateEnv(small_world, MultinomialLogitChoice(no_click_logit=50.0), seed=0)
    assert np.all(never.step(users, slates).clicked_item == -1)
    always = SlateEnv(small_world, MultinomialLogitChoice(no_click_logit=-50.0), seed=0)
    assert np.all(always.step(users, slates).clicked_item >= 0)


def test_churned_user_restarts_with_a_new_life() -> None:
    world = pure_topic_world(clickbait=1.0)  # everything is clickbait: sessions are short
    env = SlateEnv(world, seed=0, settings=settings(no_click_logit=-50.0, return_max=0.0))
    for _ in range(50):
        res = env.step([0], [[0, 4]])
        if res.terminated[0]:
            break
    assert res.terminated[0]
    assert res.session.session_end[0]
    assert res.hidden.return_probability[0] == 0.0
    assert not env.alive([0])[0]
    assert res.hidden.lifetime_value[0] > 0
    nxt = env.step([0], [[0, 4]])
    assert nxt.session.life[0] == 1
    assert nxt.session.session[0] == 0
    assert nxt.session.step[0] == 0
    assert env.alive([0])[0]
    np.testing.assert_allclose(nxt.hidden.lifetime_value[0], nxt.observable.dwell_s[0])


def test_reset_users_starts_fresh_lives_only_for_them(small_world: SyntheticWorld) -> None:
    env = SlateEnv(small_world, seed=0, settings=settings(no_click_logit=-50.0))
    env.step([1, 2], [[0, 1], [0, 1]])
    env.reset_users([1])
    feats = env.user_features([1, 2])
    np.testing.assert_array_equal(feats[0, : small_world.num_topics], small_world.user_interests[1])
    step_col = env.user_feature_names.index("log1p_session_step")
    assert feats[0, step_col] == 0.0  # session step back to 0
    assert feats[1, step_col] > 0.0
    assert env.step([1], [[3, 4]]).session.life[0] == 1


def test_candidates_are_distinct_in_range_and_uniform(small_world: SyntheticWorld) -> None:
    env = SlateEnv(small_world, seed=0, settings=SimulatorSettings(num_candidates=30))
    counts = np.zeros(small_world.num_items)
    for _ in range(100):
        cands = env.sample_candidates()
        assert cands.shape == (small_world.num_users, 30)
        assert cands.dtype == np.int64
        ordered = np.sort(cands, axis=1)
        assert not np.any(ordered[:, 1:] == ordered[:, :-1])
        assert cands.min() >= 0
        assert cands.max() < small_world.num_items
        counts += np.bincount(cands.ravel(), minlength=small_world.num_items)
    expected = 100 * small_world.num_users * 30 / small_world.num_items
    np.testing.assert_allclose(counts / expected, 1.0, atol=0.25)
    assert env.sample_candidates([0, 1, 2]).shape == (3, 30)


def test_candidate_stream_does_not_change_responses(small_world: SyntheticWorld) -> None:
    users, slates = _batch(small_world, 100, 3, seed=4)
    a = SlateEnv(small_world, seed=9)
    b = SlateEnv(small_world, seed=9)
    b.sample_candidates()
    _assert_same(a.step(users, slates), b.step(users, slates))


def test_feature_metadata(small_world: SyntheticWorld) -> None:
    env = SlateEnv(small_world, seed=0)
    t = small_world.num_topics
    assert len(env.user_feature_names) == 3 * t + 5
    # Satiation is appended: the older columns keep their positions.
    assert env.user_feature_names[2 * t : 2 * t + 5] == (
        "ad_fatigue",
        "log1p_session_step",
        "log1p_session",
        "log1p_life_step",
        "activity",
    )
    assert env.user_feature_names[2 * t + 5 :] == tuple(f"satiation_{k}" for k in range(t))
    assert env.item_feature_names[:2] == ("topic_0", "topic_1")
    table = env.item_feature_table
    assert table.shape == (small_world.num_items, t + 4)
    assert not table.flags.writeable
    np.testing.assert_array_equal(table[:, :t], small_world.item_topics)
    np.testing.assert_array_equal(table[:, t + 1], small_world.item_is_ad)
    assert "quality" not in " ".join(env.item_feature_names)  # hidden ground truth
    assert env.user_features().shape == (small_world.num_users, 3 * t + 5)


def test_empty_batch(small_world: SyntheticWorld) -> None:
    env = SlateEnv(small_world, MultinomialLogitChoice(), seed=0)
    res = env.step(np.zeros(0, dtype=np.int64), np.zeros((0, 3), dtype=np.int64))
    assert res.clicks.shape == (0, 3)


@pytest.mark.parametrize(
    ("users", "slates", "match"),
    [
        ([0, 1], [[0, 1, 2]], "rows"),
        ([0], [0, 1, 2], "2-D"),
        ([[0]], [[0, 1, 2]], "1-D"),
        ([0], [[0, 1, 1]], "repeat"),
        ([0], [[0, 1, 200]], r"slates must lie in \[0, 200\)"),
        ([0], [[-1, 1, 2]], "slates must lie"),
        ([50], [[0, 1, 2]], r"user_idx must lie in \[0, 50\)"),
        ([0], [[0.0, 1.0, 2.0]], "integers"),
        ([0], np.zeros((1, 0), dtype=np.int64), "at least one"),
        (None, [[0, 1, 2]], "rows"),
    ],
)
def test_bad_inputs_raise(
    small_world: SyntheticWorld, users: object, slates: object, match: str
) -> None:
    env = SlateEnv(small_world, MultinomialLogitChoice(), seed=0)
    with pytest.raises(ValueError, match=match):
        env.step(users, slates)  # type: ignore[arg-type]
