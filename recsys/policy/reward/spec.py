"""The per-slot reward a rollout worker computes from each step.

:class:`RewardSpec` names the reward (clicks, dwell, the hidden truth, the learned model, the
environment's own) and travels to the workers (picklable, no torch objects: the learned model
goes as its tensors); :meth:`RewardSpec.build` turns it into the :class:`RewardFunction` a
worker applies to every :class:`~recsys.policy.training.envs.EnvStep`, so the learned reward
model never has to leave the worker.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from recsys.policy.base import Tensors
from recsys.policy.batch import SIGNAL_NAMES
from recsys.policy.reward.model import LearnedRewardModel
from recsys.policy.training.envs import EnvStep
from recsys.types import FloatArray

RewardKind = Literal["clicks", "engagement", "hidden", "learned", "env"]
REWARD_KINDS: tuple[RewardKind, ...] = ("clicks", "engagement", "hidden", "learned", "env")

__all__ = [
    "REWARD_KINDS",
    "RewardFunction",
    "RewardKind",
    "RewardSpec",
    "reward_model_from_tensors",
    "reward_model_tensors",
]


@dataclass(frozen=True)
class RewardSpec:
    """Which per-slot reward a worker computes from each step (picklable, no torch objects).

    - ``clicks``: 1 per clicked slot (the myopic proxy).
    - ``engagement``: observable dwell minutes.
    - ``hidden``: the environment's hidden true per-step reward (the simulator's lifetime-value
      increment), credited to the clicked slot; evaluation-grade truth, used only as the
      upper-bound training signal of the gap experiment.
    - ``learned``: a :class:`LearnedRewardModel` given by its ``model_tensors`` (linear).
    - ``env``: the environment's own reward (Gymnasium envs).

    ``revenue_weight * revenue`` is added to every kind (the ads objective).
    """

    kind: RewardKind
    revenue_weight: float = 0.0
    model_tensors: Tensors | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in REWARD_KINDS:
            raise ValueError(f"reward must be one of {', '.join(REWARD_KINDS)}, got {self.kind!r}")
        if self.kind == "learned" and self.model_tensors is None:
            raise ValueError("reward='learned' needs the reward model's tensors")
        if not np.isfinite(self.revenue_weight):
            raise ValueError(f"revenue_weight must be finite, got {self.revenue_weight}")

    def build(self) -> RewardFunction:
        """The callable a worker applies to every step."""
        model = None
        if self.kind == "learned" and self.model_tensors is not None:
            model = reward_model_from_tensors(self.model_tensors)
        return RewardFunction(self.kind, self.revenue_weight, model)


def reward_model_tensors(model: LearnedRewardModel) -> Tensors:
    """A linear/MLP reward model's state as numpy arrays (for Ray and checkpoints)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def reward_model_from_tensors(tensors: Mapping[str, np.ndarray[Any, Any]]) -> LearnedRewardModel:
    """Inverse of :func:`reward_model_tensors` (architecture inferred from the weights)."""
    weights = sorted(k for k in tensors if k.startswith("net.") and k.endswith(".weight"))
    hidden = [int(tensors[k].shape[0]) for k in weights[:-1]]
    context_dim = int(tensors["mean"].shape[0]) - len(SIGNAL_NAMES)
    model = LearnedRewardModel(context_dim=context_dim, hidden=hidden)
    model.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in tensors.items()})
    model.eval()
    return model


class RewardFunction:
    """Per-slot reward ``[B, S]`` of a step (see :class:`RewardSpec`)."""

    def __init__(
        self, kind: RewardKind, revenue_weight: float, model: LearnedRewardModel | None
    ) -> None:
        self.kind = kind
        self.revenue_weight = float(revenue_weight)
        self.model = model

    def __call__(self, step: EnvStep) -> FloatArray:
        resp = step.response
        click = np.asarray(resp.click, dtype=np.float32)
        if self.kind == "clicks":
            out = click.copy()
        elif self.kind == "engagement":
            out = np.asarray(resp.dwell_s, dtype=np.float32) / np.float32(60.0)
        elif self.kind == "learned":
            assert self.model is not None
            out = self.model.slate_rewards(resp)
        elif self.kind == "hidden":
            if step.hidden_reward is None:
                raise ValueError("reward='hidden' needs an environment that reports it")
            out = _credit_clicked_slot(click, np.asarray(step.hidden_reward, np.float32))
        else:
            if step.env_reward is None:
                raise ValueError("reward='env' needs an environment that reports env_reward")
            out = np.asarray(step.env_reward, dtype=np.float32).copy()
        if self.revenue_weight:
            out = out + np.float32(self.revenue_weight) * np.asarray(resp.revenue, np.float32)
        return out.astype(np.float32, copy=False)


def _credit_clicked_slot(click: FloatArray, step_reward: FloatArray) -> FloatArray:
    """Spread a per-step reward ``[B]`` onto slots ``[B, S]``: the clicked slot, else slot 0."""
    b, _ = click.shape
    out = np.zeros(click.shape, dtype=np.float32)
    slot = np.where(click.any(axis=1), click.argmax(axis=1), 0)
    out[np.arange(b), slot] = step_reward
    return out
