"""Rollout workers: an environment plus a policy copy that turns weights into transitions.

:class:`RolloutWorker` is a plain class (tests and the in-process path use it directly);
:func:`make_ray_workers` wraps it as ``@ray.remote(num_cpus=1)`` actors, each pinned to one
thread (``torch.set_num_threads(1)`` plus OMP/MKL/OpenBLAS variables in the actor's
``runtime_env``), so ``N`` workers use ``N`` cores without oversubscribing them. The learner
broadcasts the policy's weights as a dict of numpy arrays (one ``ray.put`` per iteration);
workers send back time-ordered :class:`~recsys.policy.batch.Transition` lists whose rewards
are computed on the worker from the response
(:class:`~recsys.policy.reward.spec.RewardSpec`), so the learned reward model never has to
leave the worker either.

Ray is imported lazily, only by :func:`make_ray_workers` and the helpers around it: the
algorithm modules and unit tests never touch it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import torch

from recsys.policy.base import Tensors, TrainableSlatePolicy
from recsys.policy.batch import SlateAction, SlateObs, Transition
from recsys.policy.reward.spec import RewardSpec
from recsys.policy.seeds import rollout_generator
from recsys.policy.training.envs import BatchSlateEnv

EnvFactory = Callable[[int], BatchSlateEnv]
"""``worker_index -> env``; each worker builds its own environment (its own users, seed)."""
PolicyFactory = Callable[[], TrainableSlatePolicy]
"""Builds a fresh policy of the learner's architecture (weights come by broadcast)."""

__all__ = [
    "SINGLE_THREAD_ENV",
    "EnvFactory",
    "RolloutBatch",
    "RolloutStats",
    "RolloutWorker",
    "Tensors",
    "ensure_ray",
    "make_ray_workers",
    "sample_all",
]

#: Thread caps for single-threaded workers (a 2-core box with 2 workers must not run 4+ BLAS
#: threads per process).
SINGLE_THREAD_ENV: dict[str, str] = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1",
}


class RolloutStats(NamedTuple):
    """Sums over one rollout (divide by ``user_steps`` for per-user-step rates).

    ``episode_return`` and ``episode_length`` sum the return (training reward, unscaled) and
    the steps of the ``episodes_done`` episodes that ended in this rollout, counted from
    their first step even when that was in an earlier rollout. ``hidden_reported``: the env
    reported a hidden reward (the project's simulator does; a custom env usually does not).
    """

    user_steps: int
    reward: float
    hidden_reward: float
    clicks: float
    revenue: float
    episodes_done: int
    seconds: float
    episode_return: float = 0.0
    episode_length: float = 0.0
    hidden_reported: bool = False


class RolloutBatch(NamedTuple):
    """What a worker returns: time-ordered transitions of its ``B`` users, and their totals.

    Every step holds all ``B`` rows; a vector env's reset-step rows are kept with
    ``Transition.valid`` false (see :meth:`Transition.valid_rows`) and left out of the totals.
    """

    transitions: list[Transition]
    stats: RolloutStats


