"""REINFORCE with top-K off-policy correction (Chen et al. 2019, "Top-K Off-Policy Correction
for a REINFORCE Recommender System").

The policy is a softmax over the candidates, ``pi(a | s) = softmax(f(s, a))``. Served slates
are ``K`` items drawn from it without replacement (Plackett-Luce, exact propensities). The
gradient of one logged item ``a`` with return ``R`` is (Chen et al. eq. 6/13)

    omega(s, a) * lambda_K(s, a) * R * grad log pi(a | s),

- ``omega = min(pi(a|s) / beta(a|s), c)``: the importance weight from the behaviour policy
  ``beta`` that logged the data to ``pi``, capped at ``c`` to bound the variance (their
  "weight capping", sec. 4.3.1). On-policy (``beta = pi``) it is 1.
- ``lambda_K = K (1 - pi(a|s))^(K-1)``: the derivative of ``alpha(a|s) = 1 - (1 - pi)^K``,
  the probability that ``a`` appears in a top-K slate; it keeps pushing items whose
  probability is already high but not yet sure to be in the slate, and stops pushing an item
  once it is (eq. 11-12).

``beta`` is unknown in general (many logging systems), so it is learned (sec. 4.2): a second
softmax head over the same user state, trained by maximum likelihood on the logged items,
with its gradient blocked from the shared state so it cannot distort the policy's
representation. Returns are discounted sums of slate rewards over a time-ordered rollout;
each slotted item receives its step's return (the paper's credit) or, with
``per_slot_credit``, its own slot reward plus the discounted future.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from recsys.policy._nets import PairScorer, masked_logits, mlp, seeded, to_tensor
from recsys.policy.base import SlateSampler, Tensors
from recsys.policy.batch import SlateAction, SlateObs, Transition, concat_obs


def capped_importance_weights(pi: torch.Tensor, beta: torch.Tensor, cap: float) -> torch.Tensor:
    """``min(pi / beta, cap)`` elementwise (Chen et al. sec. 4.3.1); no gradient flows."""
    if cap <= 0:
        raise ValueError(f"cap must be > 0, got {cap}")
    ratio = pi.detach() / beta.detach().clamp_min(torch.finfo(beta.dtype).tiny)
    return ratio.clamp(max=cap)


def top_k_multiplier(pi: torch.Tensor, k: int) -> torch.Tensor:
    """``lambda_K = K (1 - pi)^(K-1)`` (Chen et al. eq. 12); 1 for ``K = 1``; no gradient."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return k * (1.0 - pi.detach()).clamp_min(0.0) ** (k - 1)


