"""User dynamics the simulator exists for: drift, fatigue, clickbait, ads, sessions, LTV.

Hand-built pure-topic worlds make most effects exact (read off the hidden choice
probabilities, so no sampling noise); the policy-level claims use fixed seeds and wide margins.
"""

from __future__ import annotations

import numpy as np
import pytest

from recsys.config import CatalogSettings, SimulatorSettings
from recsys.data import SyntheticWorld, make_world
from recsys.simulator import SlateEnv, rollout_lifetimes
from recsys.simulator.policies import (
    clickbait_policy,
    greedy_click_policy,
    greedy_satisfaction_policy,
    quality_policy,
    random_policy,
)
from tests.unit.simulator.conftest import pure_topic_world, settings

# Sessions that never end, so one mechanism can be watched in isolation.
ENDLESS = {"session_budget_s": 1e7}


def _interest(env: SlateEnv, user: int, topic: int) -> float:
    return float(env.user_features([user])[0, topic])


def test_interest_drifts_towards_satisfying_topics() -> None:
    world = pure_topic_world(items_per_topic=10, interests=[0.0, 0.0, 0.0, 0.0], quality=0.8)
    env = SlateEnv(
        world, seed=0, settings=settings(no_click_logit=-50.0, interest_drift=0.1, **ENDLESS)
    )
    topic0_items = np.arange(0, world.num_items, 4)
    trace = [_interest(env, 0, 0)]
    for step in range(20):
        res = env.step([0], [[topic0_items[step % 10]]])
        assert res.hidden.satisfaction[0] > 0
        trace.append(_interest(env, 0, 0))
    assert np.all(np.diff(trace) > 0)  # every satisfying consumption pulls it up
    assert trace[-1] > 0.5
    assert trace[-1] <= 1.0
    np.testing.assert_array_equal(env.user_features([0])[0, 1:4], 0.0)  # other topics untouched


def test_disappointing_consumption_pushes_interest_away() -> None:
    world = pure_topic_world(interests=[0.2, 0.0, 0.0, 0.0], clickbait=1.0)
    env = SlateEnv(
        world, seed=0, settings=settings(no_click_logit=-50.0, interest_drift=0.1, **ENDLESS)
    )
    for item in (0, 4, 8, 12, 16):
        assert env.step([0], [[item]]).hidden.satisfaction[0] < 0
    assert _interest(env, 0, 0) < 0.0


def _probe(env: SlateEnv) -> tuple[float, float]:
    # Items 0 (topic 0) and 1 (topic 1), liked equally, never consumed during the test.
    probs = env.choice_probabilities([0], [[0, 1]])[0]
    return float(probs[0]), float(probs[1])


def test_fatigue_lowers_clicks_on_a_repeated_topic_and_recovers() -> None:
    world = pure_topic_world(items_per_topic=10, interests=[1.0, 1.0, -1.0, -1.0])
    cfg = settings(no_click_logit=-3.0, position_bias=0.0, repeat_weight=0.0, **ENDLESS)
    env = SlateEnv(world, seed=0, settings=cfg)
    p0, p1 = _probe(env)
    assert p0 == pytest.approx(p1, rel=1e-6)

    clicks = 0
    for item in (4, 8, 12, 16, 20):  # five different topic-0 items: boredom, not repetition
        clicks += int(env.step([0], [[item]]).clicked_item[0] >= 0)
    assert clicks == 5
    bored0, bored1 = _probe(env)
    assert bored0 < 0.5 * bored1  # the sixth horror movie
    assert bored1 >= p1 - 1e-6  # the other topic is not affected

    recovered = []
    for _ in range(30):  # time passes on a disliked topic (2): topic-0 boredom decays
        env.step([0], [[2]])
        recovered.append(_probe(env)[0] / _probe(env)[1])
    assert np.all(np.diff(recovered) > 0)
    assert recovered[-1] > 0.9


def test_recently_consumed_item_is_unappealing() -> None:
    world = pure_topic_world(items_per_topic=10, interests=[1.0, 1.0, -1.0, -1.0])
    env = SlateEnv(world, seed=0, settings=settings(no_click_logit=-50.0, **ENDLESS))
    before = env.appeal([0], [[4, 8]])[0]
    assert before[0] == pytest.approx(before[1])
    env.step([0], [[4]])
    after = env.appeal([0], [[4, 8]])[0]
    assert after[0] < after[1] - 1.0  # the very item, not just its topic


