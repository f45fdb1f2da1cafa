"""Guards an online learner puts around every optimisation step.

Offline, a diverged run is thrown away and restarted; online, the model that diverges is the
one about to be published, and the data that made it diverge (a burst of garbage joins, a
reward outlier) stays in the replay buffer. So each step is taken on a snapshot:
:class:`UpdateGuard` runs it, and takes it back (restores the snapshot: weights *and*
optimiser moments, since one non-finite gradient poisons Adam's moments for good) when the
loss it reports is not finite, when any parameter is no longer finite, or when the loss
explodes: it exceeds ``explode_factor`` times the median of the last ``window`` accepted
losses and the absolute ``explode_floor``. Refused steps are counted by reason.

:class:`ModuleSnapshot` snapshots torch modules and optimisers; policies that are not
``nn.Module`` snapshot through their :meth:`~recsys.policy.base.TrainableSlatePolicy.weights`.
"""

from __future__ import annotations

import copy
import logging
import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import numpy as np
import torch

from recsys.policy.base import Tensors, TrainableSlatePolicy

_log = logging.getLogger(__name__)

S = TypeVar("S")
Outcome = Literal["applied", "non_finite", "exploding"]

__all__ = [
    "GuardStats",
    "Outcome",
    "PolicySnapshot",
    "UpdateGuard",
    "cap_learning_rates",
    "loss_of",
]


def cap_learning_rates(optimizers: Sequence[torch.optim.Optimizer], max_lr: float) -> float:
    """Lower every parameter group's learning rate to at most ``max_lr``; the largest rate
    left. Online steps are taken on small, correlated minibatches, where a rate tuned for
    offline epochs overshoots."""
    if not (math.isfinite(max_lr) and max_lr > 0):
        raise ValueError(f"max_lr must be finite and > 0, got {max_lr}")
    top = 0.0
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = min(float(group["lr"]), max_lr)
            top = max(top, float(group["lr"]))
    return top


def loss_of(metrics: Mapping[str, float]) -> float:
    """The scalar a guard watches: the sum of absolute values of every ``*_loss`` and
    ``*_nll`` metric a policy's ``update`` returns (SlateQ: TD loss and choice NLL;
    REINFORCE: policy loss, which may be negative, and behaviour NLL). NaN when none."""
    parts = [abs(float(v)) for k, v in metrics.items() if k.endswith(("_loss", "_nll"))]
    return float(sum(parts)) if parts else float("nan")


@dataclass
class GuardStats:
    """What a guard did with the steps it was given."""

    applied: int = 0
    non_finite: int = 0
    exploding: int = 0

    @property
    def refused(self) -> int:
        """Steps taken back, for any reason."""
        return self.non_finite + self.exploding


class PolicySnapshot:
    """A policy's weights and optimiser states, restorable in place."""

    def __init__(self, policy: TrainableSlatePolicy) -> None:
        self.weights: Tensors = policy.weights()
        self.optimizers: dict[str, dict[str, Any]] = {
            name: copy.deepcopy(opt.state_dict()) for name, opt in policy.optimizers().items()
        }

    def restore(self, policy: TrainableSlatePolicy) -> None:
        """Put the weights and optimiser states back (an optimiser with no state yet gets
        its state emptied, so the refused step's moments do not survive)."""
        policy.load_weights(self.weights)
        for name, opt in policy.optimizers().items():
            opt.load_state_dict(copy.deepcopy(self.optimizers[name]))

    @staticmethod
    def finite(policy: TrainableSlatePolicy) -> bool:
        """Every weight of the policy is finite."""
        return all(np.isfinite(v).all() for v in policy.weights().values() if v.dtype.kind == "f")


@dataclass
class UpdateGuard:
    """Runs optimisation steps and takes back the ones that diverge (module docstring)."""

    name: str
    explode_factor: float = 100.0
    explode_floor: float = 10.0
    window: int = 100
    stats: GuardStats = field(default_factory=GuardStats)
    _recent: deque[float] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not (self.explode_factor > 1 and self.explode_floor >= 0 and self.window >= 1):
            raise ValueError("need explode_factor > 1, explode_floor >= 0 and window >= 1")
        self._recent = deque(maxlen=self.window)

    def threshold(self) -> float:
        """The loss above which the next step counts as exploding (inf until a step has
        been accepted)."""
        if not self._recent:
            return math.inf
        return max(self.explode_factor * float(np.median(self._recent)), self.explode_floor)

    def run(
        self,
        step: Callable[[], float],
        snapshot: Callable[[], S],
        restore: Callable[[S], None],
        finite: Callable[[], bool],
    ) -> tuple[Outcome, float]:
        """Take ``step`` (which returns its loss); restore ``snapshot()`` when it diverged.

        Returns the outcome and the loss the step reported.
        """
        saved = snapshot()
        loss = float(step())
        outcome: Outcome = "applied"
        if not math.isfinite(loss) or not finite():
            outcome = "non_finite"
        elif loss > self.threshold():
            outcome = "exploding"
        if outcome == "applied":
            self._recent.append(loss)
            self.stats.applied += 1
        else:
            restore(saved)
            if outcome == "non_finite":
                self.stats.non_finite += 1
            else:
                self.stats.exploding += 1
            _log.warning(
                "%s: took back an update whose loss %.4g is %s (threshold %.4g)",
                self.name,
                loss,
                outcome.replace("_", "-"),
                self.threshold(),
            )
        return outcome, loss