def discounted_returns(
    rewards: torch.Tensor,
    dones: torch.Tensor,
    gamma: float,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """``G_t = r_t + gamma (1 - done_t) G_{t+1}`` over ``[T, B]``; zero beyond the rollout.

    ``valid`` ``[T, B]`` (default: all true) marks real transitions: an invalid row (a vector
    env's reset step) has ``G = 0`` and cuts the sum, so no return crosses an episode boundary
    through it, even when the episode before it was truncated without ``done``.
    """
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = rewards[t] + gamma * (1.0 - dones[t].float()) * running
        if valid is not None:
            running = torch.where(valid[t], running, torch.zeros_like(running))
        out[t] = running
    return out


@dataclass(frozen=True, slots=True)
class ReinforceConfig:
    """REINFORCE-top-K hyperparameters."""

    gamma: float = 0.9
    #: ``K`` of the top-K correction; ``None`` uses the slate size of the data.
    top_k: int | None = None
    #: ``c``: importance weights are capped at this value.
    weight_cap: float = 10.0
    #: Default mode of :meth:`ReinforceTopKPolicy.update`: correct for a learned ``beta``.
    off_policy: bool = False
    state_dim: int = 32
    hidden: tuple[int, ...] = (64,)
    lr: float = 3e-3
    behavior_lr: float = 3e-3
    entropy_coef: float = 0.0
    #: Subtract the batch-mean return (variance reduction).
    baseline: bool = True
    per_slot_credit: bool = False
    grad_clip: float = 10.0
    #: How slates are served. Boltzmann at temperature 1 samples ``pi`` itself, which is what
    #: on-policy updates (importance weight 1) assume; anything else is off-policy data.
    sampler: SlateSampler = field(default_factory=lambda: SlateSampler("boltzmann"))

    def __post_init__(self) -> None:
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must lie in [0, 1], got {self.gamma}")
        if self.weight_cap <= 0:
            raise ValueError(f"weight_cap must be > 0, got {self.weight_cap}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")


class ReinforceTopKPolicy(nn.Module):
    """Softmax slate policy trained by REINFORCE with the top-K off-policy correction."""

    name: str = "reinforce_topk"

    def __init__(
        self,
        user_dim: int,
        item_dim: int,
        config: ReinforceConfig | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.config = config or ReinforceConfig()
        cfg = self.config
        with seeded(seed):
            self.state_encoder = mlp(user_dim, cfg.hidden, cfg.state_dim)
            self.policy_head = PairScorer(cfg.state_dim, item_dim, cfg.hidden)
            self.behavior_head = PairScorer(cfg.state_dim, item_dim, cfg.hidden)
        groups: list[dict[str, Any]] = [
            {"params": [*self.state_encoder.parameters(), *self.policy_head.parameters()]},
            {"params": list(self.behavior_head.parameters()), "lr": cfg.behavior_lr},
        ]
        self.optimizer = torch.optim.Adam(groups, lr=cfg.lr)

    # ---- distributions --------------------------------------------------------------------

    def logits(self, obs: SlateObs) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked logits ``[B, C]`` of the policy ``pi`` and of the behaviour head ``beta``.

        ``beta`` reads the user state through ``detach()``: its likelihood gradient trains
        only its own head (Chen et al. sec. 4.2).
        """
        user, items = to_tensor(obs.user_features), to_tensor(obs.item_features)
        valid = to_tensor(obs.valid(), torch.bool)
        state: torch.Tensor = self.state_encoder(user)
        pi = masked_logits(self.policy_head(state, items), valid)
        beta = masked_logits(self.behavior_head(state.detach(), items), valid)
        return pi, beta

    # ---- acting ---------------------------------------------------------------------------

    def set_sampler(self, sampler: SlateSampler) -> None:
        """Act through ``sampler`` from now on (off-policy for updates unless it samples
        ``pi`` itself)."""
        self.config = replace(self.config, sampler=sampler)

    def act(
        self,
        obs: SlateObs,
        slate_size: int,
        rng: np.random.Generator,
        explore: bool = True,
    ) -> SlateAction:
        """Top-K slate: Plackett-Luce over ``pi`` (explore) or its ``K`` most likely items."""
        obs.validate()
        with torch.no_grad():
            pi_logits, _ = self.logits(obs)
        return self.config.sampler.sample(
            pi_logits.double().numpy(), obs, slate_size, rng, explore=explore
        )

    # ---- learning -------------------------------------------------------------------------

    def update(
        self, rollout: Sequence[Transition], off_policy: bool | None = None
    ) -> Mapping[str, float]:
        """One policy-gradient step on a time-ordered rollout (``rollout[t]``: ``B`` users).

        ``off_policy`` (default: ``config.off_policy``) weights each logged item by the capped
        ``pi / beta``; on-policy data needs no weight. The behaviour head is always fitted to
        the logged items. Rows with ``Transition.valid`` false (a vector env's reset step)
        hold their place on the ``[T, B]`` time axis but add nothing to the returns or the
        losses. Returns losses and diagnostics (``weight_max <= weight_cap``).
        """
        if not rollout:
            raise ValueError("empty rollout")
        cfg = self.config
        off = cfg.off_policy if off_policy is None else off_policy
        t_len, b = len(rollout), rollout[0].batch_size
        if any(tr.batch_size != b for tr in rollout):
            raise ValueError("every step of a rollout must have the same batch size")
        valid = np.stack(
            [np.ones(b, np.bool_) if tr.valid is None else tr.valid for tr in rollout]
        )  # [T, B]
        if not valid.any():
            raise ValueError("no valid row in the rollout (every row is a reset step)")
        rows = np.flatnonzero(valid.reshape(-1))  # the real transitions, in [T * B] order
        obs = rollout[0].obs if t_len == 1 else concat_obs([tr.obs for tr in rollout])
        obs = obs.take(rows)
        slates = np.concatenate([tr.action.slates for tr in rollout])[rows]
        slates_t = to_tensor(slates, torch.int64)
        k = cfg.top_k or slates_t.shape[1]

        mask = to_tensor(valid, torch.bool)
        slot_rewards = torch.stack([to_tensor(tr.reward) for tr in rollout])  # [T, B, S]
        slot_rewards = torch.where(mask[..., None], slot_rewards, torch.zeros_like(slot_rewards))
        dones = torch.stack([to_tensor(tr.done, torch.bool) for tr in rollout])  # [T, B]
        step_returns = discounted_returns(slot_rewards.sum(-1), dones, cfg.gamma, mask)
        if cfg.per_slot_credit:
            future = torch.zeros_like(step_returns)
            future[:-1] = step_returns[1:]
            alive = 1.0 - dones.float()
            returns = slot_rewards + (cfg.gamma * alive * future)[..., None]
        else:
            returns = step_returns[..., None].expand_as(slot_rewards)
        returns = returns.reshape(t_len * b, -1)[to_tensor(rows, torch.int64)]
        advantage = returns - returns.mean() if cfg.baseline else returns

        pi_logits, beta_logits = self.logits(obs)
        log_pi = torch.log_softmax(pi_logits, dim=1)
        log_beta = torch.log_softmax(beta_logits, dim=1)
        log_pi_a = torch.gather(log_pi, 1, slates_t)
        log_beta_a = torch.gather(log_beta, 1, slates_t)
        pi_a = log_pi_a.exp()
        weights = (
            capped_importance_weights(pi_a, log_beta_a.exp(), cfg.weight_cap)
            if off
            else torch.ones_like(pi_a)
        )
        lam = top_k_multiplier(pi_a, k)
        policy_loss = -(weights * lam * advantage * log_pi_a).mean()
        entropy = -(log_pi.exp() * log_pi).sum(1).mean()
        behavior_nll = -log_beta_a.mean()
        loss = policy_loss + behavior_nll - cfg.entropy_coef * entropy

        self.optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        nn.utils.clip_grad_norm_(self.parameters(), cfg.grad_clip)
        self.optimizer.step()
        return {
            "policy_loss": float(policy_loss.detach()),
            "behavior_nll": float(behavior_nll.detach()),
            "entropy": float(entropy.detach()),
            "return_mean": float(returns.mean()),
            "weight_mean": float(weights.mean()),
            "weight_max": float(weights.max()),
            "topk_multiplier_mean": float(lam.mean()),
        }

    def importance_weights(self, transition: Transition) -> torch.Tensor:
        """Capped ``pi / beta`` ``[B, S]`` of a transition's logged items (for diagnostics)."""
        with torch.no_grad():
            pi_logits, beta_logits = self.logits(transition.obs)
            slates = to_tensor(transition.action.slates, torch.int64)
            pi_a = torch.gather(torch.softmax(pi_logits, 1), 1, slates)
            beta_a = torch.gather(torch.softmax(beta_logits, 1), 1, slates)
            return capped_importance_weights(pi_a, beta_a, self.config.weight_cap)

    # ---- persistence ----------------------------------------------------------------------

    def weights(self) -> Tensors:
        """The module's ``state_dict`` as ``{"model/<param>": array}``."""
        return {f"model/{k}": v.detach().cpu().numpy().copy() for k, v in self.state_dict().items()}

    def load_weights(self, tensors: Mapping[str, np.ndarray[Any, Any]]) -> None:
        """Inverse of :meth:`weights` (same architecture; keys outside ``model/`` ignored)."""
        state = {
            k.split("/", 1)[1]: torch.as_tensor(np.asarray(v))
            for k, v in tensors.items()
            if k.startswith("model/")
        }
        self.load_state_dict(state)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The one Adam over the policy and behaviour heads."""
        return {"optimizer": self.optimizer}
