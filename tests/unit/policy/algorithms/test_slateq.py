"""SlateQ learns the long-term optimal slate of the clickbait-trap MDP; acting is exact; an
update's cost does not grow with the candidates (the sampled Q-learning target); with several
clicks per slate it credits each click and learns the exact values of a multi-click MDP."""

from __future__ import annotations

import itertools

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
from recsys.policy.algorithms.slateq import (
    additive_slate_values,
    click_set_values,
    sample_target_candidates,
)
from recsys.policy.batch import SlateAction, SlateObs, SlateResponse, Transition, concat_transitions
from recsys.policy.slate_optimization import optimize_slates, slate_values
from recsys.policy.testing import TinyMultiClickEnv, TinySlateEnv, collect, greedy_slates


def _policy(env: TinySlateEnv | TinyMultiClickEnv, **config: object) -> SlateQPolicy:
    defaults: dict[str, object] = {
        "gamma": env.gamma,
        "hidden": (32,),
        "target_update_interval": 25,
        "sampler": SlateSampler("epsilon", epsilon=0.5),
    }
    defaults.update(config)
    choice = ConditionalLogitChoiceModel(
        env.user_dim,
        env.item_dim,
        env.slate_size,
        seed=0,
        clicks=defaults.get("clicks", "single"),  # type: ignore[arg-type]
    )
    return SlateQPolicy(env.user_dim, env.item_dim, choice, SlateQConfig(**defaults), seed=0)  # type: ignore[arg-type]


def _train(
    env: TinySlateEnv | TinyMultiClickEnv, policy: SlateQPolicy, steps: int, seed: int = 0
) -> None:
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
    _train(env, policy, steps=300)
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


@pytest.mark.parametrize("clicks", ["single", "multi"])
@pytest.mark.parametrize("min_ads", [0, 1])
@pytest.mark.parametrize("kind", ["epsilon", "boltzmann"])
def test_exploration_propensities_are_exact(kind: str, min_ads: int, clicks: str) -> None:
    env = TinySlateEnv(batch_size=1)
    sampler = SlateSampler(kind, epsilon=0.2, temperature=0.5, max_ads=1, min_ads=min_ads)  # type: ignore[arg-type]
    policy = _policy(env, sampler=sampler, clicks=clicks)
    _train(env, policy, steps=20)
    obs = env.observe(np.array([0]))
    user, items = torch.tensor(obs.user_features), torch.tensor(obs.item_features)
    with torch.no_grad():
        q, q0 = policy.item_values(user, items)
        v, _ = policy.attractions(user, items)
    if kind == "boltzmann":  # Plackett-Luce over the item scores w_i (Q_i - Q_null)
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
    ads = torch.tensor(obs.ads())
    slates, _ = policy._optimize(user, items, 2, True, None, ads)
    assert (slates == 4).any(dim=1).all()
    best = policy.act(obs, 2, np.random.default_rng(0), explore=False).slates
    np.testing.assert_array_equal(best, policy._optimize(user, items, 2, False, None, ads)[0])


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


# ---- the sampled Q-learning target (``target_candidates``) ---------------------------------


def _catalog_batch(c: int, b: int = 32, s: int = 3, seed: int = 0) -> Transition:
    """``b`` random transitions whose candidates are a whole ``c``-item catalog (4 user and 3
    item features, slates of ``s``, about half clicked), with the next slate served."""
    rng = np.random.default_rng(seed)

    def obs() -> SlateObs:
        return SlateObs(
            rng.standard_normal((b, 4), dtype=np.float32),
            rng.standard_normal((b, c, 3), dtype=np.float32),
            np.tile(np.arange(c), (b, 1)),
        )

    def action() -> SlateAction:
        slates = np.argsort(rng.random((b, c)), axis=1)[:, :s]
        return SlateAction(slates, np.ones((b, s), np.float32), np.zeros(b, np.float32))

    click = np.zeros((b, s), np.float32)
    click[np.arange(b), rng.integers(0, s, b)] = rng.random(b) < 0.5
    signals = np.zeros((b, s, 6), np.float32)
    signals[..., 0] = click
    return Transition(
        obs(),
        action(),
        SlateResponse.from_signals(signals),
        click,
        obs(),
        rng.random(b) < 0.1,
        action(),
    )


def _catalog_policy(seed: int = 0, **config: object) -> SlateQPolicy:
    clicks = config.get("clicks", "single")
    choice = ConditionalLogitChoiceModel(4, 3, 3, seed=seed, clicks=clicks)  # type: ignore[arg-type]
    return SlateQPolicy(4, 3, choice, SlateQConfig(hidden=(8,), **config), seed=seed)  # type: ignore[arg-type]


