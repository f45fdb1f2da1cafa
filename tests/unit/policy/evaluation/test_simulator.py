"""Evaluation on simulated users: CIs, common random numbers, paired ratios, the baselines
trained from logs under the ad load, and the bought-topic share after a conversion."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from recsys.features import EventFold, FeatureSpec
from recsys.pipeline import SimulatorSetup
from recsys.policy import RandomPolicy
from recsys.policy.base import BatchSlatePolicy, SlateSampler
from recsys.policy.batch import SlateAction, SlateObs
from recsys.policy.evaluation.simulator import (
    BlindPolicy,
    blind_to_satiation,
    build_baselines,
    evaluate_in_simulator,
    evaluation_users,
    mean_ci,
    paired_ratio,
    run_policy_lives,
    shared_state_shares,
    validation_users,
)
from recsys.policy.training.config import POPULATION, PolicyTrainConfig
from recsys.policy.training.envs import SimulatedUsers
from recsys.simulator.results import HiddenTruth, ObservableResponses, SessionInfo, StepResult
from recsys.types import IntArray
from tests.unit.policy.configs import SMALL_SIMULATOR

BASELINES = {"random", "popular", "myopic", "myopic_learned", "bandit"}
USERS = evaluation_users(48)


def _baselines(setup: SimulatorSetup, sampler: SlateSampler) -> dict[str, BatchSlatePolicy]:
    return build_baselines(
        setup.logged(),
        setup.reward_model,
        num_items=setup.world.num_items,
        slate_size=SMALL_SIMULATOR.slate_size,
        sampler=sampler,
        seed=0,
        myopic_epochs=1,
    )


@pytest.fixture(scope="module")
def baselines(small_setup: SimulatorSetup) -> dict[str, BatchSlatePolicy]:
    """The baselines of the small setup, under its ad load (exactly one ad per slate)."""
    return _baselines(small_setup, SMALL_SIMULATOR.sampler("greedy"))


def test_mean_ci_matches_the_t_interval() -> None:
    x = np.random.default_rng(0).normal(5.0, 2.0, size=400)
    out = mean_ci(x)
    half = (out["ci_high"] - out["ci_low"]) / 2
    assert out["mean"] == pytest.approx(x.mean())
    # t_{0.975, 399} = 1.9659
    assert half == pytest.approx(1.9659 * x.std(ddof=1) / np.sqrt(400), rel=1e-3)


def test_paired_ratio_is_tight_for_identical_policies() -> None:
    x = np.random.default_rng(1).exponential(size=300)
    out = paired_ratio(x, x)
    assert out["ratio"] == 1.0
    assert out["ci_low"] == pytest.approx(1.0)
    assert out["ci_high"] == pytest.approx(1.0)


def test_paired_ratio_uses_the_pairing() -> None:
    """Per-user noise shared by both policies cancels: the paired interval of a 10% uplift is
    far tighter than the spread of either policy's users would allow."""
    base = np.random.default_rng(2).exponential(size=400)
    out = paired_ratio(1.1 * base, base)
    assert out["ratio"] == pytest.approx(1.1)
    assert out["ci_high"] - out["ci_low"] < 1e-9
    with pytest.raises(ValueError, match="equally long"):
        paired_ratio(base, base[:-1])