class RolloutWorker:
    """Holds one environment and one policy copy; ``sample`` plays ``steps`` steps.

    ``env`` reuses an environment the caller already built (the in-process path builds one to
    learn the feature widths) instead of calling ``env_factory``; ``obs`` is its first
    observation when the caller already reset it with this worker's
    :func:`~recsys.policy.seeds.rollout_reset_seed` (so it is not reset twice).

    Episodes continue across calls (the worker keeps the last observation and the action it
    already chose for it, so ``next_action`` of every transition is the slate really served
    next, as SARSA needs). ``seed`` drives the policy's exploration and the env's reset (a seed
    in :data:`~recsys.policy.seeds.TRAINING_SEEDS`, never one evaluation uses).
    """

    def __init__(
        self,
        env_factory: EnvFactory,
        policy_factory: PolicyFactory,
        reward: RewardSpec,
        *,
        worker_index: int = 0,
        seed: int = 0,
        single_thread: bool = False,
        env: BatchSlateEnv | None = None,
        obs: SlateObs | None = None,
    ) -> None:
        if single_thread:
            torch.set_num_threads(1)
        if obs is not None and env is None:
            raise ValueError("obs is the first observation of a given env: pass env too")
        self.worker_index = worker_index
        self.env = env if env is not None else env_factory(worker_index)
        self.policy = policy_factory()
        self.reward_fn = reward.build()
        reset_seed, self.rng = rollout_generator(seed, worker_index)
        self.obs: SlateObs = obs if obs is not None else self.env.reset(seed=reset_seed)
        self._pending: SlateAction | None = None
        # The running episode of every row, carried across rollouts.
        self._episode_return = np.zeros(self.env.batch_size, dtype=np.float64)
        self._episode_length = np.zeros(self.env.batch_size, dtype=np.int64)

    def set_weights(self, tensors: Mapping[str, np.ndarray[Any, Any]]) -> None:
        """Load the learner's current policy weights (a ``policy.weights()`` dict)."""
        self.policy.load_weights(tensors)
        self._pending = None  # the cached next action came from the old weights

    def sample(
        self, steps: int, weights: Mapping[str, np.ndarray[Any, Any]] | None = None
    ) -> RolloutBatch:
        """Play ``steps`` steps with exploration; optionally load ``weights`` first."""
        import time

        if weights is not None:
            self.set_weights(weights)
        start = time.perf_counter()
        s = self.env.slate_size
        action = (
            self._pending
            if self._pending is not None
            else self.policy.act(self.obs, s, self.rng, explore=True)
        )
        out: list[Transition] = []
        totals = np.zeros(7)
        done_count = 0
        hidden_reported = False
        for _ in range(steps):  # a loop over time; every step is batched over users
            step = self.env.step(action.slates)
            reward = self.reward_fn(step)
            next_action = self.policy.act(step.next_obs, s, self.rng, explore=True)
            masked = step.valid is not None and not step.valid.all()
            tr = Transition(
                self.obs,
                action,
                step.response,
                reward,
                step.next_obs,
                step.done,
                next_action,
                valid=np.asarray(step.valid, np.bool_) if masked else None,
            )
            # Every row stays, masked when it is a reset step: REINFORCE needs the time axis.
            out.append(tr)
            real = tr.valid_rows()
            ended = step.episode_end()
            totals[5:] += self._track_episodes(step.valid, ended, reward)
            hidden_reported = hidden_reported or step.hidden_reward is not None
            hidden = 0.0
            if step.hidden_reward is not None:
                valid_hidden = (
                    step.hidden_reward if step.valid is None else step.hidden_reward[step.valid]
                )
                hidden = float(np.sum(valid_hidden))
            # Totals over valid rows only: a vector env's reset step is no user-step.
            totals[:5] += (
                float(real.reward.sum()),
                hidden,
                float(np.sum(real.response.click)),
                float(np.sum(real.response.revenue)),
                float(real.batch_size),
            )
            live = np.ones_like(ended) if step.valid is None else np.asarray(step.valid, np.bool_)
            done_count += int(np.count_nonzero(ended & live))
            self.obs, action = step.next_obs, next_action
        self._pending = action
        stats = RolloutStats(
            user_steps=int(totals[4]),
            reward=float(totals[0]),
            hidden_reward=float(totals[1]),
            clicks=float(totals[2]),
            revenue=float(totals[3]),
            episodes_done=done_count,
            seconds=time.perf_counter() - start,
            episode_return=float(totals[5]),
            episode_length=float(totals[6]),
            hidden_reported=hidden_reported,
        )
        return RolloutBatch(out, stats)

    def _track_episodes(
        self,
        valid: npt.NDArray[np.bool_] | None,
        done: npt.NDArray[np.bool_],
        reward: npt.NDArray[np.float32],
    ) -> tuple[float, float]:
        """Add a step to every valid row's running episode; ``(return, length)`` summed over
        the episodes that ended at it (their rows start counting afresh)."""
        live = np.ones(done.shape[0], np.bool_) if valid is None else np.asarray(valid, np.bool_)
        self._episode_return[live] += reward.sum(axis=1, dtype=np.float64)[live]
        self._episode_length[live] += 1
        ended = np.asarray(done, np.bool_) & live
        out = (float(self._episode_return[ended].sum()), float(self._episode_length[ended].sum()))
        self._episode_return[ended] = 0.0
        self._episode_length[ended] = 0
        return out

    def throughput_probe(self, steps: int) -> tuple[int, float]:
        """Play ``steps`` steps without building transitions: ``(user_steps, seconds)``.

        Rollout cost only (policy inference + env step), for the scaling benchmark.
        """
        import time

        start = time.perf_counter()
        s = self.env.slate_size
        users = 0
        for _ in range(steps):
            action = self.policy.act(self.obs, s, self.rng, explore=True)
            step = self.env.step(action.slates)
            users += int(step.done.shape[0])
            self.obs = step.next_obs
        return users, time.perf_counter() - start

    def ping(self) -> int:
        """Readiness check (returns the process id, so tests can see distinct processes)."""
        return os.getpid()

    def node(self) -> str:
        """The Ray node this actor runs on (where a cluster placed the rollouts)."""
        import ray

        node_id: str = ray.get_runtime_context().get_node_id()
        return node_id


