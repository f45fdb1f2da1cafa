"""REINFORCE top-K off-policy correction: capped weights, exact lambda_K, learns the optimum;
per-slot credit with several clicks per slate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys.policy import (
    RandomPolicy,
    ReinforceConfig,
    ReinforceTopKPolicy,
    TrainableSlatePolicy,
    capped_importance_weights,
    top_k_multiplier,
)
from recsys.policy.algorithms.reinforce import discounted_returns, generalized_advantages
from recsys.policy.batch import Transition, concat_obs
from recsys.policy.testing import TinyMultiClickEnv, TinySlateEnv, collect, greedy_slates


def _policy(env: TinySlateEnv | TinyMultiClickEnv, **config: object) -> ReinforceTopKPolicy:
    defaults: dict[str, object] = {"gamma": env.gamma, "lr": 3e-3, "hidden": (32,), "state_dim": 16}
    defaults.update(config)
    return ReinforceTopKPolicy(env.user_dim, env.item_dim, ReinforceConfig(**defaults), seed=0)  # type: ignore[arg-type]


def test_importance_weights_are_capped_exactly() -> None:
    pi = torch.tensor([0.5, 0.2, 0.9, 0.01, 0.3])
    beta = torch.tensor([0.25, 0.4, 0.01, 0.01, 0.0])
    w = capped_importance_weights(pi, beta, cap=5.0)
    torch.testing.assert_close(w, torch.tensor([2.0, 0.5, 5.0, 1.0, 5.0]))
    assert not w.requires_grad


def test_top_k_multiplier_formula() -> None:
    pi = torch.tensor([0.0, 0.1, 0.5, 1.0])
    torch.testing.assert_close(top_k_multiplier(pi, 1), torch.ones(4))
    torch.testing.assert_close(top_k_multiplier(pi, 3), 3 * (1 - pi) ** 2)
    # lambda_K is d/dpi of alpha = 1 - (1 - pi)^K, the probability of being in a top-K slate.
    p = torch.tensor([0.3], requires_grad=True)
    alpha = 1 - (1 - p) ** 4
    alpha.backward()  # type: ignore[no-untyped-call]
    torch.testing.assert_close(p.grad, top_k_multiplier(p.detach(), 4))


def test_discounted_returns_stop_at_episode_ends() -> None:
    rewards = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    dones = torch.tensor([[False], [True], [False], [False]])
    got = discounted_returns(rewards, dones, 0.5)
    torch.testing.assert_close(got, torch.tensor([[2.0], [2.0], [5.0], [4.0]]))


def _gae(rewards: list[float], values: list[float], next_values: list[float], **kw: object):  # type: ignore[no-untyped-def]
    col = lambda x: torch.tensor(x, dtype=torch.float32)[:, None]  # noqa: E731
    dones = torch.tensor(kw.get("dones", [False] * len(rewards)))[:, None]
    valid = torch.tensor(kw.get("valid", [True] * len(rewards)))[:, None]
    return generalized_advantages(
        col(rewards),
        col(values),
        col(next_values),
        dones,
        valid,
        0.5,
        float(kw.get("lam", 1.0)),  # type: ignore[arg-type]
    )[:, 0]


def test_gae_with_zero_values_and_lambda_one_is_the_discounted_return() -> None:
    rewards = torch.rand(6, 4)
    dones = torch.zeros(6, 4, dtype=torch.bool)
    dones[2, 1] = True
    valid = torch.ones(6, 4, dtype=torch.bool)
    valid[4, 3] = False
    zero = torch.zeros(6, 4)
    got = generalized_advantages(rewards, zero, zero, dones, valid, 0.9, 1.0)
    torch.testing.assert_close(got, discounted_returns(rewards, dones, 0.9, valid))


def test_gae_bootstraps_at_the_rollout_end_and_at_a_truncation_but_not_at_a_done() -> None:
    # lambda = 0: one-step TD errors, r + gamma V(s') - V(s), with V(s') of the row's own s'.
    got = _gae([1.0, 1.0, 1.0], [2.0, 2.0, 2.0], [2.0, 2.0, 4.0], lam=0.0)
    torch.testing.assert_close(got, torch.tensor([0.0, 0.0, 1.0]))
    # The rollout's last step: the sum stops, bootstrapped by V(s') (= 4, not 0).
    got = _gae([1.0, 1.0], [0.0, 0.0], [0.0, 4.0])
    torch.testing.assert_close(got, torch.tensor([1.0 + 0.5 * 3.0, 3.0]))
    # A truncation at row 0 (the next row is a reset row, done stays false): the value of
    # the episode's real last observation carries the future, and the reset row adds nothing.
    got = _gae([1.0, 9.0, 1.0], [0.0, 0.0, 0.0], [6.0, 0.0, 0.0], valid=[True, False, True])
    torch.testing.assert_close(got, torch.tensor([4.0, 0.0, 1.0]))
    # A true episode end: no bootstrap at all.
    got = _gae([1.0, 1.0], [0.0, 0.0], [6.0, 0.0], dones=[True, False])
    torch.testing.assert_close(got, torch.tensor([1.0, 1.0]))


def test_gae_credit_bootstraps_across_rollout_windows() -> None:
    """Two-step windows of an endless life that pays 1 each step: the rollout-cut return of a
    window's last step is 1, however long the life goes on; the value-bootstrapped one
    learns that the future is worth ``1 / (1 - gamma)`` at every step of the window."""
    env = TinySlateEnv(batch_size=64, seed=0, leave_prob=0.0)
    policy = _policy(env, gamma=0.5)
    obs = env.reset()
    slate = np.tile(np.array([1, 3]), (env.batch_size, 1))
    action = RandomPolicy().act(obs, 2, np.random.default_rng(0))._replace(slates=slate)
    for _ in range(300):
        window = []
        for _ in range(2):
            step = env.step(slate)
            reward = np.ones_like(step.reward)
            window.append(
                Transition(obs, action, step.response, reward / 2, step.next_obs, step.done)
            )
            obs = step.next_obs
        policy.update(window)
    with torch.no_grad():
        values = policy.value(env.observe(np.array([0, 1])).user_features).numpy()
    np.testing.assert_allclose(values, 2.0, rtol=0.15)


def test_on_policy_learns_the_optimal_slate() -> None:
    env = TinySlateEnv(batch_size=128, seed=0)
    # A little entropy keeps the single-item softmax from collapsing on a wrong item early
    # (without it, 1 seed in 8 converges to a suboptimal slate).
    policy = _policy(env, entropy_coef=0.03)
    assert isinstance(policy, TrainableSlatePolicy)
    rng = np.random.default_rng(0)
    obs = env.reset()
    for _ in range(120):
        rollout, obs = collect(env, policy, obs, 10, rng)
        metrics = policy.update(rollout)
        assert metrics["weight_max"] == 1.0  # on-policy: no importance weight
    assert greedy_slates(env, policy) == env.solve().optimal


def test_off_policy_from_random_logs_learns_the_optimal_slate() -> None:
    """Logged by a uniform policy, corrected by a learned behaviour head; weights stay capped."""
    env = TinySlateEnv(batch_size=256, seed=3)
    rng = np.random.default_rng(3)
    logs = []
    obs = env.reset()
    for _ in range(6):
        rollout, obs = collect(env, RandomPolicy(), obs, 10, rng)
        logs.append(rollout)
    policy = _policy(env, off_policy=True, weight_cap=3.0)
    for _ in range(40):
        for rollout in logs:
            metrics = policy.update(rollout)
            assert metrics["weight_max"] <= 3.0
    weights = policy.importance_weights(logs[0][0])
    assert float(weights.max()) <= 3.0
    # The behaviour head matches the uniform logger: beta ~ 1/5 for every item.
    with torch.no_grad():
        _, beta_logits = policy.logits(env.observe(np.array([0, 1])))
    np.testing.assert_allclose(torch.softmax(beta_logits, 1).numpy(), 0.2, atol=0.03)
    assert greedy_slates(env, policy) == env.solve().optimal


def test_behaviour_head_does_not_train_the_shared_state() -> None:
    env = TinySlateEnv(batch_size=32)
    policy = _policy(env)
    rollout, _ = collect(env, policy, env.reset(), 2, np.random.default_rng(0))
    _, beta_logits = policy.logits(rollout[0].obs)
    policy.zero_grad()
    torch.log_softmax(beta_logits, 1).sum().backward()  # type: ignore[no-untyped-call]
    assert all(p.grad is None or not p.grad.any() for p in policy.state_encoder.parameters())
    assert any(p.grad is not None and p.grad.any() for p in policy.behavior_head.parameters())


def test_act_samples_plackett_luce_with_exact_propensities() -> None:
    env = TinySlateEnv(batch_size=16)
    policy = _policy(env)
    obs = env.reset()
    action = policy.act(obs, 2, np.random.default_rng(0))
    with torch.no_grad():
        logits, _ = policy.logits(obs)
    expected = policy.config.sampler.log_propensities(logits.double().numpy(), obs, action.slates)
    np.testing.assert_allclose(action.propensities, np.exp(expected), rtol=1e-5)


def _expected_policy_loss(
    policy: ReinforceTopKPolicy, rollout: list[Transition], advantage: torch.Tensor
) -> float:
    """``-mean(lambda_K * A * log pi(a))`` of on-policy data with per-slot advantages [T*B, S]."""
    obs = concat_obs([tr.obs for tr in rollout])
    slates = torch.tensor(np.concatenate([tr.action.slates for tr in rollout]))
    with torch.no_grad():
        log_pi = torch.log_softmax(policy.logits(obs)[0], dim=1).gather(1, slates)
        lam = top_k_multiplier(log_pi.exp(), slates.shape[1])
    return float(-(lam * advantage * log_pi).mean())


@pytest.mark.parametrize("per_slot_credit", [False, True])
@pytest.mark.parametrize("returns", ["gae", "rollout"])
def test_several_clicks_credit_each_slot_its_own_reward_or_the_slates(
    returns: str, per_slot_credit: bool
) -> None:
    """Per-slot rewards with several clicks per slate: ``per_slot_credit`` gives each slotted
    item its own slot's reward plus the shared future (one-step GAE: ``gamma V(s') - V(s)``;
    rollout: the discounted return of the steps after); the default gives every item of the
    slate the slate's total."""
    env = TinyMultiClickEnv(batch_size=32, seed=0)
    policy = _policy(
        env,
        returns=returns,
        per_slot_credit=per_slot_credit,
        gae_lambda=0.0,
        normalize_advantages=False,
        baseline=False,
    )
    rollout, _ = collect(env, policy, env.reset(), 3, np.random.default_rng(0))
    slot_reward = torch.tensor(np.stack([tr.reward for tr in rollout]))  # [T, B, S]
    two = torch.tensor(np.stack([tr.response.num_clicks() for tr in rollout])) == 2
    assert (two & (slot_reward[..., 0] != slot_reward[..., 1])).any()  # unequal co-clicks
    step_reward = slot_reward.sum(-1, keepdim=True)
    alive = 1.0 - torch.tensor(np.stack([tr.done for tr in rollout]), dtype=torch.float32)
    with torch.no_grad():
        if returns == "gae":
            v = torch.stack([policy.value(tr.obs.user_features) for tr in rollout])
            v_next = torch.stack([policy.value(tr.next_obs.user_features) for tr in rollout])
            future = (env.gamma * alive * v_next - v)[..., None]  # shared by the slots
        else:
            after = discounted_returns(step_reward[..., 0], ~alive.bool(), env.gamma)
            future = torch.zeros_like(after)
            future[:-1] = env.gamma * alive[:-1] * after[1:]
            future = future[..., None]
    own = slot_reward if per_slot_credit else step_reward.expand_as(slot_reward)
    advantage = (own + future).reshape(-1, 2)
    expected = _expected_policy_loss(policy, rollout, advantage)
    assert policy.update(rollout)["policy_loss"] == pytest.approx(expected, rel=1e-5)