def test_training_validation_and_test_users_never_meet() -> None:
    """Training stays below POPULATION // 2 (enforced by the config); validation is where
    settings were tuned; the reported figures come from test users that are neither."""
    test, validation = evaluation_users(POPULATION // 4), validation_users(POPULATION // 4)
    assert test.min() >= POPULATION // 2
    assert validation.max() == POPULATION - 1
    assert not set(test.tolist()) & set(validation.tolist())
    with pytest.raises(ValueError, match=r"log_users \+ workers \* users must be"):
        PolicyTrainConfig(log_users=POPULATION // 2, users=1).check_population()
    with pytest.raises(ValueError, match="must lie"):
        evaluation_users(POPULATION // 4 + 1)
    with pytest.raises(ValueError, match="must lie"):
        validation_users(1)


def test_evaluation_reports_cis_and_is_reproducible(
    small_setup: SimulatorSetup, baselines: dict[str, BatchSlatePolicy]
) -> None:
    assert set(baselines) == BASELINES
    make_users = small_setup.make_users(USERS)

    def run(seed: int) -> dict[str, Any]:
        return evaluate_in_simulator(
            baselines, make_users=make_users, max_steps=30, seed=seed, ratios=[("myopic", "random")]
        )

    first, second, other = run(7), run(7), run(8)
    assert first["config"]["users"] == USERS.size
    for name in baselines:
        a = first["policies"][name]
        for metric in ("return", "clicks", "revenue", "steps", "conversions"):
            assert a[metric]["ci_low"] <= a[metric]["mean"] <= a[metric]["ci_high"]
            assert a[metric]["n"] == USERS.size
        assert a["steps"]["mean"] <= 30
        assert a["ctr"] == pytest.approx(a["clicks"]["mean"] / a["steps"]["mean"])
        assert 0.0 <= a["truncated_fraction"] <= 1.0
        np.testing.assert_array_equal(  # same seed, same users, same numbers
            first["_per_user"][name].returns, second["_per_user"][name].returns
        )
    assert first["policies"]["random"]["return"] != other["policies"]["random"]["return"]
    per_user = first["_per_user"]
    want = paired_ratio(per_user["myopic"].returns, per_user["random"].returns, seed=7)
    assert first["ratios"]["myopic/random"] == want


def test_every_policy_meets_the_same_users_in_the_same_states(small_setup: SimulatorSetup) -> None:
    """Common random numbers: users, their candidates and the policy's random stream do not
    depend on which policy is evaluated, so two copies of one policy agree user by user."""
    out = evaluate_in_simulator(
        {"a": RandomPolicy(max_ads=1, min_ads=1), "b": RandomPolicy(max_ads=1, min_ads=1)},
        make_users=small_setup.make_users(USERS),
        max_steps=20,
        seed=1,
    )
    a, b = out["_per_user"]["a"], out["_per_user"]["b"]
    for attr in ("returns", "clicks", "revenue", "steps", "conversions"):
        np.testing.assert_array_equal(getattr(a, attr), getattr(b, attr))


@dataclass
class Served:
    """What a recording of the simulated users saw: per step, the candidates' ad flags and
    the catalog ids served."""

    candidate_ads: list[np.ndarray] = field(default_factory=list)
    items: list[np.ndarray] = field(default_factory=list)


def _recording(
    make_users: Callable[[int], SimulatedUsers], served: Served
) -> Callable[[int], SimulatedUsers]:
    def build(seed: int) -> SimulatedUsers:
        users = make_users(seed)
        observe, step = users.observe, users.step

        def observing(rows: IntArray | None = None) -> SlateObs:
            obs = observe(rows)
            assert obs.is_ad is not None
            served.candidate_ads.append(obs.is_ad)
            return obs

        def stepping(rows: IntArray | None, items: IntArray) -> StepResult:
            served.items.append(np.asarray(items))
            return step(rows, items)

        users.observe = observing  # type: ignore[method-assign]
        users.step = stepping  # type: ignore[method-assign]
        return users

    return build


@pytest.mark.parametrize(("min_ads", "max_ads"), [(1, 1), (2, 3)])
def test_baselines_honour_the_ad_load(
    small_setup: SimulatorSetup,
    baselines: dict[str, BatchSlatePolicy],
    min_ads: int,
    max_ads: int,
) -> None:
    """Every slate any baseline serves holds at least ``min(min_ads, ads among its
    candidates)`` and at most ``max_ads`` ads."""
    policies = (
        baselines
        if (min_ads, max_ads) == (SMALL_SIMULATOR.min_ads, SMALL_SIMULATOR.max_ads)
        else _baselines(small_setup, SlateSampler("greedy", max_ads=max_ads, min_ads=min_ads))
    )
    is_ad = small_setup.table.is_ad
    for name, policy in policies.items():
        served = Served()
        make_users = _recording(small_setup.make_users(USERS), served)
        run_policy_lives(policy, make_users, max_steps=15, seed=3)
        assert len(served.items) > 1
        for ads, items in zip(served.candidate_ads, served.items, strict=True):
            shown = is_ad[items].sum(axis=1)
            need = np.minimum(ads.sum(axis=1), min_ads)
            assert (shown >= need).all(), name
            assert (shown <= max_ads).all(), name
            assert (need == min_ads).all()  # the retriever's ad block always has the ads


# ---- the bought-topic share after a conversion, on scripted users --------------------------

#: Catalog of the scripted users: item ``i`` is all about topic ``i % 3``; the ``ads`` of
#: :class:`ScriptedUsers` are ads (none by default).
ITEM_TOPICS = np.eye(3, dtype=np.float32)[np.arange(6) % 3]


class ScriptedUsers:
    """Users whose every response is scripted: each request offers all 6 items; a user
    converts on the item in slot 0 at the ``(step, user)`` pairs of ``conversions`` and
    churns at those of ``churns``. Their user feature is their index (the scripted policy
    reads it)."""

    slate_size = 2

    def __init__(
        self,
        num_users: int,
        conversions: Collection[tuple[int, int]],
        churns: Collection[tuple[int, int]],
        ads: Collection[int] = (),
    ) -> None:
        self.num_users = num_users
        is_ad = np.isin(np.arange(6), list(ads))
        self.fold = EventFold(FeatureSpec(num_topics=3), ITEM_TOPICS, is_ad)
        self.conversions, self.churns = conversions, churns
        self.t = 0

    def observe(self, rows: IntArray) -> SlateObs:
        b = rows.shape[0]
        return SlateObs(
            user_features=rows[:, None].astype(np.float32),
            item_features=np.zeros((b, 6, 1), np.float32),
            candidate_ids=np.tile(np.arange(6), (b, 1)),
            candidate_mask=None,
            is_ad=np.zeros((b, 6), np.bool_),
        )

    def step(self, rows: IntArray, items: IntArray) -> StepResult:
        b, s = items.shape
        users = rows.tolist()
        conversion = np.array([(self.t, u) in self.conversions for u in users])
        terminated = np.array([(self.t, u) in self.churns for u in users])
        self.t += 1
        zeros, none = np.zeros(b, np.float32), np.full(b, -1)
        clicks = np.zeros((b, s), np.bool_)
        clicks[conversion, 0] = True
        return StepResult(
            user_idx=rows,
            slates=items,
            user_features=np.zeros((b, 1), np.float32),
            observable=ObservableResponses(
                clicked_item=np.where(conversion, items[:, 0], -1),
                click_position=np.where(conversion, 0, none),
                clicks=clicks,
                dwell_s=np.where(conversion, 60.0, 0.0).astype(np.float32),
                like=np.zeros(b, np.bool_),
                conversion=conversion,
                revenue=zeros,
                skip=np.zeros(b, np.bool_),
            ),
            session=SessionInfo(none + 1, none + 1, none + 1, terminated, terminated),
            hidden=HiddenTruth(*(np.zeros((b, s), np.float32),) * 2, *(zeros,) * 5),
            item_feature_table=np.zeros((6, 1), np.float32),
        )


class ScriptedPolicy:
    """Serves ``slates[t][user]`` (item ids = candidate indices) at its ``t``-th call."""

    name = "scripted"

    def __init__(self, slates: Sequence[Mapping[int, tuple[int, int]]]) -> None:
        self.slates = slates
        self.t = 0

    def act(
        self, obs: SlateObs, slate_size: int, rng: np.random.Generator, explore: bool = True
    ) -> SlateAction:
        users = obs.user_features[:, 0].astype(np.int64).tolist()
        slates = np.array([self.slates[self.t][u] for u in users], dtype=np.int64)
        self.t += 1
        ones = np.ones(slates.shape, np.float32)
        return SlateAction(slates, ones, np.zeros(len(users), np.float32), None)


def _run_scripted(
    slates: Sequence[Mapping[int, tuple[int, int]]],
    conversions: Collection[tuple[int, int]],
    churns: Collection[tuple[int, int]] = (),
    window: int = 2,
    ads: Collection[int] = (),
    onlookers: Mapping[str, BatchSlatePolicy] | None = None,
) -> Any:
    users = ScriptedUsers(len(slates[0]), conversions, churns, ads)
    return run_policy_lives(
        ScriptedPolicy(slates),
        lambda _: users,  # type: ignore[arg-type,return-value]
        max_steps=len(slates),
        seed=0,
        after_conversion_steps=window,
        onlookers=onlookers,
    )


def test_after_conversion_share_on_a_hand_checked_case() -> None:
    """Topics of items 0..5 are 0 1 2 0 1 2; windows are the 2 slates after a conversion.

    - user 0 buys item 0 (topic 0) at t0, then sees [0, 1] (1/2 topic 0) and [1, 2] (0):
      share 1/4. It buys item 3 at t4 and churns: no slate follows, so no share.
    - user 1 buys item 4 (topic 1) at t1, sees [4, 1] (1) and [2, 5] (0): 1/2; it buys
      item 2 (topic 2) at t3, which opens the next window: [2, 0] (1/2), [0, 1] (0): 1/4.
    """
    slates = [
        {0: (0, 3), 1: (1, 2)},
        {0: (0, 1), 1: (4, 1)},
        {0: (1, 2), 1: (4, 1)},
        {0: (5, 3), 1: (2, 5)},
        {0: (3, 4), 1: (2, 0)},
        {1: (0, 1)},
    ]
    conversions = {(0, 0), (1, 1), (3, 1), (4, 0)}
    ev = _run_scripted(slates, conversions, churns={(4, 0)})
    assert sorted(ev.after_conversion.tolist()) == [0.25, 0.25, 0.5]
    np.testing.assert_array_equal(ev.conversions, [2, 2])
    np.testing.assert_array_equal(ev.steps, [5, 6])
    np.testing.assert_array_equal(ev.truncated, [False, True])
    summary = ev.summary()["bought_topic_share_after_conversion"]
    assert summary["mean"] == pytest.approx(1 / 3)
    assert summary["n"] == 3


def test_a_policy_that_never_shows_the_bought_topic_gets_share_zero() -> None:
    """The user only buys topic-0 items (0 and 3); after each purchase the policy shows
    topics 1 and 2 only. A window cut short by the end of the run still counts."""
    slates = [
        {0: (0, 1)},
        {0: (1, 2)},
        {0: (4, 5)},
        {0: (3, 1)},
        {0: (2, 5)},
    ]
    ev = _run_scripted(slates, conversions={(0, 0), (3, 0)})
    np.testing.assert_array_equal(ev.after_conversion, [0.0, 0.0])
    assert ev.summary()["bought_topic_share_after_conversion"]["mean"] == 0.0
    # The same purchases with a policy that keeps showing the bought topic: share 1.
    again = [{0: (0, 3)}, {0: (0, 3)}, {0: (3, 0)}, {0: (3, 0)}, {0: (0, 3)}]
    np.testing.assert_array_equal(
        _run_scripted(again, conversions={(0, 0), (3, 0)}).after_conversion, [1.0, 1.0]
    )


def test_after_conversion_ad_share_counts_only_the_ads_shown() -> None:
    """Items 3 (topic 0) and 4 (topic 1) are ads. User 0 buys item 0 (topic 0), then sees
    [3, 1] (its ad is of topic 0) and [4, 2] (its ad is not): ad share 1/2, item share 1/4.
    User 1 buys item 1 (topic 1) and sees no ad in its window: no ad share, item share 0."""
    slates = [{0: (0, 5), 1: (1, 5)}, {0: (3, 1), 1: (0, 2)}, {0: (4, 2), 1: (5, 2)}]
    ev = _run_scripted(slates, conversions={(0, 0), (0, 1)}, ads=(3, 4))
    np.testing.assert_array_equal(ev.after_conversion_ads, [0.5])
    assert sorted(ev.after_conversion.tolist()) == [0.0, 0.25]
    summary = ev.summary()["bought_topic_ad_share_after_conversion"]
    assert summary == {"mean": 0.5, "n": 1}


class FixedPolicy:
    """Shows each user the same slate whenever asked; records every call."""

    name = "fixed"

    def __init__(self, slates: Mapping[int, tuple[int, int]]) -> None:
        self.slates = slates
        self.calls: list[tuple[list[int], bool]] = []

    def act(
        self, obs: SlateObs, slate_size: int, rng: np.random.Generator, explore: bool = True
    ) -> SlateAction:
        users = obs.user_features[:, 0].astype(np.int64).tolist()
        self.calls.append((users, explore))
        slates = np.array([self.slates[u] for u in users], dtype=np.int64)
        ones = np.ones(slates.shape, np.float32)
        return SlateAction(slates, ones, np.zeros(len(users), np.float32), None)


def test_onlookers_are_counted_on_the_same_post_purchase_states() -> None:
    """The ad case above, with an onlooker that always shows user 0 items 0 and 3 (topic 0,
    item 3 an ad) and user 1 items 4 and 1 (topic 1, item 4 an ad). Both users buy at t0
    (user 0 topic 0, user 1 topic 1), so the onlooker is asked at t1 and t2 only, greedily,
    about both users; in both windows everything it would show is of the bought topic."""
    slates = [{0: (0, 5), 1: (1, 5)}, {0: (3, 1), 1: (0, 2)}, {0: (4, 2), 1: (5, 2)}]
    fixed = FixedPolicy({0: (0, 3), 1: (4, 1)})
    ev = _run_scripted(slates, {(0, 0), (0, 1)}, ads=(3, 4), onlookers={"fixed": fixed})
    assert fixed.calls == [([0, 1], False), ([0, 1], False)]
    # Driver per window: [bought-topic items, items, bought-topic ads, ads].
    by_user = sorted(ev.windows.T.tolist())
    assert by_user == [[0, 4, 0, 0], [1, 4, 1, 2]]
    np.testing.assert_array_equal(ev.onlooker_windows["fixed"], [[4, 4], [4, 4], [2, 2], [2, 2]])
    # The onlooker changes nothing in the driver's run.
    alone = _run_scripted(slates, {(0, 0), (0, 1)}, ads=(3, 4))
    np.testing.assert_array_equal(alone.windows, ev.windows)
    np.testing.assert_array_equal(alone.returns, ev.returns)

    out = shared_state_shares(ev, "scripted", reference="scripted")
    assert out["windows"] == 2
    assert out["items"]["scripted"]["mean"] == pytest.approx(1 / 8)
    assert out["items"]["fixed"]["mean"] == 1.0
    assert out["ads"]["scripted"]["mean"] == pytest.approx(1 / 2)
    diff = out["items_minus_scripted"]["fixed"]
    assert diff["mean"] == pytest.approx(7 / 8)
    assert diff["ci_low"] <= diff["mean"] <= diff["ci_high"]
    assert "scripted" not in out["items_minus_scripted"]
    with pytest.raises(ValueError, match="neither ran nor looked on"):
        shared_state_shares(ev, "scripted", reference="myopic")


def test_a_greedy_twin_onlooker_would_show_exactly_what_the_policy_showed(
    small_setup: SimulatorSetup, baselines: dict[str, BatchSlatePolicy]
) -> None:
    """The deterministic myopic baseline looking on its own run sees the same observations,
    so its counts equal the driver's window for window; its paired difference is zero."""
    myopic = baselines["myopic"]
    make_users = small_setup.make_users(USERS)
    ev = run_policy_lives(myopic, make_users, max_steps=30, seed=5, onlookers={"twin": myopic})
    assert ev.windows.shape[1] > 1, "too few conversions: the onlooker was not exercised"
    np.testing.assert_array_equal(ev.onlooker_windows["twin"], ev.windows)
    diff = shared_state_shares(ev, "myopic", reference="myopic")["items_minus_myopic"]["twin"]
    assert diff == {"mean": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    # A different onlooker answers the same windows with its own slates.
    ev2 = run_policy_lives(
        myopic, make_users, max_steps=30, seed=5, onlookers={"random": baselines["random"]}
    )
    np.testing.assert_array_equal(ev2.windows, ev.windows)
    assert ev2.onlooker_windows["random"].shape == ev.windows.shape
    assert not np.array_equal(ev2.onlooker_windows["random"], ev.windows)


class RecordingPolicy:
    """Shows candidates 0 and 1 and keeps every observation it was given."""

    name = "recording"

    def __init__(self) -> None:
        self.seen: list[SlateObs] = []

    def act(
        self, obs: SlateObs, slate_size: int, rng: np.random.Generator, explore: bool = True
    ) -> SlateAction:
        self.seen.append(obs)
        b = obs.user_features.shape[0]
        slates = np.tile(np.arange(slate_size), (b, 1))
        return SlateAction(slates, np.ones(slates.shape, np.float32), np.zeros(b), None)


def test_a_blind_policy_acts_on_the_observation_without_the_hidden_columns() -> None:
    obs = SlateObs(
        user_features=np.arange(1.0, 7.0, dtype=np.float32).reshape(2, 3),
        item_features=np.ones((2, 4, 3), np.float32),
        candidate_ids=np.tile(np.arange(4), (2, 1)),
        candidate_mask=None,
        is_ad=np.zeros((2, 4), np.bool_),
    )
    inner = RecordingPolicy()
    blind = BlindPolicy(inner, user_columns=[1], item_columns=[0, 2], name="probe")
    action = blind.act(obs, 2, np.random.default_rng(0), explore=False)
    np.testing.assert_array_equal(action.slates, [[0, 1], [0, 1]])
    seen = inner.seen[0]
    np.testing.assert_array_equal(seen.user_features, [[1, 0, 3], [4, 0, 6]])
    np.testing.assert_array_equal(seen.item_features[..., 1], 1.0)
    np.testing.assert_array_equal(seen.item_features[..., [0, 2]], 0.0)
    # The caller's observation is untouched (the driver acts on it too).
    np.testing.assert_array_equal(obs.user_features[:, 1], [2, 5])
    np.testing.assert_array_equal(obs.item_features, 1.0)


def test_blind_to_satiation_hides_the_decayed_conversions_only() -> None:
    spec = FeatureSpec(num_topics=3)
    users = spec.user_feature_names
    items = ("log_length", "x_interest", "x_satiation")
    blind = blind_to_satiation(RecordingPolicy(), users, items)
    assert blind.name == "recording_blind"
    assert [users[i] for i in blind.user_columns] == ["satiation_0", "satiation_1", "satiation_2"]
    assert blind.item_columns.tolist() == [2]
    with pytest.raises(ValueError, match="no satiation block"):
        blind_to_satiation(RecordingPolicy(), ("interest_0", "fatigue_0"), ("topic_0",))


def test_after_conversion_share_on_simulated_users(
    small_setup: SimulatorSetup, baselines: dict[str, BatchSlatePolicy]
) -> None:
    """On the simulator: one share per conversion followed by a slate, each in [0, 1]."""
    ev = run_policy_lives(baselines["random"], small_setup.make_users(USERS), max_steps=30, seed=5)
    assert ev.conversions.sum() > 0, "no conversion: the share was not exercised"
    assert 0 < ev.after_conversion.size <= ev.conversions.sum()
    assert ((ev.after_conversion >= 0) & (ev.after_conversion <= 1)).all()
    assert 0 < ev.after_conversion_ads.size <= ev.after_conversion.size  # ads in most slates
    assert ((ev.after_conversion_ads >= 0) & (ev.after_conversion_ads <= 1)).all()
    assert ev.after_conversion_steps == 10


def test_the_population_limit_binds_only_the_project_simulator() -> None:
    """A custom env has its own users: a config with more of them than the simulator's
    training half is valid, and only the simulator's env factory refuses it."""
    big = PolicyTrainConfig(users=POPULATION, workers=1)
    assert big.users == POPULATION
    with pytest.raises(ValueError, match=r"log_users \+ workers \* users must be"):
        big.check_population()
    PolicyTrainConfig(users=1024, workers=2).check_population()