def make_ray_workers(
    count: int,
    env_factory: EnvFactory,
    policy_factory: PolicyFactory,
    reward: RewardSpec,
    *,
    seed: int = 0,
    start_timeout_s: float = 180.0,
) -> list[Any]:
    """``count`` single-threaded Ray actors (``num_cpus=1`` each) running :class:`RolloutWorker`.

    Ray must already be initialised (the caller owns the cluster's lifetime, see
    :func:`ensure_ray`). Fails with a clear error, instead of waiting forever, when the
    cluster cannot place the actors within ``start_timeout_s``.
    """
    import ray

    remote_cls = ray.remote(num_cpus=1)(RolloutWorker)
    actors = [
        remote_cls.options(runtime_env={"env_vars": dict(SINGLE_THREAD_ENV)}).remote(
            env_factory,
            policy_factory,
            reward,
            worker_index=i,
            seed=seed,
            single_thread=True,
        )
        for i in range(count)
    ]
    try:
        ray.get([a.ping.remote() for a in actors], timeout=start_timeout_s)
    except ray.exceptions.GetTimeoutError as exc:
        for actor in actors:
            ray.kill(actor)
        raise RuntimeError(
            f"{count} rollout actors (1 CPU each) did not start within {start_timeout_s:.0f} s; "
            f"the Ray cluster has {ray.cluster_resources().get('CPU', 0):.0f} CPUs"
        ) from exc
    return actors


def ensure_ray(num_cpus: int | None = None, address: str | None = None) -> bool:
    """Connect to Ray; True when this call did (so the caller shuts the connection down),
    False when this process is already connected (e.g. a Ray Serve session) and reuses it.

    ``address`` (``HOST:PORT`` of a running cluster's GCS, ``ray://HOST:PORT`` for Ray Client,
    or ``auto``) joins an existing cluster, where the rollout actors are scheduled on any of
    its nodes; without it ``ray.init`` still honours ``RAY_ADDRESS``, and otherwise starts a
    local Ray that ends with the run. ``num_cpus`` sizes only a local Ray.
    """
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    try:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    except ConnectionError as exc:
        raise RuntimeError(f"cannot connect to the Ray cluster at {address}: {exc}") from None
    return True


def sample_all(
    workers: Sequence[Any], steps: int, weights: Mapping[str, np.ndarray[Any, Any]]
) -> list[RolloutBatch]:
    """One rollout from every Ray worker with the given weights (one ``ray.put``)."""
    import ray

    ref = ray.put(dict(weights))
    out: list[RolloutBatch] = ray.get([w.sample.remote(steps, ref) for w in workers])
    return out
