"""Custom environments for the bring-your-own-env tests, importable as ``module:factory``.

:class:`TwoTopicEnv` and :func:`make_env` are docs/policy.md's example (typed);
:class:`CatalogTopicEnv` is its catalog version with a static item table; the other
factories fail in the ways ``--env`` must report clearly.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from recsys.policy.training.envs import GymSlateEnv

Obs = dict[str, np.ndarray[Any, Any]]

#: Users per env (sub-envs of the vector env).
USERS = 16


class TwoTopicEnv(gymnasium.Env[Obs, np.ndarray[Any, Any]]):
    """6 candidates, slates of 2; reward 1 when the slate holds an item of the user's topic.
    A user leaves after 5 to 14 slates."""

    def __init__(self) -> None:
        self.observation_space = spaces.Dict(
            {
                "user": spaces.Box(0.0, 1.0, (2,), np.float32),
                "items": spaces.Box(0.0, 1.0, (6, 2), np.float32),
            }
        )
        self.action_space = spaces.MultiDiscrete([6, 6])
        self.topic, self.t, self.horizon = 0, 0, 0
        self.items = np.zeros((6, 2), np.float32)

    def _obs(self) -> Obs:
        self.topic = int(self.np_random.integers(2))
        self.items = np.eye(2, dtype=np.float32)[self.np_random.permutation([0, 0, 0, 1, 1, 1])]
        return {"user": np.eye(2, dtype=np.float32)[self.topic], "items": self.items}

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Obs, dict[str, Any]]:
        super().reset(seed=seed)
        self.t, self.horizon = 0, int(self.np_random.integers(5, 15))
        return self._obs(), {}

    def step(self, action: np.ndarray[Any, Any]) -> tuple[Obs, float, bool, bool, dict[str, Any]]:
        hits = self.items[np.asarray(action), self.topic] > 0
        info = {"signals": {"click_position": int(np.argmax(hits)) if hits.any() else -1}}
        self.t += 1
        return self._obs(), float(hits.any()), self.t >= self.horizon, False, info


def make_env(worker_index: int) -> GymSlateEnv:
    """docs/policy.md's factory: 16 users in a vector env."""
    vec = gymnasium.vector.SyncVectorEnv([TwoTopicEnv for _ in range(USERS)])
    return GymSlateEnv(vec, user_key="user", items_key="items", ids_key=None)


class EndlessEnv(TwoTopicEnv):
    """:class:`TwoTopicEnv` whose users never leave (episodes end only at a step limit)."""

    def step(self, action: np.ndarray[Any, Any]) -> tuple[Obs, float, bool, bool, dict[str, Any]]:
        obs, reward, _, _, info = super().step(action)
        return obs, reward, False, False, info


def make_endless_env(worker_index: int) -> GymSlateEnv:
    """4 users that never leave."""
    vec = gymnasium.vector.SyncVectorEnv([EndlessEnv for _ in range(4)])
    return GymSlateEnv(vec, user_key="user", items_key="items", ids_key=None)


def catalog_table(num_items: int) -> np.ndarray[Any, Any]:
    """``[num_items, 3]``: a topic one-hot (item ``i`` has topic ``i % 2``) and a quality in
    ``[0, 1)`` that no reward depends on (so a table is more than its ids)."""
    topic = np.eye(2, dtype=np.float32)[np.arange(num_items) % 2]
    quality = (np.arange(num_items, dtype=np.float32) * 0.618) % 1.0
    return np.concatenate([topic, quality[:, None]], axis=1)


class CatalogTopicEnv(gymnasium.Env[Obs, np.ndarray[Any, Any]]):
    """:class:`TwoTopicEnv` over a catalog of ``num_items`` items with a static item table:
    each step offers ``num_candidates`` distinct random catalog items (all of them, shuffled,
    when it equals ``num_items``), slates of 2, reward 1 when the slate holds an item of the
    user's topic; a user leaves after 5 to 14 slates.

    The table is the ``item_table`` attribute and the observation holds only ``user`` and
    ``candidate_ids``; ``send_features`` also sends the same features every step under
    ``items`` (the old way, to compare with), and ``declare_table=False`` declares no table."""

    def __init__(
        self,
        num_items: int = 40,
        num_candidates: int = 8,
        send_features: bool = False,
        declare_table: bool = True,
    ) -> None:
        self.table = catalog_table(num_items)
        if declare_table:
            self.item_table = self.table
        self.num_candidates = num_candidates
        self.send_features = send_features
        spaces_: dict[str, spaces.Space[Any]] = {
            "user": spaces.Box(0.0, 1.0, (2,), np.float32),
            "candidate_ids": spaces.MultiDiscrete([num_items] * num_candidates),
        }
        if send_features:
            spaces_["items"] = spaces.Box(0.0, 1.0, (num_candidates, 3), np.float32)
        self.observation_space = spaces.Dict(spaces_)
        self.action_space = spaces.MultiDiscrete([num_candidates, num_candidates])
        self.topic, self.t, self.horizon = 0, 0, 0
        self.ids = np.zeros(num_candidates, np.int64)

    def _obs(self) -> Obs:
        self.topic = int(self.np_random.integers(2))
        n = self.table.shape[0]
        self.ids = self.np_random.permutation(n)[: self.num_candidates].astype(np.int64)
        obs = {"user": np.eye(2, dtype=np.float32)[self.topic], "candidate_ids": self.ids}
        if self.send_features:
            obs["items"] = self.table[self.ids]
        return obs

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Obs, dict[str, Any]]:
        super().reset(seed=seed)
        self.t, self.horizon = 0, int(self.np_random.integers(5, 15))
        return self._obs(), {}

    def step(self, action: np.ndarray[Any, Any]) -> tuple[Obs, float, bool, bool, dict[str, Any]]:
        hits = self.ids[np.asarray(action)] % 2 == self.topic
        info = {"signals": {"click_position": int(np.argmax(hits)) if hits.any() else -1}}
        self.t += 1
        return self._obs(), float(hits.any()), self.t >= self.horizon, False, info


def make_catalog_env(
    worker_index: int, num_items: int = 40, num_candidates: int = 8
) -> GymSlateEnv:
    """16 users of :class:`CatalogTopicEnv`; the adapter finds the sub-envs' item table."""
    vec = gymnasium.vector.SyncVectorEnv(
        [lambda: CatalogTopicEnv(num_items, num_candidates) for _ in range(USERS)]
    )
    return GymSlateEnv(vec, user_key="user", ids_key="candidate_ids")


def make_whole_catalog_env(worker_index: int) -> GymSlateEnv:
    """16 users offered the whole 100-item catalog every step (more candidates than SlateQ's
    default ``target_candidates``, so its target samples)."""
    return make_catalog_env(worker_index, num_items=100, num_candidates=100)


def raising_factory(worker_index: int) -> GymSlateEnv:
    """A factory whose env cannot be built."""
    raise RuntimeError(f"no simulator licence for worker {worker_index}")


def not_an_env(worker_index: int) -> TwoTopicEnv:
    """Returns a Gymnasium env without the slate-env wrapper."""
    return TwoTopicEnv()


NOT_CALLABLE = 42
