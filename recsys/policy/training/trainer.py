"""Training slate policies on rollouts: the learner loop.

``train_policy(config)`` is what ``recsys train policy`` calls. The loop (cleanrl-style, top
to bottom):

1. Environment: any :class:`~recsys.policy.training.envs.BatchSlateEnv` from ``env_factory``
   (the project simulator's is :class:`recsys.pipeline.SimulatorEnvFactory`, built with its
   logged sessions, retriever, item statistics and learned reward by
   :func:`recsys.pipeline.build_simulator_setup`).
2. Workers: ``workers <= 1`` plays rollouts in-process (no Ray: unit tests and small runs);
   ``workers >= 2`` starts that many single-threaded Ray actors
   (:mod:`recsys.policy.training.rollout`), each with its own users and a policy copy.
3. Every iteration the learner broadcasts its weights, gathers ``steps_per_iteration`` steps
   from every worker, and learns: SlateQ from a replay of the last ``replay_size``
   transitions (minibatch TD updates on rows drawn uniformly), REINFORCE on-policy from the
   fresh, time-ordered rollouts (advantages bootstrapped from its learned value past the
   rollout's end and past time limits, unless ``returns="rollout"``).
4. Every ``checkpoint_every`` iterations (and at the end) a versioned artifact
   ``checkpoint-<algo>`` is written (:mod:`recsys.policy.training.checkpoint`): policy weights,
   optimiser state, the reward model and how the policy observes (``features``, which makes
   the checkpoint servable) as safetensors (never pickle), the config, iteration and reward
   scale as metadata, the learning curve as CSV.
5. ``resume=<artifact dir>`` reloads weights, optimiser state, iteration count, reward scale
   and curve, and continues. The environments restart from fresh users seeded by the
   iteration, so a resumed run is statistically, not bitwise, the uninterrupted one.

Rewards are rescaled by one constant fixed on the first rollout (``reward_scale``), so one
learning rate and Huber threshold suit clicks, minutes and the learned reward alike.

Seeds: ``config.seed`` fixes the initial weights, and worker ``k`` resets its env once with
:func:`~recsys.policy.seeds.rollout_reset_seed` (a training seed, never an evaluation one).
The learning curve has, per iteration, the reward per user-step and the episodes that ended
(their mean return and length); the simulator's columns (hidden reward, churn, life value)
only when the env reports a hidden reward, signal columns only when the env sends them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from recsys.features import ItemFeaturizer
from recsys.policy.base import Tensors, TrainableSlatePolicy
from recsys.policy.batch import SlateObs, SlateResponse, Transition, concat_transitions
from recsys.policy.observation import FeatureKind, PolicyFeatures
from recsys.policy.reward.spec import RewardFunction, RewardSpec
from recsys.policy.seeds import rollout_reset_seed
from recsys.policy.training.checkpoint import (
    load_policy_checkpoint,
    save_policy_checkpoint,
    write_learning_curve,
)
from recsys.policy.training.config import PolicyFactory, PolicyTrainConfig
from recsys.policy.training.envs import EnvStep
from recsys.policy.training.replay import TransitionReplay
from recsys.policy.training.rollout import (
    EnvFactory,
    RolloutBatch,
    RolloutStats,
    RolloutWorker,
    ensure_ray,
    make_ray_workers,
    sample_all,
)
from recsys.policy.training.sessions import SessionLog, session_transitions

__all__ = ["SIGNAL_COLUMNS", "SIMULATOR_COLUMNS", "LogReplay", "TrainResult", "train_policy"]


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
    features: PolicyFeatures | None
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
        for tr in map(Transition.valid_rows, batch.transitions):
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


class LogReplay:
    """Minibatches of logged sessions as transitions, for SlateQ's log replay (built on
    demand: the whole log as ``[N, C, F_i]`` features would not fit in memory).

    ``items`` featurises the logged candidates exactly as the env does, ``kind`` picks the
    logged user features, ``reward`` computes the per-slot reward of the run (applied to the
    logged responses once).
    """

    def __init__(
        self,
        log: SessionLog,
        items: ItemFeaturizer,
        kind: FeatureKind,
        is_ad: npt.NDArray[np.bool_],
        reward: RewardFunction,
    ) -> None:
        self.log = log
        self.items = items
        self.kind: FeatureKind = kind
        self.is_ad = is_ad
        response = SlateResponse.from_signals(log.signals)
        dummy = SlateObs(
            np.zeros((1, 1), np.float32),
            np.zeros((1, 1, 1), np.float32),
            np.zeros((1, 1), np.int64),
        )
        step = EnvStep(response, dummy, log.done, hidden_reward=log.hidden_reward)
        self.reward = reward(step)

    def sample(self, rows: int, scale: float, rng: np.random.Generator) -> Transition:
        """``rows`` random logged slates with their rewards times ``scale``."""
        idx = rng.integers(0, self.log.num_rows, rows)
        reward = self.reward[idx] * np.float32(scale)
        return session_transitions(self.log, self.items, idx, reward, self.kind, self.is_ad)


def _learn_slateq(
    policy: TrainableSlatePolicy,
    replay: TransitionReplay,
    config: PolicyTrainConfig,
    rng: np.random.Generator,
    log_replay: LogReplay | None = None,
    scale: float = 1.0,
    updates: int | None = None,
) -> list[Mapping[str, float]]:
    """Minibatch TD updates on transitions drawn uniformly from the replay and, with
    ``log_replay``, a ``log_replay_fraction`` of logged rows (all of them while the replay is
    still empty: the warm start)."""
    out: list[Mapping[str, float]] = []
    n_log = 0 if log_replay is None else round(config.batch_size * config.log_replay_fraction)
    if not len(replay):
        n_log = config.batch_size
    n_online = config.batch_size - n_log
    for _ in range(config.updates_per_iteration if updates is None else updates):
        parts: list[Transition] = []
        if n_online and len(replay):
            parts.append(_without_scores(replay.sample(n_online, rng)))
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
    """Policy-gradient updates on minibatches of users, each over the whole ``[T, B]`` rollout
    (reset-step rows stay in it, masked by ``Transition.valid``, so returns keep their time
    axis); a minibatch without one real transition is skipped."""
    out: list[Mapping[str, float]] = []
    for rollout in rollouts:
        b = rollout[0].batch_size
        perm = rng.permutation(b)
        for start in range(0, b, config.batch_size):
            rows = perm[start : start + config.batch_size]
            minibatch = [tr.take(rows) for tr in rollout]
            if any(tr.valid is None or tr.valid.any() for tr in minibatch):
                out.append(policy.update(minibatch))
    return out


#: Learning-curve columns that only some environments fill: the hidden reward and what is
#: derived from it (the project simulator's lifetime value), and per-slot signals.
SIMULATOR_COLUMNS = (
    "hidden_reward_per_user_step",
    "churn_per_user_step",
    "life_value_estimate",
)
SIGNAL_COLUMNS = ("clicks_per_user_step", "revenue_per_user_step")


def _optional_columns(
    last_row: Mapping[str, float] | None, stats: Sequence[RolloutStats] = ()
) -> frozenset[str]:
    """Which optional columns a run's curve has, fixed once: a resumed run keeps its curve's;
    otherwise an env that reports a hidden reward (the project's simulator) gets them all, any
    other env the signal columns its first rollouts sent something in (never all zeros)."""
    if last_row is not None:
        return frozenset(k for k in (*SIMULATOR_COLUMNS, *SIGNAL_COLUMNS) if k in last_row)
    if any(s.hidden_reported for s in stats):
        return frozenset((*SIMULATOR_COLUMNS, *SIGNAL_COLUMNS))
    sent = {
        "clicks_per_user_step": any(s.clicks for s in stats),
        "revenue_per_user_step": any(s.revenue for s in stats),
    }
    return frozenset(k for k, v in sent.items() if v)


def _curve_row(stats: Sequence[RolloutStats], optional: frozenset[str]) -> dict[str, float]:
    """One iteration's rates: reward per user-step, the episodes that ended (their mean return
    in the training reward, unscaled, and length; NaN when none ended) and ``optional``."""
    steps = max(sum(s.user_steps for s in stats), 1)
    done = sum(s.episodes_done for s in stats)
    hidden = sum(s.hidden_reward for s in stats) / steps
    churn = done / steps
    nan = float("nan")
    row: dict[str, float] = {
        "reward_per_user_step": sum(s.reward for s in stats) / steps,
        "episodes": float(done),
        "episode_return": sum(s.episode_return for s in stats) / done if done else nan,
        "episode_length": sum(s.episode_length for s in stats) / done if done else nan,
    }
    extra = {
        "hidden_reward_per_user_step": hidden,
        "clicks_per_user_step": sum(s.clicks for s in stats) / steps,
        "revenue_per_user_step": sum(s.revenue for s in stats) / steps,
        "churn_per_user_step": churn,
        "life_value_estimate": hidden / churn if churn > 0 else nan,
    }
    row.update({k: v for k, v in extra.items() if k in optional})
    return row


def train_policy(
    config: PolicyTrainConfig,
    *,
    env_factory: EnvFactory,
    artifacts_root: Path | None = None,
    resume: Path | None = None,
    progress: bool = False,
    output_dir: Path | None = None,
    reward_tensors: Tensors | None = None,
    reward_report: Mapping[str, Any] | None = None,
    log_replay: LogReplay | None = None,
    features: PolicyFeatures | None = None,
    checkpoint_name: str | None = None,
    on_iteration: Callable[[int, TrainableSlatePolicy, dict[str, float]], None] | None = None,
    ray_address: str | None = None,
) -> TrainResult:
    """Train ``config.algo`` on rollouts; checkpoint, write curves, optionally resume.

    ``env_factory(worker_index)`` builds each worker's
    :class:`~recsys.policy.training.envs.BatchSlateEnv` (the simulator fields of the config
    are the factory's business). ``reward='learned'`` needs ``reward_tensors`` (a fitted
    :class:`~recsys.policy.reward.model.LearnedRewardModel`; ``reward_report`` describes it).
    ``log_replay``: logged sessions SlateQ mixes into its minibatches and pretrains on.
    ``features``: how the policy observes, stored in every checkpoint so it can be served.
    ``artifacts_root``: where checkpoints go (none without it), as versions of the artifact
    ``checkpoint_name`` (default ``checkpoint-<algo>``: intermediate checkpoints are not
    what serving loads; :func:`recsys.pipeline.publish_policy` publishes ``policy-<algo>``).
    ``resume``: a checkpoint directory to continue from (same algo and feature widths).
    ``output_dir``: where ``learning_curve.csv`` / ``.png`` are written.
    ``on_iteration(iteration, policy, row)`` is called after each iteration (e.g. evaluation).
    ``ray_address``: with ``config.workers >= 2``, the Ray cluster the rollout actors run on
    (see :func:`~recsys.policy.training.rollout.ensure_ray`; default ``RAY_ADDRESS`` or a
    local Ray).
    """
    start_time = time.perf_counter()
    torch.manual_seed(config.seed)
    ckpt = load_policy_checkpoint(resume) if resume is not None else None
    if ckpt is not None and ckpt.config.algo != config.algo:
        raise ValueError(f"cannot resume a {ckpt.config.algo} checkpoint as {config.algo}")

    start_iteration = ckpt.iteration if ckpt else 0
    report: dict[str, Any] = dict(reward_report or {})
    if ckpt is not None:
        reward_tensors = reward_tensors if reward_tensors is not None else ckpt.reward_tensors
        features = features if features is not None else ckpt.features
        report = dict(ckpt.artifact.metadata.get("reward_report", {}))
    spec = RewardSpec(
        config.reward,
        config.revenue_weight,
        reward_tensors if config.reward == "learned" else None,
    )

    # Build one env first: its observation fixes the policy's feature widths. It is reset
    # once, with worker 0's training seed, and (in process) becomes worker 0's env as it is.
    seed = config.seed + start_iteration
    env0 = env_factory(0)
    obs0 = env0.reset(seed=rollout_reset_seed(seed, 0))
    dims = (int(obs0.user_features.shape[1]), int(obs0.item_features.shape[2]), env0.slate_size)
    if ckpt is not None and (ckpt.user_dim, ckpt.item_dim, ckpt.slate_size) != dims:
        raise ValueError(
            f"checkpoint was trained on (user_dim, item_dim, slate_size) = "
            f"{(ckpt.user_dim, ckpt.item_dim, ckpt.slate_size)}, this env has {dims}"
        )
    if features is not None and features.items.dim != dims[1]:
        raise ValueError(
            f"features describe {features.items.dim} item columns, the env has {dims[1]}"
        )
    factory = PolicyFactory(config, *dims)
    policy = ckpt.policy if ckpt is not None else factory()
    if config.algo != "slateq" or (
        config.log_replay_fraction == 0 and config.pretrain_updates == 0
    ):
        log_replay = None
    pool: _InProcessWorkers | _RayWorkers
    if config.workers < 2:
        worker = RolloutWorker(env_factory, factory, spec, seed=seed, env=env0, obs=obs0)
        pool = _InProcessWorkers(worker)
    else:
        del env0, obs0
        started = ensure_ray(address=ray_address)
        actors = make_ray_workers(config.workers, env_factory, factory, spec, seed=seed)
        pool = _RayWorkers(actors, started)

    scale = ckpt.reward_scale if ckpt is not None else config.reward_scale
    curve: list[dict[str, float]] = list(ckpt.curve) if ckpt is not None else []
    user_steps_total = float(curve[-1]["user_steps"]) if curve else 0.0
    wall_offset = float(curve[-1]["wall_s"]) if curve else 0.0
    replay = TransitionReplay(config.replay_size)
    np_rng = np.random.default_rng([config.seed, start_iteration])
    checkpoints: list[Path] = []
    optional = _optional_columns(curve[-1]) if curve else None
    bar = _progress(progress, config, start_iteration)
    try:
        for iteration in range(start_iteration + 1, config.iterations + 1):
            batches = pool.sample(config.steps_per_iteration, policy.weights())
            stats = [b.stats for b in batches]
            steps = sum(s.user_steps for s in stats)
            if scale is None:
                scale = _auto_scale(batches, config.gamma)
            rollouts = [[_scaled(tr, scale) for tr in b.transitions] for b in batches]
            if config.algo == "slateq":
                for rollout in rollouts:
                    for tr in rollout:
                        replay.add(tr)
                if iteration == 1 and log_replay is not None and config.pretrain_updates:
                    _learn_slateq(
                        policy,
                        TransitionReplay(1),
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
            if optional is None:
                optional = _optional_columns(None, stats)
            row: dict[str, float] = {
                "iteration": float(iteration),
                "user_steps": user_steps_total,
                "wall_s": wall_offset + time.perf_counter() - start_time,
                "rollout_s": max(s.seconds for s in stats),
                **_curve_row(stats, optional),
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
                art = save_policy_checkpoint(
                    artifacts_root,
                    policy,
                    config,
                    iteration=iteration,
                    dims=dims,
                    reward_scale=float(scale),
                    features=features,
                    reward_tensors=reward_tensors,
                    curve=curve,
                    reward_report=report,
                    name=checkpoint_name or f"checkpoint-{config.algo}",
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
        features=features,
        reward_tensors=reward_tensors,
        reward_report=report,
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
        info = f"reward/step {row['reward_per_user_step']:.3f}  "
        if "hidden_reward_per_user_step" in row:
            info += f"LTV+/step {row['hidden_reward_per_user_step']:.3f}"
        else:
            info += f"episode return {row['episode_return']:.3f}"
        self.progress.update(self.task, completed=iteration, info=info)

    def close(self) -> None:
        self.progress.stop()


def _progress(enabled: bool, config: PolicyTrainConfig, start: int) -> _Progress | None:
    return _Progress(config, start) if enabled else None