def test_clickbait_wins_the_click_but_not_the_user() -> None:
    world = pure_topic_world(interests=[0.3, -1.0, -1.0, -1.0], clickbait=[1.0] + [0.0] * 19)
    cfg = settings(no_click_logit=0.0)
    env = SlateEnv(world, seed=0, settings=cfg)
    # Item 0 (clickbait) and item 4 (same topic, honest) in the same slot.
    p_bait = env.choice_probabilities([0], [[0]])[0, 0]
    p_honest = env.choice_probabilities([0], [[4]])[0, 0]
    assert p_bait > p_honest + 0.2
    forced = SlateEnv(world, seed=0, settings=settings(no_click_logit=-50.0, satisfaction_noise=0))
    bait = forced.step([0], [[0]])
    forced.reset()
    honest = forced.step([0], [[4]])
    assert bait.hidden.satisfaction[0] < honest.hidden.satisfaction[0] - 1.5
    assert bait.observable.skip[0]
    assert not honest.observable.skip[0]
    assert bait.observable.dwell_s[0] < 0.5 * honest.observable.dwell_s[0]
    assert bait.hidden.budget_s[0] < honest.hidden.budget_s[0] - 100  # drains the session


@pytest.fixture(scope="module")
def lifetimes() -> dict[str, dict[str, float]]:
    world = make_world(CatalogSettings(num_items=600, num_users=200, num_topics=8, seed=3))
    cfg = SimulatorSettings(num_candidates=50, slate_size=5)
    out = {}
    for name, policy in {
        "clickbait": clickbait_policy,
        "random": random_policy,
        "quality": quality_policy,
        "greedy_click": greedy_click_policy,
        "greedy_satisfaction": greedy_satisfaction_policy,
    }.items():
        env = SlateEnv(world, seed=1, settings=cfg)
        summary = rollout_lifetimes(
            env,
            policy,
            np.arange(world.num_users),
            slate_size=5,
            max_steps=300,
            rng=np.random.default_rng(2),
        )
        out[name] = summary.as_dict()
    return out


def test_clickbait_raises_immediate_clicks_but_lowers_long_term_value(
    lifetimes: dict[str, dict[str, float]],
) -> None:
    bait, rand, good = lifetimes["clickbait"], lifetimes["random"], lifetimes["quality"]
    # Short term: clickbait gets the most clicks per slate.
    assert bait["first_step_ctr"] > rand["first_step_ctr"] + 0.1
    assert bait["ctr"] > good["ctr"] + 0.03
    # Long term: users fed clickbait bounce, leave and do not come back.
    assert good["lifetime_value_min"] > 10 * bait["lifetime_value_min"]
    assert rand["lifetime_value_min"] > 2 * bait["lifetime_value_min"]
    assert good["sessions_per_life"] > 3 * bait["sessions_per_life"]
    assert bait["skip_rate"] > 0.5 > 0.05 > good["skip_rate"]
    # Even summed over the whole life, clickbait ends with fewer clicks.
    assert good["clicks_per_life"] > 5 * bait["clicks_per_life"]


def test_myopic_click_maximizing_is_not_value_maximizing(
    lifetimes: dict[str, dict[str, float]],
) -> None:
    click, value = lifetimes["greedy_click"], lifetimes["greedy_satisfaction"]
    assert click["first_step_ctr"] >= value["first_step_ctr"]
    assert value["lifetime_value_min"] > 5 * click["lifetime_value_min"]


def _ad_world() -> SyntheticWorld:
    # Items 0..9 are topic 0 or 1 (i % 2 with 2 topics); even ids < 10 are ads with bid 5.
    ads = np.zeros(10, dtype=np.bool_)
    ads[[0, 2, 4]] = True
    return pure_topic_world(
        num_topics=2, items_per_topic=5, interests=[1.0, -1.0], is_ad=ads, bid=5.0, quality=0.5
    )


