"""SlateQ (Ie et al. 2019): slate values decomposed into item-wise long-term values.

A slate has combinatorially many values, but if the user consumes at most one item and the
reward and next state depend only on what was consumed, then (Ie et al. eq. 4)

    Q(s, A) = sum_{i in A ∪ {⊥}} P(i | s, A) Qbar(s, i),

where ``P`` is a conditional-logit choice model (:mod:`recsys.policy.choice_model`) and
``Qbar(s, i)`` is the long-term value of the user consuming ``i`` (``⊥``: nothing). ``Qbar``
is learned by TD on the consumed item only (eq. 5/6):

- **SARSA**: ``Qbar(s, i) <- r + gamma * sum_{j in A'} P(j | s', A') Qbar'(s', j)`` with
  ``A'`` the slate actually served next (``Transition.next_action``); on-policy, no slate
  optimisation in the target.
- **Q-learning**: ``Qbar(s, i) <- r + gamma * max_{A'} Q'(s', A')``, the max taken by the
  configured slate optimiser (:mod:`recsys.policy.slate_optimization`) on the target values.

``Qbar'`` is a target network (hard copy every ``target_update_interval`` updates, or Polyak
averaging with rate ``tau``). The no-click value ``Qbar(s, ⊥)`` gets its own state-only head:
in most environments an ignored slate is not worthless (the session goes on), and leaving it
at 0 would bias slates toward anything clickable. The reward credited to the consumed item is
the slate's total per-slot reward (SlateQ's reward-from-consumption assumption). A response
with several clicks is read as its first (:meth:`~recsys.policy.batch.SlateResponse.choice`),
unless ``clicks="multi"`` (below).

With ``immediate_head`` the item value is split as ``Qbar(s, i) = R(s, i) + C(s, i)``: ``R`` is
the expected immediate reward of consuming ``i``, fit by plain regression on the observed
reward (the myopic policy's model, low variance), and only the continuation ``C`` is learned
by TD, towards ``gamma * V'(s')``. The Bellman fixed point is unchanged; what changes is that
the immediate part no longer inherits the noise of bootstrapped targets, and with ``C``
initialised to zero the untrained policy *is* the myopic greedy policy, so TD can only add
what it actually learns about the future.

Several clicks per slate (``clicks="multi"``). The paper's assumptions, one consumed item
(SC) whose reward and next state depend on it alone (RTDS), become: the slotted items are
clicked independently, with marginals ``m_i = P(click i | s, A)`` from the choice model's
``"multi"`` mode, and the realised click set ``K`` moves the return additively, relative to
the no-click outcome:

    E[sum_slots r + gamma V(s') | s, A, K] = Qbar(s, ⊥) + sum_{i in K} (Qbar(s, i) - Qbar(s, ⊥)),

``Qbar(s, i) - Qbar(s, ⊥)`` being what a click on ``i`` adds: its slot's reward and its
effect on where the user goes next. The expectation over ``K`` is, by linearity,

    Q(s, A) = Qbar(s, ⊥) + sum_{i in A} m_i (Qbar(s, i) - Qbar(s, ⊥)),

which is eq. 4 itself when at most one item is clicked (then ``1 - sum_i m_i`` is the
no-click probability), so slates are scored by one formula in both modes, at acting time, in
Q-learning's max and in SARSA's next value; only the marginals differ. Independent ``m_i``
do not depend on the rest of the slate, so the value is additive over items and the best
slate is the top ``S`` by ``m_i (Qbar_i - Qbar_⊥)`` within the ad load: exact, whichever
``optimizer`` is configured (it runs ``top_k``). The additive model is exact when clicks act
on the reward and on the chance and kind of continuing additively (per-slot rewards, one
session-ending item; :class:`~recsys.policy.testing.TinyMultiClickEnv`), and a first-order
approximation otherwise (two session-ending clicks end it once, not twice).

The continuation is counted once per slate, not once per click. Crediting each clicked item
``r_i + gamma V(s')`` would score a slate that draws ``n`` clicks as ``n`` futures and pull
the policy toward click-heavy slates; splitting ``V(s')`` equally between the clicks counts
it once but makes a good item share the blame of a neighbour that ended the session, and its
value depend on what it was shown with, which no ``Qbar(s, i)`` can represent. So the TD step
fits the realised click set's value, as the paper fits ``Qbar`` of the consumed item, one row
per transition:

    Qbar(s, ⊥) + sum_{i in K} (Qbar(s, i) - Qbar(s, ⊥))  <-  sum_slots r + gamma V'(s').

A no-click row (``K`` empty) and a one-click row (``K = {i}``) get exactly the paper's
targets; how a several-click row's return divides among its items is identified across rows,
as a regression identifies additive effects. With ``immediate_head`` each click's own reward
is credited directly: ``R(s, i)`` regresses on the clicked slot's reward, one row per clicked
(row, slot) pair (two clicks, two rows); ``R(s, ⊥) = 0`` (an unclicked slate earns nothing
of its own); and ``C`` fits the click set as above towards what the clicked slots did not
earn, ``gamma V'(s')`` once plus any reward paid in unclicked slots (0 for the project's
rewards). The rows then add up to the same click-set value and target.

Acting: the optimiser's slate, explored epsilon-greedily around it (exact propensities), or
Boltzmann/Plackett-Luce over the item scores ``w_i (Qbar_i - Qbar_⊥)`` (``w_i``: the
attraction ``exp(v_i)``, or with several clicks the click probability ``m_i``); both honour
the ad load of the sampler (its ``max_ads`` cap and ``min_ads`` floor), as does the
optimiser. Acting always scores every candidate.

An update's cost does not grow with the number of candidates. The TD and regression losses
only need the consumed item (with several clicks, the slate's items), so only their features
go through the networks; SARSA's target only the next slate's. Q-learning's ``max_{A'}`` is
the exception: it searches the next state's candidates, and an env that offers its whole
catalog as candidates would make every update score the catalog. With
``target_candidates = K`` (default 64) and more than ``K`` candidates in ``next_obs``, the
max is taken over ``K`` of them: the slate actually served next (``next_action``, when the
transition has it), enough organic items and ads that a slate within the ad load exists, and
a uniform sample of the other valid candidates, drawn from a generator the policy owns
(seeded by ``seed``, so runs repeat). The sampled max is biased down (it is a max over a
subset), which is acceptable: it lies between the value of the slate actually served next
(SARSA's on-policy target, for an exact optimiser) and the full max, so it errs on the
conservative side as Double Q-learning's target does, against the max's own upward bias on
noisy estimates, and the gap shrinks as ``K`` grows. With at most ``K`` candidates (the
project's experiments serve 50) nothing is sampled and the target is exactly the full one.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from recsys.policy._nets import (
    PairScorer,
    gather_candidates,
    mlp,
    seeded,
    to_tensor,
)
from recsys.policy.base import SlateSampler, Tensors, optimiser_first_priority
from recsys.policy.batch import SlateAction, SlateObs, Transition, concat_transitions
from recsys.policy.choice_model import CLICK_MODELS, ClickModel, ConditionalLogitChoiceModel
from recsys.policy.slate_optimization import SlateOptimizer, optimize_slates, slate_values

TDVariant = Literal["q_learning", "sarsa"]


@dataclass(frozen=True, slots=True)
class SlateQConfig:
    """SlateQ hyperparameters (the trainer logs and saves them beside the checkpoint)."""

    gamma: float = 0.9
    td: TDVariant = "q_learning"
    optimizer: SlateOptimizer = "greedy"
    hidden: tuple[int, ...] = (64,)
    lr: float = 3e-3
    #: Polyak rate per update; 0 selects hard target copies every ``target_update_interval``.
    tau: float = 0.0
    target_update_interval: int = 50
    huber_delta: float = 1.0
    grad_clip: float = 10.0
    #: Also take one NLL step on the choice model per update, from the same transitions.
    train_choice_model: bool = True
    choice_lr: float = 1e-2
    #: Split ``Qbar = R + C``: regression for the immediate reward, TD for the continuation.
    immediate_head: bool = False
    #: Q-learning's target maximises over at most this many of the next state's candidates
    #: (the next slate served, a feasible ad load, a uniform sample of the rest), so an
    #: update costs the same on a 1,000- or 10,000-item candidate set; ``None``: all of them.
    #: Must be at least the slate size. At 64, candidate sets of up to 64 are not sampled.
    target_candidates: int | None = 64
    #: ``"single"``: at most one click per slate (the paper's SlateQ; several clicks are read
    #: as the first). ``"multi"``: independent clicks, additive credit (module docstring);
    #: the choice model must have the same ``clicks``.
    clicks: ClickModel = "single"
    sampler: SlateSampler = field(default_factory=lambda: SlateSampler("epsilon", epsilon=0.1))

    def __post_init__(self) -> None:
        if not 0.0 <= self.gamma < 1.0:
            raise ValueError(f"gamma must lie in [0, 1), got {self.gamma}")
        if self.td not in ("q_learning", "sarsa"):
            raise ValueError(f"td must be q_learning or sarsa, got {self.td!r}")
        if not 0.0 <= self.tau <= 1.0 or self.target_update_interval < 1:
            raise ValueError("tau must lie in [0, 1] and target_update_interval be >= 1")
        if self.target_candidates is not None and self.target_candidates < 1:
            raise ValueError(
                f"target_candidates must be >= 1 or None (all), got {self.target_candidates}"
            )
        if self.clicks not in CLICK_MODELS:
            raise ValueError(f"clicks must be single or multi, got {self.clicks!r}")


class SlateQPolicy:
    """SlateQ with a learned choice model; a :class:`~recsys.policy.base.TrainableSlatePolicy`."""

    name: str = "slateq"

    def __init__(
        self,
        user_dim: int,
        item_dim: int,
        choice_model: ConditionalLogitChoiceModel,
        config: SlateQConfig | None = None,
        seed: int = 0,
    ) -> None:
        self.config = config or SlateQConfig()
        if choice_model.clicks != self.config.clicks:
            raise ValueError(
                f"SlateQ with clicks={self.config.clicks!r} needs a choice model with the same "
                f"clicks, got {choice_model.clicks!r}"
            )
        self.choice_model = choice_model
        #: ``(R(s, i), R(s, ⊥))`` networks with ``immediate_head``, else None.
        self.immediate: tuple[PairScorer, nn.Sequential] | None = None
        with seeded(seed):
            self.q_net = PairScorer(user_dim, item_dim, self.config.hidden)
            self.null_net = mlp(user_dim, self.config.hidden, 1)
            if self.config.immediate_head:
                self.immediate = (
                    PairScorer(user_dim, item_dim, self.config.hidden),
                    mlp(user_dim, self.config.hidden, 1),
                )
                # The continuation starts at exactly zero: the untrained policy is myopic.
                for head in (self.q_net.mlp[-1], self.null_net[-1]):
                    assert isinstance(head, nn.Linear)
                    nn.init.zeros_(head.weight)
                    nn.init.zeros_(head.bias)
        self.target_q = copy.deepcopy(self.q_net)
        self.target_null = copy.deepcopy(self.null_net)
        for p in [*self.target_q.parameters(), *self.target_null.parameters()]:
            p.requires_grad_(False)
        self._params = [*self.q_net.parameters(), *self.null_net.parameters()]
        for net in self.immediate or ():
            self._params += list(net.parameters())
        self.optimizer = torch.optim.Adam(self._params, lr=self.config.lr)
        self.choice_optimizer = torch.optim.Adam(
            self.choice_model.parameters(), lr=self.config.choice_lr
        )
        self.updates = 0
        #: Draws the Q-learning target's candidate sample (``target_candidates``); its own
        #: stream, so sampling neither depends on nor disturbs torch's global generator.
        self.target_generator = torch.Generator().manual_seed(seed)

    # ---- values ---------------------------------------------------------------------------

    def item_values(
        self, user: torch.Tensor, items: torch.Tensor, target: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Qbar(s, i) [B, C], Qbar(s, ⊥) [B])`` from the online or the target network.

        With ``immediate_head`` both add the (always online: it does not bootstrap) immediate
        reward head to the continuation network's output.
        """
        q, q0 = self._continuation(user, items, target)
        if self.immediate is not None:
            r, r0 = self._immediate(user, items)
            q, q0 = q + r, q0 + r0
        return q, q0

    def _immediate(
        self, user: torch.Tensor, items: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(R(s, i) [B, C], R(s, ⊥) [B])`` of the immediate-reward head.

        With ``clicks="multi"`` ``R(s, ⊥)`` is 0 by definition (``R(s, i)`` is the reward a
        click earns in its own slot, and a slate without clicks has none); its network is kept,
        untrained, so both modes share one checkpoint layout.
        """
        assert self.immediate is not None
        item_net, null_net = self.immediate
        r: torch.Tensor = item_net(user, items)
        r0: torch.Tensor = null_net(user).squeeze(-1)
        if self.config.clicks == "multi":
            r0 = torch.zeros_like(r0)
        return r, r0

    def _continuation(
        self, user: torch.Tensor, items: torch.Tensor, target: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The TD-trained networks' outputs (all of ``Qbar`` without ``immediate_head``)."""
        q_net, null_net = (
            (self.target_q, self.target_null) if target else (self.q_net, self.null_net)
        )
        q: torch.Tensor = q_net(user, items)
        q0: torch.Tensor = null_net(user).squeeze(-1)
        return q, q0

    def attractions(
        self, user: torch.Tensor, items: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The weights ``w_i`` ``[B, C]`` of the item scores ``w_i (Qbar_i - Qbar_⊥)`` and the
        no-click weight ``[B]``, float64.

        ``"single"``: attractions ``exp(v_i)`` and ``exp(v_0)``, shifted by the row max so
        they never overflow (the slate value is invariant to a common scale). ``"multi"``: the
        marginal click probabilities ``sigmoid(v_i - v_0)``, and 1 (a slate's value is then
        ``Qbar_⊥ + sum_i w_i (Qbar_i - Qbar_⊥)``, with no normaliser).
        """
        with torch.no_grad():
            if self.config.clicks == "multi":
                m = self.choice_model.item_click_probabilities(user, items).double()
                return m, torch.ones(m.shape[0], dtype=torch.float64)
            v = self.choice_model.item_logits(user, items).double()
            v0 = self.choice_model.no_click_logit(user).double()
            peak = torch.maximum(v.max(dim=1).values, v0)
            return torch.exp(v - peak[:, None]), torch.exp(v0 - peak)

    def _optimize(
        self,
        user: torch.Tensor,
        items: torch.Tensor,
        slate_size: int,
        target: bool,
        valid: torch.Tensor | None,
        is_ad: torch.Tensor | None,
        values: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(best slates [B, S], slate values [B])`` under the configured optimiser.

        ``valid`` and ``is_ad`` (``[B, C]`` bool or ``None``) are the candidates' mask and ad
        flags. ``values`` (``q, q0, v, v0``) are item values and attractions the caller already
        computed for these users and items, so acting runs each network once. With
        ``clicks="multi"`` the attractions are marginal click probabilities and every
        ``optimizer`` is the exact top-``S`` of the additive value (module docstring).
        """
        with torch.no_grad():
            if values is None:
                q, q0 = self.item_values(user, items, target=target)
                v, v0 = self.attractions(user, items)
            else:
                q, q0, v, v0 = values
            multi = self.config.clicks == "multi"
            slates = optimize_slates(
                v,
                v0,
                q,
                slate_size,
                # Independent clicks make the value additive: the top-S is the exact optimum.
                "top_k" if multi else self.config.optimizer,
                q_null=q0,
                valid=valid,
                is_ad=is_ad,
                max_ads=self.config.sampler.max_ads,
                min_ads=self.config.sampler.min_ads,
            )
            if multi:
                return slates, additive_slate_values(v, q.double(), slates, q0.double())
            return slates, slate_values(v, v0, q.double(), slates, q0.double())

    # ---- acting ---------------------------------------------------------------------------

    def sampler_scores(
        self, obs: SlateObs, slate_size: int, explore: bool = True
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """``(what the sampler samples from, item scores w_i (Qbar_i - Qbar_⊥))``, ``[B, C]``
        (``w_i``: :meth:`attractions`).

        Exploring Boltzmann samples Plackett-Luce over the item scores; otherwise the sampler
        gets :func:`~recsys.policy.base.optimiser_first_priority` around the optimiser's
        slate. Off-policy evaluation of a checkpoint computes propensities from the same
        scores, so acting and evaluation cannot drift apart.
        """
        obs.validate()
        user, items = to_tensor(obs.user_features), to_tensor(obs.item_features)
        with torch.no_grad():
            q, q0 = self.item_values(user, items)
            v, v0 = self.attractions(user, items)
            item_scores = (v * (q - q0[:, None]).double()).numpy()
        if explore and self.config.sampler.kind == "boltzmann":
            return item_scores, item_scores
        valid, is_ad = _flags(obs)
        slates, _ = self._optimize(
            user, items, slate_size, False, valid, is_ad, values=(q, q0, v, v0)
        )
        return optimiser_first_priority(item_scores, obs, slates.numpy()), item_scores

    def set_sampler(self, sampler: SlateSampler) -> None:
        """Act through ``sampler`` from now on (the optimiser honours its ad load too)."""
        self.config = replace(self.config, sampler=sampler)

    def act(
        self,
        obs: SlateObs,
        slate_size: int,
        rng: np.random.Generator,
        explore: bool = True,
    ) -> SlateAction:
        """The optimiser's slate (``explore=False``) or its exploration around it."""
        scores, item_scores = self.sampler_scores(obs, slate_size, explore)
        action = self.config.sampler.sample(scores, obs, slate_size, rng, explore=explore)
        chosen = np.take_along_axis(item_scores, action.slates, axis=1)
        return action._replace(scores=chosen.astype(np.float32))

    # ---- learning -------------------------------------------------------------------------

    def update(self, rollout: Sequence[Transition]) -> Mapping[str, float]:
        """One TD step on the consumed items of a batch of transitions (order is ignored).

        Only the consumed item's features go through the value networks (the loss reads no
        other; with ``clicks="multi"`` the slate's, to read every click), the choice model sees
        the served slate, and the target at most ``target_candidates`` of the next
        candidates: the cost grows with the batch and the slate, not with the number of
        candidates. Returns ``td_loss``, ``q_mean`` (of the trained values), ``target_mean``
        and, when the choice model is trained too, its ``choice_nll``.
        """
        batch = rollout[0] if len(rollout) == 1 else concat_transitions(rollout)
        cfg = self.config
        user, items = to_tensor(batch.obs.user_features), to_tensor(batch.obs.item_features)
        slates = to_tensor(batch.action.slates, torch.int64)
        if cfg.clicks == "multi":
            clicks = to_tensor(batch.response.clicks(), torch.float32)  # [B, S]
            slate_items = gather_candidates(items, slates)  # [B, S, di]
            loss, pred, target = self._multi_click_loss(batch, user, slate_items, clicks)
            response = clicks
        else:
            choice = to_tensor(batch.response.choice(), torch.int64)
            loss, pred, target = self._single_click_loss(batch, user, items, slates, choice)
            response = choice
        self.optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        nn.utils.clip_grad_norm_(self._params, cfg.grad_clip)
        self.optimizer.step()

        metrics = {
            "td_loss": float(loss.detach()),
            "q_mean": float(pred.detach().mean()),
            "target_mean": float(target.mean()),
        }
        if cfg.train_choice_model:
            self.choice_optimizer.zero_grad()
            nll = self.choice_model.nll(user, gather_candidates(items, slates), response)
            nll.backward()  # type: ignore[no-untyped-call]
            self.choice_optimizer.step()
            metrics["choice_nll"] = float(nll.detach())
        self.updates += 1
        self._update_target()
        return metrics

    def _single_click_loss(
        self,
        batch: Transition,
        user: torch.Tensor,
        items: torch.Tensor,
        slates: torch.Tensor,
        choice: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(loss, predictions [B], targets [B])`` of the paper's TD step: ``Qbar`` of the
        (first) clicked item, or of ``⊥``, towards the slate's reward plus the next value."""
        cfg = self.config
        b, s = slates.shape
        rows = torch.arange(b)
        clicked = choice < s
        # A row without a click reads the no-click value; its "consumed" slot is a stand-in.
        consumed = slates[rows, choice.clamp(max=s - 1)]
        consumed_items = gather_candidates(items, consumed[:, None])  # [B, 1, di]

        reward = to_tensor(batch.reward).sum(dim=1)
        with torch.no_grad():
            target = reward + self._td_target(batch, s)

        if self.immediate is not None:
            # Regression for the immediate reward, TD for the continuation only.
            c, c0 = self._continuation(user, consumed_items, target=False)
            r, r0 = self._immediate(user, consumed_items)
            pred_r = torch.where(clicked, r[:, 0], r0)
            pred_c = torch.where(clicked, c[:, 0], c0)
            pred = pred_r + pred_c
            loss = nn.functional.huber_loss(
                pred_r, reward, delta=cfg.huber_delta
            ) + nn.functional.huber_loss(pred_c, target - reward, delta=cfg.huber_delta)
        else:
            q, q0 = self.item_values(user, consumed_items)
            pred = torch.where(clicked, q[:, 0], q0)
            loss = nn.functional.huber_loss(pred, target, delta=cfg.huber_delta)
        return loss, pred, target

    def _multi_click_loss(
        self,
        batch: Transition,
        user: torch.Tensor,
        slate_items: torch.Tensor,
        clicks: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(loss, predictions [B], targets [B])`` of the additive multi-click TD step.

        Per row, the value of the realised click set ``K``,
        ``Qbar_⊥ + sum_{i in K} (Qbar_i - Qbar_⊥)``, towards the slate's reward plus the next
        value; with ``immediate_head``, ``R`` regresses every clicked (row, slot) pair on that
        slot's own reward and ``C`` fits the row towards the rest (module docstring).
        ``clicks`` is the ``[B, S]`` 0/1 mask; no row or slot goes through a Python loop.
        """
        cfg = self.config
        slot_reward = to_tensor(batch.reward)  # [B, S]
        reward = slot_reward.sum(dim=1)
        with torch.no_grad():
            target = reward + self._td_target(batch, slot_reward.shape[1])
        if self.immediate is not None:
            c, c0 = self._continuation(user, slate_items, target=False)
            r, _ = self._immediate(user, slate_items)  # R(s, ⊥) = 0 in this mode
            clicked = clicks > 0
            pred_c = click_set_values(c, c0, clicks)
            own = (slot_reward * clicks).sum(dim=1)  # what the clicked slots earned
            # One regression row per clicked (row, slot) pair; a batch without a click has
            # none, and its immediate loss is 0 (not the NaN of an empty mean).
            pred_r, slot_target = r[clicked], slot_reward[clicked]
            loss_r = (
                nn.functional.huber_loss(pred_r, slot_target, delta=cfg.huber_delta)
                if pred_r.numel()
                else pred_r.sum()
            )
            loss_c = nn.functional.huber_loss(pred_c, target - own, delta=cfg.huber_delta)
            loss = loss_r + loss_c
            pred = (r * clicks).sum(dim=1) + pred_c
        else:
            q, q0 = self.item_values(user, slate_items)
            pred = click_set_values(q, q0, clicks)
            loss = nn.functional.huber_loss(pred, target, delta=cfg.huber_delta)
        return loss, pred, target

    def _td_target(self, batch: Transition, slate_size: int) -> torch.Tensor:
        """``gamma * (1 - done) * V'(s')``: the discounted value of the next state.

        SARSA evaluates the next slate only; Q-learning maximises over the next candidates,
        at most ``target_candidates`` of them (see :meth:`target_candidate_indices`).
        """
        nxt = batch.next_obs
        user, items = to_tensor(nxt.user_features), to_tensor(nxt.item_features)
        served = (
            None if batch.next_action is None else to_tensor(batch.next_action.slates, torch.int64)
        )
        if self.config.td == "sarsa":
            if served is None:
                raise ValueError("SARSA targets need Transition.next_action (the next slate)")
            next_items = gather_candidates(items, served)
            qn, q0n = self.item_values(user, next_items, target=True)
            if self.config.clicks == "multi":
                clicked = self.choice_model.click_probabilities(user, next_items)
                next_value = click_set_values(qn, q0n, clicked)
            else:
                probs = self.choice_model.slate_probabilities(user, next_items)
                k = served.shape[1]
                next_value = (probs[:, :k] * qn).sum(1) + probs[:, k] * q0n
        else:
            valid, is_ad = _flags(nxt)
            sample = self.target_candidate_indices(nxt, slate_size, served)
            if sample is not None:
                idx, valid = sample
                items = gather_candidates(items, idx)
                is_ad = None if is_ad is None else torch.gather(is_ad, 1, idx)
            _, value = self._optimize(user, items, slate_size, True, valid, is_ad)
            next_value = value.float()
        alive = 1.0 - to_tensor(batch.done, torch.float32)
        out: torch.Tensor = self.config.gamma * alive * next_value
        return out

    def target_candidate_indices(
        self, obs: SlateObs, slate_size: int, served: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(indices [B, K], real [B, K])``: the candidates Q-learning's target maximises
        over, and which of them exist (``real`` is the sample's validity mask); ``None``:
        all candidates.

        ``None`` when ``target_candidates`` is ``None`` or ``obs`` has at most that many
        candidates (the target is then the exact one, and no random number is drawn).
        Otherwise :func:`sample_target_candidates` with the policy's generator: ``served``
        (the next slate, ``[B, S]``), a slate that fits the sampler's ad load, and a uniform
        sample of the other valid candidates.
        """
        k = self.config.target_candidates
        if k is None or obs.num_candidates <= k:
            return None
        if k < slate_size:
            raise ValueError(
                f"target_candidates ({k}) must be at least the slate size ({slate_size})"
            )
        valid, is_ad = _flags(obs)
        return sample_target_candidates(
            (obs.batch_size, obs.num_candidates),
            k,
            self.target_generator,
            slate_size=slate_size,
            valid=valid,
            served=served,
            is_ad=is_ad,
            max_ads=self.config.sampler.max_ads,
            min_ads=self.config.sampler.min_ads,
        )

    def _update_target(self) -> None:
        cfg = self.config
        pairs = [(self.target_q, self.q_net), (self.target_null, self.null_net)]
        if cfg.tau > 0.0:
            with torch.no_grad():
                for tgt, src in pairs:
                    for pt, ps in zip(tgt.parameters(), src.parameters(), strict=True):
                        pt.lerp_(ps, cfg.tau)
        elif self.updates % cfg.target_update_interval == 0:
            for tgt, src in pairs:
                tgt.load_state_dict(src.state_dict())

    # ---- persistence ----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume or serve (networks, targets, choice model, counters)."""
        out: dict[str, Any] = {
            "q_net": self.q_net.state_dict(),
            "null_net": self.null_net.state_dict(),
            "target_q": self.target_q.state_dict(),
            "target_null": self.target_null.state_dict(),
            "choice_model": self.choice_model.state_dict(),
            "updates": self.updates,
        }
        if self.immediate is not None:
            out["reward_net"], out["reward_null"] = (n.state_dict() for n in self.immediate)
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Inverse of :meth:`state_dict` (same architecture and config)."""
        self.q_net.load_state_dict(state["q_net"])
        self.null_net.load_state_dict(state["null_net"])
        self.target_q.load_state_dict(state["target_q"])
        self.target_null.load_state_dict(state["target_null"])
        self.choice_model.load_state_dict(state["choice_model"])
        if self.immediate is not None:
            self.immediate[0].load_state_dict(state["reward_net"])
            self.immediate[1].load_state_dict(state["reward_null"])
        self.updates = int(state["updates"])

    def weights(self) -> Tensors:
        """:meth:`state_dict` flattened to ``{name: array}``: ``<module>/<param>`` for every
        network (online, target, immediate heads, choice model), and ``updates``."""
        out: Tensors = {}
        for top, value in self.state_dict().items():
            if isinstance(value, Mapping):
                out.update(
                    {f"{top}/{k}": v.detach().cpu().numpy().copy() for k, v in value.items()}
                )
            else:
                out[top] = np.asarray([value], dtype=np.int64)
        return out

    def load_weights(self, tensors: Mapping[str, np.ndarray[Any, Any]]) -> None:
        """Inverse of :meth:`weights` (same architecture and config)."""
        nested: dict[str, Any] = {}
        for key, value in tensors.items():
            if "/" in key:
                top, name = key.split("/", 1)
                nested.setdefault(top, {})[name] = torch.as_tensor(np.asarray(value))
            else:
                nested[key] = int(np.asarray(value).reshape(-1)[0])
        self.load_state_dict(nested)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The Q-network optimiser and the choice model's."""
        return {"optimizer": self.optimizer, "choice_optimizer": self.choice_optimizer}


def click_set_values(q: torch.Tensor, q_null: torch.Tensor, clicks: torch.Tensor) -> torch.Tensor:
    """``q_null + sum_s clicks[:, s] (q[:, s] - q_null)`` ``[B]``: the additive value of a
    click set (``clicks`` ``[B, S]`` 0/1) or, for marginal click probabilities, of a slate.

    ``q`` ``[B, S]`` are the slotted items' values ``Qbar(s, i)``, ``q_null`` ``[B]`` the
    no-click value ``Qbar(s, ⊥)``. No click gives ``q_null``, one click on ``i`` gives
    ``q[i]``: the single-click values.
    """
    return q_null + (clicks * (q - q_null[:, None])).sum(dim=1)


def additive_slate_values(
    click_probability: torch.Tensor,
    q: torch.Tensor,
    slates: torch.Tensor,
    q_null: torch.Tensor,
) -> torch.Tensor:
    """``Q(A) = q_null + sum_{i in A} m_i (q_i - q_null)`` ``[B]`` of slates ``[B, S]`` under
    independent clicks, from ``[B, C]`` candidates' click probabilities ``m`` and values."""
    return click_set_values(
        torch.gather(q, 1, slates), q_null, torch.gather(click_probability, 1, slates)
    )


def _flags(obs: SlateObs) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(candidate_mask, is_ad)`` of ``obs`` as bool tensors (``None`` when absent)."""
    valid = None if obs.candidate_mask is None else to_tensor(obs.candidate_mask, torch.bool)
    is_ad = None if obs.is_ad is None else to_tensor(obs.is_ad, torch.bool)
    return valid, is_ad


def sample_target_candidates(
    shape: tuple[int, int],
    k: int,
    generator: torch.Generator,
    *,
    slate_size: int,
    valid: torch.Tensor | None = None,
    served: torch.Tensor | None = None,
    is_ad: torch.Tensor | None = None,
    max_ads: int | None = None,
    min_ads: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(indices [B, k], real [B, k])``: at most ``k`` distinct valid candidates per row.

    For a slate max over a sample of ``shape = (B, C)`` candidates (``valid`` ``[B, C]``
    masks padding; ``None``: all valid). In priority order, the first ``k`` distinct of:

    1. ``served`` ``[B, S]``: the slate served next, so the target never misses it;
    2. a slate's worth of reserve, so the optimiser can always fill a slate as it could on
       the full row: with an ad load (``is_ad`` and a ``max_ads`` cap or ``min_ads`` floor)
       ``max(min_ads, slate_size - organic)`` ads and ``slate_size`` organic items (as many
       as the row has; a uniform sample could hold too few organic items under a cap);
       without one, ``slate_size`` valid items, only when nothing was ``served``. Each
       reserve is a run of consecutive items of its kind from a uniform random start, so
       every item is equally likely to be in it;
    3. ``2k`` uniform draws with replacement from the valid candidates (all of them, in
       order, when a row has at most ``k``). Repeats are dropped, so a row with barely more
       than ``k`` candidates may get a few fewer than ``k``.

    Draws are ranks among the valid items, so without a mask no ``[B, C]`` array is built
    and the cost is ``O(B k)`` whatever ``C``; a mask or an ad load adds a cumulative sum
    over ``[B, C]``. ``real`` is False for padding (rows with fewer candidates than ``k``).
    ``generator`` draws every random number.
    """
    batch, num_candidates = shape
    if not 1 <= k <= num_candidates:
        raise ValueError(f"k must lie in [1, {num_candidates}], got {k}")
    parts: list[tuple[torch.Tensor, torch.Tensor]] = []
    if served is not None:
        real = torch.ones_like(served, dtype=torch.bool)
        parts.append((served, real if valid is None else torch.gather(valid, 1, served)))
    if is_ad is not None and (max_ads is not None or min_ads > 0):
        every = torch.ones_like(is_ad) if valid is None else valid
        organic, ads = every & ~is_ad, every & is_ad
        need_organic = organic.sum(1).clamp(max=slate_size)
        need_ads = torch.minimum(ads.sum(1), (slate_size - need_organic).clamp(min=min_ads))
        # Ads first: then the first k always hold a slate within the ad load (k >= S).
        parts.append(_reserve(ads, need_ads, num_candidates, generator))
        parts.append(_reserve(organic, need_organic, num_candidates, generator))
    elif served is None:
        count = _count(valid, batch, num_candidates)
        parts.append(_reserve(valid, count.clamp(max=slate_size), num_candidates, generator))
    parts.append(_uniform_draws(valid, batch, num_candidates, k, generator))
    indices = torch.cat([p[0] for p in parts], dim=1)
    real = torch.cat([p[1] for p in parts], dim=1)
    return _first_distinct(indices, real, k, num_candidates)


def _count(mask: torch.Tensor | None, batch: int, num_candidates: int) -> torch.Tensor:
    """True entries per row ``[B]`` (``num_candidates`` without a mask)."""
    if mask is None:
        return torch.full((batch,), num_candidates, dtype=torch.int64)
    return mask.sum(1)


def _nth(mask: torch.Tensor | None, ranks: torch.Tensor, num_candidates: int) -> torch.Tensor:
    """Column of each row's ``ranks``-th (0-based) True entry of ``mask`` (``ranks`` itself
    without a mask); out-of-range ranks give some in-range column (callers mask them)."""
    if mask is None:
        return ranks.clamp(0, num_candidates - 1)
    cum = mask.cumsum(1)
    return torch.searchsorted(cum, ranks + 1).clamp(max=num_candidates - 1)


def _reserve(
    mask: torch.Tensor | None,
    need: torch.Tensor,
    num_candidates: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``need[b]`` distinct True entries of each row: consecutive ranks from a uniform
    random start, wrapping around (every entry equally likely, none twice)."""
    width = int(need.max()) if need.numel() else 0
    batch = need.shape[0]
    count = _count(mask, batch, num_candidates).clamp(min=1)
    start = (torch.rand(batch, generator=generator, dtype=torch.float64) * count).long()
    ranks = (start[:, None] + torch.arange(width)) % count[:, None]
    return _nth(mask, ranks, num_candidates), torch.arange(width) < need[:, None]


def _uniform_draws(
    mask: torch.Tensor | None,
    batch: int,
    num_candidates: int,
    k: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``2k`` uniform draws with replacement among each row's True entries; a row with at
    most ``k`` gets all of them, in order (``real`` marks the entries that exist)."""
    draws = 2 * k
    count = _count(mask, batch, num_candidates)
    u = torch.rand(batch, draws, generator=generator, dtype=torch.float64)
    ranks = (u * count[:, None]).long().clamp(max=(count - 1).clamp(min=0)[:, None])
    few = count <= k
    in_order = torch.arange(draws).expand(batch, draws)
    ranks = torch.where(few[:, None], in_order, ranks)
    real = torch.where(few[:, None], in_order < count[:, None], (count > 0)[:, None])
    return _nth(mask, ranks, num_candidates), real


def _first_distinct(
    indices: torch.Tensor, real: torch.Tensor, k: int, num_candidates: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``k`` distinct real entries of each row ``[B, W]`` (``W >= k``), in any
    order, and whether each is real (a row with fewer pads with unreal ones)."""
    batch, width = indices.shape
    position = torch.arange(width).expand(batch, width)
    key = torch.where(real, indices, num_candidates + position)  # unreal never collide
    ordered, order = torch.sort(key, dim=1, stable=True)  # ties keep their first position
    repeat = torch.zeros_like(real)
    repeat[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
    keep = real & ~torch.zeros_like(real).scatter_(1, order, repeat)
    first = torch.where(keep, width - position, 0)
    chosen = torch.topk(first, k, dim=1, sorted=False).indices
    return torch.gather(indices, 1, chosen), torch.gather(keep, 1, chosen)
