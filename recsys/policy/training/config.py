"""What a training run depends on: :class:`PolicyTrainConfig`, the documented settings of each
algorithm, and the policy a config describes.

:func:`documented_config` gives the settings the docs report (docs/policy.md): what
``recsys train policy`` starts from and what ``benchmarks/policy_experiments.py`` trains.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from recsys.config import CatalogSettings, SimulatorSettings
from recsys.policy.algorithms.reinforce import (
    CREDITS,
    Credit,
    ReinforceConfig,
    ReinforceTopKPolicy,
)
from recsys.policy.algorithms.slateq import SlateQConfig, SlateQPolicy
from recsys.policy.base import SlateSampler, TrainableSlatePolicy
from recsys.policy.choice_model import CLICK_MODELS, ClickModel, ConditionalLogitChoiceModel
from recsys.policy.observation import FEATURE_KINDS, FeatureKind
from recsys.policy.reward.fit import REWARD_OBJECTIVES, RewardObjective
from recsys.policy.reward.spec import REWARD_KINDS, RewardKind

Algo = Literal["slateq", "reinforce"]
ALGOS: tuple[Algo, ...] = ("slateq", "reinforce")

#: Users in the simulator world the trainer and evaluation draw from. Disjoint slices serve
#: the logging policy, the training workers and (from the end) evaluation, so evaluation
#: users are never trained on.
POPULATION = 65_536

#: The fields of a :class:`PolicyTrainConfig` that describe its simulator setup (world,
#: logs, candidates, what a policy observes, its ad load) rather than the algorithm.
SETUP_FIELDS = (
    "num_items",
    "num_topics",
    "world_seed",
    "num_candidates",
    "slate_size",
    "log_users",
    "log_max_steps",
    "item_statistics",
    "cross_features",
    "features",
    "num_ads",
    "min_ads",
    "max_ads",
    "reward_objective",
    "session_budget_s",
    "seed",
)

__all__ = [
    "ALGOS",
    "POPULATION",
    "SETUP_FIELDS",
    "Algo",
    "PolicyFactory",
    "PolicyTrainConfig",
    "build_policy",
    "documented_config",
]


@dataclass(frozen=True)
class PolicyTrainConfig:
    """Everything a training run depends on (saved in full beside every checkpoint).

    Algorithm: ``algo``, ``reward`` (``clicks | engagement | hidden | learned | env``),
    ``revenue_weight``, ``gamma``, network ``hidden`` widths, ``lr``, exploration
    (``epsilon`` for SlateQ's epsilon-greedy, ``temperature`` for REINFORCE's Plackett-Luce).
    Rollouts: ``workers`` (0/1 in-process, >= 2 Ray actors), ``users`` per worker,
    ``steps_per_iteration`` per worker, ``iterations``. Learner: SlateQ does
    ``updates_per_iteration`` minibatch updates of ``batch_size`` transitions drawn uniformly
    from a replay of the last ``replay_size`` transitions (user-steps, whatever the number of
    users); REINFORCE updates on minibatches of ``batch_size`` users, crediting actions by
    ``returns`` (``gae``: advantages bootstrapped from a learned value across rollout
    boundaries and time limits, with ``gae_lambda``; ``rollout``: returns cut at the end of
    each rollout). ``lr`` ``None`` keeps the algorithm's own default.
    Simulator (ignored with a custom ``env_factory``): catalog (``num_items``, ``num_topics``,
    ``world_seed``), ``num_candidates`` and ``slate_size``, the random-policy logs that fit the
    learned reward and item statistics (``log_users``, ``log_max_steps``).
    """

    algo: Algo = "slateq"
    reward: RewardKind = "learned"
    revenue_weight: float = 0.0
    workers: int = 0
    iterations: int = 40
    steps_per_iteration: int = 5
    users: int = 2048
    gamma: float = 0.95
    hidden: tuple[int, ...] = (64,)
    #: ``None``: the algorithm's own default (:class:`SlateQConfig`, :class:`ReinforceConfig`).
    lr: float | None = None
    batch_size: int = 1024
    updates_per_iteration: int = 20
    #: SlateQ's replay capacity in transitions (one user-step each), oldest evicted first.
    replay_size: int = 40_960
    epsilon: float = 0.1
    temperature: float = 1.0
    #: REINFORCE: weight of the policy-entropy bonus (keeps the softmax from collapsing).
    entropy_coef: float = 0.0
    #: REINFORCE: ``gae`` (bootstrapped advantages from a learned value) or ``rollout``
    #: (returns cut at each rollout's end, the paper's).
    returns: Credit = "gae"
    gae_lambda: float = 0.95
    tau: float = 0.02
    #: Fixed reward multiplier; ``None`` picks ``(1 - gamma) / mean |step reward|`` of the
    #: first rollout.
    reward_scale: float | None = None
    checkpoint_every: int = 10
    seed: int = 0
    # Project simulator.
    num_items: int = 2000
    num_topics: int = 16
    world_seed: int = 0
    num_candidates: int = 50
    slate_size: int = 10
    log_users: int = 4096
    log_max_steps: int = 100
    item_statistics: bool = True
    cross_features: bool = True
    #: What the policy observes: ``event`` user features folded from the simulated events
    #: (what the service has), or ``latent`` ones (the simulator's hidden truth).
    features: FeatureKind = "event"
    #: Candidates per request that are ads (the retriever's ad block); the rest are organic.
    num_ads: int = 10
    #: Ad load of every slate: at least ``min_ads`` and at most ``max_ads`` ads.
    min_ads: int = 1
    max_ads: int = 2
    #: SlateQ on the simulator: share of every minibatch drawn from the logging policy's
    #: sessions (broad coverage of items the current policy no longer shows), and updates on
    #: those logs alone before the first rollout (warm start of Q and the choice model).
    log_replay_fraction: float = 0.25
    pretrain_updates: int = 200
    #: The simulated users' time budget per session in seconds (``None``: the simulator's
    #: default); a larger budget makes longer lives (the long-horizon experiments).
    session_budget_s: float | None = None
    #: How the learned reward is fit from the logs (both are fit and reported either way).
    reward_objective: RewardObjective = "regression"
    #: SlateQ: Q-learning's target maximises over at most this many of the next state's
    #: candidates (``None``: all), so an update's cost does not grow with the catalog.
    target_candidates: int | None = 64
    #: SlateQ: learn ``Qbar = R + C`` with ``R`` by regression and ``C`` by TD (see
    #: :mod:`recsys.policy.algorithms.slateq`); the untrained policy is then the myopic one.
    immediate_head: bool = False
    #: SlateQ: ``single`` (at most one click per slate, the paper's; several clicks are read
    #: as the first) or ``multi`` (independent clicks, each credited its own slot reward;
    #: see :mod:`recsys.policy.algorithms.slateq`). Use ``multi`` with a multi-click env.
    clicks: ClickModel = "single"
    #: REINFORCE: credit each slot its own reward plus the shared future, instead of the
    #: slate's total (several clicks per slate with per-item rewards).
    per_slot_credit: bool = False

    def __post_init__(self) -> None:
        if self.algo not in ALGOS:
            raise ValueError(f"algo must be one of {', '.join(ALGOS)}, got {self.algo!r}")
        if self.reward not in REWARD_KINDS:
            raise ValueError(
                f"reward must be one of {', '.join(REWARD_KINDS)}, got {self.reward!r}"
            )
        positive = (
            "iterations",
            "steps_per_iteration",
            "users",
            "batch_size",
            "replay_size",
            "checkpoint_every",
            "num_items",
            "num_topics",
            "num_candidates",
            "slate_size",
            "log_users",
            "log_max_steps",
        )
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.workers, int) or not 0 <= self.workers <= 256:
            raise ValueError(f"workers must be an integer in [0, 256], got {self.workers!r}")
        if self.updates_per_iteration < 0:
            raise ValueError(
                f"updates_per_iteration must be >= 0, got {self.updates_per_iteration}"
            )
        if not 0.0 <= self.gamma < 1.0:
            raise ValueError(f"gamma must lie in [0, 1), got {self.gamma}")
        for name in ("lr", "temperature"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be finite and > 0, got {value}")
        if self.returns not in CREDITS:
            raise ValueError(f"returns must be rollout or gae, got {self.returns!r}")
        if self.clicks not in CLICK_MODELS:
            raise ValueError(f"clicks must be single or multi, got {self.clicks!r}")
        if not 0.0 <= self.gae_lambda <= 1.0:
            raise ValueError(f"gae_lambda must lie in [0, 1], got {self.gae_lambda}")
        if not (math.isfinite(self.entropy_coef) and self.entropy_coef >= 0):
            raise ValueError(f"entropy_coef must be finite and >= 0, got {self.entropy_coef}")
        if not 0.0 <= self.log_replay_fraction < 1.0:
            raise ValueError(
                f"log_replay_fraction must lie in [0, 1), got {self.log_replay_fraction}"
            )
        if self.reward_objective not in REWARD_OBJECTIVES:
            raise ValueError(
                "reward_objective must be regression or bradley_terry, "
                f"got {self.reward_objective!r}"
            )
        if self.pretrain_updates < 0:
            raise ValueError(f"pretrain_updates must be >= 0, got {self.pretrain_updates}")
        if not 0.0 <= self.epsilon <= 1.0 or not 0.0 <= self.tau <= 1.0:
            raise ValueError("epsilon and tau must lie in [0, 1]")
        if not math.isfinite(self.revenue_weight):
            raise ValueError(f"revenue_weight must be finite, got {self.revenue_weight}")
        if self.reward_scale is not None and not (
            math.isfinite(self.reward_scale) and self.reward_scale > 0
        ):
            raise ValueError(f"reward_scale must be finite and > 0, got {self.reward_scale}")
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden widths must be >= 1, got {self.hidden}")
        if self.slate_size > self.num_candidates or self.num_candidates > self.num_items:
            raise ValueError(
                f"need slate_size ({self.slate_size}) <= num_candidates "
                f"({self.num_candidates}) <= num_items ({self.num_items})"
            )
        if self.target_candidates is not None and self.target_candidates < self.slate_size:
            raise ValueError(
                f"target_candidates must be None or >= slate_size ({self.slate_size}), "
                f"got {self.target_candidates}"
            )
        if self.session_budget_s is not None and not (
            math.isfinite(self.session_budget_s) and self.session_budget_s > 0
        ):
            raise ValueError(
                f"session_budget_s must be finite and > 0, got {self.session_budget_s}"
            )
        if self.features not in FEATURE_KINDS:
            raise ValueError(f"features must be event or latent, got {self.features!r}")
        if not 0 <= self.num_ads < self.num_candidates:
            raise ValueError(
                f"num_ads must be in [0, num_candidates={self.num_candidates}), got {self.num_ads}"
            )
        if not 0 <= self.min_ads <= self.max_ads <= self.slate_size:
            raise ValueError(
                f"need 0 <= min_ads ({self.min_ads}) <= max_ads ({self.max_ads}) <= "
                f"slate_size ({self.slate_size})"
            )
        if self.num_candidates - self.num_ads < self.slate_size - self.min_ads:
            raise ValueError(
                f"{self.num_candidates - self.num_ads} organic candidates cannot fill the "
                f"{self.slate_size - self.min_ads} organic slots of a slate"
            )

    def check_population(self) -> None:
        """The project simulator only: its logging and training users must stay in the lower
        half of its ``POPULATION`` user ids (the upper half holds the evaluation users).
        A custom env has its own users, so nothing here limits ``users`` for it."""
        if self.log_users + max(self.workers, 1) * self.users > POPULATION // 2:
            raise ValueError(
                f"log_users + workers * users must be <= {POPULATION // 2} (the rest of the "
                "simulated population is kept for evaluation)"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (tuples become lists)."""
        out = asdict(self)
        out["hidden"] = list(self.hidden)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PolicyTrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are refused with their names.

        Configs saved before a setting was replaced still load: ``replay_iterations`` (replay
        sized in rollout steps) is dropped for ``replay_size``'s default, and a saved
        REINFORCE config without ``returns`` keeps the credit it was trained with
        (``rollout``)."""
        values = dict(data)
        values.pop("replay_iterations", None)
        if values.get("algo") == "reinforce" and "returns" not in values:
            values["returns"] = "rollout"
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown policy training settings: {', '.join(unknown)}")
        if "hidden" in values:
            values["hidden"] = tuple(int(h) for h in values["hidden"])
        return cls(**values)

    @property
    def learning_rate(self) -> float:
        """``lr``, or the configured algorithm's own default."""
        if self.lr is not None:
            return self.lr
        return SlateQConfig().lr if self.algo == "slateq" else ReinforceConfig().lr

    @property
    def actual_workers(self) -> int:
        """Rollout workers that exist (``workers=0`` still has one, in-process)."""
        return max(self.workers, 1)

    def simulator_settings(self) -> SimulatorSettings:
        """Simulator settings of this run (documented defaults except sizes)."""
        budget = (
            {} if self.session_budget_s is None else {"session_budget_s": self.session_budget_s}
        )
        return SimulatorSettings(
            seed=self.seed,
            num_candidates=self.num_candidates,
            slate_size=self.slate_size,
            **budget,
        )

    def sampler(self, kind: str, **overrides: Any) -> SlateSampler:
        """A slate sampler of ``kind`` with this run's ad load."""
        return SlateSampler(kind, max_ads=self.max_ads, min_ads=self.min_ads, **overrides)  # type: ignore[arg-type]

    def catalog(self) -> CatalogSettings:
        """The simulated world (catalog plus the whole user population)."""
        return CatalogSettings(
            num_items=self.num_items,
            num_users=POPULATION,
            num_topics=self.num_topics,
            seed=self.world_seed,
        )