def test_ads_drain_the_budget_and_grow_ad_fatigue() -> None:
    world = _ad_world()
    cfg = settings(no_click_logit=50.0, num_candidates=2)  # never clicks: pure impression cost
    organic = SlateEnv(world, seed=0, settings=cfg).step([0], [[6, 8]])
    env = SlateEnv(world, seed=0, settings=cfg)
    with_ads = env.step([0], [[0, 2]])
    drained_organic = cfg.session_budget_s - organic.hidden.budget_s[0]
    drained_ads = cfg.session_budget_s - with_ads.hidden.budget_s[0]
    assert drained_ads - drained_organic == pytest.approx(2 * cfg.ad_cost_s)
    second = env.step([0], [[0, 2]])
    drained_second = with_ads.hidden.budget_s[0] - second.hidden.budget_s[0]
    assert drained_second > drained_ads  # an ad-fatigued user is annoyed more
    feats = env.user_features([0])[0]
    assert feats[env.user_feature_names.index("ad_fatigue")] > 0


def test_ads_raise_revenue() -> None:
    world = _ad_world()
    env = SlateEnv(world, seed=0, settings=settings(no_click_logit=-50.0, num_candidates=2))
    users = np.zeros(4000, dtype=np.int64)  # parallel impressions of one fresh user
    ads = env.step(users, np.tile([0, 2], (4000, 1))).observable
    organic = env.step(users, np.tile([6, 8], (4000, 1))).observable
    assert organic.revenue.sum() == 0.0
    assert not organic.conversion.any()
    assert 0.02 < ads.conversion.mean() < 0.5
    np.testing.assert_allclose(ads.revenue[ads.conversion], 5.0)
    assert ads.revenue.sum() > 100.0


def test_quality_extends_sessions_and_raises_return_probability() -> None:
    world = pure_topic_world(interests=[0.5, 0.5, 0.5, 0.5])
    bait_world = pure_topic_world(interests=[0.5, 0.5, 0.5, 0.5], clickbait=0.8)
    cfg = settings(no_click_logit=-50.0, satisfaction_noise=0.0, return_max=1.0)

    def first_session(w: SyntheticWorld) -> tuple[int, float]:
        env = SlateEnv(w, seed=0, settings=cfg)
        for step in range(1, 500):
            res = env.step([0], [[step % w.num_items]])
            if res.session.session_end[0]:
                return step, float(res.hidden.return_probability[0])
        raise AssertionError("session never ended")

    good_steps, good_return = first_session(world)
    bait_steps, bait_return = first_session(bait_world)
    assert good_steps > 2 * bait_steps  # about 20 vs 7 steps with these numbers
    assert good_return > 0.6 > 0.2 > bait_return


def test_activity_scales_the_session_budget() -> None:
    base = pure_topic_world(interests=[[1.0, 0, 0, 0], [1.0, 0, 0, 0]])
    world = SyntheticWorld(
        item_topics=base.item_topics,
        item_quality=base.item_quality,
        item_popularity=base.item_popularity,
        user_interests=base.user_interests,
        user_ids=base.user_ids,
        user_activity=np.array([1.0, 2.0], dtype=np.float32),
    )
    cfg = settings(no_click_logit=50.0)
    res = SlateEnv(world, seed=0, settings=cfg).step([0, 1], [[0, 4], [0, 4]])
    drain = cfg.session_budget_s - res.hidden.budget_s[0]
    assert res.hidden.budget_s[1] == pytest.approx(2 * cfg.session_budget_s - drain)


def test_lifetime_value_is_the_engagement_of_the_whole_life(small_world: SyntheticWorld) -> None:
    env = SlateEnv(small_world, seed=4, settings=SimulatorSettings(num_candidates=20))
    dwell = np.zeros(small_world.num_users)
    finished = []
    for _ in range(400):
        res = env.step(None, env.sample_candidates()[:, :5])
        dwell += res.observable.dwell_s
        ended = np.flatnonzero(res.session.terminated)
        np.testing.assert_allclose(res.hidden.lifetime_value[ended], dwell[ended], rtol=1e-4)
        finished.extend(ended.tolist())
        dwell[ended] = 0.0
    assert len(finished) > small_world.num_users  # many lives, several sessions each
