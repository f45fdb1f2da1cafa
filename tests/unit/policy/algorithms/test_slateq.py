"""SlateQ learns the long-term optimal slate of the clickbait-trap MDP; acting is exact."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
import torch

from recsys.policy import (
    BatchSlatePolicy,
    ConditionalLogitChoiceModel,
    SlateQConfig,
    SlateQPolicy,
    SlateSampler,
    TrainableSlatePolicy,
)
from recsys.policy.batch import Transition, concat_transitions
from recsys.policy.testing import TinySlateEnv, collect, greedy_slates


def _policy(env: TinySlateEnv, **config: object) -> SlateQPolicy:
    defaults: dict[str, object] = {
        "gamma": env.gamma,
        "hidden": (32,),
        "target_update_interval": 25,
        "sampler": SlateSampler("epsilon", epsilon=0.5),
    }
    defaults.update(config)
    choice = ConditionalLogitChoiceModel(env.user_dim, env.item_dim, env.slate_size, seed=0)
    return SlateQPolicy(env.user_dim, env.item_dim, choice, SlateQConfig(**defaults), seed=0)  # type: ignore[arg-type]


def _train(env: TinySlateEnv, policy: SlateQPolicy, steps: int, seed: int = 0) -> None:
    """Online training from a small replay window (the most recent 50 steps of 64 users)."""
    rng = np.random.default_rng(seed)
    obs = env.reset()
    window: list[Transition] = []
    for _ in range(steps // 10):
        transitions, obs = collect(env, policy, obs, 10, rng)
        window = [*window, *transitions][-50:]
        replay = concat_transitions(window)
        for _ in range(10):
            policy.update([replay.take(rng.integers(0, replay.batch_size, 256))])


def test_myopic_and_optimal_slates_differ() -> None:
    solution = TinySlateEnv().solve()
    assert solution.optimal == ((1, 4), (3, 4))
    assert solution.myopic == ((0, 1), (2, 3))  # both contain the clickbait


@pytest.mark.parametrize(
    ("optimizer", "immediate_head"), [("greedy", False), ("exact_lp", False), ("greedy", True)]
)
def test_q_learning_learns_the_optimal_slate(optimizer: str, immediate_head: bool) -> None:
    env = TinySlateEnv(batch_size=64, seed=0)
    policy = _policy(env, optimizer=optimizer, td="q_learning", immediate_head=immediate_head)
    assert isinstance(policy, TrainableSlatePolicy)
    start = time.perf_counter()
    _train(env, policy, steps=300)
    assert time.perf_counter() - start < 10.0
    assert greedy_slates(env, policy) == env.solve().optimal


def test_sarsa_learns_the_optimal_slate() -> None:
    env = TinySlateEnv(batch_size=64, seed=1)
    policy = _policy(env, td="sarsa", sampler=SlateSampler("epsilon", epsilon=0.3))
    _train(env, policy, steps=300, seed=1)
    assert greedy_slates(env, policy) == env.solve().optimal


def test_sarsa_needs_the_next_slate() -> None:
    env = TinySlateEnv(batch_size=8)
    policy = _policy(env, td="sarsa")
    transitions, _ = collect(env, policy, env.reset(), 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="next_action"):
        policy.update([transitions[0]._replace(next_action=None)])


@pytest.mark.parametrize("min_ads", [0, 1])
@pytest.mark.parametrize("kind", ["epsilon", "boltzmann"])
def test_exploration_propensities_are_exact(kind: str, min_ads: int) -> None:
    env = TinySlateEnv(batch_size=1)
    sampler = SlateSampler(kind, epsilon=0.2, temperature=0.5, max_ads=1, min_ads=min_ads)  # type: ignore[arg-type]
    policy = _policy(env, sampler=sampler)
    _train(env, policy, steps=20)
    obs = env.observe(np.array([0]))
    user, items = torch.tensor(obs.user_features), torch.tensor(obs.item_features)
    with torch.no_grad():
        q, q0 = policy.item_values(user, items)
        v, _ = policy.attractions(user, items)
    if kind == "boltzmann":  # Plackett-Luce over the item scores v_i (Q_i - Q_null)
        scores = (v * (q - q0[:, None]).double()).numpy()
    else:  # epsilon-greedy around the optimiser's slate, which ranks first
        best = policy.act(obs, 2, np.random.default_rng(0), explore=False).slates[0]
        scores = np.zeros((1, 5))
        scores[0, best] = [2.0, 1.0]
    every_slate = np.array(list(itertools.permutations(range(5), 2)))
    probs = [np.exp(sampler.log_propensities(scores, obs, s[None, :]).sum()) for s in every_slate]
    assert sum(probs) == pytest.approx(1.0, abs=1e-9)
    rng = np.random.default_rng(0)
    for _ in range(50):
        action = policy.act(obs, 2, rng)
        expected = np.exp(sampler.log_propensities(scores, obs, action.slates))
        np.testing.assert_allclose(action.propensities, expected, rtol=1e-5)
        assert np.exp(action.log_prob[0]) == pytest.approx(np.prod(expected), rel=1e-5)


def test_ads_cap_is_honoured() -> None:
    env = TinySlateEnv(batch_size=64)
    policy = _policy(env, sampler=SlateSampler("epsilon", epsilon=0.5, max_ads=0))
    transitions, _ = collect(env, policy, env.reset(), 5, np.random.default_rng(0))
    for tr in transitions:
        assert not tr.obs.ads()[np.arange(64)[:, None], tr.action.slates].any()


@pytest.mark.parametrize("kind", ["epsilon", "boltzmann"])
def test_ads_floor_is_honoured_by_acting_and_the_optimiser(kind: str) -> None:
    env = TinySlateEnv(batch_size=64)  # item 4 is the only ad
    sampler = SlateSampler(kind, epsilon=0.5, max_ads=1, min_ads=1)  # type: ignore[arg-type]
    policy = _policy(env, sampler=sampler)
    transitions, _ = collect(env, policy, env.reset(), 5, np.random.default_rng(0))
    for tr in transitions:
        assert (tr.obs.ads()[np.arange(64)[:, None], tr.action.slates].sum(1) == 1).all()
    # The optimiser (acting greedily, and the max of the Q-learning target) honours it too.
    obs = env.reset()
    user, items = torch.tensor(obs.user_features), torch.tensor(obs.item_features)
    slates, _ = policy._optimize(obs, user, items, 2, target=True)
    assert (slates == 4).any(dim=1).all()
    best = policy.act(obs, 2, np.random.default_rng(0), explore=False).slates
    np.testing.assert_array_equal(best, policy._optimize(obs, user, items, 2, target=False)[0])


def test_state_dict_round_trip() -> None:
    env = TinySlateEnv(batch_size=16)
    a = _policy(env)
    _train(env, a, steps=10)
    b = _policy(env)
    b.load_state_dict(a.state_dict())
    obs = env.observe(np.array([0, 1]))
    assert isinstance(b, BatchSlatePolicy)
    np.testing.assert_array_equal(
        a.act(obs, 2, np.random.default_rng(0), explore=False).slates,
        b.act(obs, 2, np.random.default_rng(0), explore=False).slates,
    )


def test_immediate_head_starts_myopic_and_learns_both_parts() -> None:
    """With ``Qbar = R + C`` the continuation starts at exactly zero (the untrained policy is
    the myopic one), ``R`` converges to the immediate reward and ``C`` to what comes after."""
    env = TinySlateEnv(batch_size=64, seed=2)
    policy = _policy(env, immediate_head=True)
    obs = env.observe(np.arange(2))
    user, items = torch.tensor(obs.user_features), torch.tensor(obs.item_features)
    with torch.no_grad():
        c, c0 = policy._continuation(user, items, target=False)
    assert torch.count_nonzero(c) == 0
    assert torch.count_nonzero(c0) == 0
    _train(env, policy, steps=300, seed=2)
    assert greedy_slates(env, policy) == env.solve().optimal
    with torch.no_grad():
        c, _ = policy._continuation(user, items, target=False)
    assert float(c.abs().max()) > 0.05  # the future is not flat in this MDP


def test_immediate_head_state_round_trip() -> None:
    env = TinySlateEnv(batch_size=16)
    a = _policy(env, immediate_head=True)
    _train(env, a, steps=10)
    b = _policy(env, immediate_head=True)
    b.load_state_dict(a.state_dict())
    obs = env.observe(np.array([0, 1]))
    user, items = torch.tensor(obs.user_features), torch.tensor(obs.item_features)
    with torch.no_grad():
        torch.testing.assert_close(a.item_values(user, items), b.item_values(user, items))