def documented_config(algo: Algo) -> PolicyTrainConfig:
    """The documented settings of ``algo`` (docs/policy.md, "Experiments"), tuned on the
    validation users; everything not named here is a :class:`PolicyTrainConfig` default."""
    if algo == "slateq":
        return PolicyTrainConfig(
            algo="slateq",
            iterations=20,
            updates_per_iteration=50,
            tau=0.05,
            gamma=0.8,
            lr=1e-3,
            immediate_head=True,
        )
    if algo == "reinforce":
        return PolicyTrainConfig(
            algo="reinforce",
            iterations=30,
            users=1024,
            steps_per_iteration=10,
            batch_size=256,
            gamma=0.9,
            lr=3e-4,
            entropy_coef=0.01,
            returns="rollout",
        )
    raise ValueError(f"algo must be one of {', '.join(ALGOS)}, got {algo!r}")


# ---- the policy a config describes ---------------------------------------------------------


@dataclass(frozen=True)
class PolicyFactory:
    """Builds the configured policy for given feature widths (picklable, for Ray workers)."""

    config: PolicyTrainConfig
    user_dim: int
    item_dim: int
    slate_size: int

    def __call__(self) -> TrainableSlatePolicy:
        return build_policy(self.config, self.user_dim, self.item_dim, self.slate_size)


