"""Baselines share the batch interface, honour the ad load, and behave as their names say."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from recsys.policy import (
    BatchSlatePolicy,
    ConditionalLogitChoiceModel,
    LinUCBPolicy,
    MyopicGreedyPolicy,
    PopularityPolicy,
    RandomPolicy,
    SlateObs,
    SlateSampler,
    TrainableSlatePolicy,
    optimize_slates,
)
from recsys.policy.batch import SlateResponse, Transition, gather_slots
from recsys.policy.testing import TinySlateEnv, collect, greedy_slates


def _obs(b: int = 32, c: int = 8, seed: int = 0) -> SlateObs:
    rng = np.random.default_rng(seed)
    is_ad = rng.random((b, c)) < 0.4
    is_ad[:, :3] = False
    return SlateObs(
        user_features=rng.normal(size=(b, 3)).astype(np.float32),
        item_features=rng.normal(size=(b, c, 4)).astype(np.float32),
        candidate_ids=rng.integers(0, 100, size=(b, c)),
        candidate_mask=None,
        is_ad=is_ad,
    )


def _all_baselines(max_ads: int | None, min_ads: int = 0) -> list[BatchSlatePolicy]:
    env = TinySlateEnv()
    sampler = SlateSampler("epsilon", epsilon=0.3, max_ads=max_ads, min_ads=min_ads)
    return [
        RandomPolicy(max_ads=max_ads, min_ads=min_ads),
        PopularityPolicy(100, sampler=sampler),
        MyopicGreedyPolicy(lambda o: o.item_features[..., 0], sampler=sampler),
        MyopicGreedyPolicy(env.immediate_click_reward, env.oracle_choice_model(), sampler=sampler),
        LinUCBPolicy(3, 4, sampler=sampler),
    ]


@pytest.mark.parametrize(
    ("max_ads", "min_ads"), [(None, 0), (0, 0), (1, 0), (None, 1), (1, 1), (2, 2), (None, 4)]
)
def test_every_baseline_is_a_valid_batch_policy(max_ads: int | None, min_ads: int) -> None:
    for policy in _all_baselines(max_ads, min_ads):
        assert isinstance(policy, BatchSlatePolicy)
        obs = _obs()
        if isinstance(policy, MyopicGreedyPolicy) and policy.choice_model is not None:
            obs = TinySlateEnv(batch_size=32).reset()
        action = policy.act(obs, 3, np.random.default_rng(0))
        b = obs.batch_size
        assert action.slates.shape == action.propensities.shape == (b, 3)
        assert all(len(set(row.tolist())) == 3 for row in action.slates)
        assert np.all((action.propensities > 0) & (action.propensities <= 1))
        np.testing.assert_allclose(
            np.exp(action.log_prob), np.prod(action.propensities.astype(np.float64), 1), rtol=1e-5
        )
        ads = gather_slots(obs.ads(), action.slates).sum(1)
        if max_ads is not None:
            assert (ads <= max_ads).all(), policy.name
        need = np.minimum(obs.ads().sum(1), min(min_ads, 3))
        assert (ads >= need).all(), policy.name


@pytest.mark.parametrize("optimizer", ["greedy", "exact_lp"])
def test_myopic_greedy_optimises_under_the_ads_floor(optimizer: str) -> None:
    """The optimiser itself gets the floor: the served slate is its floored optimum, in its
    order (low-value ads make the floor bind, so forcing an ad after the fact would differ)."""
    obs = _obs(b=64)
    ads = obs.ads()
    choice = ConditionalLogitChoiceModel(3, 4, 3, seed=1)
    reward = obs.item_features[..., 0].astype(np.float64) - 2.0 * ads

    def immediate_reward(o: SlateObs) -> np.ndarray:
        return reward

    sampler = SlateSampler("greedy", max_ads=2, min_ads=2)
    policy = MyopicGreedyPolicy(immediate_reward, choice, optimizer, sampler)  # type: ignore[arg-type]
    action = policy.act(obs, 3, np.random.default_rng(0))
    user, items = torch.tensor(obs.user_features), torch.tensor(obs.item_features)
    with torch.no_grad():
        v, v0 = choice.item_logits(user, items).double(), choice.no_click_logit(user).double()
    peak = torch.maximum(v.max(1).values, v0)
    kw = {"is_ad": torch.from_numpy(ads), "max_ads": 2}
    args = (torch.exp(v - peak[:, None]), torch.exp(v0 - peak), torch.from_numpy(reward), 3)
    best = optimize_slates(*args, optimizer, min_ads=2, **kw)  # type: ignore[arg-type]
    np.testing.assert_array_equal(action.slates, best.numpy())
    n_ads = gather_slots(ads, action.slates).sum(1)
    assert (n_ads >= np.minimum(ads.sum(1), 2)).all()
    free = optimize_slates(*args, optimizer, **kw)  # type: ignore[arg-type]
    assert (gather_slots(ads, free.numpy()).sum(1) < n_ads).any()  # the floor binds
    with pytest.raises(ValueError, match="min_ads must be <= max_ads"):
        RandomPolicy(max_ads=0, min_ads=1)


def test_random_policy_is_uniform() -> None:
    obs = _obs(b=1, c=4)._replace(is_ad=None)
    action = RandomPolicy().act(obs, 2, np.random.default_rng(0))
    np.testing.assert_allclose(action.propensities, [[1 / 4, 1 / 3]], rtol=1e-6)
    counts: dict[tuple[int, ...], int] = {}
    rng = np.random.default_rng(1)
    big = SlateObs(
        np.repeat(obs.user_features, 12_000, 0),
        np.repeat(obs.item_features, 12_000, 0),
        np.repeat(obs.candidate_ids, 12_000, 0),
    )
    for row in RandomPolicy().act(big, 2, rng).slates.tolist():
        counts[tuple(row)] = counts.get(tuple(row), 0) + 1
    assert set(counts) == set(itertools.permutations(range(4), 2))
    assert max(abs(n / 12_000 - 1 / 12) for n in counts.values()) < 0.01


def test_myopic_greedy_takes_the_clickbait_in_the_tiny_env() -> None:
    """The premise of the learning tests: the immediate-reward optimum is the trap."""
    env = TinySlateEnv()
    policy = MyopicGreedyPolicy(env.immediate_click_reward, env.oracle_choice_model())
    solution = env.solve()
    assert greedy_slates(env, policy) == solution.myopic
    assert solution.myopic != solution.optimal


def test_popularity_counts_clicks() -> None:
    env = TinySlateEnv(batch_size=64)
    policy = PopularityPolicy(env.num_items)
    assert isinstance(policy, TrainableSlatePolicy)
    transitions, _ = collect(env, RandomPolicy(), env.reset(), 20, np.random.default_rng(0))
    metrics = policy.update(transitions)
    assert policy.counts.sum() == metrics["clicks"] > 0
    # The clickbait items (0 and 2) are clicked most under random slates.
    assert set(np.argsort(-policy.counts)[:2].tolist()) == {0, 2}
    assert set(policy.act(env.reset(), 2, np.random.default_rng(0), explore=False).slates[0]) == {
        0,
        2,
    }


def test_linucb_learns_a_linear_bandit() -> None:
    rng = np.random.default_rng(0)
    theta_user = rng.normal(size=(3, 4))
    policy = LinUCBPolicy(3, 4, alpha=0.5)
    assert isinstance(policy, TrainableSlatePolicy)
    for _ in range(30):
        obs = _obs(b=64, seed=int(rng.integers(1 << 30)))._replace(is_ad=None)
        action = policy.act(obs, 2, rng)
        true = np.einsum("bu,ui,bci->bc", obs.user_features, theta_user, obs.item_features)
        reward = np.asarray(gather_slots(true, action.slates), np.float64)
        reward += rng.normal(0, 0.1, (64, 2))
        none = np.zeros((64, 2), np.float32)
        tr = Transition(
            obs,
            action,
            SlateResponse(none, none, none, none, none, none),
            reward.astype(np.float32),
            obs,
            np.zeros(64, np.bool_),
        )
        policy.update([tr])
    test = _obs(b=500, seed=123)._replace(is_ad=None)
    true = np.einsum("bu,ui,bci->bc", test.user_features, theta_user, test.item_features)
    picked = policy.act(test, 1, rng, explore=False).slates[:, 0]
    assert (picked == true.argmax(1)).mean() > 0.9
