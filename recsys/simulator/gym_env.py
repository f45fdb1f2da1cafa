"""Gymnasium wrappers over the batched :class:`~recsys.simulator.env.SlateEnv`.

- :class:`SlateGymEnv` (``recsys/SlateEnv-v0``): one user per episode; an episode is one
  user *life* (several sessions) that terminates when the user churns, truncated after
  ``settings.max_episode_steps`` steps.
- :class:`SlateVectorEnv` (``recsys/SlateVectorEnv-v0``): ``num_envs`` users stepped in one
  vectorized core call, next-step autoreset (Gymnasium's default convention).

Observation (a ``Dict``): ``"user"`` ``[F_u]`` user features, ``"candidates"`` ``[C, F_i]``
features of this step's candidates and ``"candidate_ids"`` ``[C]`` their item ids. Action:
``MultiDiscrete([C] * S)``, candidate indices in slot order. A slate must not repeat an item,
but a sampled ``MultiDiscrete`` action may; repeats are fixed deterministically (the first
occurrence keeps its slot, each later repeat takes the smallest unused candidate index in slot
order) and counted in ``info["duplicates_replaced"]``, so any action in the space is valid.
Reward: ``settings.reward`` (engagement minutes by default, whose sum over an episode is the
hidden lifetime value) or any :data:`~recsys.simulator.results.RewardFn`.
Everything the user did is in ``info["signals"]``; ground truth is kept apart in
``info["hidden"]`` for evaluation only.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
import numpy.typing as npt
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from recsys.config import CatalogSettings, SimulatorSettings
from recsys.data.synthetic import SyntheticWorld, make_world
from recsys.protocols import ChoiceModel
from recsys.simulator.env import SlateEnv
from recsys.simulator.results import REWARDS, RewardFn, StepResult
from recsys.types import FloatArray, IntArray

SLATE_ENV_ID = "recsys/SlateEnv-v0"
SLATE_VECTOR_ENV_ID = "recsys/SlateVectorEnv-v0"

Obs = dict[str, npt.NDArray[Any]]


def dedupe_actions(actions: IntArray, num_candidates: int) -> tuple[IntArray, IntArray]:
    """Make every row of ``actions`` ``[B, S]`` repeat-free; returns (fixed, replaced per row).

    The first occurrence of an index keeps its slot; every later repeat is replaced by the
    smallest candidate index the row does not use yet, in slot order. Vectorized; only rows
    with a repeat pay for the ``[rows, C]`` bookkeeping.
    """
    fixed = np.array(actions, dtype=np.int64, copy=True)
    order = np.argsort(fixed, axis=1, kind="stable")  # equal values keep slot order
    ordered = np.take_along_axis(fixed, order, axis=1)
    repeat_sorted = np.zeros(fixed.shape, dtype=np.bool_)
    repeat_sorted[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
    repeat = np.zeros(fixed.shape, dtype=np.bool_)
    np.put_along_axis(repeat, order, repeat_sorted, axis=1)
    replaced: IntArray = repeat.sum(axis=1, dtype=np.int64)
    rows = np.flatnonzero(replaced)
    if rows.size == 0:
        return fixed, replaced
    sub = fixed[rows]
    sub_repeat = repeat[rows]
    used = np.zeros((rows.size, num_candidates), dtype=np.bool_)
    used[np.arange(rows.size)[:, None], sub] = True
    free = np.argsort(used, axis=1, kind="stable")  # unused indices first, ascending
    rank = np.cumsum(sub_repeat, axis=1) - 1
    r, s = np.nonzero(sub_repeat)
    sub[r, s] = free[r, rank[r, s]]
    fixed[rows] = sub
    return fixed, replaced


def _check_actions(actions: npt.ArrayLike, shape: tuple[int, ...], num_candidates: int) -> IntArray:
    arr = np.asarray(actions)
    if arr.shape != shape:
        raise ValueError(f"action must have shape {shape}, got {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise ValueError(f"action must hold integers, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() >= num_candidates):
        raise ValueError(f"action indices must lie in [0, {num_candidates})")
    return arr.astype(np.int64, copy=False)


def _single_spaces(core: SlateEnv, slate_size: int) -> tuple[spaces.Dict, spaces.MultiDiscrete]:
    core.check_candidates_fit()
    c = core.num_candidates
    user_low, user_high = core.user_model.user_feature_bounds(slate_size)
    table = core.item_feature_table
    item_low = np.broadcast_to(table.min(axis=0), (c, table.shape[1]))
    item_high = np.broadcast_to(table.max(axis=0), (c, table.shape[1]))
    obs = spaces.Dict(
        {
            "user": spaces.Box(user_low, user_high, dtype=np.float32),
            "candidates": spaces.Box(item_low, item_high, dtype=np.float32),
            "candidate_ids": spaces.Box(0, core.num_items - 1, shape=(c,), dtype=np.int64),
        }
    )
    action = spaces.MultiDiscrete(np.full(slate_size, c, dtype=np.int64))
    return obs, action


def _signals(result: StepResult) -> dict[str, npt.NDArray[Any]]:
    obs = result.observable
    return {
        "clicked_item": obs.clicked_item,
        "click_position": obs.click_position,
        "dwell_s": obs.dwell_s,
        "like": obs.like,
        "conversion": obs.conversion,
        "revenue": obs.revenue,
        "skip": obs.skip,
        "session_end": result.session.session_end,
    }


def _hidden(result: StepResult) -> dict[str, npt.NDArray[Any]]:
    hid = result.hidden
    return {
        "satisfaction": hid.satisfaction,
        "budget_s": hid.budget_s,
        "lifetime_value": hid.lifetime_value,
        "lifetime_revenue": hid.lifetime_revenue,
    }


class SlateGymEnv(gymnasium.Env[Obs, IntArray]):  # type: ignore[misc]  # untyped base
    """One simulated user per episode (a whole life), for single-agent RL libraries.

    ``world`` defaults to :func:`make_world` of the default catalog; each :meth:`reset`
    draws a user uniformly from the population (or always ``user_idx``) and starts a fresh
    life for them. See the module docstring for spaces, reward and info.
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 - Gymnasium's convention

    def __init__(
        self,
        world: SyntheticWorld | None = None,
        settings: SimulatorSettings | None = None,
        *,
        user_idx: int | None = None,
        choice_model: ChoiceModel | None = None,
        reward_fn: RewardFn | None = None,
        render_mode: str | None = None,
    ) -> None:
        if render_mode is not None:
            raise ValueError(f"render_mode {render_mode!r} is not supported")
        cfg = settings or SimulatorSettings()
        self.core = SlateEnv(
            world or make_world(CatalogSettings()), choice_model, seed=cfg.seed, settings=cfg
        )
        if user_idx is not None and not 0 <= user_idx < self.core.num_users:
            raise ValueError(f"user_idx must lie in [0, {self.core.num_users}), got {user_idx}")
        self.settings = self.core.settings
        self.fixed_user = user_idx
        self.reward_fn: RewardFn = reward_fn or REWARDS[self.settings.reward]
        self.slate_size = self.settings.slate_size
        self.observation_space, self.action_space = _single_spaces(self.core, self.slate_size)
        self.render_mode = None
        self._user = np.zeros(1, dtype=np.int64)
        self._candidates = np.zeros(self.core.num_candidates, dtype=np.int64)
        self._steps = 0

    def _observe(self) -> Obs:
        self._candidates = self.core.sample_candidates(self._user)[0]
        return {
            "user": self.core.user_features(self._user)[0],
            "candidates": self.core.item_features(self._candidates),
            "candidate_ids": self._candidates.copy(),
        }

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Obs, dict[str, Any]]:
        """Start a new life for a (random or fixed) user; a ``seed`` reseeds everything."""
        super().reset(seed=seed)
        if seed is not None:
            self.core.reset(seed=int(self.np_random.integers(2**63)))
        user = self.fixed_user
        if user is None:
            user = int(self.np_random.integers(self.core.num_users))
        self._user = np.array([user], dtype=np.int64)
        self.core.reset_users(self._user)
        self._steps = 0
        return self._observe(), {"user_idx": user}

    def step(self, action: IntArray) -> tuple[Obs, float, bool, bool, dict[str, Any]]:
        """Serve the slate ``action`` (candidate indices) and return the user's response."""
        cols, replaced = dedupe_actions(
            _check_actions(action, (self.slate_size,), self.core.num_candidates)[None, :],
            self.core.num_candidates,
        )
        result = self.core.step(self._user, self._candidates[cols])
        reward = float(self.reward_fn(result)[0])
        terminated = bool(result.terminated[0])
        self._steps += 1
        truncated = not terminated and self._steps >= self.settings.max_episode_steps
        info: dict[str, Any] = {
            "signals": {k: v[0].item() for k, v in _signals(result).items()},
            "hidden": {k: v[0].item() for k, v in _hidden(result).items()},
            "slate": result.slates[0].copy(),
            "duplicates_replaced": int(replaced[0]),
        }
        return self._observe(), reward, terminated, truncated, info


