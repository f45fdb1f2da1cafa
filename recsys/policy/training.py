"""Training slate policies on rollouts: the learner loop, checkpoints, learning curves.

``train_policy(config)`` is what ``recsys train policy`` calls. The loop (cleanrl-style, top
to bottom):

1. Environment: the project simulator by default (its world, logged random-policy sessions,
   per-item statistics and the learned reward are built once by :func:`build_simulator_setup`),
   or any :class:`~recsys.policy.envs.BatchSlateEnv` from ``env_factory``.
2. Workers: ``workers <= 1`` plays rollouts in-process (no Ray: unit tests and small runs);
   ``workers >= 2`` starts that many single-threaded Ray actors
   (:mod:`recsys.policy.rollout_workers`), each with its own users and a policy copy.
3. Every iteration the learner broadcasts its weights, gathers ``steps_per_iteration`` steps
   from every worker, and learns: SlateQ from a replay of recent steps (minibatch TD
   updates), REINFORCE on-policy from the fresh, time-ordered rollouts.
4. Every ``checkpoint_every`` iterations (and at the end) a versioned artifact
   ``policy-<algo>`` is written with :func:`recsys.artifacts.save_artifact`: policy weights,
   optimiser state, the reward model and the item statistics as safetensors (never pickle),
   the config, iteration and reward scale as metadata, the learning curve as CSV.
5. ``resume=<artifact dir>`` reloads weights, optimiser state, iteration count, reward scale
   and curve, and continues. The environments restart from fresh users seeded by the
   iteration, so a resumed run is statistically, not bitwise, the uninterrupted one.

Rewards are rescaled by one constant fixed on the first rollout (``reward_scale``), so one
learning rate and Huber threshold suit clicks, minutes and the learned reward alike.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from recsys.artifacts import Artifact, load_artifact, save_artifact
from recsys.config import CatalogSettings, SimulatorSettings
from recsys.data.synthetic import SyntheticWorld, make_world
from recsys.policy.base import SlateSampler, TrainableSlatePolicy
from recsys.policy.batch import SlateObs, SlateResponse, Transition, concat_transitions
from recsys.policy.choice_model import ConditionalLogitChoiceModel
from recsys.policy.envs import EnvStep, SimulatorFeatures, SimulatorSlateEnv
from recsys.policy.reinforce import ReinforceConfig, ReinforceTopKPolicy
from recsys.policy.rollout_workers import (
    REWARD_KINDS,
    EnvFactory,
    RewardKind,
    RewardSpec,
    RolloutBatch,
    RolloutWorker,
    Tensors,
    ensure_ray,
    make_ray_workers,
    reward_model_tensors,
    sample_all,
)
from recsys.policy.sim_data import (
    REWARD_OBJECTIVES,
    RewardObjective,
    SessionLog,
    collect_random_sessions,
    fit_learned_reward,
    session_transitions,
)
from recsys.policy.sim_data import item_statistics as compute_item_statistics
from recsys.policy.slateq import SlateQConfig, SlateQPolicy
from recsys.types import FloatArray

Algo = Literal["slateq", "reinforce"]
ALGOS: tuple[Algo, ...] = ("slateq", "reinforce")

#: Users in the simulator world the trainer and evaluation draw from. Disjoint slices serve
#: the logging policy, the training workers and (from the end) evaluation, so evaluation
#: users are never trained on.
POPULATION = 65_536

__all__ = [
    "ALGOS",
    "POPULATION",
    "PolicyFactory",
    "PolicyTrainConfig",
    "SimulatorEnvFactory",
    "SimulatorSetup",
    "TrainResult",
    "build_policy",
    "build_simulator_setup",
    "load_policy_checkpoint",
    "load_policy_tensors",
    "policy_tensors",
    "train_policy",
    "write_learning_curve",
]


# ---- configuration -------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyTrainConfig:
    """Everything a training run depends on (saved in full beside every checkpoint).

    Algorithm: ``algo``, ``reward`` (``clicks | engagement | hidden | learned | env``),
    ``revenue_weight``, ``gamma``, network ``hidden`` widths, ``lr``, exploration
    (``epsilon`` for SlateQ's epsilon-greedy, ``temperature`` for REINFORCE's Plackett-Luce).
    Rollouts: ``workers`` (0/1 in-process, >= 2 Ray actors), ``users`` per worker,
    ``steps_per_iteration`` per worker, ``iterations``. Learner: SlateQ does
    ``updates_per_iteration`` minibatch updates of ``batch_size`` rows from the last
    ``replay_iterations`` iterations; REINFORCE updates on minibatches of ``batch_size`` users.
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
    lr: float = 1e-3
    batch_size: int = 1024
    updates_per_iteration: int = 20
    replay_iterations: int = 4
    epsilon: float = 0.1
    temperature: float = 1.0
    #: REINFORCE: weight of the policy-entropy bonus (keeps the softmax from collapsing).
    entropy_coef: float = 0.0
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
    #: SlateQ on the simulator: share of every minibatch drawn from the logging policy's
    #: sessions (broad coverage of items the current policy no longer shows), and updates on
    #: those logs alone before the first rollout (warm start of Q and the choice model).
    log_replay_fraction: float = 0.25
    pretrain_updates: int = 200
    #: How the learned reward is fit from the logs (both are fit and reported either way).
    reward_objective: RewardObjective = "regression"
    #: SlateQ: learn ``Qbar = R + C`` with ``R`` by regression and ``C`` by TD (see
    #: :mod:`recsys.policy.slateq`); the untrained policy is then the myopic one.
    immediate_head: bool = False

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
            "replay_iterations",
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
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be finite and > 0, got {value}")
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
        """Inverse of :meth:`to_dict`; unknown keys are refused with their names."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown policy training settings: {', '.join(unknown)}")
        values = dict(data)
        if "hidden" in values:
            values["hidden"] = tuple(int(h) for h in values["hidden"])
        return cls(**values)

    @property
    def actual_workers(self) -> int:
        """Rollout workers that exist (``workers=0`` still has one, in-process)."""
        return max(self.workers, 1)

    def simulator_settings(self) -> SimulatorSettings:
        """Simulator settings of this run (documented defaults except sizes)."""
        return SimulatorSettings(
            seed=self.seed, num_candidates=self.num_candidates, slate_size=self.slate_size
        )

    def catalog(self) -> CatalogSettings:
        """The simulated world (catalog plus the whole user population)."""
        return CatalogSettings(
            num_items=self.num_items,
            num_users=POPULATION,
            num_topics=self.num_topics,
            seed=self.world_seed,
        )


# ---- the project simulator -----------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class SimulatorSetup:
    """What is learned from the logging policy before RL: item statistics, the reward model.

    ``log`` is kept for baselines trained from the same logs (myopic, popularity).
    """

    world: SyntheticWorld
    settings: SimulatorSettings
    item_extra: FloatArray | None
    reward_tensors: Tensors | None
    reward_report: dict[str, Any]
    log: SessionLog | None = field(default=None, repr=False)


def build_simulator_setup(config: PolicyTrainConfig, *, need_reward: bool = True) -> SimulatorSetup:
    """World, random-policy logs of ``log_users`` users, item statistics and learned reward."""
    world = make_world(config.catalog())
    settings = config.simulator_settings()
    log_world = world.select_users(np.arange(config.log_users, dtype=np.int64))
    log = collect_random_sessions(
        log_world, settings, seed=config.seed + 17, max_steps=config.log_max_steps
    )
    extra = compute_item_statistics(log, world) if config.item_statistics else None
    tensors: Tensors | None = None
    report: dict[str, Any] = {}
    if need_reward:
        fit = fit_learned_reward(log, seed=config.seed, objective=config.reward_objective)
        tensors = reward_model_tensors(fit.model)
        report = dict(fit.report)
    return SimulatorSetup(world, settings, extra, tensors, report, log)


@dataclass(frozen=True)
class SimulatorEnvFactory:
    """Builds worker ``k``'s simulator env: its own slice of the population, its own seed.

    A picklable dataclass rather than a closure, so Ray ships it to actors cheaply (the world
    is re-drawn from its seed on the worker instead of being shipped).
    """

    catalog: dict[str, Any]
    settings: dict[str, Any]
    first_user: int
    users: int
    seed: int
    item_extra: FloatArray | None = None
    cross_features: bool = True

    def __call__(self, worker_index: int) -> SimulatorSlateEnv:
        world = make_world(CatalogSettings(**self.catalog))
        start = self.first_user + worker_index * self.users
        population = world.select_users(np.arange(start, start + self.users, dtype=np.int64))
        return SimulatorSlateEnv(
            population,
            SimulatorSettings(**self.settings),
            seed=self.seed + 7919 * worker_index,
            item_extra=self.item_extra,
            cross_features=self.cross_features,
        )


def simulator_env_factory(
    config: PolicyTrainConfig, item_extra: FloatArray | None, seed: int
) -> SimulatorEnvFactory:
    """Training envs: the ``workers * users`` users right after the logging users."""
    return SimulatorEnvFactory(
        catalog=config.catalog().model_dump(),
        settings=config.simulator_settings().model_dump(),
        first_user=config.log_users,
        users=config.users,
        seed=seed,
        item_extra=item_extra,
        cross_features=config.cross_features,
    )


# ---- policies and their tensors ------------------------------------------------------------


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
        choice = ConditionalLogitChoiceModel(user_dim, item_dim, slate_size, seed=config.seed)
        return SlateQPolicy(
            user_dim,
            item_dim,
            choice,
            SlateQConfig(
                gamma=config.gamma,
                td="q_learning",
                optimizer="greedy",
                hidden=config.hidden,
                lr=config.lr,
                tau=config.tau,
                immediate_head=config.immediate_head,
                sampler=SlateSampler("epsilon", epsilon=config.epsilon),
            ),
            seed=config.seed,
        )
    return ReinforceTopKPolicy(
        user_dim,
        item_dim,
        ReinforceConfig(
            gamma=config.gamma,
            hidden=config.hidden,
            lr=config.lr,
            entropy_coef=config.entropy_coef,
            sampler=SlateSampler("boltzmann", temperature=config.temperature),
        ),
        seed=config.seed,
    )


def _numpy(t: torch.Tensor) -> np.ndarray[Any, Any]:
    out: np.ndarray[Any, Any] = t.detach().cpu().numpy().copy()
    return out


def policy_tensors(policy: TrainableSlatePolicy) -> Tensors:
    """The policy's weights as a flat ``{name: array}`` (safetensors and Ray friendly).

    SlateQ: ``<module>/<param>`` for its online and target networks and choice model, plus
    ``updates``; any ``torch.nn.Module`` policy (REINFORCE): ``model/<param>``.
    """
    if isinstance(policy, SlateQPolicy):
        out: Tensors = {}
        for top, value in policy.state_dict().items():
            if isinstance(value, Mapping):
                out.update({f"{top}/{k}": _numpy(v) for k, v in value.items()})
            else:
                out[top] = np.asarray([value], dtype=np.int64)
        return out
    if isinstance(policy, torch.nn.Module):
        return {f"model/{k}": _numpy(v) for k, v in policy.state_dict().items()}
    raise TypeError(f"cannot serialise policy of type {type(policy).__name__}")


def load_policy_tensors(policy: TrainableSlatePolicy, tensors: Mapping[str, Any]) -> None:
    """Inverse of :func:`policy_tensors` (same architecture)."""
    if isinstance(policy, SlateQPolicy):
        nested: dict[str, Any] = {}
        for key, value in tensors.items():
            if "/" in key:
                top, name = key.split("/", 1)
                nested.setdefault(top, {})[name] = torch.as_tensor(np.asarray(value))
            else:
                nested[key] = int(np.asarray(value).reshape(-1)[0])
        policy.load_state_dict(nested)
        return
    if isinstance(policy, torch.nn.Module):
        state = {
            k.split("/", 1)[1]: torch.as_tensor(np.asarray(v))
            for k, v in tensors.items()
            if k.startswith("model/")
        }
        policy.load_state_dict(state)
        return
    raise TypeError(f"cannot load weights into policy of type {type(policy).__name__}")


def _optimizers(policy: TrainableSlatePolicy) -> dict[str, torch.optim.Optimizer]:
    found: dict[str, torch.optim.Optimizer] = {}
    for name in ("optimizer", "choice_optimizer"):
        opt = getattr(policy, name, None)
        if isinstance(opt, torch.optim.Optimizer):
            found[name] = opt
    return found


def optimizer_tensors(policy: TrainableSlatePolicy) -> Tensors:
    """Optimiser moments and step counts as arrays: ``optim/<optimizer>/<param>/<key>``.

    Hyperparameters (learning rates) are not stored: they come from the config on resume.
    """
    out: Tensors = {}
    for name, opt in _optimizers(policy).items():
        for pid, state in opt.state_dict()["state"].items():
            for key, value in state.items():
                arr = _numpy(value) if isinstance(value, torch.Tensor) else np.asarray(value)
                out[f"optim/{name}/{pid}/{key}"] = arr
    return out


def load_optimizer_tensors(policy: TrainableSlatePolicy, tensors: Mapping[str, Any]) -> None:
    """Restore what :func:`optimizer_tensors` saved (parameter groups come from the policy)."""
    for name, opt in _optimizers(policy).items():
        prefix = f"optim/{name}/"
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith(prefix):
                pid, k = key[len(prefix) :].split("/", 1)
                state.setdefault(int(pid), {})[k] = torch.as_tensor(np.asarray(value))
        if state:
            current = opt.state_dict()
            opt.load_state_dict({"state": state, "param_groups": current["param_groups"]})


# ---- checkpoints and curves ----------------------------------------------------------------


def write_learning_curve(
    rows: Sequence[Mapping[str, float]],
    csv_path: Path | None = None,
    png_path: Path | None = None,
    title: str = "learning curve",
) -> str:
    """Write the curve as CSV (and a PNG of the reward columns); returns the CSV text."""
    buf = io.StringIO()
    if rows:
        names = list(rows[0])
        for row in rows[1:]:
            names += [k for k in row if k not in names]
        writer = csv.DictWriter(buf, fieldnames=names)
        writer.writeheader()
        writer.writerows(rows)
    text = buf.getvalue()
    if csv_path is not None:
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        csv_path.write_text(text)
    if png_path is not None and rows:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        x = [r["user_steps"] for r in rows]
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        axes[0].plot(x, [r["reward_per_user_step"] for r in rows], color="#1f77b4")
        axes[0].set_title("training reward per user-step")
        axes[1].plot(x, [r["hidden_reward_per_user_step"] for r in rows], color="#2ca02c")
        axes[1].set_title("hidden LTV increment per user-step (min)")
        for ax in axes:
            ax.set_xlabel("user-steps")
            ax.grid(alpha=0.3)
        fig.suptitle(title)
        fig.tight_layout()
        png_path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(png_path, dpi=110)
        plt.close(fig)
    return text


def _read_curve(text: str) -> list[dict[str, float]]:
    return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(io.StringIO(text))]


@dataclass(frozen=True)
class PolicyCheckpoint:
    """A loaded ``policy-<algo>`` artifact: the policy and what evaluation needs beside it."""

    policy: TrainableSlatePolicy
    config: PolicyTrainConfig
    iteration: int
    user_dim: int
    item_dim: int
    slate_size: int
    reward_scale: float
    item_extra: FloatArray | None
    reward_tensors: Tensors | None
    curve: list[dict[str, float]]
    artifact: Artifact


def load_policy_checkpoint(path: Path) -> PolicyCheckpoint:
    """Load and verify a checkpoint artifact directory (weights and optimiser restored)."""
    artifact = load_artifact(Path(path))
    meta = artifact.metadata
    try:
        config = PolicyTrainConfig.from_dict(meta["config"])
        dims = (int(meta["user_dim"]), int(meta["item_dim"]), int(meta["slate_size"]))
        iteration, scale = int(meta["iteration"]), float(meta["reward_scale"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path} is not a policy checkpoint: {exc}") from exc
    tensors = artifact.tensors()
    policy = build_policy(config, *dims)
    load_policy_tensors(policy, {k[7:]: v for k, v in tensors.items() if k.startswith("policy/")})
    load_optimizer_tensors(policy, tensors)
    reward = {k[7:]: v for k, v in tensors.items() if k.startswith("reward/")} or None
    curve = (
        _read_curve(artifact.file("learning_curve.csv").read_text())
        if "learning_curve.csv" in artifact.files
        else []
    )
    return PolicyCheckpoint(
        policy=policy,
        config=config,
        iteration=iteration,
        user_dim=dims[0],
        item_dim=dims[1],
        slate_size=dims[2],
        reward_scale=scale,
        item_extra=tensors.get("features/item_extra"),
        reward_tensors=reward,
        curve=curve,
        artifact=artifact,
    )


def _save_checkpoint(
    root: Path,
    policy: TrainableSlatePolicy,
    config: PolicyTrainConfig,
    *,
    iteration: int,
    dims: tuple[int, int, int],
    reward_scale: float,
    item_extra: FloatArray | None,
    reward_tensors: Tensors | None,
    curve: Sequence[Mapping[str, float]],
    reward_report: Mapping[str, Any],
) -> Artifact:
    tensors: Tensors = {f"policy/{k}": v for k, v in policy_tensors(policy).items()}
    tensors.update(optimizer_tensors(policy))
    if reward_tensors is not None:
        tensors.update({f"reward/{k}": v for k, v in reward_tensors.items()})
    if item_extra is not None:
        tensors["features/item_extra"] = np.asarray(item_extra, dtype=np.float32)
    metadata = {
        "config": config.to_dict(),
        "algo": config.algo,
        "reward": config.reward,
        "iteration": iteration,
        "user_dim": dims[0],
        "item_dim": dims[1],
        "slate_size": dims[2],
        "reward_scale": reward_scale,
        "reward_report": dict(reward_report),
        "optimizer_state": "stored (Adam moments and step counts; lr from config)",
    }
    csv_text = write_learning_curve(curve)
    return save_artifact(
        root,
        f"policy-{config.algo}",
        tensors=tensors,
        metadata=metadata,
        files={
            "learning_curve.csv": csv_text.encode(),
            "config.json": json.dumps(config.to_dict(), indent=2, sort_keys=True).encode(),
        },
        version=f"it{iteration:06d}-{int(time.time() * 1000)}",
    )


# ---- the learner ---------------------------------------------------------------------------


@dataclass
class TrainResult:
    """A finished (or resumed and finished) run."""

    policy: TrainableSlatePolicy
    config: PolicyTrainConfig
    curve: list[dict[str, float]]
    iterations: int
    reward_scale: float
    user_dim: int
    item_dim: int
    slate_size: int
    item_extra: FloatArray | None
    reward_tensors: Tensors | None
    reward_report: dict[str, Any]
    wall_s: float
    checkpoints: list[Path] = field(default_factory=list)
    curve_csv: Path | None = None
    curve_png: Path | None = None

    @property
    def checkpoint(self) -> Path | None:
        """The last checkpoint written."""
        return self.checkpoints[-1] if self.checkpoints else None


class _InProcessWorkers:
    """One :class:`RolloutWorker` in the driver: the ``workers <= 1`` path (no Ray)."""

    def __init__(self, worker: RolloutWorker) -> None:
        self.worker = worker

    def sample(self, steps: int, weights: Tensors) -> list[RolloutBatch]:
        return [self.worker.sample(steps, weights)]

    def close(self) -> None:
        return None


class _RayWorkers:
    def __init__(self, actors: list[Any], started_ray: bool) -> None:
        self.actors = actors
        self.started_ray = started_ray

    def sample(self, steps: int, weights: Tensors) -> list[RolloutBatch]:
        return sample_all(self.actors, steps, weights)

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        if self.started_ray:
            ray.shutdown()


def _scaled(tr: Transition, scale: float) -> Transition:
    return tr._replace(reward=(tr.reward * np.float32(scale)).astype(np.float32))


def _auto_scale(batches: Sequence[RolloutBatch], gamma: float) -> float:
    """``(1 - gamma) / mean |step reward|``: discounted returns of order 1 whatever the reward
    unit, so SlateQ's Huber loss stays in its quadratic range and one ``lr`` fits all."""
    total, count = 0.0, 0
    for batch in batches:
        for tr in batch.transitions:
            total += float(np.abs(tr.reward.sum(axis=1)).sum())
            count += tr.batch_size
    mean_abs = total / max(count, 1)
    return (1.0 - gamma) / mean_abs if mean_abs > 1e-8 else 1.0


