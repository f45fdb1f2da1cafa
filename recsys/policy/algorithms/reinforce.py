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
representation.

Credit (``returns``). ``"rollout"`` (the paper's): discounted sums of slate rewards over the
time-ordered rollout, minus the batch mean. A rollout is a window of a longer life (16 steps
of an 80-step episode), so the sum stops at the window's end as if the user had left: with a
discount near 1 the late steps of every window look worthless, and the policy learns to
grab the next click. ``"gae"`` (the default): a learned state value ``V(s)`` (its own small
network over the user features, so its regression cannot distort the policy's state) makes
the advantage ``A_t = sum_l (gamma lambda)^l delta_{t+l}`` with
``delta_t = r_t + gamma V(s_{t+1}) - V(s_t)`` (Schulman et al. 2016, generalised advantage
estimation). At the window's end and at a time-limit truncation the sum bootstraps from
``V(s_{t+1})`` instead of stopping; only a true episode end (``done``) stops it. The value
regresses on the lambda-returns ``A_t + V(s_t)``. Each slotted item receives its step's
advantage or, with ``per_slot_credit``, its own slot reward in place of the slate's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
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
    zero = torch.zeros_like(rewards)
    mask = torch.ones_like(rewards, dtype=torch.bool) if valid is None else valid
    # GAE with a zero value and lambda = 1 is exactly this sum (one recursion for both).
    return generalized_advantages(rewards, zero, zero, dones, mask, gamma, 1.0)


Credit = Literal["rollout", "gae"]
CREDITS: tuple[Credit, ...] = ("rollout", "gae")


def generalized_advantages(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    dones: torch.Tensor,
    valid: torch.Tensor,
    gamma: float,
    lam: float,
) -> torch.Tensor:
    """GAE(lambda) advantages ``[T, B]`` (Schulman et al. 2016, eq. 16), bootstrapped.

    ``values[t]`` is ``V(s_t)`` and ``next_values[t]`` is ``V(s_{t+1})`` of the transition's
    own next observation, so the last step of a rollout and a time-limit truncation (whose
    next observation is the episode's real last one, ``done`` false) bootstrap from the
    value; ``dones`` (true episode ends) do not. The recursion continues into ``t + 1`` only
    when row ``t + 1`` is a real transition (``valid``): an invalid row is a vector env's
    reset step, and the episode before it has ended (terminated or truncated). Invalid rows
    get 0.
    """
    alive = 1.0 - dones.float()
    delta = rewards + gamma * alive * next_values - values
    cont = torch.zeros_like(rewards)
    cont[:-1] = valid[1:].float()
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = delta[t] + gamma * lam * alive[t] * cont[t] * running
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
    #: How an action is credited: ``"gae"`` (bootstrapped advantages from a learned value)
    #: or ``"rollout"`` (discounted returns cut at the rollout's end; see the module doc).
    returns: Credit = "gae"
    #: GAE's ``lambda``: 0 is one-step TD (low variance, biased by V), 1 the Monte Carlo
    #: return bootstrapped only at the rollout's end.
    gae_lambda: float = 0.95
    #: Weight of the value regression in the loss (the value has its own parameters, so it
    #: scales only its learning rate).
    value_coef: float = 0.5
    #: ``"gae"``: divide the advantages by their batch standard deviation. Off by default: the
    #: trainer already scales rewards to returns of order 1, and dividing by a small batch
    #: std multiplied the step about 20-fold at the documented ``lr``; on the long-lives
    #: simulator the softmax then collapsed (entropy 3.9 to 0.8 in 30 iterations).
    normalize_advantages: bool = False
    #: ``"rollout"``: subtract the batch-mean return (variance reduction).
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
        if self.returns not in CREDITS:
            raise ValueError(f"returns must be rollout or gae, got {self.returns!r}")
        if not 0.0 <= self.gae_lambda <= 1.0:
            raise ValueError(f"gae_lambda must lie in [0, 1], got {self.gae_lambda}")
        if not self.value_coef > 0:
            raise ValueError(f"value_coef must be > 0, got {self.value_coef}")


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
            self.value_net = mlp(user_dim, cfg.hidden, 1)
        policy = [*self.state_encoder.parameters(), *self.policy_head.parameters()]
        behavior = list(self.behavior_head.parameters())
        # Clipped together, apart from the value network's.
        self._policy_params = [*policy, *behavior]
        groups: list[dict[str, Any]] = [
            {"params": policy},
            {"params": behavior, "lr": cfg.behavior_lr},
            {"params": list(self.value_net.parameters())},
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

    def value(self, user_features: npt.ArrayLike) -> torch.Tensor:
        """``V(s)`` ``[B]`` of the user states (the ``"gae"`` credit's baseline and bootstrap)."""
        out: torch.Tensor = self.value_net(to_tensor(user_features)).squeeze(-1)
        return out

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
        rows_t = to_tensor(rows, torch.int64)
        slot_rewards = torch.stack([to_tensor(tr.reward) for tr in rollout])  # [T, B, S]
        slot_rewards = torch.where(mask[..., None], slot_rewards, torch.zeros_like(slot_rewards))
        dones = torch.stack([to_tensor(tr.done, torch.bool) for tr in rollout])  # [T, B]
        value_loss = torch.zeros(())
        if cfg.returns == "gae":
            step_adv, value_loss, lam_returns = self._gae(
                rollout, obs.user_features, rows_t, slot_rewards.sum(-1), dones, mask
            )
            slot_adv = step_adv[..., None].expand_as(slot_rewards)
            if cfg.per_slot_credit:  # the slot's own reward in place of the slate's
                slot_adv = slot_adv - slot_rewards.sum(-1, keepdim=True) + slot_rewards
            advantage = slot_adv.reshape(t_len * b, -1)[rows_t]
            returns = lam_returns.reshape(-1)[rows_t]
            if cfg.normalize_advantages and advantage.numel() > 1:
                advantage = (advantage - advantage.mean()) / (advantage.std() + 1e-8)
        else:
            step_returns = discounted_returns(slot_rewards.sum(-1), dones, cfg.gamma, mask)
            if cfg.per_slot_credit:
                future = torch.zeros_like(step_returns)
                future[:-1] = step_returns[1:]
                alive = 1.0 - dones.float()
                slot_returns = slot_rewards + (cfg.gamma * alive * future)[..., None]
            else:
                slot_returns = step_returns[..., None].expand_as(slot_rewards)
            returns = slot_returns.reshape(t_len * b, -1)[rows_t]
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
        loss = policy_loss + behavior_nll - cfg.entropy_coef * entropy + cfg.value_coef * value_loss

        self.optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        # Clipped apart: one joint norm would let a large value-regression gradient (early,
        # while V is far off) shrink the policy's step.
        nn.utils.clip_grad_norm_(self._policy_params, cfg.grad_clip)
        nn.utils.clip_grad_norm_(self.value_net.parameters(), cfg.grad_clip)
        self.optimizer.step()
        return {
            "policy_loss": float(policy_loss.detach()),
            "behavior_nll": float(behavior_nll.detach()),
            "entropy": float(entropy.detach()),
            "return_mean": float(returns.mean()),
            "value_loss": float(value_loss.detach()),
            "weight_mean": float(weights.mean()),
            "weight_max": float(weights.max()),
            "topk_multiplier_mean": float(lam.mean()),
        }

    def _gae(
        self,
        rollout: Sequence[Transition],
        user: npt.NDArray[np.float32],
        rows: torch.Tensor,
        rewards: torch.Tensor,
        dones: torch.Tensor,
        valid: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Advantages ``[T, B]`` (no gradient), the value's regression loss on the
        lambda-returns over the real rows of the rollout, and those returns ``[T, B]``.
        ``user`` holds the user features of those rows (already gathered by the caller)."""
        t_len, b = rewards.shape
        nxt = np.concatenate([tr.next_obs.user_features for tr in rollout])[rows.numpy()]
        v = self.value(user)
        with torch.no_grad():
            flat = torch.zeros(t_len * b)
            flat_next = torch.zeros(t_len * b)
            flat[rows] = v.detach()
            flat_next[rows] = self.value(nxt)
        adv = generalized_advantages(
            rewards,
            flat.reshape(t_len, b),
            flat_next.reshape(t_len, b),
            dones,
            valid,
            self.config.gamma,
            self.config.gae_lambda,
        )
        lam_returns = adv + flat.reshape(t_len, b)
        value_loss = torch.mean((v - lam_returns.reshape(-1)[rows]) ** 2)
        return adv, value_loss, lam_returns

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
        """Inverse of :meth:`weights` (same architecture; keys outside ``model/`` ignored).

        Weights saved before the value network existed load with a fresh one: the value
        only shapes training, never a served slate."""
        state = {
            k.split("/", 1)[1]: torch.as_tensor(np.asarray(v))
            for k, v in tensors.items()
            if k.startswith("model/")
        }
        if not any(k.startswith("value_net.") for k in state):
            state.update({f"value_net.{k}": v for k, v in self.value_net.state_dict().items()})
        self.load_state_dict(state)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The one Adam over the policy and behaviour heads and the value network."""
        return {"optimizer": self.optimizer}
