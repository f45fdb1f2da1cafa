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
the slate's total per-slot reward (SlateQ's reward-from-consumption assumption).

With ``immediate_head`` the item value is split as ``Qbar(s, i) = R(s, i) + C(s, i)``: ``R`` is
the expected immediate reward of consuming ``i``, fit by plain regression on the observed
reward (the myopic policy's model, low variance), and only the continuation ``C`` is learned
by TD, towards ``gamma * V'(s')``. The Bellman fixed point is unchanged; what changes is that
the immediate part no longer inherits the noise of bootstrapped targets, and with ``C``
initialised to zero the untrained policy *is* the myopic greedy policy, so TD can only add
what it actually learns about the future.

Acting: the optimiser's slate, explored epsilon-greedily around it (exact propensities), or
Boltzmann/Plackett-Luce over the item scores ``v_i (Qbar_i - Qbar_⊥)``; both honour the ad
load of the sampler (its ``max_ads`` cap and ``min_ads`` floor), as does the optimiser.
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
from recsys.policy.choice_model import ConditionalLogitChoiceModel
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
    sampler: SlateSampler = field(default_factory=lambda: SlateSampler("epsilon", epsilon=0.1))

    def __post_init__(self) -> None:
        if not 0.0 <= self.gamma < 1.0:
            raise ValueError(f"gamma must lie in [0, 1), got {self.gamma}")
        if self.td not in ("q_learning", "sarsa"):
            raise ValueError(f"td must be q_learning or sarsa, got {self.td!r}")
        if not 0.0 <= self.tau <= 1.0 or self.target_update_interval < 1:
            raise ValueError("tau must lie in [0, 1] and target_update_interval be >= 1")


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
        """``(R(s, i) [B, C], R(s, ⊥) [B])`` of the immediate-reward head."""
        assert self.immediate is not None
        item_net, null_net = self.immediate
        r: torch.Tensor = item_net(user, items)
        r0: torch.Tensor = null_net(user).squeeze(-1)
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
        """Choice-model attractions ``exp(v_i)`` ``[B, C]`` and ``exp(v_0)`` ``[B]``, shifted by
        the row max so they never overflow (the slate value is invariant to a common scale)."""
        with torch.no_grad():
            v = self.choice_model.item_logits(user, items).double()
            v0 = self.choice_model.no_click_logit(user).double()
            peak = torch.maximum(v.max(dim=1).values, v0)
            return torch.exp(v - peak[:, None]), torch.exp(v0 - peak)

    def _optimize(
        self,
        obs: SlateObs,
        user: torch.Tensor,
        items: torch.Tensor,
        slate_size: int,
        target: bool,
        values: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(best slates [B, S], slate values [B])`` under the configured optimiser.

        ``values`` (``q, q0, v, v0``) are item values and attractions the caller already
        computed for these users and items, so acting runs each network once.
        """
        with torch.no_grad():
            if values is None:
                q, q0 = self.item_values(user, items, target=target)
                v, v0 = self.attractions(user, items)
            else:
                q, q0, v, v0 = values
            slates = optimize_slates(
                v,
                v0,
                q,
                slate_size,
                self.config.optimizer,
                q_null=q0,
                valid=None
                if obs.candidate_mask is None
                else to_tensor(obs.candidate_mask, torch.bool),
                is_ad=None if obs.is_ad is None else to_tensor(obs.is_ad, torch.bool),
                max_ads=self.config.sampler.max_ads,
                min_ads=self.config.sampler.min_ads,
            )
            return slates, slate_values(v, v0, q.double(), slates, q0.double())

    # ---- acting ---------------------------------------------------------------------------

    def sampler_scores(
        self, obs: SlateObs, slate_size: int, explore: bool = True
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """``(what the sampler samples from, item scores v_i (Qbar_i - Qbar_⊥))``, ``[B, C]``.

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
        slates, _ = self._optimize(obs, user, items, slate_size, False, (q, q0, v, v0))
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

        Returns ``td_loss``, ``q_mean`` (of the trained values), ``target_mean`` and, when the
        choice model is trained too, its ``choice_nll``.
        """
        batch = rollout[0] if len(rollout) == 1 else concat_transitions(rollout)
        cfg = self.config
        user, items = to_tensor(batch.obs.user_features), to_tensor(batch.obs.item_features)
        slates = to_tensor(batch.action.slates, torch.int64)
        choice = to_tensor(batch.response.choice(), torch.int64)
        b, s = slates.shape
        rows = torch.arange(b)
        clicked = choice < s
        consumed = slates[rows, choice.clamp(max=s - 1)]

        reward = to_tensor(batch.reward).sum(dim=1)
        with torch.no_grad():
            target = reward + self._td_target(batch, s)

        if self.immediate is not None:
            # Regression for the immediate reward, TD for the continuation only.
            c, c0 = self._continuation(user, items, target=False)
            r, r0 = self._immediate(user, items)
            pred_r = torch.where(clicked, r[rows, consumed], r0)
            pred_c = torch.where(clicked, c[rows, consumed], c0)
            pred = pred_r + pred_c
            loss = nn.functional.huber_loss(
                pred_r, reward, delta=cfg.huber_delta
            ) + nn.functional.huber_loss(pred_c, target - reward, delta=cfg.huber_delta)
        else:
            q, q0 = self.item_values(user, items)
            pred = torch.where(clicked, q[rows, consumed], q0)
            loss = nn.functional.huber_loss(pred, target, delta=cfg.huber_delta)
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
            nll = self.choice_model.nll(user, gather_candidates(items, slates), choice)
            nll.backward()  # type: ignore[no-untyped-call]
            self.choice_optimizer.step()
            metrics["choice_nll"] = float(nll.detach())
        self.updates += 1
        self._update_target()
        return metrics

    def _td_target(self, batch: Transition, slate_size: int) -> torch.Tensor:
        """``gamma * (1 - done) * V'(s')``: the discounted value of the next state."""
        nxt = batch.next_obs
        user, items = to_tensor(nxt.user_features), to_tensor(nxt.item_features)
        if self.config.td == "sarsa":
            if batch.next_action is None:
                raise ValueError("SARSA targets need Transition.next_action (the next slate)")
            next_slates = to_tensor(batch.next_action.slates, torch.int64)
            qn, q0n = self.item_values(user, items, target=True)
            probs = self.choice_model.slate_probabilities(
                user, gather_candidates(items, next_slates)
            )
            k = next_slates.shape[1]
            next_value = (probs[:, :k] * torch.gather(qn, 1, next_slates)).sum(1) + probs[
                :, k
            ] * q0n
        else:
            _, value = self._optimize(nxt, user, items, slate_size, target=True)
            next_value = value.float()
        alive = 1.0 - to_tensor(batch.done, torch.float32)
        out: torch.Tensor = self.config.gamma * alive * next_value
        return out

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