def _mean_metrics(metrics: Sequence[Mapping[str, float]]) -> dict[str, float]:
    if not metrics:
        return {}
    return {k: float(np.mean([m[k] for m in metrics if k in m])) for k in metrics[0]}


def _without_scores(tr: Transition) -> Transition:
    """Drop the optional slate scores so online and logged rows concatenate."""
    nxt = tr.next_action
    return tr._replace(
        action=tr.action._replace(scores=None),
        next_action=None if nxt is None else nxt._replace(scores=None),
    )


class _LogReplay:
    """Minibatches of the logging policy's sessions as transitions (built on demand: the
    whole log as ``[N, C, F_i]`` features would not fit in memory)."""

    def __init__(self, log: SessionLog, features: SimulatorFeatures, spec: RewardSpec) -> None:
        self.log = log
        self.features = features
        response = SlateResponse.from_signals(log.signals)
        dummy = SlateObs(
            np.zeros((1, 1), np.float32),
            np.zeros((1, 1, 1), np.float32),
            np.zeros((1, 1), np.int64),
        )
        step = EnvStep(response, dummy, log.done, hidden_reward=log.hidden_reward)
        self.reward = spec.build()(step)

    def sample(self, rows: int, scale: float, rng: np.random.Generator) -> Transition:
        idx = rng.integers(0, self.log.num_rows, rows)
        reward = self.reward[idx] * np.float32(scale)
        return session_transitions(self.log, self.features, idx, reward)