class SlateVectorEnv(VectorEnv[Obs, IntArray, npt.NDArray[Any]]):  # type: ignore[misc]
    """``num_envs`` simulated users stepped together by one vectorized core call.

    Slot ``i`` plays population user ``i % num_users`` of ``world`` (each slot has its own
    state, so slots sharing a user are independent copies). Uses next-step autoreset: after a
    slot terminates or truncates, its next :meth:`step` ignores the action, starts a new life
    and returns the fresh observation with reward 0 (``info["autoreset"]`` marks those slots,
    whose signals are zeroed). ``info`` maps signal names to ``[n]`` arrays
    (``info["hidden"]`` likewise, for evaluation only).
    """

    metadata: dict[str, Any] = {  # noqa: RUF012 - Gymnasium's convention
        "render_modes": [],
        "autoreset_mode": AutoresetMode.NEXT_STEP,
    }

    def __init__(
        self,
        num_envs: int = 8,
        world: SyntheticWorld | None = None,
        settings: SimulatorSettings | None = None,
        *,
        choice_model: ChoiceModel | None = None,
        reward_fn: RewardFn | None = None,
        render_mode: str | None = None,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if render_mode is not None:
            raise ValueError(f"render_mode {render_mode!r} is not supported")
        cfg = settings or SimulatorSettings()
        base = world or make_world(CatalogSettings())
        population = base.select_users(np.arange(num_envs, dtype=np.int64) % base.num_users)
        self.core = SlateEnv(population, choice_model, seed=cfg.seed, settings=cfg)
        self.settings = self.core.settings
        self.num_envs = num_envs
        self.reward_fn: RewardFn = reward_fn or REWARDS[self.settings.reward]
        self.slate_size = self.settings.slate_size
        self.single_observation_space, self.single_action_space = _single_spaces(
            self.core, self.slate_size
        )
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.render_mode = None
        self._candidates = np.zeros((num_envs, self.core.num_candidates), dtype=np.int64)
        self._steps = np.zeros(num_envs, dtype=np.int64)
        self._autoreset = np.zeros(num_envs, dtype=np.bool_)

    def _observe(self) -> Obs:
        self._candidates = self.core.sample_candidates()
        return {
            "user": self.core.user_features(),
            "candidates": self.core.item_features(self._candidates),
            "candidate_ids": self._candidates.copy(),
        }

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Obs, dict[str, Any]]:
        """Start a fresh life in every slot; a ``seed`` reseeds everything."""
        super().reset(seed=seed)
        if seed is not None:
            self.core.reset(seed=int(self.np_random.integers(2**63)))
        else:
            self.core.reset()
        self._steps[:] = 0
        self._autoreset[:] = False
        return self._observe(), {}

    def step(
        self, actions: IntArray
    ) -> tuple[Obs, FloatArray, npt.NDArray[np.bool_], npt.NDArray[np.bool_], dict[str, Any]]:
        """Serve one slate per slot; slots that ended on the previous step restart instead."""
        cols, replaced = dedupe_actions(
            _check_actions(actions, (self.num_envs, self.slate_size), self.core.num_candidates),
            self.core.num_candidates,
        )
        slates = np.take_along_axis(self._candidates, cols, axis=1)
        result = self.core.step(None, slates, check=False)  # distinct by construction
        rewards = np.asarray(self.reward_fn(result), dtype=np.float32).copy()
        terminated = result.terminated.copy()
        self._steps += 1
        truncated = (self._steps >= self.settings.max_episode_steps) & ~terminated
        signals, hidden = _signals(result), _hidden(result)
        was_reset = self._autoreset
        restart = np.flatnonzero(was_reset)
        if restart.size:
            # The core stepped these slots too (one batched call); discard that step.
            self.core.reset_users(restart)
            rewards[restart] = 0.0
            terminated[restart] = False
            truncated[restart] = False
            self._steps[restart] = 0
            replaced[restart] = 0
            for values in (*signals.values(), *hidden.values()):
                values[restart] = 0
            signals["clicked_item"][restart] = -1
            signals["click_position"][restart] = -1
        self._autoreset = terminated | truncated
        info: dict[str, Any] = {
            **signals,
            "hidden": hidden,
            "duplicates_replaced": replaced,
            "autoreset": was_reset,
        }
        return self._observe(), rewards, terminated, truncated, info


def register_envs() -> None:
    """Register the Gymnasium ids (idempotent: importing twice or reloading is harmless)."""
    if SLATE_ENV_ID not in gymnasium.registry:
        gymnasium.register(
            id=SLATE_ENV_ID,
            entry_point="recsys.simulator.gym_env:SlateGymEnv",
            vector_entry_point="recsys.simulator.gym_env:SlateVectorEnv",
        )
    if SLATE_VECTOR_ENV_ID not in gymnasium.registry:
        gymnasium.register(
            id=SLATE_VECTOR_ENV_ID,
            vector_entry_point="recsys.simulator.gym_env:SlateVectorEnv",
        )