def test_target_candidates_must_be_positive_and_hold_a_slate() -> None:
    with pytest.raises(ValueError, match="target_candidates must be >= 1 or None"):
        SlateQConfig(target_candidates=0)
    policy = _catalog_policy(target_candidates=2)
    with pytest.raises(ValueError, match=r"target_candidates \(2\) must be at least the slate"):
        policy.update([_catalog_batch(10)])


def test_an_update_equals_the_full_one_when_nothing_needs_sampling() -> None:
    """The default (64) leaves the project's 50-candidate batches, and anything up to 64,
    exactly as without sampling: same metrics, same weights, no random number drawn."""
    batch = _catalog_batch(40)
    full, sampled = _catalog_policy(target_candidates=None), _catalog_policy()
    assert sampled.config.target_candidates == 64
    untouched = sampled.target_generator.get_state()
    for _ in range(3):
        assert full.update([batch]) == sampled.update([batch])
    for a, b in zip(full.q_net.parameters(), sampled.q_net.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert torch.equal(sampled.target_generator.get_state(), untouched)


def test_the_update_loss_is_the_one_of_every_candidates_values() -> None:
    """Only the consumed item goes through the networks, and the loss is the same as reading
    it off the values of every candidate (what the update computed before)."""
    batch = _catalog_batch(40, seed=3)
    policy = _catalog_policy(target_candidates=None, gamma=0.8)
    user, items = torch.tensor(batch.obs.user_features), torch.tensor(batch.obs.item_features)
    nuser = torch.tensor(batch.next_obs.user_features)
    nitems = torch.tensor(batch.next_obs.item_features)
    slates = torch.tensor(batch.action.slates)
    choice = torch.tensor(batch.response.choice())
    rows = torch.arange(slates.shape[0])
    with torch.no_grad():
        q, q0 = policy.item_values(user, items)
        pred = torch.where(choice < 3, q[rows, slates[rows, choice.clamp(max=2)]], q0)
        _, value = policy._optimize(nuser, nitems, 3, True, None, None)
        alive = 1.0 - torch.tensor(batch.done, dtype=torch.float32)
        target = torch.tensor(batch.reward).sum(1) + 0.8 * alive * value.float()
        loss = torch.nn.functional.huber_loss(pred, target)
    metrics = policy.update([batch])
    assert metrics["td_loss"] == pytest.approx(float(loss), rel=1e-5)
    assert metrics["q_mean"] == pytest.approx(float(pred.mean()), rel=1e-5)
    assert metrics["target_mean"] == pytest.approx(float(target.mean()), rel=1e-5)


@pytest.mark.parametrize("clicks", ["single", "multi"])
@pytest.mark.parametrize("immediate_head", [False, True])
def test_an_update_scores_the_consumed_item_and_a_sample_not_the_catalog(
    monkeypatch: pytest.MonkeyPatch, immediate_head: bool, clicks: str
) -> None:
    """Widths of the candidate axis every network and the slate optimiser see (with several
    clicks per slate, the update reads the slate's items: each may have been clicked)."""
    policy = _catalog_policy(target_candidates=16, immediate_head=immediate_head, clicks=clicks)
    seen: dict[str, list[int]] = {"online": [], "target": [], "optimiser": []}
    policy.q_net.register_forward_hook(lambda m, i, o: seen["online"].append(i[1].shape[1]))
    policy.target_q.register_forward_hook(lambda m, i, o: seen["target"].append(i[1].shape[1]))

    def spy(attraction: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        seen["optimiser"].append(attraction.shape[1])
        return optimize_slates(attraction, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("recsys.policy.algorithms.slateq.optimize_slates", spy)
    batch = _catalog_batch(500)
    policy.update([batch])
    consumed = 3 if clicks == "multi" else 1
    assert seen == {"online": [consumed], "target": [16], "optimiser": [16]}
    for key in seen:
        seen[key].clear()
    policy.act(batch.obs, 3, np.random.default_rng(0), explore=False)
    assert seen == {"online": [500], "target": [], "optimiser": [500]}  # acting sees them all
    sarsa = _catalog_policy(td="sarsa", target_candidates=16, clicks=clicks)
    sarsa.target_q.register_forward_hook(lambda m, i, o: seen["target"].append(i[1].shape[1]))
    sarsa.update([batch])
    assert seen["target"] == [3]  # SARSA's target reads the next slate only


def test_the_sampled_target_lies_between_the_served_slate_and_the_full_max() -> None:
    """With an exact optimiser the sampled max is at most the full one (a max over a subset)
    and at least the value of the slate served next (always in the sample); it is drawn from
    the policy's own generator, so the same seed repeats it."""
    batch = _catalog_batch(200, seed=5)
    nxt = batch.next_obs
    user, items = torch.tensor(nxt.user_features), torch.tensor(nxt.item_features)
    served = torch.tensor(batch.next_action.slates)  # type: ignore[union-attr]

    def target(seed: int, k: int | None) -> torch.Tensor:
        policy = _catalog_policy(seed=0, optimizer="exact_lp", target_candidates=k)
        policy.target_generator.manual_seed(seed)
        with torch.no_grad():
            return policy._td_target(batch._replace(done=np.zeros(32, bool)), 3)

    policy = _catalog_policy(seed=0, optimizer="exact_lp")
    with torch.no_grad():
        q, q0 = policy.item_values(user, items, target=True)
        v, v0 = policy.attractions(user, items)
        served_value = 0.9 * slate_values(v, v0, q.double(), served, q0.double()).float()
    full, sampled = target(0, None), target(0, 8)
    assert (sampled <= full + 1e-5).all()
    assert (sampled >= served_value - 1e-5).all()
    assert (sampled < full - 1e-4).any()  # 8 of 200: the max is often missed
    torch.testing.assert_close(target(0, 8), sampled, rtol=0, atol=0)
    assert not torch.equal(target(1, 8), sampled)


def _distinct(idx: torch.Tensor, real: torch.Tensor) -> bool:
    return all(
        len(set(row[ok].tolist())) == int(ok.sum()) for row, ok in zip(idx, real, strict=True)
    )


def test_the_sample_holds_the_served_slate_and_a_uniform_draw_of_the_rest() -> None:
    b, c, k, s = 4000, 100, 20, 5
    gen = torch.Generator().manual_seed(0)
    served = torch.argsort(torch.rand(b, c, generator=gen), dim=1)[:, :s]
    idx, real = sample_target_candidates((b, c), k, gen, slate_size=s, served=served)
    assert idx.shape == (b, k)
    assert bool(real.all())  # 40 draws of 95 others: k distinct in every row
    assert _distinct(idx, real)
    assert bool((idx[:, :, None] == served[:, None, :]).any(1).all())  # served always in
    # Every other item is equally likely: each row holds 15 of its 95 unserved items.
    others = torch.zeros(b, c, dtype=torch.bool)
    others[torch.arange(b)[:, None], idx] = True
    others[torch.arange(b)[:, None], served] = False
    unserved = torch.ones(b, c, dtype=torch.bool)
    unserved[torch.arange(b)[:, None], served] = False
    rate = others.sum(0) / unserved.sum(0)
    assert float(rate.min()) > 15 / 95 - 0.04
    assert float(rate.max()) < 15 / 95 + 0.04


def test_the_sample_respects_the_mask_and_takes_every_valid_item_of_a_short_row() -> None:
    gen = torch.Generator().manual_seed(1)
    valid = torch.rand(64, 300, generator=gen) < 0.5
    valid[:8] = False
    valid[:8, 100:106] = True  # 6 valid candidates: all of them, padding marked unreal
    idx, real = sample_target_candidates((64, 300), 16, gen, slate_size=3, valid=valid)
    assert bool(torch.gather(valid, 1, idx)[real].all())
    assert _distinct(idx, real)
    assert (real[:8].sum(1) == 6).all()
    assert sorted(idx[0][real[0]].tolist()) == list(range(100, 106))
    assert float(real[8:].sum(1).float().mean()) > 15.0  # ~150 valid: nearly always 16


@pytest.mark.parametrize(("max_ads", "min_ads"), [(1, 0), (2, 2)])
def test_the_sample_always_holds_a_slate_within_the_ad_load(max_ads: int, min_ads: int) -> None:
    """3 organic items among 300 ads under a cap, or 2 ads among 300 organic under a floor:
    a uniform sample of 8 would miss them; the reserve keeps a slate within the load."""
    b, c, s = 256, 303, 4
    is_ad = torch.zeros(b, c, dtype=torch.bool)
    if min_ads:
        is_ad[:, [17, 250]] = True  # 2 ads, at least 2 per slate
    else:
        is_ad[:, 3:] = True  # 3 organic, at most 1 ad per slate
    gen = torch.Generator().manual_seed(2)
    idx, real = sample_target_candidates(
        (b, c), 8, gen, slate_size=s, is_ad=is_ad, max_ads=max_ads, min_ads=min_ads
    )
    assert bool(real.all())
    assert _distinct(idx, real)
    ads = torch.gather(is_ad, 1, idx)
    if min_ads:
        assert (ads.sum(1) == 2).all()
    else:
        assert ((~ads).sum(1) == 3).all()
    slates = optimize_slates(
        torch.rand(b, 8, generator=gen) + 0.1,
        torch.ones(b),
        torch.rand(b, 8, generator=gen),
        s,
        "greedy",
        is_ad=ads,
        max_ads=max_ads,
        min_ads=min_ads,
    )
    in_slate = torch.gather(ads, 1, slates).sum(1)
    assert bool(((in_slate <= max_ads) & (in_slate >= min_ads)).all())
    assert _distinct(slates, torch.ones_like(slates, dtype=torch.bool))


def test_q_learning_with_a_sampled_target_learns_the_optimal_slate() -> None:
    """The clickbait MDP's 5 candidates, the target's max over 3 of them (the next slate and
    one more): the long-term optimum is still learned."""
    env = TinySlateEnv(batch_size=64, seed=0)
    policy = _policy(env, td="q_learning", target_candidates=3)
    untouched = policy.target_generator.get_state()
    _train(env, policy, steps=300)
    assert not torch.equal(policy.target_generator.get_state(), untouched)
    assert greedy_slates(env, policy) == env.solve().optimal


# ---- several clicks per slate (``clicks="multi"``) --------------------------------------------


def test_the_multi_click_optimum_adds_up_clicks() -> None:
    """Two reliable items beat one beside the rarely clicked treat (what a one-click view
    prefers); the myopic slate takes the bait."""
    env = TinyMultiClickEnv()
    solution = env.solve()
    assert solution.optimal == ((0, 1), (3, 4))
    assert solution.myopic == ((0, 3), (1, 4))
    values, slates = env.slate_values(), env.slates()
    assert values[0, slates.index((0, 1))] > values[0, slates.index((0, 2))] + 0.1


@pytest.mark.parametrize("immediate_head", [False, True])
def test_multi_click_slateq_learns_the_optimum_a_first_click_learner_misses(
    immediate_head: bool,
) -> None:
    env = TinyMultiClickEnv(batch_size=64, seed=0)
    multi = _policy(env, clicks="multi", immediate_head=immediate_head)
    assert isinstance(multi, TrainableSlatePolicy)
    _train(env, multi, steps=300)
    assert greedy_slates(env, multi) == env.solve().optimal
    # The paper's SlateQ on the same users: a conditional logit on first clicks prices B as a
    # rival that takes A's clicks, so it serves the treat beside A instead.
    env = TinyMultiClickEnv(batch_size=64, seed=0)
    single = _policy(env, immediate_head=immediate_head)
    _train(env, single, steps=300)
    assert greedy_slates(env, single) == ((0, 2), (2, 4))


@pytest.mark.parametrize("immediate_head", [False, True])
def test_multi_click_slateq_learns_the_exact_values(immediate_head: bool) -> None:
    """``Qbar(t, i)``, ``Qbar(t, ⊥)`` and every slate's ``Q(t, A)`` match value iteration.

    ``huber_delta = 10`` makes the loss squared over this MDP's TD errors: the exact values
    are conditional means, and a Huber loss with a small ``delta`` fits a point above the mean
    of a target that drops by ``gamma V`` when the session ends (about 10% of steps here),
    which puts every value about 0.8 too high."""
    env = TinyMultiClickEnv(batch_size=64, seed=0)
    policy = _policy(env, clicks="multi", immediate_head=immediate_head, huber_delta=10.0, tau=0.05)
    _train(env, policy, steps=400)
    obs = env.observe(np.arange(2))
    user, items = torch.tensor(obs.user_features), torch.tensor(obs.item_features)
    with torch.no_grad():
        q, q0 = policy.item_values(user, items)
        m, _ = policy.attractions(user, items)
    true_q, true_q0 = env.item_values()
    # The filler (p = 0.1) is served only when exploring: its estimate is the loosest.
    np.testing.assert_allclose(m.numpy(), env.click_prob, atol=0.08)
    np.testing.assert_allclose(q0.numpy(), true_q0, atol=0.2)  # about 2.57
    np.testing.assert_allclose(q.numpy(), true_q, atol=0.3)  # 1 (bait) to 3.8
    slates = torch.tensor(env.slates())  # [M, 2]
    learned = torch.stack(
        [additive_slate_values(m, q.double(), slate.expand(2, 2), q0.double()) for slate in slates],
        dim=1,
    )
    np.testing.assert_allclose(learned.numpy(), env.slate_values(), atol=0.2)  # V = 3.57


def _two_click_batch(unclicked_reward: float = 0.0) -> Transition:
    """Three users of the multi-click MDP (types 0, 0, 1): user 0 clicks both slots of
    ``(A, B)`` (rewards 0.75 and 0.5), user 1 the treat in slot 1 of ``(A, C)``, user 2
    nothing; nobody leaves. ``unclicked_reward`` is paid in user 1's unclicked slot."""
    env = TinyMultiClickEnv()
    types = np.array([0, 0, 1])
    obs = env.observe(types)
    slates = np.array([[0, 1], [0, 2], [3, 4]])
    click = np.array([[1, 1], [0, 1], [0, 0]], np.float32)
    reward = np.array([[0.75, 0.5], [unclicked_reward, 1.25], [0.0, 0.0]], np.float32)
    signals = np.zeros((3, 2, 6), np.float32)
    signals[..., 0] = click
    action = SlateAction(slates, np.ones((3, 2), np.float32), np.zeros(3, np.float32))
    return Transition(
        obs,
        action,
        SlateResponse.from_signals(signals),
        reward,
        env.observe(types),
        np.zeros(3, bool),
        action,
    )


def _slotted(batch: Transition) -> tuple[torch.Tensor, torch.Tensor]:
    user = torch.tensor(batch.obs.user_features)
    items = torch.tensor(batch.obs.item_features)
    rows = torch.arange(batch.batch_size)[:, None]
    return user, items[rows, torch.tensor(batch.action.slates)]


@pytest.mark.parametrize("td", ["q_learning", "sarsa"])
def test_a_multi_click_row_is_fit_as_its_click_set_with_one_continuation(td: str) -> None:
    """Two clicks: the row's value is ``Qbar_⊥ + (Qbar_A - Qbar_⊥) + (Qbar_B - Qbar_⊥)``
    towards both slots' rewards plus the next state's value once (not once per click)."""
    batch = _two_click_batch()
    policy = _policy(TinyMultiClickEnv(), clicks="multi", td=td, gamma=0.8)
    user, slotted = _slotted(batch)
    with torch.no_grad():
        q, q0 = policy.item_values(user, slotted)
        if td == "sarsa":  # the next slate's value, its click probabilities positional
            qn, q0n = policy.item_values(user, slotted, target=True)
            p = policy.choice_model.click_probabilities(user, slotted)
            next_value = q0n + (p * (qn - q0n[:, None])).sum(1)
        else:
            _, best = policy._optimize(
                user, torch.tensor(batch.next_obs.item_features), 2, True, None, None
            )
            next_value = best.float()
    pred = torch.stack([q0[0] + (q[0, 0] - q0[0]) + (q[0, 1] - q0[0]), q[1, 1], q0[2]])
    target = torch.tensor([1.25, 1.25, 0.0]) + 0.8 * next_value
    with torch.no_grad():
        torch.testing.assert_close(policy._td_target(batch, 2), 0.8 * next_value)
    metrics = policy.update([batch])
    assert metrics["td_loss"] == pytest.approx(
        float(torch.nn.functional.huber_loss(pred, target)), rel=1e-5
    )
    assert metrics["q_mean"] == pytest.approx(float(pred.mean()), rel=1e-5)
    assert metrics["target_mean"] == pytest.approx(float(target.mean()), rel=1e-5)


@pytest.mark.parametrize("unclicked_reward", [0.0, 0.3])
def test_the_immediate_head_credits_each_clicked_slot_its_own_reward(
    unclicked_reward: float,
) -> None:
    """``R`` gets one regression row per clicked (row, slot) pair, with that slot's reward
    (two for the two-click row); ``C`` one row per transition, towards what the clicked slots
    did not earn: the next state's value (once) and any unclicked slot's reward."""
    batch = _two_click_batch(unclicked_reward)
    policy = _policy(TinyMultiClickEnv(), clicks="multi", immediate_head=True, gamma=0.8)
    user, slotted = _slotted(batch)
    with torch.no_grad():
        r, r0 = policy._immediate(user, slotted)
        c, c0 = policy._continuation(user, slotted, target=False)
        next_value = (
            0.8
            * policy._optimize(
                user, torch.tensor(batch.next_obs.item_features), 2, True, None, None
            )[1].float()
        )
    assert torch.count_nonzero(r0) == 0  # no click, no immediate reward of its own
    pred_r = torch.stack([r[0, 0], r[0, 1], r[1, 1]])
    pred_c = torch.stack([c0[0] + (c[0, 0] - c0[0]) + (c[0, 1] - c0[0]), c[1, 1], c0[2]])
    target_c = next_value + torch.tensor([0.0, unclicked_reward, 0.0])
    expected = torch.nn.functional.huber_loss(
        pred_r, torch.tensor([0.75, 0.5, 1.25])
    ) + torch.nn.functional.huber_loss(pred_c, target_c)
    metrics = policy.update([batch])
    assert metrics["td_loss"] == pytest.approx(float(expected), rel=1e-5)
    assert metrics["q_mean"] == pytest.approx(
        float((torch.stack([r[0, 0] + r[0, 1], r[1, 1], r0[2]]) + pred_c).mean()), rel=1e-5
    )


def test_multi_click_targets_are_the_single_click_ones_on_one_click_rows() -> None:
    """With at most one click per row the click set's value is ``Qbar`` of the consumed item
    (or ``⊥``): the two modes fit the same values towards the same (``gamma = 0``) targets."""
    batch = _catalog_batch(40, seed=3)
    assert batch.response.num_clicks().max() == 1
    single = _catalog_policy(target_candidates=None, gamma=0.0)
    multi = _catalog_policy(target_candidates=None, gamma=0.0, clicks="multi")
    a, b = single.update([batch]), multi.update([batch])
    for key in ("td_loss", "q_mean", "target_mean"):
        assert a[key] == pytest.approx(b[key], rel=1e-6)


@pytest.mark.parametrize("optimizer", ["greedy", "exact_lp"])
def test_the_multi_click_slate_is_the_exact_optimum_within_the_ad_load(optimizer: str) -> None:
    """Independent clicks make a slate's value additive: whatever ``optimizer`` says, the
    slate is the best of all ``C choose S`` within the ad load, and its value is exact."""
    b, c, s = 64, 8, 3
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(b, c, generator=gen, dtype=torch.float64)
    q0 = torch.randn(b, generator=gen, dtype=torch.float64)
    m = torch.rand(b, c, generator=gen, dtype=torch.float64)
    is_ad = torch.rand(b, c, generator=gen) < 0.4
    sampler = SlateSampler("epsilon", epsilon=0.1, max_ads=1, min_ads=1)
    policy = _catalog_policy(clicks="multi", optimizer=optimizer, sampler=sampler)
    values = (q, q0, m, torch.ones(b, dtype=torch.float64))
    slates, value = policy._optimize(
        torch.zeros(b, 4), torch.zeros(b, c, 3), s, False, None, is_ad, values
    )
    every = torch.tensor(list(itertools.combinations(range(c), s)))  # [M, S]
    ads = is_ad[:, every].sum(-1)
    need = is_ad.sum(1).clamp(max=1)[:, None]
    ok = (ads <= 1) & (ads >= need)
    all_values = q0[:, None] + (m[:, every] * (q[:, every] - q0[:, None, None])).sum(-1)
    best = torch.where(ok, all_values, torch.tensor(float("-inf"), dtype=torch.float64))
    torch.testing.assert_close(value, best.max(1).values)
    torch.testing.assert_close(value, additive_slate_values(m, q, slates, q0))
    assert (is_ad.gather(1, slates).sum(1) <= 1).all()


def test_click_set_values_reduce_to_the_consumed_items() -> None:
    q, q0 = torch.tensor([[1.0, 2.0, 3.0]]).expand(4, 3), torch.full((4,), 0.5)
    clicks = torch.tensor([[0, 0, 0], [0, 1, 0], [1, 0, 1], [1, 1, 1]], dtype=torch.float32)
    torch.testing.assert_close(click_set_values(q, q0, clicks), torch.tensor([0.5, 2.0, 3.5, 5.0]))


def test_the_click_models_of_policy_and_choice_model_must_agree() -> None:
    with pytest.raises(ValueError, match="clicks must be single or multi"):
        SlateQConfig(clicks="many")  # type: ignore[arg-type]
    choice = ConditionalLogitChoiceModel(2, 5, 2)
    with pytest.raises(ValueError, match="needs a choice model with the same clicks"):
        SlateQPolicy(2, 5, choice, SlateQConfig(clicks="multi"))
