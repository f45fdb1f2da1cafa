"""A tiny slate MDP with a known optimal slate, for learning tests of slate policies.

Two user types, five items, slates of two. For each type one item is **clickbait**: by far
the most attractive, but clicking it ends the session; another is **good**: less attractive,
slightly more rewarding per click, and the session goes on. Item 4 is an ad with revenue.
A myopic policy (maximise the expected immediate reward) puts the clickbait in the slate; the
long-term optimal slate leaves it out, so a learner that finds the optimum has learned about
the future, not just about clicks. :meth:`TinySlateEnv.solve` computes both slates exactly by
value iteration over every slate.

Dynamics per step, for each of ``B`` independent users (vectorized):

- choice: conditional logit, ``P(i) = a_i / (1 + sum_{j in A} a_j)``, no position effect
  (SlateQ's assumptions hold exactly);
- signals of the clicked slot: ``click = 1``, ``dwell_s``, ``like``, and for the ad
  ``conversion = 1`` with ``revenue``; unclicked slots are ``skip = 1``;
- reward per slot: the planted linear reward ``REWARD_WEIGHTS . signals``;
- the session ends after a clickbait click, or with probability ``leave_prob`` each step;
  finished users are replaced by fresh ones (auto-reset, like a vector env), so ``next_obs``
  of a finished row already belongs to the next session.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple, Protocol

import numpy as np
import numpy.typing as npt
import torch

from recsys.policy.base import BatchSlatePolicy
from recsys.policy.batch import NUM_SIGNALS, SIGNAL_NAMES, SlateObs, SlateResponse, Transition
from recsys.policy.choice_model import ConditionalLogitChoiceModel
from recsys.types import FloatArray, IntArray

BoolArray = npt.NDArray[np.bool_]

#: Planted per-slot reward: click, dwell (per second), like, conversion, revenue, skip.
REWARD_WEIGHTS = np.array([0.5, 0.01, 0.3, 0.0, 1.0, 0.0], dtype=np.float32)


class TinyStep(NamedTuple):
    """Result of :meth:`TinySlateEnv.step` for ``B`` users."""

    response: SlateResponse
    reward: FloatArray
    next_obs: SlateObs
    done: BoolArray


class TinySolution(NamedTuple):
    """Exact answers per user type: optimal and myopic slates (as sorted tuples) and values."""

    optimal: tuple[tuple[int, ...], ...]
    myopic: tuple[tuple[int, ...], ...]
    optimal_value: tuple[float, ...]
    myopic_value: tuple[float, ...]


class TinySlateEnv:
    """The clickbait-trap slate MDP (see the module docstring)."""

    num_types = 2
    num_items = 5
    slate_size = 2
    user_dim = 2
    item_dim = 5

    def __init__(
        self, batch_size: int = 64, seed: int = 0, leave_prob: float = 0.1, gamma: float = 0.9
    ) -> None:
        self.batch_size = batch_size
        self.leave_prob = leave_prob
        self.gamma = gamma
        self.rng = np.random.default_rng(seed)
        # Rows: user types. Type 0: bait = item 0, good = item 1; type 1: bait = 2, good = 3.
        self.attraction = np.array([[6.0, 1.0, 0.2, 0.2, 0.8], [0.2, 0.2, 6.0, 1.0, 0.8]])
        self.bait = np.array([[1, 0, 0, 0, 0], [0, 0, 1, 0, 0]], dtype=np.bool_)
        self.dwell_s = np.array([[30.0, 30.0, 10.0, 10.0, 5.0], [10.0, 10.0, 30.0, 30.0, 5.0]])
        self.like = np.array([[0, 1, 0, 0, 0], [0, 0, 0, 1, 0]], dtype=np.float64)
        self.is_ad = np.array([False, False, False, False, True])
        self.revenue = np.where(self.is_ad, 0.5, 0.0)
        self.types = self.rng.integers(0, self.num_types, size=batch_size)

    # ---- observations ---------------------------------------------------------------------

    def observe(self, types: IntArray | None = None) -> SlateObs:
        """Observation of the given user types (default: the current users)."""
        t = self.types if types is None else np.asarray(types, dtype=np.int64)
        b = t.shape[0]
        return SlateObs(
            user_features=np.eye(self.num_types, dtype=np.float32)[t],
            item_features=np.broadcast_to(
                np.eye(self.num_items, dtype=np.float32), (b, self.num_items, self.num_items)
            ).copy(),
            candidate_ids=np.broadcast_to(np.arange(self.num_items), (b, self.num_items)).copy(),
            candidate_mask=None,
            is_ad=np.broadcast_to(self.is_ad, (b, self.num_items)).copy(),
        )

    def reset(self) -> SlateObs:
        """Fresh users of random types."""
        self.types = self.rng.integers(0, self.num_types, size=self.batch_size)
        return self.observe()

    # ---- dynamics -------------------------------------------------------------------------

    def click_signals(self) -> FloatArray:
        """``[types, items, 6]`` signals of a click on each item."""
        sig = np.zeros((self.num_types, self.num_items, NUM_SIGNALS), dtype=np.float32)
        sig[..., SIGNAL_NAMES.index("click")] = 1.0
        sig[..., SIGNAL_NAMES.index("dwell_s")] = self.dwell_s
        sig[..., SIGNAL_NAMES.index("like")] = self.like
        sig[..., SIGNAL_NAMES.index("conversion")] = self.is_ad
        sig[..., SIGNAL_NAMES.index("revenue")] = self.revenue
        return sig

    def click_rewards(self) -> FloatArray:
        """``[types, items]`` planted reward of a click (skip of other slots adds nothing)."""
        out: FloatArray = self.click_signals() @ REWARD_WEIGHTS
        return out

    def step(self, slates: npt.ArrayLike) -> TinyStep:
        """Serve ``slates`` ``[B, 2]`` (candidate indices) to the current users."""
        idx = np.asarray(slates, dtype=np.int64)
        b, s = idx.shape
        att = self.attraction[self.types[:, None], idx]  # [B, S]
        probs = np.concatenate([att, np.ones((b, 1))], axis=1)
        probs /= probs.sum(axis=1, keepdims=True)
        u = self.rng.random((b, 1))
        choice = (u > np.cumsum(probs, axis=1)).sum(axis=1)
        choice = np.minimum(choice, s)
        clicked = choice[:, None] == np.arange(s)[None, :]  # [B, S]
        sig = self.click_signals()[self.types[:, None], idx] * clicked[..., None]
        sig[..., SIGNAL_NAMES.index("skip")] = ~clicked
        response = SlateResponse.from_signals(sig)
        reward = (sig @ REWARD_WEIGHTS).astype(np.float32)
        bait_click = (self.bait[self.types[:, None], idx] & clicked).any(axis=1)
        done = bait_click | (self.rng.random(b) < self.leave_prob)
        self.types = np.where(done, self.rng.integers(0, self.num_types, size=b), self.types)
        return TinyStep(response, reward, self.observe(), done)

    # ---- ground truth ---------------------------------------------------------------------

    def solve(self, iterations: int = 2000) -> TinySolution:
        """Optimal (discounted, ``gamma``) and myopic slates per type, by value iteration."""
        slates = list(itertools.combinations(range(self.num_items), self.slate_size))
        r = self.click_rewards()
        optimal, myopic, opt_v, my_v = [], [], [], []
        keep = self.gamma * (1.0 - self.leave_prob)
        for t in range(self.num_types):
            att = np.array([[self.attraction[t, i] for i in sl] for sl in slates])  # [M, S]
            p = att / (1.0 + att.sum(1, keepdims=True))
            p0 = 1.0 - p.sum(1)
            rr = np.array([[r[t, i] for i in sl] for sl in slates])
            cont = np.array([[0.0 if self.bait[t, i] else 1.0 for i in sl] for sl in slates])
            immediate = (p * rr).sum(1)
            v = 0.0
            for _ in range(iterations):
                v = float(np.max(immediate + keep * v * ((p * cont).sum(1) + p0)))
            q = immediate + keep * v * ((p * cont).sum(1) + p0)
            optimal.append(slates[int(np.argmax(q))])
            opt_v.append(v)
            myopic.append(slates[int(np.argmax(immediate))])
            my_v.append(float(immediate.max()))
        return TinySolution(tuple(optimal), tuple(myopic), tuple(opt_v), tuple(my_v))

    def oracle_choice_model(self) -> ConditionalLogitChoiceModel:
        """The true choice model as a :class:`ConditionalLogitChoiceModel` (no learning)."""
        model = ConditionalLogitChoiceModel(self.user_dim, self.item_dim, self.slate_size)
        with torch.no_grad():
            model.utility.bilinear.copy_(torch.as_tensor(np.log(self.attraction)))
            for p in model.utility.mlp.parameters():
                p.zero_()
        return model

    def immediate_click_reward(self, obs: SlateObs) -> FloatArray:
        """Scorer for :class:`~recsys.policy.algorithms.baselines.MyopicGreedyPolicy`: reward
        if clicked."""
        out: FloatArray = obs.user_features @ self.click_rewards()
        return out


class TinyMultiClickEnv:
    """A slate MDP where users click several items, each on its own; its optimum is exact.

    Two user types, five items (one-hot features), slates of two, no position effect. A
    user clicks each slotted item independently, item ``i`` with probability ``p[t, i]``, and
    each click earns ``r[t, i]`` in its own slot (``dwell_s = 60 r``, so dwell minutes are
    the reward). For each type one item is a **bait** whose click ends the session (whatever
    else was clicked); otherwise the user leaves with probability ``leave_prob`` per step and
    keeps their type until then. Finished users are replaced by fresh ones (auto-reset).

    For type 0 (type 1 mirrors it: item ``i`` plays ``4 - i``): ``A`` (item 0) and ``B``
    (1) are reliable (``p = 0.8``), ``C`` (2) is a rarely clicked treat (``p = 0.2``,
    ``r = 1.25``), ``D`` (3) the bait (``p = 0.8``, ``r = 1``), ``E`` (4) filler. The
    optimum is ``{A, B}``: with independent clicks a slate's value adds up over its items,
    so two reliable items beat one reliable item beside the treat. A learner that believes in
    one click per slate (a conditional logit fit on first clicks) prices ``B`` as a rival
    that takes clicks away from ``A`` and prefers the rarely clicked ``C`` beside it; the
    myopic slate takes the bait.

    The ground truth fits SlateQ's multi-click decomposition exactly (one bait per type, so
    the chance of going on is affine in the clicks): with ``k = gamma (1 - leave_prob)``,
    ``Qbar(t, ⊥) = k V_t`` and ``Qbar(t, i) = r[t, i] + k (1 - bait[t, i]) V_t``, and
    ``Q(t, A) = Qbar(t, ⊥) + sum_{i in A} p[t, i] (Qbar(t, i) - Qbar(t, ⊥))``.
    """

    num_types = 2
    num_items = 5
    slate_size = 2
    user_dim = 2
    item_dim = 5

    def __init__(
        self, batch_size: int = 64, seed: int = 0, leave_prob: float = 0.1, gamma: float = 0.8
    ) -> None:
        self.batch_size = batch_size
        self.leave_prob = leave_prob
        self.gamma = gamma
        self.rng = np.random.default_rng(seed)
        p = np.array([0.8, 0.8, 0.2, 0.8, 0.1])
        r = np.array([0.75, 0.5, 1.25, 1.0, 0.25])
        bait = np.array([False, False, False, True, False])
        self.click_prob = np.stack([p, p[::-1]])
        self.click_reward = np.stack([r, r[::-1]])
        self.bait = np.stack([bait, bait[::-1]])
        self.types = self.rng.integers(0, self.num_types, size=batch_size)

    def observe(self, types: IntArray | None = None) -> SlateObs:
        """Observation of the given user types (default: the current users)."""
        t = self.types if types is None else np.asarray(types, dtype=np.int64)
        b = t.shape[0]
        return SlateObs(
            user_features=np.eye(self.num_types, dtype=np.float32)[t],
            item_features=np.broadcast_to(
                np.eye(self.num_items, dtype=np.float32), (b, self.num_items, self.num_items)
            ).copy(),
            candidate_ids=np.broadcast_to(np.arange(self.num_items), (b, self.num_items)).copy(),
        )

    def reset(self) -> SlateObs:
        """Fresh users of random types."""
        self.types = self.rng.integers(0, self.num_types, size=self.batch_size)
        return self.observe()

    def step(self, slates: npt.ArrayLike) -> TinyStep:
        """Serve ``slates`` ``[B, 2]`` (candidate indices) to the current users."""
        idx = np.asarray(slates, dtype=np.int64)
        t = self.types[:, None]
        clicked = self.rng.random(idx.shape) < self.click_prob[t, idx]  # [B, S]
        reward = np.where(clicked, self.click_reward[t, idx], 0.0).astype(np.float32)
        sig = np.zeros((*idx.shape, NUM_SIGNALS), dtype=np.float32)
        sig[..., SIGNAL_NAMES.index("click")] = clicked
        sig[..., SIGNAL_NAMES.index("dwell_s")] = 60.0 * reward
        bait_click = np.any(self.bait[t, idx] & clicked, axis=1)
        done: BoolArray = bait_click | (self.rng.random(idx.shape[0]) < self.leave_prob)
        self.types = np.where(done, self.rng.integers(0, self.num_types, size=len(done)), t[:, 0])
        return TinyStep(SlateResponse.from_signals(sig), reward, self.observe(), done)

    # ---- ground truth ---------------------------------------------------------------------

    def slates(self) -> list[tuple[int, ...]]:
        """Every slate, as sorted tuples (the order of :meth:`slate_values`' columns)."""
        return list(itertools.combinations(range(self.num_items), self.slate_size))

    def item_values(
        self, iterations: int = 2000
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Exact ``(Qbar(t, i) [types, items], Qbar(t, ⊥) [types])`` under the optimal
        policy, by value iteration over every slate."""
        keep = self.gamma * (1.0 - self.leave_prob)
        m = np.array(self.slates())  # [M, S]
        p, r, d = self.click_prob[:, m], self.click_reward[:, m], self.bait[:, m]  # [T, M, S]
        immediate = (p * r).sum(-1)
        go_on = 1.0 - (p * d).sum(-1)  # affine in the clicks: one bait per type
        v = np.zeros(self.num_types)
        for _ in range(iterations):
            v = np.max(immediate + keep * go_on * v[:, None], axis=1)
        q = self.click_reward + keep * (~self.bait) * v[:, None]
        return q, keep * v

    def slate_values(self) -> npt.NDArray[np.float64]:
        """Exact ``Q(t, A)`` ``[types, slates]`` (columns in :meth:`slates` order)."""
        q, q0 = self.item_values()
        m = np.array(self.slates())
        gain = self.click_prob[:, m] * (q[:, m] - q0[:, None, None])
        out: npt.NDArray[np.float64] = q0[:, None] + gain.sum(-1)
        return out

    def solve(self) -> TinySolution:
        """Optimal and myopic slates per type, with their values (``myopic_value``: the
        expected immediate reward of the myopic slate)."""
        slates = self.slates()
        values = self.slate_values()
        m = np.array(slates)
        immediate = (self.click_prob[:, m] * self.click_reward[:, m]).sum(-1)
        best, greedy = values.argmax(1), immediate.argmax(1)
        rows = np.arange(self.num_types)
        return TinySolution(
            tuple(slates[i] for i in best),
            tuple(slates[i] for i in greedy),
            tuple(float(v) for v in values[rows, best]),
            tuple(float(v) for v in immediate[rows, greedy]),
        )

    def oracle_choice_model(self) -> ConditionalLogitChoiceModel:
        """The true click model as an independent-click (``clicks="multi"``)
        :class:`ConditionalLogitChoiceModel`."""
        model = ConditionalLogitChoiceModel(
            self.user_dim, self.item_dim, self.slate_size, clicks="multi"
        )
        with torch.no_grad():
            logit = np.log(self.click_prob) - np.log1p(-self.click_prob)
            model.utility.bilinear.copy_(torch.as_tensor(logit))
            for p in model.utility.mlp.parameters():
                p.zero_()
        return model


class _SlateEnv(Protocol):
    slate_size: int

    def step(self, slates: npt.ArrayLike) -> TinyStep: ...


def collect(
    env: _SlateEnv,
    policy: BatchSlatePolicy,
    obs: SlateObs,
    steps: int,
    rng: np.random.Generator,
    explore: bool = True,
) -> tuple[list[Transition], SlateObs]:
    """Run ``policy`` for ``steps`` steps from ``obs``; return the transitions (time-ordered,
    ``next_action`` filled in, so SARSA can use them) and the observation to continue from."""
    out: list[Transition] = []
    action = policy.act(obs, env.slate_size, rng, explore=explore)
    for _ in range(steps):
        step = env.step(action.slates)
        next_action = policy.act(step.next_obs, env.slate_size, rng, explore=explore)
        out.append(
            Transition(
                obs, action, step.response, step.reward, step.next_obs, step.done, next_action
            )
        )
        obs, action = step.next_obs, next_action
    return out, obs


def greedy_slates(
    env: TinySlateEnv | TinyMultiClickEnv, policy: BatchSlatePolicy
) -> tuple[tuple[int, ...], ...]:
    """The policy's deterministic slate for each user type, as sorted tuples."""
    obs = env.observe(np.arange(env.num_types))
    action = policy.act(obs, env.slate_size, np.random.default_rng(0), explore=False)
    return tuple(tuple(sorted(int(i) for i in row)) for row in action.slates)
