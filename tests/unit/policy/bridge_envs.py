"""Environments for the process-bridge tests, written the way a team's own simulator would be:
numpy only (1.x or 2.x, on Python >= 3.7), no recsys, no torch, no gymnasium,
plain dicts of arrays. :class:`TwoTopicArrays` and :func:`make_env` are docs/policy.md's
example; :class:`CatalogArrays` declares a static item table instead of sending features;
the other factories misbehave in the ways the bridge must report clearly.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np


class TwoTopicArrays:
    """docs/policy.md's two-topic env for ``users`` users at once: 6 candidates (3 of each
    topic), slates of 2; reward 1 (and a click) when the slate holds an item of the user's
    topic. A user leaves after 5 to 14 slates and a new one takes the row."""

    slate_size = 2

    def __init__(self, users: int = 16) -> None:
        self.batch_size = users
        self.rng = np.random.RandomState(0)  # the old API: numpy 1.x and 2.x alike
        self.t = np.zeros(users, dtype=np.int64)
        self.horizon = np.zeros(users, dtype=np.int64)
        self.topic = np.zeros(users, dtype=np.int64)
        self.items = np.zeros((users, 6, 2), dtype=np.float32)

    def _observe(self) -> dict[str, Any]:
        b = self.batch_size
        self.topic = self.rng.randint(2, size=b)
        kinds = np.array([self.rng.permutation([0, 0, 0, 1, 1, 1]) for _ in range(b)])
        self.items = np.eye(2, dtype=np.float32)[kinds]
        return {
            "user_features": np.eye(2, dtype=np.float32)[self.topic],
            "item_features": self.items,
        }

    def reset(self, seed: int | None = None) -> dict[str, Any]:
        if seed is not None:
            self.rng = np.random.RandomState(seed % 2**32)
        self.t[:] = 0
        self.horizon = self.rng.randint(5, 15, size=self.batch_size)
        return self._observe()

    def step(self, slates: np.ndarray[Any, Any]) -> dict[str, Any]:
        rows = np.arange(self.batch_size)
        hits = self.items[rows[:, None], slates, self.topic[:, None]] > 0  # [B, S]
        click = np.zeros(hits.shape, dtype=np.float32)
        hit = hits.any(axis=1)
        click[rows[hit], hits.argmax(axis=1)[hit]] = 1.0
        self.t += 1
        done = self.t >= self.horizon
        self.t[done] = 0  # a new user takes the row
        self.horizon[done] = self.rng.randint(5, 15, size=int(done.sum()))
        return {
            "next_obs": self._observe(),
            "done": done,
            "reward": hit.astype(np.float32),
            "response": {"click": click},
        }


def make_env(worker_index: int) -> TwoTopicArrays:
    """docs/policy.md's factory: 16 users."""
    return TwoTopicArrays(16)


class ChattyEnv(TwoTopicArrays):
    """Prints to stdout, as old simulators do: the bridge's protocol must not see it."""

    def reset(self, seed: int | None = None) -> dict[str, Any]:
        print("simulator: reset with seed", seed)
        return super().reset(seed)

    def step(self, slates: np.ndarray[Any, Any]) -> dict[str, Any]:
        print("simulator: step")
        return super().step(slates)


def make_isolated_env(worker_index: int) -> ChattyEnv:
    """Refuses to exist in a process that imported torch or recsys: the bridge's child must
    have imported neither (the test process has both)."""
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "recsys"))
    if loaded:
        raise RuntimeError(f"not an isolated process: {', '.join(loaded[:3])} imported")
    return ChattyEnv(4)


def raising_factory(worker_index: int) -> TwoTopicArrays:
    """A factory whose env cannot be built."""
    raise RuntimeError(f"no simulator licence for worker {worker_index}")


def not_an_env(worker_index: int) -> object:
    """Returns something without the slate-env members."""
    return object()


class FailingStepEnv(TwoTopicArrays):
    """Its third step raises (the env stays usable: reset starts again)."""

    def step(self, slates: np.ndarray[Any, Any]) -> dict[str, Any]:
        if self.t[0] == 2:
            raise ValueError("simulator state corrupted at t=2")
        return super().step(slates)


