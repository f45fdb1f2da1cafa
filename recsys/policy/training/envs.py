"""What the trainer needs from an environment, and adapters that give it that.

The trainer speaks one small Protocol, :class:`BatchSlateEnv`: ``B`` parallel users, a
:class:`~recsys.policy.batch.SlateObs` per step (user features, per-candidate item features),
``step(slates)`` with slates as *candidate indices*, and an :class:`EnvStep` back (per-slot
observable responses, ``done`` per user, and, where the environment knows it, the hidden true
per-step reward used only for evaluation and the upper-bound training signal). Finished rows
are replaced by fresh episodes inside ``step`` (auto-reset), so ``next_obs`` of a done row
already belongs to the next episode, as in :class:`~recsys.policy.testing.TinySlateEnv`.

Adapters:

- :class:`SimulatorSlateEnv`: the project :class:`~recsys.simulator.env.SlateEnv` (whole
  population stepped in place, candidates from ``env.sample_candidates``), featurised by
  :class:`SimulatorFeatures` (observable item table, optional per-item statistics learned from
  logs, and user-item cross features).
- :class:`GymSlateEnv`: any Gymnasium ``Env`` or ``VectorEnv`` whose observation is a dict with
  user features and per-candidate item features and whose action is a slate of candidate
  indices (RecSim-style, e.g. ``recsys/SlateEnv-v0``).
- :class:`TinyEnvAdapter`: the known-optimum :class:`~recsys.policy.testing.TinySlateEnv`.

A custom environment only has to implement the Protocol (see ``docs/policy.md``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from recsys.config import SimulatorSettings
from recsys.data.synthetic import SyntheticWorld
from recsys.policy.batch import NUM_SIGNALS, SIGNAL_NAMES, SlateObs, SlateResponse
from recsys.policy.testing import TinySlateEnv
from recsys.simulator.env import SlateEnv
from recsys.simulator.results import StepResult
from recsys.types import FloatArray, IntArray

BoolArray = npt.NDArray[np.bool_]

__all__ = [
    "BatchSlateEnv",
    "EnvStep",
    "GymSlateEnv",
    "SimulatorFeatures",
    "SimulatorSlateEnv",
    "TinyEnvAdapter",
    "response_from_step_result",
]


class EnvStep(NamedTuple):
    """One step of ``B`` users.

    - ``response``: per-slot observable signals ``[B, S]``.
    - ``next_obs``: what the policy sees next (a done row already shows a fresh episode).
    - ``done`` ``[B]``: the episode ended at this step (no bootstrapping past it).
    - ``hidden_reward`` ``[B]`` or ``None``: the true per-step reward when the environment
      knows it (the simulator's lifetime-value increment, in minutes); evaluation and the
      ``hidden`` upper-bound reward only, never a policy input.
    - ``env_reward`` ``[B, S]`` or ``None``: the environment's own reward, per slot (a
      Gymnasium env's scalar reward is credited to the clicked slot, or slot 0).
    - ``valid`` ``[B]`` or ``None``: rows whose transition is real; a vector env with
      next-step autoreset spends one step per finished sub-env on resetting, and that row's
      transition must not be learned from. ``None`` means all rows are valid.
    """

    response: SlateResponse
    next_obs: SlateObs
    done: BoolArray
    hidden_reward: FloatArray | None = None
    env_reward: FloatArray | None = None
    valid: BoolArray | None = None


@runtime_checkable
class BatchSlateEnv(Protocol):
    """A batch of ``batch_size`` users served slates of ``slate_size`` candidate indices."""

    batch_size: int
    slate_size: int

    def reset(self, seed: int | None = None) -> SlateObs:
        """Start fresh episodes for every row (reseeding when ``seed`` is given)."""
        ...

    def step(self, slates: IntArray) -> EnvStep:
        """Serve ``slates`` ``[B, S]`` (indices into the last observation's candidates)."""
        ...


def response_from_step_result(result: StepResult) -> SlateResponse:
    """The simulator's per-slot signals as a :class:`SlateResponse` (float32 ``[B, S]``)."""
    return SlateResponse.from_fields(result.per_slot())


# ---- the project simulator ---------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class SimulatorFeatures:
    """Turns ``(user features, candidate ids)`` into a :class:`SlateObs` for the simulator.

    Item features are the simulator's observable table (topics, log length, ad flag, bid, log
    popularity) plus ``item_extra`` ``[num_items, k]`` columns, typically per-item response
    statistics aggregated from logs (:func:`recsys.policy.training.sessions.item_statistics`):
    quality and clickbait are hidden, and an item id alone carries no information a small
    network can generalise from, so a production system would serve such aggregates from its feature
    store. ``cross`` appends two user-item features, ``topics . interests`` and
    ``topics . fatigue``, which a linear model (LinUCB) cannot form by itself.
    """

    item_table: FloatArray
    is_ad: BoolArray
    num_topics: int
    cross: bool = True

    @classmethod
    def build(
        cls,
        env: SlateEnv,
        item_extra: FloatArray | None = None,
        cross: bool = True,
    ) -> SimulatorFeatures:
        """From a simulator env (its observable item table and ad flags)."""
        table = np.asarray(env.item_feature_table, dtype=np.float32)
        if item_extra is not None:
            extra = np.asarray(item_extra, dtype=np.float32)
            if extra.ndim != 2 or extra.shape[0] != table.shape[0]:
                raise ValueError(
                    f"item_extra must be [num_items={table.shape[0]}, k], got {extra.shape}"
                )
            table = np.concatenate([table, extra], axis=1)
        return cls(
            item_table=np.ascontiguousarray(table),
            is_ad=np.asarray(env.world.item_is_ad, dtype=np.bool_),
            num_topics=env.world.num_topics,
            cross=cross,
        )

    @property
    def item_dim(self) -> int:
        """Width of the item features a policy sees."""
        return int(self.item_table.shape[1]) + (2 if self.cross else 0)

    def obs(self, user_features: FloatArray, candidate_ids: IntArray) -> SlateObs:
        """Observation of users ``[B, F_u]`` with candidates ``[B, C]`` (item ids)."""
        items = np.take(self.item_table, candidate_ids, axis=0)  # [B, C, F_i]
        if self.cross:
            t = self.num_topics
            topics = items[..., :t]
            uf = np.asarray(user_features, dtype=np.float32)
            cross = np.matmul(topics, np.stack([uf[:, :t], uf[:, t : 2 * t]], axis=2))
            items = np.concatenate([items, cross.astype(np.float32)], axis=2)
        return SlateObs(
            user_features=np.asarray(user_features, dtype=np.float32),
            item_features=items,
            candidate_ids=np.asarray(candidate_ids, dtype=np.int64),
            candidate_mask=None,
            is_ad=np.take(self.is_ad, candidate_ids),
        )


class SimulatorSlateEnv:
    """The project simulator behind :class:`BatchSlateEnv`: every user of ``world`` is a row.

    Each step samples ``num_candidates`` candidates per user (``SlateEnv.sample_candidates``),
    serves the chosen candidate indices to the whole population in one in-place
    ``SlateEnv.step(None, ...)`` call and reports churn as ``done``; a churned user starts a
    new life when next stepped, so rows never run out. ``hidden_reward`` is the increment of
    the hidden lifetime value (dwell minutes; the simulator defines LTV as cumulative dwell).
    """

    def __init__(
        self,
        world: SyntheticWorld,
        settings: SimulatorSettings | None = None,
        *,
        seed: int = 0,
        item_extra: FloatArray | None = None,
        cross_features: bool = True,
    ) -> None:
        self.core = SlateEnv(world, seed=seed, settings=settings or SimulatorSettings())
        self.core.check_candidates_fit()
        self.features = SimulatorFeatures.build(self.core, item_extra, cross_features)
        self.batch_size = world.num_users
        self.slate_size = self.core.settings.slate_size
        self._candidates = np.zeros((self.batch_size, self.core.num_candidates), np.int64)
        self._ltv = np.zeros(self.batch_size, dtype=np.float64)

    @property
    def user_dim(self) -> int:
        """Width of the user features."""
        return len(self.core.user_feature_names)

    @property
    def item_dim(self) -> int:
        """Width of the item features (observable table, extras, cross features)."""
        return self.features.item_dim

    def observe(self) -> SlateObs:
        """Fresh candidates for every user and the observation of them."""
        self._candidates = self.core.sample_candidates()
        return self.features.obs(self.core.user_features(), self._candidates)

    def reset(self, seed: int | None = None) -> SlateObs:
        """Every user starts a fresh life; reseeds the simulator when ``seed`` is given."""
        self.core.reset(seed)
        self._ltv[:] = 0.0
        return self.observe()

    def step(self, slates: IntArray) -> EnvStep:
        """Serve candidate indices ``[B, S]`` to every user; churned users restart next step."""
        idx = np.asarray(slates, dtype=np.int64)
        items = np.take_along_axis(self._candidates, idx, axis=1)
        result = self.core.step(None, items, check=False)  # candidate rows are distinct
        ltv = result.hidden.lifetime_value.astype(np.float64)
        hidden = ((ltv - self._ltv) / 60.0).astype(np.float32)
        done = result.session.terminated.copy()
        self._ltv = np.where(done, 0.0, ltv)  # the next life starts from zero
        return EnvStep(
            response=response_from_step_result(result),
            next_obs=self.observe(),
            done=done,
            hidden_reward=hidden,
        )


# ---- the tiny known-optimum env ----------------------------------------------------------


class TinyEnvAdapter:
    """:class:`~recsys.policy.testing.TinySlateEnv` as a :class:`BatchSlateEnv`.

    The planted per-slot reward is both the env reward and (summed) the hidden reward.
    """

    def __init__(self, env: TinySlateEnv) -> None:
        self.env = env
        self.batch_size = env.batch_size
        self.slate_size = env.slate_size

    def reset(self, seed: int | None = None) -> SlateObs:
        """Fresh users (reseeding the env's generator when ``seed`` is given)."""
        if seed is not None:
            self.env.rng = np.random.default_rng(seed)
        return self.env.reset()

    def step(self, slates: IntArray) -> EnvStep:
        """One step of the tiny MDP."""
        out = self.env.step(slates)
        return EnvStep(
            response=out.response,
            next_obs=out.next_obs,
            done=out.done,
            hidden_reward=out.reward.sum(axis=1),
            env_reward=out.reward,
        )


# ---- Gymnasium ---------------------------------------------------------------------------

SignalsFn = Callable[[Mapping[str, Any], int, int], FloatArray]
"""``(info, batch_size, slate_size) -> [B, S, 6]`` per-slot signals from a step's info."""


def recsys_info_signals(info: Mapping[str, Any], batch_size: int, slate_size: int) -> FloatArray:
    """Per-slot signals from the info of the project's Gymnasium envs (or zeros).

    Reads ``click_position`` and the per-user ``dwell_s``, ``like``, ``conversion``,
    ``revenue``, ``skip`` from ``info["signals"]`` (``SlateGymEnv``) or from ``info`` itself
    (``SlateVectorEnv``), and places them in the clicked slot. Missing keys count as 0 and a
    missing ``click_position`` as "no click", so any env works (with no signals).
    """
    src: Mapping[str, Any] = info.get("signals", info)
    out = np.zeros((batch_size, slate_size, NUM_SIGNALS), dtype=np.float32)
    if "click_position" not in src:
        return out
    pos = np.asarray(src["click_position"], dtype=np.int64).reshape(batch_size)
    rows = np.flatnonzero((pos >= 0) & (pos < slate_size))
    out[rows, pos[rows], 0] = 1.0
    for k, name in enumerate(SIGNAL_NAMES[1:], start=1):
        if name in src:
            values = np.asarray(src[name], dtype=np.float32).reshape(batch_size)
            out[rows, pos[rows], k] = values[rows]
    return out


class GymSlateEnv:
    """A Gymnasium slate env (single or vector) behind :class:`BatchSlateEnv`.

    Requirements (RecSim-style): the observation is a dict holding ``user_key`` (user features
    ``[F_u]``, or ``[n, F_u]`` for a vector env) and ``items_key`` (``[C, F_i]``: one row per
    candidate), optionally ``ids_key`` (candidate catalog ids), ``mask_key`` (valid candidates)
    and ``ads_key`` (sponsored candidates); the action is the slate as candidate indices
    ``[S]`` (``MultiDiscrete([C] * S)``). The env's scalar reward becomes ``env_reward``,
    credited to the clicked slot (slot 0 when nothing was clicked); ``signals_fn`` reads the
    per-slot responses from ``info`` (default :func:`recsys_info_signals`), and
    ``hidden_reward_fn`` (optional) the true per-step reward. A single env is reset when its
    episode ends (so ``next_obs`` is the new episode's first observation); a vector env's own
    autoreset is used, and with next-step autoreset the reset step's row is marked invalid.
    """

    def __init__(
        self,
        env: Any,
        *,
        slate_size: int | None = None,
        user_key: str = "user",
        items_key: str = "candidates",
        ids_key: str | None = "candidate_ids",
        mask_key: str | None = None,
        ads_key: str | None = None,
        signals_fn: SignalsFn = recsys_info_signals,
        hidden_reward_fn: Callable[[Mapping[str, Any]], npt.ArrayLike] | None = None,
    ) -> None:
        import gymnasium

        self.env = env
        self.vector = isinstance(env, gymnasium.vector.VectorEnv)
        self.batch_size = int(env.num_envs) if self.vector else 1
        space = env.single_action_space if self.vector else env.action_space
        inferred = int(np.prod(space.shape)) if space.shape else 1
        self.slate_size = int(slate_size or inferred)
        self.keys = (user_key, items_key, ids_key, mask_key, ads_key)
        self.signals_fn = signals_fn
        self.hidden_reward_fn = hidden_reward_fn
        mode = getattr(env, "metadata", {}).get("autoreset_mode")
        self._next_step_autoreset = self.vector and str(mode).lower().endswith("next_step")
        self._pending_reset = np.zeros(self.batch_size, dtype=np.bool_)
        self._seeded = False

    def _obs(self, raw: Mapping[str, Any]) -> SlateObs:
        user_key, items_key, ids_key, mask_key, ads_key = self.keys
        user = np.asarray(raw[user_key], dtype=np.float32)
        items = np.asarray(raw[items_key], dtype=np.float32)
        if not self.vector:
            user, items = user[None], items[None]
        b, c = items.shape[:2]
        ids = (
            np.broadcast_to(np.arange(c, dtype=np.int64), (b, c)).copy()
            if ids_key is None or ids_key not in raw
            else np.asarray(raw[ids_key], dtype=np.int64).reshape(b, c)
        )

        def optional(key: str | None) -> BoolArray | None:
            if key is None or key not in raw:
                return None
            return np.asarray(raw[key], dtype=np.bool_).reshape(b, c)

        return SlateObs(user, items, ids, optional(mask_key), optional(ads_key))

    def reset(self, seed: int | None = None) -> SlateObs:
        """Reset every sub-env (seeded when ``seed`` is given)."""
        raw, _ = self.env.reset(seed=seed)
        self._pending_reset[:] = False
        return self._obs(raw)

    def step(self, slates: IntArray) -> EnvStep:
        """Step with candidate-index slates ``[B, S]``."""
        action = np.asarray(slates, dtype=np.int64)
        raw, reward, terminated, truncated, info = self.env.step(
            action if self.vector else action[0]
        )
        b, s = self.batch_size, self.slate_size
        done = np.asarray(np.logical_or(terminated, truncated), dtype=np.bool_).reshape(b)
        signals = self.signals_fn(info, b, s)
        response = SlateResponse.from_signals(signals)
        env_reward = np.zeros((b, s), dtype=np.float32)
        clicked = signals[..., 0] > 0
        slot = np.where(clicked.any(axis=1), clicked.argmax(axis=1), 0)
        env_reward[np.arange(b), slot] = np.asarray(reward, dtype=np.float32).reshape(b)
        hidden = (
            None
            if self.hidden_reward_fn is None
            else np.asarray(self.hidden_reward_fn(info), dtype=np.float32).reshape(b)
        )
        valid = None
        if self._next_step_autoreset:
            valid = ~self._pending_reset
            self._pending_reset = done.copy()
            done = done & valid
        elif not self.vector and done[0]:
            raw, _ = self.env.reset()
        return EnvStep(response, self._obs(raw), done, hidden, env_reward, valid)
