"""A multi-click variant of the project simulator: several clicks per slate, and boredom.

The project simulator (:mod:`recsys.simulator.env`) lets a user click one item of a slate or
none. Real feeds get several clicks per slate, and a policy trained as if there were one
mis-credits the rest. :class:`MultiClickVectorEnv` is a Gymnasium vector env over the
project's synthetic world (:func:`~recsys.data.synthetic.make_world`: item topic mixtures,
quality and clickbait, user interests) where:

- **Candidates are the whole catalog** (1,000 items by default). The env declares its items
  once, as a static ``item_table`` (topic mixture, quality, clickbait score per item), and
  each observation carries only the candidate ids (``candidate_ids``, ``0 .. N-1``, the same
  for every row), so candidate index ``i`` is item ``i``.
- **Several clicks per slate** (independent examination, the position-based model): slot
  ``s`` is examined with probability ``examination_decay ** s``, and an examined item is
  clicked with its attraction
  ``sigmoid(interest_weight * interests · topics + quality_weight * quality +
  clickbait_appeal * clickbait + click_bias - boredom_weight * boredom · topics)``,
  independently of the other slots.
- **Each click pays its own reward**: engaged minutes ``max(0, 1 + quality - clickbait_cost
  * clickbait)``, so quality pays and clickbait, which attracts clicks, pays less. The
  env's reward is their sum; ``info["slot_rewards"]`` holds them per slot,
  ``info["clicks"]`` the clicks and ``info["watch_time_s"]`` the engaged seconds (60 per
  minute). The env declares that mapping (``slate_signals``, ``slot_reward_key``), so
  :class:`~recsys.policy.training.envs.GymSlateEnv` reads the clicks and credits each item
  its own reward without being told.
- **Boredom**: a per-topic level that every click adds to (its topic mixture, times
  ``click_boredom``, times ``1 + clickbait_boredom * clickbait``: being baited tires a user
  of the topic faster), that every impression adds a little to (``exposure_boredom`` times
  the slot's examination probability) and that halves every ``boredom_half_life_steps``
  steps. It lowers the attraction of the topic's items, so a topic shown and clicked again
  and again stops paying and recovers when left alone.
- **Episodes of exactly** ``horizon`` **steps** (100), all ending together by a time limit
  (``truncated``, never ``terminated``); next-step autoreset (Gymnasium's default): the step
  after the limit starts every row's next episode, with a new user, and pays nothing.

The user features are the user's topic interests and current boredom ``[2T]``. Boredom is a
deterministic fold of the user's impressions and clicks of known items (what a service logs),
and the interests a profile, so the state is fully observed; the point of this env is
several clicks and their credit, not inferring a hidden user.

**The greedy one-step oracle** (:meth:`MultiClickVectorEnv.oracle_slates`) knows the true
attractions and rewards and serves the slate of the largest expected immediate reward: the
``S`` items of the largest ``attraction * reward``, in that order (with examination
decreasing in the slot, the rearrangement inequality makes it exact). It ignores what a
click costs later: clickbait items are attractive now and their clicks bore the user of
their topic, so a policy that looks ahead can beat it.

Everything is vectorised over users and items (``[B, N]`` matrix products per step, no
Python loop over users or items); the env is seeded (``seed``, and ``reset(seed=...)``
fixes every draw after it).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from recsys.config import CatalogSettings
from recsys.data.synthetic import SyntheticWorld, make_world
from recsys.simulator.gym_env import dedupe_actions
from recsys.types import FloatArray, IntArray

BoolArray = npt.NDArray[np.bool_]
Obs = dict[str, npt.NDArray[Any]]

__all__ = [
    "CLICKBAIT_COLUMN",
    "MULTICLICK_REWARD_KEY",
    "MULTICLICK_SIGNALS",
    "QUALITY_COLUMN",
    "MultiClickSettings",
    "MultiClickVectorEnv",
    "multiclick_world",
]

#: The per-slot signals the env sends, as the project names them -> their ``info`` keys.
MULTICLICK_SIGNALS: dict[str, str] = {"click": "clicks", "dwell_s": "watch_time_s"}
#: The ``info`` key of the per-slot reward (engaged minutes per clicked item).
MULTICLICK_REWARD_KEY = "slot_rewards"
#: Columns of the item table after the ``T`` topic columns.
QUALITY_COLUMN, CLICKBAIT_COLUMN = -2, -1


@dataclass(frozen=True)
class MultiClickSettings:
    """Sizes, click model, reward and boredom of :class:`MultiClickVectorEnv`.

    Catalog: ``num_items`` items over ``num_topics`` topics and ``num_users`` users to draw
    each episode's user from, from ``make_world`` with ``world_seed`` and
    ``clickbait_fraction`` (share of items with a clickbait score in ``[0.5, 1]``).
    Click model and boredom: see the module docstring.
    """

    num_items: int = 1000
    num_topics: int = 10
    num_users: int = 4096
    world_seed: int = 0
    clickbait_fraction: float = 0.15
    slate_size: int = 10
    horizon: int = 100
    examination_decay: float = 0.85
    interest_weight: float = 4.0
    quality_weight: float = 1.0
    clickbait_appeal: float = 1.5
    click_bias: float = -1.5
    clickbait_cost: float = 0.5
    boredom_weight: float = 1.0
    click_boredom: float = 0.3
    clickbait_boredom: float = 2.0
    exposure_boredom: float = 0.02
    boredom_half_life_steps: float = 6.6

    def __post_init__(self) -> None:
        for name in ("num_items", "num_topics", "num_users", "slate_size", "horizon"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.slate_size > self.num_items:
            raise ValueError(
                f"slate_size ({self.slate_size}) must be <= num_items ({self.num_items})"
            )
        for name, value in asdict(self).items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value}")
        if not 0.0 < self.examination_decay <= 1.0:
            raise ValueError(f"examination_decay must lie in (0, 1], got {self.examination_decay}")
        if not 0.0 <= self.clickbait_fraction <= 1.0:
            raise ValueError(
                f"clickbait_fraction must lie in [0, 1], got {self.clickbait_fraction}"
            )
        nonnegative = (
            "clickbait_cost",
            "boredom_weight",
            "click_boredom",
            "clickbait_boredom",
            "exposure_boredom",
        )
        for name in nonnegative:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.boredom_half_life_steps <= 0:
            raise ValueError(
                f"boredom_half_life_steps must be > 0, got {self.boredom_half_life_steps}"
            )


def multiclick_world(settings: MultiClickSettings) -> SyntheticWorld:
    """The project's synthetic world at the env's sizes (same seed, same world)."""
    return make_world(
        CatalogSettings(
            num_items=settings.num_items,
            num_users=settings.num_users,
            num_topics=settings.num_topics,
            seed=settings.world_seed,
        ),
        clickbait_fraction=settings.clickbait_fraction,
    )


class MultiClickVectorEnv(VectorEnv[Obs, IntArray, npt.NDArray[Any]]):  # type: ignore[misc]
    """``num_envs`` users served slates from the whole catalog; several clicks per slate.

    Observation: ``"user"`` ``[n, 2T]`` (interests, boredom) and ``"candidate_ids"``
    ``[n, N]`` (every item; a read-only view). Action: ``[n, S]`` candidate indices (= item
    ids); a repeated item in a slate is replaced deterministically, as in
    :class:`~recsys.simulator.gym_env.SlateVectorEnv`. Reward ``[n]``: the slate's engaged
    minutes. ``info``: ``clicks`` (bool), ``slot_rewards``, ``watch_time_s`` ``[n, S]``,
    ``autoreset`` ``[n]``. Declares ``item_table`` ``[N, T + 2]`` (topic mixture, quality,
    clickbait), ``slate_signals`` and ``slot_reward_key``. See the module docstring.
    """

    metadata: dict[str, Any] = {  # noqa: RUF012 - Gymnasium's convention
        "render_modes": [],
        "autoreset_mode": AutoresetMode.NEXT_STEP,
    }
    #: Declared per-slot signals and reward (read by ``GymSlateEnv``).
    slate_signals: dict[str, str] = MULTICLICK_SIGNALS
    slot_reward_key: str = MULTICLICK_REWARD_KEY

    def __init__(
        self,
        num_envs: int = 64,
        settings: MultiClickSettings | None = None,
        *,
        seed: int = 0,
        world: SyntheticWorld | None = None,
    ) -> None:
        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs must be an integer >= 1, got {num_envs!r}")
        cfg = settings or MultiClickSettings()
        self.settings = cfg
        self.world = world if world is not None else multiclick_world(cfg)
        w = self.world
        if (w.num_items, w.num_topics) != (cfg.num_items, cfg.num_topics):
            raise ValueError(
                f"world has {w.num_items} items x {w.num_topics} topics, settings say "
                f"{cfg.num_items} x {cfg.num_topics}"
            )
        self.num_envs = num_envs
        self.num_items = w.num_items
        self.num_topics = w.num_topics
        self.slate_size = cfg.slate_size
        self.topics: FloatArray = np.ascontiguousarray(w.item_topics, dtype=np.float32)
        quality = w.item_quality.astype(np.float32)
        bait = w.item_clickbait.astype(np.float32)
        table = np.concatenate([self.topics, quality[:, None], bait[:, None]], axis=1)
        table.setflags(write=False)
        #: ``[N, T + 2]``: topic mixture, quality, clickbait (what a policy sees of an item).
        self.item_table: FloatArray = table
        #: Engaged minutes a click on each item pays ``[N]``.
        self.click_reward: FloatArray = np.maximum(
            1.0 + quality - np.float32(cfg.clickbait_cost) * bait, 0.0
        ).astype(np.float32)
        #: Attraction logit of each item apart from the user ``[N]``.
        self.static_logit: FloatArray = (
            cfg.quality_weight * quality + cfg.clickbait_appeal * bait + cfg.click_bias
        ).astype(np.float32)
        #: Boredom a click on each item adds to each topic ``[N, T]``.
        self.click_boredom: FloatArray = (
            cfg.click_boredom * (1.0 + cfg.clickbait_boredom * bait)[:, None] * self.topics
        ).astype(np.float32)
        #: Probability that slot ``s`` is examined ``[S]``.
        self.examination: FloatArray = (cfg.examination_decay ** np.arange(cfg.slate_size)).astype(
            np.float32
        )
        self.boredom_decay = np.float32(2.0 ** (-1.0 / cfg.boredom_half_life_steps))
        ids = np.broadcast_to(np.arange(self.num_items, dtype=np.int64), (num_envs, self.num_items))
        self._ids: IntArray = ids  # a read-only view: every row offers the whole catalog
        t2 = 2 * self.num_topics
        self.single_observation_space = spaces.Dict(
            {
                "user": spaces.Box(-np.inf, np.inf, shape=(t2,), dtype=np.float32),
                "candidate_ids": spaces.Box(
                    0, self.num_items - 1, shape=(self.num_items,), dtype=np.int64
                ),
            }
        )
        self.single_action_space = spaces.MultiDiscrete(
            np.full(cfg.slate_size, self.num_items, dtype=np.int64)
        )
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.render_mode = None
        self._rng = np.random.default_rng(seed)
        self.users: IntArray = np.zeros(num_envs, dtype=np.int64)
        self.interests: FloatArray = np.zeros((num_envs, self.num_topics), dtype=np.float32)
        self.boredom: FloatArray = np.zeros((num_envs, self.num_topics), dtype=np.float32)
        self.steps: IntArray = np.zeros(num_envs, dtype=np.int64)
        self._autoreset: BoolArray = np.zeros(num_envs, dtype=np.bool_)
        self._start(np.arange(num_envs))

    # ---- state -----------------------------------------------------------------------------

    def _start(self, rows: IntArray) -> None:
        """New episodes in ``rows``: a user drawn from the population, no boredom."""
        users = self._rng.integers(0, self.world.num_users, size=rows.size)
        self.users[rows] = users
        self.interests[rows] = self.world.user_interests[users]
        self.boredom[rows] = 0.0
        self.steps[rows] = 0

    def _observe(self) -> Obs:
        user = np.concatenate([self.interests, self.boredom], axis=1).astype(np.float32)
        return {"user": user, "candidate_ids": self._ids}

    def attraction(self, items: IntArray | None = None) -> FloatArray:
        """Click probability of an examined item: ``[n, N]`` for the whole catalog, or
        ``[n, S]`` for ``items`` ``[n, S]`` (item ids)."""
        if items is None:
            logit = (
                self.settings.interest_weight * (self.interests @ self.topics.T)
                - self.settings.boredom_weight * (self.boredom @ self.topics.T)
                + self.static_logit[None, :]
            )
        else:
            topics = self.topics[items]  # [n, S, T]
            logit = (
                self.settings.interest_weight * np.einsum("bt,bst->bs", self.interests, topics)
                - self.settings.boredom_weight * np.einsum("bt,bst->bs", self.boredom, topics)
                + self.static_logit[items]
            )
        out: FloatArray = (1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
        return out

    def expected_item_rewards(self) -> FloatArray:
        """``[n, N]``: each item's expected reward if examined now (attraction x the reward
        of its click): what the greedy oracle ranks by."""
        out: FloatArray = self.attraction() * self.click_reward[None, :]
        return out

    def oracle_slates(self, slate_size: int | None = None) -> IntArray:
        """The greedy one-step oracle's slates ``[n, S]`` (item ids = candidate indices).

        The largest expected immediate reward ``sum_s examination[s] * attraction * reward``:
        the ``S`` items of the largest ``attraction * reward``, best first. Exact for this
        click model; blind to boredom to come.
        """
        s = self.slate_size if slate_size is None else int(slate_size)
        if not 1 <= s <= self.num_items:
            raise ValueError(f"slate_size must lie in [1, {self.num_items}], got {s}")
        values = self.expected_item_rewards()
        top = np.argpartition(-values, s - 1, axis=1)[:, :s]
        order = np.argsort(-np.take_along_axis(values, top, axis=1), axis=1, kind="stable")
        out: IntArray = np.take_along_axis(top, order, axis=1).astype(np.int64)
        return out

    # ---- Gymnasium -------------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Obs, dict[str, Any]]:
        """New episodes in every row; a ``seed`` fixes every draw from here on."""
        super().reset(seed=seed)
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self._autoreset[:] = False
        self._start(np.arange(self.num_envs))
        return self._observe(), {}

    def step(
        self, actions: IntArray
    ) -> tuple[Obs, FloatArray, BoolArray, BoolArray, dict[str, Any]]:
        """Serve one slate per row; rows whose episode ended on the last step restart."""
        n, s = self.num_envs, self.slate_size
        arr = np.asarray(actions)
        if arr.shape != (n, s) or (arr.size and arr.dtype.kind not in "iu"):
            raise ValueError(f"actions must be integer item ids of shape {(n, s)}, got {arr.shape}")
        if arr.size and (arr.min() < 0 or arr.max() >= self.num_items):
            raise ValueError(f"actions must lie in [0, {self.num_items})")
        items, _ = dedupe_actions(arr.astype(np.int64, copy=False), self.num_items)
        click_p = self.examination[None, :] * self.attraction(items)
        clicks = self._rng.random((n, s), dtype=np.float32) < click_p
        restart = self._autoreset.copy()
        clicks[restart] = False
        slot_rewards = np.where(clicks, self.click_reward[items], 0.0).astype(np.float32)
        seen = self.settings.exposure_boredom * np.einsum(
            "s,bst->bt", self.examination, self.topics[items]
        )
        bored = np.einsum("bs,bst->bt", clicks.astype(np.float32), self.click_boredom[items])
        self.boredom = (self.boredom_decay * self.boredom + bored + seen).astype(np.float32)
        self.steps += 1
        rows = np.flatnonzero(restart)
        if rows.size:
            self._start(rows)
        truncated = (self.steps >= self.settings.horizon) & ~restart
        self._autoreset = truncated.copy()
        info: dict[str, Any] = {
            "clicks": clicks,
            MULTICLICK_REWARD_KEY: slot_rewards,
            "watch_time_s": slot_rewards * np.float32(60.0),
            "autoreset": restart,
        }
        reward = slot_rewards.sum(axis=1, dtype=np.float32)
        return self._observe(), reward, np.zeros(n, np.bool_), truncated, info