def make_failing_step_env(worker_index: int) -> FailingStepEnv:
    """4 users whose third step raises."""
    return FailingStepEnv(4)


class SlowEnv(TwoTopicArrays):
    """Its steps hang (a deadlocked simulator)."""

    def step(self, slates: np.ndarray[Any, Any]) -> dict[str, Any]:
        time.sleep(60)
        return super().step(slates)


def make_slow_env(worker_index: int) -> SlowEnv:
    """4 users whose steps hang."""
    return SlowEnv(4)


class WrongShapeEnv(TwoTopicArrays):
    """Reports ``done`` per slot instead of per user."""

    def step(self, slates: np.ndarray[Any, Any]) -> dict[str, Any]:
        out = super().step(slates)
        out["done"] = np.zeros((self.batch_size, 2), dtype=bool)
        return out


def make_wrong_shape_env(worker_index: int) -> WrongShapeEnv:
    """4 users, malformed steps."""
    return WrongShapeEnv(4)


class ObjectArrayEnv(TwoTopicArrays):
    """Returns a field that is not a numeric array."""

    def step(self, slates: np.ndarray[Any, Any]) -> dict[str, Any]:
        out = super().step(slates)
        out["hidden_reward"] = np.array(["high"] * self.batch_size, dtype=object)
        return out


def make_object_array_env(worker_index: int) -> ObjectArrayEnv:
    """4 users whose steps carry an object array."""
    return ObjectArrayEnv(4)


class CatalogArrays(TwoTopicArrays):
    """:class:`TwoTopicArrays` over a 40-item catalog with a static ``item_table`` (item ``i``
    has topic ``i % 2``): observations carry 6 ``candidate_ids`` per user and no features.
    ``send_features`` sends the features every step instead (and declares no table)."""

    def __init__(self, users: int = 16, send_features: bool = False) -> None:
        super().__init__(users)
        table = np.eye(2, dtype=np.float32)[np.arange(40) % 2]
        self.table = table
        if not send_features:
            self.item_table = table
        self.send_features = send_features
        self.ids = np.zeros((users, 6), dtype=np.int64)

    def _observe(self) -> dict[str, Any]:
        b = self.batch_size
        self.topic = self.rng.randint(2, size=b)
        self.ids = np.array([self.rng.permutation(40)[:6] for _ in range(b)])
        self.items = self.table[self.ids]
        obs = {"user_features": np.eye(2, dtype=np.float32)[self.topic], "candidate_ids": self.ids}
        if self.send_features:
            obs["item_features"] = self.items
        return obs


def make_catalog_env(worker_index: int) -> CatalogArrays:
    """16 users, item features from the table sent once."""
    return CatalogArrays(16)


def make_catalog_features_env(worker_index: int) -> CatalogArrays:
    """The same env sending its features every step."""
    return CatalogArrays(16, send_features=True)


class AmbiguousCatalogArrays(CatalogArrays):
    """Declares a table and sends features too."""

    def _observe(self) -> dict[str, Any]:
        obs = super()._observe()
        obs["item_features"] = self.items
        return obs


def make_ambiguous_catalog_env(worker_index: int) -> AmbiguousCatalogArrays:
    """4 users, a table and features in every observation."""
    return AmbiguousCatalogArrays(4)


class NanTableArrays(CatalogArrays):
    """Its item table has a NaN."""

    def __init__(self, users: int = 4) -> None:
        super().__init__(users)
        self.item_table = self.table.copy()
        self.item_table[7, 1] = np.nan


def make_nan_table_env(worker_index: int) -> NanTableArrays:
    """4 users, a broken table."""
    return NanTableArrays(4)


class OutOfRangeIdsArrays(CatalogArrays):
    """Sends a candidate id past the end of its 40-item table."""

    def _observe(self) -> dict[str, Any]:
        obs = super()._observe()
        obs["candidate_ids"] = obs["candidate_ids"].copy()
        obs["candidate_ids"][0, 0] = 40
        return obs


def make_out_of_range_env(worker_index: int) -> OutOfRangeIdsArrays:
    """4 users, an id out of range."""
    return OutOfRangeIdsArrays(4)
