"""User dynamics the simulator exists for: drift, fatigue, satiation, clickbait, ads, LTV.

Hand-built pure-topic worlds make most effects exact (read off the hidden choice
probabilities, so no sampling noise); the policy-level claims use fixed seeds and wide margins.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import numpy.typing as npt
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
from recsys.types import FloatArray, IntArray
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
    cfg = settings(no_click_logit=-50.0, num_candidates=2)
    env = SlateEnv(world, seed=0, settings=cfg)
    users = np.zeros(4000, dtype=np.int64)  # parallel impressions of one fresh user
    ads = env.step(users, np.tile([0, 2], (4000, 1))).observable
    organic = env.step(users, np.tile([6, 8], (4000, 1))).observable
    assert organic.revenue.sum() == 0.0
    assert not organic.conversion.any()
    # P(conversion | ad click) = 2 r_conv sigma(satisfaction) < 2 r_conv.
    assert 0.02 < ads.conversion.mean() < 2 * cfg.conversion_rate
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


# -- post-conversion satiation ---------------------------------------------------------------

# Item 0 is an ad with a mixed topic mixture; every other item i is pure topic i % 4.
AD_TOPICS = np.array([0.6, 0.4, 0.0, 0.0], dtype=np.float32)
SAME_0, SAME_1, OTHER = 4, 5, 6  # organic items of topics 0, 1 and 2


def _buyers_world(
    num_users: int = 400, interests: tuple[float, ...] = (0.5,) * 4
) -> SyntheticWorld:
    ads = np.zeros(20, dtype=np.bool_)
    ads[0] = True
    world = pure_topic_world(
        interests=np.tile(interests, (num_users, 1)), quality=0.5, is_ad=ads, bid=1.0
    )
    topics = world.item_topics.copy()
    topics[0] = AD_TOPICS
    return dataclasses.replace(world, item_topics=topics)


def _buyer_settings(**overrides: object) -> SimulatorSettings:
    # Everyone clicks what they are shown; satisfaction is deterministic, so the conversion
    # draw is the only difference between users.
    base: dict[str, object] = {
        "no_click_logit": -50.0,
        "satisfaction_noise": 0.0,
        "conversion_rate": 0.5,
        **ENDLESS,
    }
    return settings(**{**base, **overrides})


def _satiation(env: SlateEnv, users: npt.ArrayLike | None = None) -> FloatArray:
    cols = [env.user_feature_names.index(f"satiation_{k}") for k in range(env.world.num_topics)]
    return env.user_features(users)[:, cols]


def _buy(env: SlateEnv) -> tuple[IntArray, IntArray]:
    """Show every user the ad once: (users who converted, users who did not)."""
    users = np.arange(env.num_users)
    conv = env.step(users, np.zeros((users.size, 1), dtype=np.int64)).observable.conversion
    assert 50 < conv.sum() < users.size - 50  # both groups are populated
    return users[conv], users[~conv]


def test_conversion_raises_satiation_on_the_items_topics_by_gain() -> None:
    cfg = _buyer_settings(satiation_gain=0.7)
    env = SlateEnv(_buyers_world(), seed=0, settings=cfg)
    np.testing.assert_array_equal(_satiation(env), 0.0)  # a new life starts unsated
    bought, clicked_only = _buy(env)
    np.testing.assert_allclose(_satiation(env, bought), np.tile(0.7 * AD_TOPICS, (bought.size, 1)))
    np.testing.assert_array_equal(_satiation(env, clicked_only), 0.0)  # a click is not a purchase
    assert not env.world.item_is_ad[OTHER]
    env.step(bought, np.full((bought.size, 1), OTHER))  # organic consumption adds nothing
    decay = 2.0 ** (-1.0 / cfg.satiation_half_life_steps)
    np.testing.assert_allclose(_satiation(env, bought)[0], 0.7 * AD_TOPICS * decay, rtol=1e-6)


def test_satiation_decays_with_its_half_life() -> None:
    cfg = _buyer_settings(satiation_half_life_steps=8.0)
    env = SlateEnv(_buyers_world(), seed=0, settings=cfg)
    bought, _ = _buy(env)
    trace = [_satiation(env, bought[:1])[0]]
    for _ in range(16):  # consuming an unrelated organic item: time passes
        env.step(bought, np.full((bought.size, 1), OTHER))
        trace.append(_satiation(env, bought[:1])[0])
    np.testing.assert_allclose(trace[8], 0.5 * trace[0], rtol=1e-5)
    np.testing.assert_allclose(trace[16], 0.25 * trace[0], rtol=1e-5)
    assert trace[16][0] > 0.0  # still there: a long-term effect


def test_satiation_decays_over_the_gap_between_sessions() -> None:
    # Every step ends the session (budget below the browsing cost) and the user always returns.
    cfg = _buyer_settings(
        session_budget_s=1.0, return_bias=20.0, return_max=1.0, satiation_half_life_steps=25.0
    )
    env = SlateEnv(_buyers_world(), seed=0, settings=cfg)
    bought, _ = _buy(env)
    h, gap = cfg.satiation_half_life_steps, cfg.session_gap_steps
    after_buy = _satiation(env, bought)
    np.testing.assert_allclose(after_buy[0], AD_TOPICS * 2.0 ** (-gap / h), rtol=1e-5)
    res = env.step(bought, np.full((bought.size, 1), OTHER))
    assert res.session.session_end.all()
    assert not res.session.terminated.any()
    np.testing.assert_allclose(
        _satiation(env, bought), after_buy * 2.0 ** (-(1 + gap) / h), rtol=1e-5
    )


def test_satiation_lowers_later_appeal_and_satisfaction_of_the_same_topics() -> None:
    cfg = _buyer_settings()  # default satiation strength
    env = SlateEnv(_buyers_world(), seed=0, settings=cfg)
    bought, clicked_only = _buy(env)
    b, c = bought[:1], clicked_only[:1]  # identical users but for the purchase
    later = 5
    for _ in range(later):
        env.step([b[0], c[0]], [[OTHER], [OTHER]])
    sated = cfg.satiation_gain * AD_TOPICS * 2.0 ** (-later / cfg.satiation_half_life_steps)

    # Click appeal: a little lower on the bought topics (habit), unchanged elsewhere.
    probe = [[SAME_0, SAME_1, OTHER]]
    appeal_gap = env.appeal(c, probe)[0] - env.appeal(b, probe)[0]
    expected = cfg.satiation_appeal_weight * np.array([sated[0], sated[1], 0.0])
    np.testing.assert_allclose(appeal_gap, expected, rtol=1e-4, atol=1e-6)
    assert env.choice_probabilities(b, [[SAME_0]])[0, 0] > 0.99  # still clicks out of habit

    # Satisfaction: much lower, here negative, with the costs negative satisfaction carries.
    res = env.step([b[0], c[0]], [[SAME_0], [SAME_0]])
    sat = res.hidden.satisfaction
    assert res.observable.clicked_item.tolist() == [SAME_0, SAME_0]
    np.testing.assert_allclose(
        sat[1] - sat[0], cfg.satiation_satisfaction_weight * sated[0], rtol=1e-4
    )
    assert sat[0] < 0.0 < sat[1]
    assert res.observable.dwell_s[0] < 0.5 * res.observable.dwell_s[1]
    assert res.hidden.budget_s[0] < res.hidden.budget_s[1] - 10.0  # less dwell, yet more drain
    interest_0 = env.user_features([b[0], c[0]])[:, 0]
    assert interest_0[0] < interest_0[1]  # the disappointment pushes the interest away


def test_satiation_resets_at_a_new_life() -> None:
    cfg = _buyer_settings(session_budget_s=1.0, return_max=0.0)  # one-step lives
    env = SlateEnv(_buyers_world(), seed=0, settings=cfg)
    bought, _ = _buy(env)
    assert not env.alive(bought).any()
    assert _satiation(env, bought).max() > 0.5  # a churned user shows the state they left in
    res = env.step(bought, np.full((bought.size, 1), OTHER))
    assert (res.session.life == 1).all()
    np.testing.assert_array_equal(res.user_features[:, -env.world.num_topics :], 0.0)
    env2 = SlateEnv(_buyers_world(), seed=0, settings=_buyer_settings())
    bought2, _ = _buy(env2)
    env2.reset_users(bought2)
    np.testing.assert_array_equal(_satiation(env2, bought2), 0.0)


def _trajectory(world: SyntheticWorld, **overrides: object) -> list[tuple[FloatArray, ...]]:
    cfg = SimulatorSettings(num_candidates=20, conversion_rate=0.5, **overrides)  # type: ignore[arg-type]
    env = SlateEnv(world, seed=5, settings=cfg)
    t = world.num_topics
    out = []
    for _ in range(60):
        res = env.step(None, env.sample_candidates()[:, :5])
        obs, hid = res.observable, res.hidden
        out.append(
            (
                res.user_features[:, : 2 * t + 5],  # all but satiation
                obs.click_position,
                obs.dwell_s,
                obs.conversion,
                hid.satisfaction,
                hid.appeal,
                hid.budget_s,
                res.session.terminated,
            )
        )
    return out


def test_zero_gain_or_zero_weights_turn_satiation_off_exactly(small_world: SyntheticWorld) -> None:
    off = _trajectory(small_world, satiation_gain=0.0)
    unweighted = _trajectory(
        small_world, satiation_appeal_weight=0.0, satiation_satisfaction_weight=0.0
    )
    on = _trajectory(small_world)
    assert sum(int(step[3].sum()) for step in off) > 20  # conversions happen
    for a, b in zip(off, unweighted, strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(a[4], b[4]) for a, b in zip(off, on, strict=True))


def test_satisfaction_oracle_avoids_a_sated_topic_the_click_oracle_still_likes() -> None:
    world = _buyers_world(num_users=400, interests=(0.7, 0.5, -1.0, -1.0))
    env = SlateEnv(world, seed=0, settings=_buyer_settings())
    bought, clicked_only = _buy(env)
    rng = np.random.default_rng(0)
    users = np.array([bought[0], clicked_only[0]])
    candidates = np.array([[SAME_0, SAME_1]] * 2)
    click = greedy_click_policy(env, users, candidates, 1, rng)[:, 0]
    value = greedy_satisfaction_policy(env, users, candidates, 1, rng)[:, 0]
    assert click.tolist() == [SAME_0, SAME_0]  # satiation barely moves click appeal
    assert value.tolist() == [SAME_1, SAME_0]  # but the buyer would regret topic 0