def build_policy(
    config: PolicyTrainConfig, user_dim: int, item_dim: int, slate_size: int
) -> TrainableSlatePolicy:
    """A fresh SlateQ (Q-learning, greedy slate optimiser, learned choice model) or
    REINFORCE-top-K policy with the configured hyperparameters."""
    if config.algo == "slateq":
        choice = ConditionalLogitChoiceModel(
            user_dim, item_dim, slate_size, seed=config.seed, clicks=config.clicks
        )
        return SlateQPolicy(
            user_dim,
            item_dim,
            choice,
            SlateQConfig(
                gamma=config.gamma,
                td="q_learning",
                optimizer="greedy",
                hidden=config.hidden,
                lr=config.learning_rate,
                tau=config.tau,
                immediate_head=config.immediate_head,
                target_candidates=config.target_candidates,
                clicks=config.clicks,
                sampler=config.sampler("epsilon", epsilon=config.epsilon),
            ),
            seed=config.seed,
        )
    return ReinforceTopKPolicy(
        user_dim,
        item_dim,
        ReinforceConfig(
            gamma=config.gamma,
            hidden=config.hidden,
            lr=config.learning_rate,
            entropy_coef=config.entropy_coef,
            returns=config.returns,
            gae_lambda=config.gae_lambda,
            per_slot_credit=config.per_slot_credit,
            sampler=config.sampler("boltzmann", temperature=config.temperature),
        ),
        seed=config.seed,
    )