def _learn_slateq(
    policy: TrainableSlatePolicy,
    replay: deque[Transition],
    config: PolicyTrainConfig,
    rng: np.random.Generator,
    log_replay: _LogReplay | None = None,
    scale: float = 1.0,
    updates: int | None = None,
) -> list[Mapping[str, float]]:
    """Minibatch TD updates; each minibatch mixes rows of up to 4 random replayed steps and,
    with ``log_replay``, a ``log_replay_fraction`` of logged rows."""
    out: list[Mapping[str, float]] = []
    n_log = 0 if log_replay is None else round(config.batch_size * config.log_replay_fraction)
    if not replay:
        n_log = config.batch_size
    n_online = config.batch_size - n_log
    for _ in range(config.updates_per_iteration if updates is None else updates):
        parts: list[Transition] = []
        if n_online and replay:
            k = min(4, len(replay))
            picks = [replay[int(i)] for i in rng.integers(0, len(replay), k)]
            per = max(1, n_online // k)
            parts += [
                _without_scores(tr.take(rng.integers(0, tr.batch_size, per)))
                for tr in picks
                if tr.batch_size
            ]
        if n_log and log_replay is not None:
            parts.append(log_replay.sample(n_log, scale, rng))
        if parts:
            out.append(policy.update([concat_transitions(parts)]))
    return out


def _learn_reinforce(
    policy: TrainableSlatePolicy,
    rollouts: Sequence[list[Transition]],
    config: PolicyTrainConfig,
    rng: np.random.Generator,
) -> list[Mapping[str, float]]:
    out: list[Mapping[str, float]] = []
    for rollout in rollouts:
        sizes = {tr.batch_size for tr in rollout}
        if len(sizes) != 1:  # rows were dropped (vector-env resets): no shared time axis
            out.extend(policy.update([tr]) for tr in rollout)
            continue
        b = sizes.pop()
        perm = rng.permutation(b)
        for start in range(0, b, config.batch_size):
            rows = perm[start : start + config.batch_size]
            out.append(policy.update([tr.take(rows) for tr in rollout]))
    return out


def train_policy(
    config: PolicyTrainConfig,
    *,
    artifacts_root: Path | None = None,
    resume: Path | None = None,
    progress: bool = False,
    output_dir: Path | None = None,
    env_factory: EnvFactory | None = None,
    setup: SimulatorSetup | None = None,
    reward_tensors: Tensors | None = None,
    on_iteration: Callable[[int, TrainableSlatePolicy, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train ``config.algo`` on rollouts; checkpoint, write curves, optionally resume.

    ``artifacts_root``: where ``policy-<algo>/<version>`` checkpoints go (none without it).
    ``resume``: a checkpoint directory to continue from (same algo and feature widths).
    ``output_dir``: where ``learning_curve.csv`` / ``.png`` are written.
    ``env_factory``: a custom :class:`~recsys.policy.envs.BatchSlateEnv` per worker instead
    of the project simulator (``setup`` and the simulator fields of the config are then
    unused; ``reward='learned'`` needs ``reward_tensors``). ``setup``: a prebuilt
    :class:`SimulatorSetup` to share between runs (e.g. the experiments' several rewards).
    ``on_iteration(iteration, policy, row)`` is called after each iteration (e.g. evaluation).
    """
    start_time = time.perf_counter()
    torch.manual_seed(config.seed)
    ckpt = load_policy_checkpoint(resume) if resume is not None else None
    if ckpt is not None and ckpt.config.algo != config.algo:
        raise ValueError(f"cannot resume a {ckpt.config.algo} checkpoint as {config.algo}")

    item_extra: FloatArray | None = None
    reward_report: dict[str, Any] = {}
    log: SessionLog | None = None
    if env_factory is None:
        if ckpt is not None:
            item_extra, reward_tensors = ckpt.item_extra, ckpt.reward_tensors
        else:
            setup = setup or build_simulator_setup(config, need_reward=config.reward == "learned")
            item_extra = setup.item_extra
            reward_tensors = setup.reward_tensors
            reward_report = setup.reward_report
            log = setup.log
        start_iteration = ckpt.iteration if ckpt else 0
        env_seed = config.seed + 101 * start_iteration
        env_factory = simulator_env_factory(config, item_extra, seed=env_seed)
    else:
        start_iteration = ckpt.iteration if ckpt else 0
        if ckpt is not None and reward_tensors is None:
            reward_tensors = ckpt.reward_tensors
    if ckpt is not None:
        reward_report = dict(ckpt.artifact.metadata.get("reward_report", {}))
    spec = RewardSpec(
        config.reward,
        config.revenue_weight,
        reward_tensors if config.reward == "learned" else None,
    )

    # Build one env first: its observation fixes the policy's feature widths.
    env0 = env_factory(0)
    obs0 = env0.reset(seed=config.seed + start_iteration)
    dims = (int(obs0.user_features.shape[1]), int(obs0.item_features.shape[2]), env0.slate_size)
    if ckpt is not None and (ckpt.user_dim, ckpt.item_dim, ckpt.slate_size) != dims:
        raise ValueError(
            f"checkpoint was trained on (user_dim, item_dim, slate_size) = "
            f"{(ckpt.user_dim, ckpt.item_dim, ckpt.slate_size)}, this env has {dims}"
        )
    factory = PolicyFactory(config, *dims)
    policy = ckpt.policy if ckpt is not None else factory()
    log_replay = None
    if (
        config.algo == "slateq"
        and log is not None
        and isinstance(env0, SimulatorSlateEnv)
        and (config.log_replay_fraction > 0 or config.pretrain_updates > 0)
    ):
        log_replay = _LogReplay(log, env0.features, spec)
    pool: _InProcessWorkers | _RayWorkers
    if config.workers < 2:
        worker = RolloutWorker(
            env_factory, factory, spec, seed=config.seed + start_iteration, env=env0
        )
        pool = _InProcessWorkers(worker)
    else:
        del env0
        started = ensure_ray()
        actors = make_ray_workers(
            config.workers, env_factory, factory, spec, seed=config.seed + start_iteration
        )
        pool = _RayWorkers(actors, started)

    scale = ckpt.reward_scale if ckpt is not None else config.reward_scale
    curve: list[dict[str, float]] = list(ckpt.curve) if ckpt is not None else []
    user_steps_total = float(curve[-1]["user_steps"]) if curve else 0.0
    wall_offset = float(curve[-1]["wall_s"]) if curve else 0.0
    replay: deque[Transition] = deque(
        maxlen=config.replay_iterations * config.steps_per_iteration * config.actual_workers
    )
    np_rng = np.random.default_rng([config.seed, start_iteration])
    checkpoints: list[Path] = []
    bar = _progress(progress, config, start_iteration)
    try:
        for iteration in range(start_iteration + 1, config.iterations + 1):
            batches = pool.sample(config.steps_per_iteration, policy_tensors(policy))
            stats = [b.stats for b in batches]
            steps = sum(s.user_steps for s in stats)
            if scale is None:
                scale = _auto_scale(batches, config.gamma)
            rollouts = [[_scaled(tr, scale) for tr in b.transitions] for b in batches]
            if config.algo == "slateq":
                for rollout in rollouts:
                    replay.extend(rollout)
                if iteration == 1 and log_replay is not None and config.pretrain_updates:
                    _learn_slateq(
                        policy,
                        deque(),
                        config,
                        np_rng,
                        log_replay,
                        scale,
                        updates=config.pretrain_updates,
                    )
                metrics = _learn_slateq(policy, replay, config, np_rng, log_replay, scale)
            else:
                metrics = _learn_reinforce(policy, rollouts, config, np_rng)
            user_steps_total += steps
            done = sum(s.episodes_done for s in stats)
            hidden = sum(s.hidden_reward for s in stats) / max(steps, 1)
            churn = done / max(steps, 1)
            row: dict[str, float] = {
                "iteration": float(iteration),
                "user_steps": user_steps_total,
                "wall_s": wall_offset + time.perf_counter() - start_time,
                "rollout_s": max(s.seconds for s in stats),
                "reward_per_user_step": sum(s.reward for s in stats) / max(steps, 1),
                "hidden_reward_per_user_step": hidden,
                "clicks_per_user_step": sum(s.clicks for s in stats) / max(steps, 1),
                "revenue_per_user_step": sum(s.revenue for s in stats) / max(steps, 1),
                "churn_per_user_step": churn,
                "life_value_estimate": hidden / churn if churn > 0 else float("nan"),
                **_mean_metrics(metrics),
            }
            curve.append(row)
            if on_iteration is not None:
                on_iteration(iteration, policy, row)
            if bar is not None:
                bar.update(iteration, row)
            if artifacts_root is not None and (
                iteration % config.checkpoint_every == 0 or iteration == config.iterations
            ):
                art = _save_checkpoint(
                    artifacts_root,
                    policy,
                    config,
                    iteration=iteration,
                    dims=dims,
                    reward_scale=float(scale),
                    item_extra=item_extra,
                    reward_tensors=reward_tensors,
                    curve=curve,
                    reward_report=reward_report,
                )
                checkpoints.append(art.path)
    finally:
        if bar is not None:
            bar.close()
        pool.close()
    result = TrainResult(
        policy=policy,
        config=config,
        curve=curve,
        iterations=config.iterations,
        reward_scale=float(scale if scale is not None else 1.0),
        user_dim=dims[0],
        item_dim=dims[1],
        slate_size=dims[2],
        item_extra=item_extra,
        reward_tensors=reward_tensors,
        reward_report=reward_report,
        wall_s=time.perf_counter() - start_time,
        checkpoints=checkpoints,
    )
    if output_dir is not None:
        result.curve_csv = output_dir / "learning_curve.csv"
        result.curve_png = output_dir / "learning_curve.png"
        write_learning_curve(
            curve, result.curve_csv, result.curve_png, f"{config.algo} ({config.reward} reward)"
        )
    return result


class _Progress:
    def __init__(self, config: PolicyTrainConfig, start: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn(f"[bold]{config.algo}[/] ({config.reward})"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
        )
        self.progress.start()
        self.task = self.progress.add_task(
            "train", total=config.iterations, completed=start, info=""
        )

    def update(self, iteration: int, row: Mapping[str, float]) -> None:
        info = (
            f"reward/step {row['reward_per_user_step']:.3f}  "
            f"LTV+/step {row['hidden_reward_per_user_step']:.3f}"
        )
        self.progress.update(self.task, completed=iteration, info=info)

    def close(self) -> None:
        self.progress.stop()


def _progress(enabled: bool, config: PolicyTrainConfig, start: int) -> _Progress | None:
    return _Progress(config, start) if enabled else None
