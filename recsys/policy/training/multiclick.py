"""The multi-click simulator as a slate env for the trainer, and its greedy one-step oracle.

:class:`~recsys.simulator.multiclick.MultiClickVectorEnv` is a Gymnasium vector env that
declares its item table and its per-slot signals and rewards; :func:`multiclick_env` wraps it
in :class:`~recsys.policy.training.envs.GymSlateEnv`, which reads them (several clicks per
slate, each item credited its own reward). :class:`MultiClickEnvFactory` builds one per
worker (picklable, for Ray); ``make_env`` is the same factory at the default sizes, so

    recsys train policy --env recsys.policy.training.multiclick:make_env --algo slateq

trains on it. :class:`GreedyOraclePolicy` serves the env's greedy one-step oracle slates
(true attractions and rewards, no look-ahead) through the policy interface, so
:func:`~recsys.policy.evaluation.episodes.evaluate_on_env` can compare it with learned
policies on the same episodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from recsys.policy.batch import SlateAction, SlateObs, gather_slots
from recsys.policy.training.envs import GymSlateEnv
from recsys.simulator.multiclick import MultiClickSettings, MultiClickVectorEnv

__all__ = [
    "DEFAULT_USERS",
    "GreedyOraclePolicy",
    "MultiClickEnvFactory",
    "make_env",
    "multiclick_env",
]

#: Users (rows) per env of :func:`make_env`.
DEFAULT_USERS = 64


def multiclick_env(
    users: int = DEFAULT_USERS, settings: MultiClickSettings | None = None, *, seed: int = 0
) -> GymSlateEnv:
    """``users`` rows of the multi-click simulator behind ``GymSlateEnv`` (its declared item
    table, signals and per-slot reward are what the adapter reads)."""
    vec = MultiClickVectorEnv(users, settings, seed=seed)
    return GymSlateEnv(vec, user_key="user", items_key=None, ids_key="candidate_ids")


@dataclass(frozen=True)
class MultiClickEnvFactory:
    """``worker_index -> env`` of ``users`` rows (picklable: settings travel, not the env);
    worker ``k``'s env is seeded ``k`` before the trainer resets it with its own seed."""

    users: int = DEFAULT_USERS
    settings: MultiClickSettings = field(default_factory=MultiClickSettings)

    def __call__(self, worker_index: int) -> GymSlateEnv:
        return multiclick_env(self.users, self.settings, seed=worker_index)


def make_env(worker_index: int) -> GymSlateEnv:
    """The default multi-click env (``--env recsys.policy.training.multiclick:make_env``)."""
    return MultiClickEnvFactory()(worker_index)


class GreedyOraclePolicy:
    """The env's greedy one-step oracle as a policy (deterministic, propensity 1).

    It reads the env's true state, so it acts only for the observation ``env`` has just
    returned (as :func:`~recsys.policy.evaluation.episodes.run_episodes` plays it), and
    ``explore`` changes nothing. Scores are the expected immediate rewards of the slotted
    items before examination.
    """

    name: str = "greedy_oracle"

    def __init__(self, env: GymSlateEnv) -> None:
        if not isinstance(env.env, MultiClickVectorEnv):
            raise ValueError(
                f"the greedy oracle needs a MultiClickVectorEnv, got {type(env.env).__name__}"
            )
        self.env = env
        self.core: MultiClickVectorEnv = env.env

    def act(
        self,
        obs: SlateObs,
        slate_size: int,
        rng: np.random.Generator,
        explore: bool = True,
    ) -> SlateAction:
        """The slates of the largest expected immediate reward for the env's current users."""
        if obs.batch_size != self.core.num_envs:
            raise ValueError(
                f"observation of {obs.batch_size} rows, the env has {self.core.num_envs}"
            )
        values = self.core.expected_item_rewards()
        slates = self.core.oracle_slates(slate_size)
        b, s = slates.shape
        return SlateAction(
            slates=slates,
            propensities=np.ones((b, s), dtype=np.float32),
            log_prob=np.zeros(b, dtype=np.float32),
            scores=gather_slots(values, slates).astype(np.float32),
        )
