"""What the trainer needs from an environment, and adapters that give it that.

The trainer speaks one small Protocol, :class:`BatchSlateEnv`: ``B`` parallel users, a
:class:`~recsys.policy.batch.SlateObs` per step (user features, per-candidate item features),
``step(slates)`` with slates as *candidate indices*, and an :class:`EnvStep` back (per-slot
observable responses, ``done`` per user, and, where the environment knows it, the hidden true
per-step reward used only for evaluation and the upper-bound training signal). Finished rows
are replaced by fresh episodes inside ``step`` (auto-reset), so ``next_obs`` of a done row
already belongs to the next episode, as in :class:`~recsys.policy.testing.TinySlateEnv`.

Adapters:

- :class:`SimulatorSlateEnv`: the project simulator seen through events
  (:class:`SimulatedUsers`: the latent :class:`~recsys.simulator.env.SlateEnv`, every user's
  event-derived state, candidates from a retriever, item features from a static table plus
  user-item cross features), the whole population stepped in place.
- :class:`GymSlateEnv`: any Gymnasium ``Env`` or ``VectorEnv`` whose observation is a dict with
  user features and per-candidate item features (or candidate ids into a static item table
  the env declares once, :mod:`~recsys.policy.training.item_table`) and whose action is a
  slate of candidate indices (RecSim-style, e.g. ``recsys/SlateEnv-v0``). Its per-slot
  signals and rewards come from ``info`` through a declared mapping (several clicks per
  slate; a declared key a step lacks is an error, not a zero).
- :class:`TinyEnvAdapter`: the known-optimum :class:`~recsys.policy.testing.TinySlateEnv`.

A custom environment only has to implement the Protocol (see ``docs/policy.md``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from recsys.config import SimulatorSettings
from recsys.data.synthetic import SyntheticWorld
from recsys.features import (
    EventFold,
    FeatureSpec,
    ItemFeaturizer,
    UserFeaturizer,
    event_cross_blocks,
)
from recsys.policy.batch import NUM_SIGNALS, SIGNAL_NAMES, SlateObs, SlateResponse
from recsys.policy.observation import FEATURE_KINDS, FeatureKind
from recsys.policy.testing import TinySlateEnv
from recsys.policy.training.item_table import (
    ITEM_TABLE_ATTR,
    check_item_table,
    gather_item_features,
)
from recsys.protocols import HistoryCandidateSource
from recsys.simulator.candidates import CandidateSampler, UniformCandidateSampler
from recsys.simulator.env import SlateEnv
from recsys.simulator.results import StepResult
from recsys.types import CandidateBatch, CandidateFilters, FloatArray, IntArray

BoolArray = npt.NDArray[np.bool_]

__all__ = [
    "BINARY_SIGNALS",
    "FEATURE_KINDS",
    "SIGNALS_ATTR",
    "SLOT_REWARD_ATTR",
    "BatchSlateEnv",
    "EnvStep",
    "FeatureKind",
    "GymSlateEnv",
    "SimulatedUsers",
    "SimulatorSlateEnv",
    "TinyEnvAdapter",
    "UniformCandidates",
    "check_signal_mapping",
    "credit_env_reward",
    "cross_blocks",
    "declared_attribute",
    "latent_cross_blocks",
    "per_slot_info_keys",
    "recsys_info_signals",
    "response_from_step_result",
    "simulated_session_keys",
]


class EnvStep(NamedTuple):
    """One step of ``B`` users.

    - ``response``: per-slot observable signals ``[B, S]``.
    - ``next_obs``: what the policy sees next (a done row already shows a fresh episode).
    - ``done`` ``[B]``: the episode terminated at this step (no bootstrapping past it).
    - ``hidden_reward`` ``[B]`` or ``None``: the true per-step reward when the environment
      knows it (the simulator's lifetime-value increment, in minutes); evaluation and the
      ``hidden`` upper-bound reward only, never a policy input.
    - ``env_reward`` ``[B, S]`` or ``None``: the environment's own reward, per slot (a
      Gymnasium env's per-slot reward, or its scalar reward split over the clicked slots,
      slot 0 when none: :func:`credit_env_reward`); each row sums to the env's reward.
    - ``valid`` ``[B]`` or ``None``: rows whose transition is real; a vector env with
      next-step autoreset spends one step per finished sub-env on resetting, and that row's
      transition must not be learned from. ``None`` means all rows are valid.
    - ``truncated`` ``[B]`` or ``None``: the episode was cut at this step by a time limit, not
      terminated: it ends here (episode accounting), but ``next_obs`` is its real last
      observation and its value is bootstrapped (``done`` is false). ``None``: no truncation.
    """

    response: SlateResponse
    next_obs: SlateObs
    done: BoolArray
    hidden_reward: FloatArray | None = None
    env_reward: FloatArray | None = None
    valid: BoolArray | None = None
    truncated: BoolArray | None = None

    def episode_end(self) -> BoolArray:
        """``[B]``: the episode ended at this step, terminated or truncated."""
        if self.truncated is None:
            return self.done
        return self.done | self.truncated


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


def latent_cross_blocks(num_topics: int) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Cross-feature blocks of the simulator's latent user features (interests, fatigue,
    satiation; see :meth:`recsys.simulator.user.UserModel.user_feature_names`)."""
    t = num_topics
    return (0, t, 2 * t + 5), ("interest", "fatigue", "satiation")


def cross_blocks(kind: FeatureKind, spec: FeatureSpec) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """The user-feature blocks item features are crossed with, for either feature kind."""
    if kind == "event":
        return event_cross_blocks(spec)
    return latent_cross_blocks(spec.num_topics)


class UniformCandidates:
    """Uniformly random candidates whatever the history (the logging policy's candidates,
    before any retriever exists), as a :class:`~recsys.protocols.HistoryCandidateSource`.

    Rows are a uniform ordered sample of the catalog (its own seeded stream), ``num_organic
    + num_ads`` of them, ads wherever they fall (the blocks are not separated). ``sampler``
    replaces the uniform draw by any simulator
    :class:`~recsys.simulator.candidates.CandidateSampler` (e.g. a calibrated env's
    ``candidate_sampler``), asked for the batch's row indices as its users.
    """

    def __init__(
        self, is_ad: npt.ArrayLike, seed: int = 0, sampler: CandidateSampler | None = None
    ) -> None:
        self.is_ad = np.asarray(is_ad, dtype=np.bool_)
        self._sampler = sampler or UniformCandidateSampler(int(self.is_ad.shape[0]))
        self._rng = np.random.default_rng(seed)

    def candidates_for_histories(
        self,
        histories: IntArray,
        num_organic: int,
        num_ads: int,
        *,
        exclude: Sequence[IntArray] | None = None,
        filters: CandidateFilters | None = None,
        exclude_history: bool = True,
    ) -> CandidateBatch:
        """``[B, num_organic + num_ads]`` distinct uniform ids per row (history ignored)."""
        b = int(np.asarray(histories).shape[0])
        ids = self._sampler.sample(np.arange(b), num_organic + num_ads, self._rng)
        return CandidateBatch(
            item_ids=ids,
            scores=np.zeros(ids.shape, dtype=np.float32),
            mask=np.ones(ids.shape, dtype=np.bool_),
            is_ad=self.is_ad[ids],
        )


class SimulatedUsers:
    """Simulated users as a recommender observes them: through their events.

    Holds the latent simulator (:class:`~recsys.simulator.env.SlateEnv`) and, for every user,
    the compact state the :class:`~recsys.features.EventFold` folds from the simulated
    impressions and feedback, exactly as the online updater folds the service's. A policy
    sees ``features="event"`` user features (:class:`~recsys.features.UserFeaturizer` on that
    state at request time) or, for comparison, ``"latent"`` ones (the simulator's true
    interests, fatigue and satiation, which no production system has). Candidates come from
    ``candidates`` given each user's recently clicked items (the FAISS retriever in training
    and evaluation, so a policy learns on what it will be served); item features from
    ``items``. A churned user's next life is a new user: their event state starts empty.

    ``rows`` (population indices) selects users; ``None`` is the whole population, stepped
    in place (the training fast path). ``core`` wraps an existing simulator over ``world``
    (e.g. a calibrated one, whose choice model and candidate sampler differ) instead of
    building one from ``settings`` and ``seed``; ``settings`` should then be its settings.
    """

    def __init__(
        self,
        world: SyntheticWorld,
        settings: SimulatorSettings,
        *,
        seed: int,
        fold: EventFold,
        candidates: HistoryCandidateSource,
        items: ItemFeaturizer,
        features: FeatureKind = "event",
        num_ads: int = 0,
        core: SlateEnv | None = None,
    ) -> None:
        if features not in FEATURE_KINDS:
            raise ValueError(f"features must be event or latent, got {features!r}")
        if fold.num_items != world.num_items or items.num_items != world.num_items:
            raise ValueError(
                f"fold ({fold.num_items} items), item features ({items.num_items}) and world "
                f"({world.num_items}) describe different catalogs"
            )
        if not 0 <= num_ads < settings.num_candidates:
            raise ValueError(
                f"num_ads must be in [0, num_candidates={settings.num_candidates}), got {num_ads}"
            )
        if core is not None and (
            core.num_items != world.num_items or core.num_users != world.num_users
        ):
            raise ValueError(
                f"core simulates {core.num_users} users x {core.num_items} items, world has "
                f"{world.num_users} x {world.num_items}"
            )
        self.core = core if core is not None else SlateEnv(world, seed=seed, settings=settings)
        self.fold = fold
        self.users = UserFeaturizer(fold.spec)
        self.items = items
        self.candidates = candidates
        self.features: FeatureKind = features
        self.num_ads = int(num_ads)
        self.num_organic = settings.num_candidates - self.num_ads
        self.states = fold.codec.empty(world.num_users)
        self._t = 0

    @property
    def num_users(self) -> int:
        """Population size."""
        return self.core.num_users

    @property
    def slate_size(self) -> int:
        """Slots per slate."""
        return self.core.settings.slate_size

    @property
    def user_dim(self) -> int:
        """Width of the user features a policy sees."""
        if self.features == "event":
            return self.users.dim
        return len(self.core.user_feature_names)

    @property
    def item_dim(self) -> int:
        """Width of the item features a policy sees."""
        return self.items.dim

    def reset(self, seed: int | None = None) -> None:
        """Every user starts a fresh life with no events; reseeds when ``seed`` is given."""
        self.core.reset(seed)
        self.states = self.fold.codec.empty(self.num_users)
        self._t = 0

    def _session_keys(self, rows: IntArray | None) -> npt.NDArray[np.uint32]:
        life, session = self.core.upcoming_sessions(rows)
        return simulated_session_keys(life, session)

    def user_features(self, rows: IntArray | None = None) -> FloatArray:
        """``[B, user_dim]`` features of users about to be served (request time)."""
        if self.features == "latent":
            return self.core.user_features(rows)
        return self.event_features(rows)

    def event_features(self, rows: IntArray | None = None) -> FloatArray:
        """What the service would know about the users at their next request: the
        :class:`~recsys.features.UserFeaturizer` on their event state, after the fold's
        :meth:`~recsys.features.EventFold.begin` (a new session starts where one does)."""
        states = self.states if rows is None else self.states[rows]
        ts = np.full(states.shape[0], float(self._t))
        return self.users.features_at(self.fold, states, ts, self._session_keys(rows))

    def observe(self, rows: IntArray | None = None) -> SlateObs:
        """Candidates for the users and the policy's observation of them."""
        recent = self.states["recent"] if rows is None else self.states["recent"][rows]
        batch = self.candidates.candidates_for_histories(recent, self.num_organic, self.num_ads)
        ids = np.where(batch.mask, batch.item_ids, 0)  # padding points at a real item, masked
        uf = self.user_features(rows)
        return SlateObs(
            user_features=uf,
            item_features=self.items.features(uf, ids),
            candidate_ids=ids,
            candidate_mask=None if batch.mask.all() else batch.mask,
            is_ad=batch.is_ad & batch.mask,
        )

    def step(self, rows: IntArray | None, items: IntArray) -> StepResult:
        """Serve catalog ``items`` ``[B, S]`` to the users, fold what they did into their event
        states, and forget the event state of users who churned (their next life is a new
        user). Candidate rows are distinct, so the simulator's checks are skipped."""
        keys = self._session_keys(rows)
        result = self.core.step(rows, items, check=False)
        b = result.user_idx.shape[0]
        states = self.states if rows is None else self.states[rows]
        obs = result.observable
        self.fold.fold_step(
            states,
            ts=np.full(b, float(self._t)),
            sessions=keys,
            requests=np.full(b, (self._t % 2**31) * 2 + 1, dtype=np.uint32),
            slates=items,
            clicked_item=obs.clicked_item,
            dwell_s=obs.dwell_s,
            like=obs.like,
            conversion=obs.conversion,
            skip=obs.skip,
        )
        churned = np.flatnonzero(result.session.terminated)
        if churned.size:
            states[churned] = self.fold.codec.empty(churned.size)
        if rows is not None:
            self.states[rows] = states
        self._t += 1
        return result


def simulated_session_keys(life: IntArray, session: IntArray) -> npt.NDArray[np.uint32]:
    """Session keys of simulated ``(life, session)`` pairs: nonzero, and different whenever
    either changes (the fold only compares them), like :func:`recsys.features.session_key`
    of a client's session id."""
    key = (np.asarray(life, np.int64) % 2**15) * 2**16 + np.asarray(session, np.int64) % 2**16
    out: npt.NDArray[np.uint32] = (key * 2 + 1).astype(np.uint32)
    return out


class SimulatorSlateEnv:
    """The project simulator behind :class:`BatchSlateEnv`: every user of ``users`` is a row.

    Each step asks the candidate source for every user's candidates, serves the chosen
    candidate indices to the whole population in one in-place step and reports churn as
    ``done``; a churned user starts a new life (a new user, with no events) when next stepped,
    so rows never run out. ``hidden_reward`` is the increment of the hidden lifetime value
    (dwell minutes; the simulator defines LTV as cumulative dwell).
    """

    def __init__(self, users: SimulatedUsers) -> None:
        self.users = users
        self.batch_size = users.num_users
        self.slate_size = users.slate_size
        self._candidates = np.zeros((self.batch_size, 1), np.int64)
        self._ltv = np.zeros(self.batch_size, dtype=np.float64)

    @property
    def user_dim(self) -> int:
        """Width of the user features."""
        return self.users.user_dim

    @property
    def item_dim(self) -> int:
        """Width of the item features."""
        return self.users.item_dim

    def observe(self) -> SlateObs:
        """Fresh candidates for every user and the observation of them."""
        obs = self.users.observe(None)
        self._candidates = obs.candidate_ids
        return obs

    def reset(self, seed: int | None = None) -> SlateObs:
        """Every user starts a fresh life; reseeds the simulator when ``seed`` is given."""
        self.users.reset(seed)
        self._ltv[:] = 0.0
        return self.observe()

    def step(self, slates: IntArray) -> EnvStep:
        """Serve candidate indices ``[B, S]`` to every user; churned users restart next step."""
        idx = np.asarray(slates, dtype=np.int64)
        items = np.take_along_axis(self._candidates, idx, axis=1)
        result = self.users.step(None, items)
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

#: The attribute a Gymnasium env declares its per-slot signals under: a mapping from project
#: signal name (:data:`~recsys.policy.batch.SIGNAL_NAMES`) to the ``info`` key that holds it.
SIGNALS_ATTR = "slate_signals"
#: The attribute a Gymnasium env names its per-slot reward's ``info`` key under.
SLOT_REWARD_ATTR = "slot_reward_key"
#: Signals that are events: a mapped value counts as 1 where it is non-zero.
BINARY_SIGNALS = frozenset({"click", "like", "conversion", "skip"})

logger = logging.getLogger(__name__)


def _same_declaration(a: Any, b: Any) -> bool:
    """Whether two sub-envs' declarations agree (arrays by value, mappings by items)."""
    if a is b:
        return True
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        return isinstance(a, Mapping) and isinstance(b, Mapping) and dict(a) == dict(b)
    if a is None or b is None or isinstance(a, str) or isinstance(b, str):
        return bool(a == b)
    return bool(np.array_equal(np.asarray(a), np.asarray(b)))


def declared_attribute(env: Any, name: str) -> Any | None:
    """What a Gymnasium env declares as its attribute ``name`` (``None``: nothing).

    A single env's attribute, looked up through its wrappers; a vector env's own attribute,
    else its sub-envs' (fetched once, at construction), which must all be equal: one
    declaration describes every row of the batch.
    """
    import gymnasium

    if isinstance(env, gymnasium.vector.VectorEnv):
        own = getattr(env, name, None)
        if own is not None:
            return own
        try:
            values = tuple(env.get_attr(name))
        except AttributeError:
            return None
        if not values or all(v is None for v in values):
            return None
        for k, other in enumerate(values[1:], start=1):
            if not _same_declaration(values[0], other):
                raise ValueError(
                    f"GymSlateEnv: sub-env {k}'s {name} differs from sub-env 0's; a vector "
                    f"env's sub-envs must declare one {name} (for an item table: share one "
                    "catalog)"
                )
        return values[0]
    get = getattr(env, "get_wrapper_attr", None)
    if get is None:
        return getattr(env, name, None)
    try:
        return get(name)
    except AttributeError:
        return None


def declared_item_table(env: Any) -> Any | None:
    """The ``item_table`` a Gymnasium env declares (``None`` when it declares none); see
    :func:`declared_attribute`."""
    return declared_attribute(env, ITEM_TABLE_ATTR)


def check_signal_mapping(signals: Any, where: str = "signals") -> dict[str, str]:
    """A declared signal mapping, checked: project signal names to non-empty ``info`` keys.

    A name that is not one of :data:`~recsys.policy.batch.SIGNAL_NAMES` is an error here,
    when the env is built, not a signal that silently stays zero for a whole run.
    """
    if not isinstance(signals, Mapping):
        raise ValueError(
            f"GymSlateEnv {where} must map signal names to info keys, got {type(signals).__name__}"
        )
    unknown = sorted(str(name) for name in signals if name not in SIGNAL_NAMES)
    if unknown:
        raise ValueError(
            f"GymSlateEnv {where} names unknown signal(s) {unknown}; the signals are "
            f"{', '.join(SIGNAL_NAMES)} (map each to the info key that holds it per slot)"
        )
    for name, key in signals.items():
        if not isinstance(key, str) or not key:
            raise ValueError(
                f"GymSlateEnv {where}: signal {name!r} must map to an info key (a non-empty "
                f"string), got {key!r}"
            )
    return {str(name): str(key) for name, key in signals.items()}


def credit_env_reward(
    reward: npt.ArrayLike, click: npt.ArrayLike, slot_rewards: npt.ArrayLike | None = None
) -> FloatArray:
    """An env's reward as ``env_reward`` ``[B, S]``: what each slot earned.

    - ``slot_rewards`` ``[B, S]`` (the env's own per-item rewards) are credited as given. A
      row's scalar ``reward`` ``[B]`` that they do not add up to (a per-step bonus or
      penalty tied to no item; float32 rounding aside) leaves a remainder, credited by the
      rule below, so every row still sums to the env's reward and an episode's return is the
      env's own.
    - Otherwise the scalar reward is split over the clicked slots in proportion to their
      ``click`` ``[B, S]`` values (equal shares for 0/1 clicks: two clicks get half each;
      one click gets it all, the one-click rule), or goes to slot 0 when nothing was clicked
      (so it is still counted). Splitting evenly is the least informed guess; an env that
      knows what each item earned should say so with ``slot_rewards``.
    """
    clicks = np.maximum(np.asarray(click, dtype=np.float32), np.float32(0.0))
    if clicks.ndim != 2:
        raise ValueError(f"click must be [B, S], got shape {list(clicks.shape)}")
    b, _ = clicks.shape
    rest = np.asarray(reward, dtype=np.float32).reshape(b)
    if slot_rewards is None:
        out = np.zeros(clicks.shape, dtype=np.float32)
    else:
        out = np.array(slot_rewards, dtype=np.float32).reshape(clicks.shape)
        rest = rest - out.sum(axis=1, dtype=np.float64).astype(np.float32)
        rounding = np.float32(1e-5) * np.maximum(np.abs(out).sum(axis=1), np.float32(1.0))
        rest = np.where(np.abs(rest) <= rounding, np.float32(0.0), rest)
    total = clicks.sum(axis=1)
    clicked = total > 0
    share = clicks / np.where(clicked, total, np.float32(1.0))[:, None]
    share[~clicked, 0] = 1.0
    out += share * rest[:, None]
    return out


SignalsFn = Callable[[Mapping[str, Any], int, int], FloatArray]
"""``(info, batch_size, slate_size) -> [B, S, 6]`` per-slot signals from a step's info."""


def recsys_info_signals(info: Mapping[str, Any], batch_size: int, slate_size: int) -> FloatArray:
    """Per-slot signals from the info of the project's Gymnasium envs (or zeros).

    Reads ``click_position`` and the per-user ``dwell_s``, ``like``, ``conversion``,
    ``revenue``, ``skip`` from ``info["signals"]`` (``SlateGymEnv``) or from ``info`` itself
    (``SlateVectorEnv``), and places them in the clicked slot: one click per slate at most.
    Missing keys count as 0 and a missing ``click_position`` as "no click", so any env works
    (with no signals); :class:`GymSlateEnv` warns once when that looks like signals lost.
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


def per_slot_info_keys(info: Mapping[str, Any], shape: tuple[int, ...]) -> list[str]:
    """Keys of ``info`` whose values are numeric arrays of the per-slot ``shape`` (``[B, S]``
    for a vector env, ``[S]`` for a single one): what looks like per-slot signals."""
    found = []
    for key, value in info.items():
        if str(key).startswith("_") or isinstance(value, Mapping):
            continue
        arr = np.asarray(value) if isinstance(value, (np.ndarray, list, tuple)) else None
        if arr is not None and arr.dtype.kind in "biuf" and arr.shape == shape:
            found.append(str(key))
    return sorted(found)


class GymSlateEnv:
    """A Gymnasium slate env (single or vector) behind :class:`BatchSlateEnv`.

    Requirements (RecSim-style): the observation is a dict holding ``user_key`` (user features
    ``[F_u]``, or ``[n, F_u]`` for a vector env) and ``items_key`` (``[C, F_i]``: one row per
    candidate), optionally ``ids_key`` (candidate catalog ids), ``mask_key`` (valid candidates)
    and ``ads_key`` (sponsored candidates); the action is the slate as candidate indices
    ``[S]`` (``MultiDiscrete([C] * S)``). ``hidden_reward_fn`` (optional) reads the true
    per-step reward from ``info``. A single env is reset when its episode ends (so
    ``next_obs`` is the new episode's first observation); a vector env's own autoreset is
    used, and with next-step autoreset the reset step's row is marked invalid.

    **Signals: a declared mapping.** ``signals`` maps project signal names (``click``,
    ``dwell_s``, ``like``, ``conversion``, ``revenue``, ``skip``) to the ``info`` keys that
    hold them per slot: ``[S]`` for a single env, ``[n, S]`` for a vector env, so a slate can
    have several clicks (e.g. ``signals={"click": "clicks", "dwell_s": "watch_time"}``).
    ``reward_key`` names the ``info`` key of the env's reward per slot (``[S]`` / ``[n, S]``),
    so each item is credited what it earned. Either may instead be declared by the env, as
    its attributes ``slate_signals`` and ``slot_reward_key`` (a vector env's own, else its
    sub-envs', which must agree); the arguments win. The mapping is checked here (an unknown
    signal name is an error) and every step: a declared key that a step's ``info`` lacks
    (or, for a Gymnasium vector env, that a sub-env did not send, its ``_key`` mask) is a
    ``ValueError`` naming the key and the keys that were there, never a silent zero; only a
    vector env's reset-step rows are exempt. Unmapped signals are 0; ``signals={}`` says the
    env sends none. Binary signals count as 1 where their value is non-zero.

    Without a mapping ``signals_fn`` reads them (default :func:`recsys_info_signals`: the
    project's ``click_position`` layout, one click at most). When that default finds no
    click while the env's reward is not zero and ``info`` holds per-slot-shaped arrays, it
    warns once (``logging``), naming those keys: they are probably signals it cannot see.

    **Reward credit** (:func:`credit_env_reward`): ``env_reward`` ``[B, S]`` is the per-slot
    reward under ``reward_key`` (any remainder of the scalar reward it does not account for
    follows the next rule); without one, the env's scalar reward is split over the clicked
    slots in equal shares (slot 0 when nothing was clicked). Every row sums to the env's
    reward.

    A static item table replaces ``items_key``: ``item_table`` (``[num_items, F_i]``, row ``i``
    for catalog id ``i``), given here or declared by the env as its ``item_table`` attribute
    (a vector env's own, else its sub-envs', which must agree), is checked once, and each
    observation then needs only ``ids_key`` (``[C]`` catalog ids): the features are
    ``item_table[ids]``, gathered per step (padding ids under ``mask_key`` may be anything,
    their features are zeros). The argument wins over the attribute. An observation that
    still holds ``items_key`` as well is refused as ambiguous (pass ``items_key=None`` to read
    the table and ignore that key); one with neither is an error naming both ways.

    Time limits: with a vector env's next-step autoreset (Gymnasium's default) a truncated
    episode is reported as ``truncated``, not ``done``: the observation of that step is the
    episode's real last one, so its value is bootstrapped. A single env, and a vector env with
    another autoreset mode, return the next episode's first observation on that step instead,
    so there a truncation still ends the episode as ``done`` (no bootstrapping).
    """

    def __init__(
        self,
        env: Any,
        *,
        slate_size: int | None = None,
        user_key: str = "user",
        items_key: str | None = "candidates",
        ids_key: str | None = "candidate_ids",
        mask_key: str | None = None,
        ads_key: str | None = None,
        signals_fn: SignalsFn = recsys_info_signals,
        hidden_reward_fn: Callable[[Mapping[str, Any]], npt.ArrayLike] | None = None,
        item_table: npt.ArrayLike | None = None,
        signals: Mapping[str, str] | None = None,
        reward_key: str | None = None,
    ) -> None:
        import gymnasium

        self.env = env
        self.vector = isinstance(env, gymnasium.vector.VectorEnv)
        self.batch_size = int(env.num_envs) if self.vector else 1
        space = env.single_action_space if self.vector else env.action_space
        inferred = int(np.prod(space.shape)) if space.shape else 1
        self.slate_size = int(slate_size or inferred)
        self.keys = (user_key, items_key, ids_key, mask_key, ads_key)
        table = item_table if item_table is not None else declared_item_table(env)
        #: The static item table ``[num_items, F_i]`` (read-only float32), or ``None``.
        self.item_table: FloatArray | None = (
            None if table is None else check_item_table(table, "GymSlateEnv item_table")
        )
        if self.item_table is not None and ids_key is None:
            raise ValueError(
                "GymSlateEnv: an item table needs candidate ids in the observation; "
                "ids_key must name them"
            )
        declared = signals if signals is not None else declared_attribute(env, SIGNALS_ATTR)
        #: The declared mapping signal name -> info key, or ``None`` (``signals_fn`` reads).
        self.signals: dict[str, str] | None = (
            None if declared is None else check_signal_mapping(declared)
        )
        if self.signals is not None and signals_fn is not recsys_info_signals:
            raise ValueError(
                "GymSlateEnv: give a signals mapping or a signals_fn, not both (the mapping "
                "reads the signals itself)"
            )
        key = reward_key if reward_key is not None else declared_attribute(env, SLOT_REWARD_ATTR)
        if key is not None and (not isinstance(key, str) or not key):
            raise ValueError(f"GymSlateEnv reward_key must be an info key, got {key!r}")
        #: The info key of the per-slot reward, or ``None`` (the scalar reward is split).
        self.reward_key: str | None = key
        self.signals_fn = signals_fn
        self.hidden_reward_fn = hidden_reward_fn
        mode = getattr(env, "metadata", {}).get("autoreset_mode")
        self._next_step_autoreset = self.vector and str(mode).lower().endswith("next_step")
        self._pending_reset = np.zeros(self.batch_size, dtype=np.bool_)
        self._seeded = False
        # The vanishing-signals check of the default reader: done once a click is read or
        # the warning is given.
        self._signals_checked = self.signals is not None or signals_fn is not recsys_info_signals

    def _obs(self, raw: Mapping[str, Any]) -> SlateObs:
        user_key, items_key, ids_key = self.keys[:3]
        user = np.asarray(raw[user_key], dtype=np.float32)
        if not self.vector:
            user = user[None]
        if self.item_table is not None:
            return self._table_obs(raw, user)
        if items_key is None or items_key not in raw:
            raise ValueError(
                f"GymSlateEnv: the observation (keys {sorted(raw)}) has no item features "
                f"{items_key!r} and the env declares no item_table; send per-candidate "
                f"features under items_key, or declare an item_table and send ids_key"
            )
        items = np.asarray(raw[items_key], dtype=np.float32)
        if not self.vector:
            items = items[None]
        b, c = items.shape[:2]
        ids = (
            np.broadcast_to(np.arange(c, dtype=np.int64), (b, c)).copy()
            if ids_key is None or ids_key not in raw
            else np.asarray(raw[ids_key], dtype=np.int64).reshape(b, c)
        )
        return SlateObs(user, items, ids, *self._flags(raw, b, c))

    def _flags(
        self, raw: Mapping[str, Any], b: int, c: int
    ) -> tuple[BoolArray | None, BoolArray | None]:
        """``(candidate_mask, is_ad)`` of an observation, ``None`` where absent."""

        def optional(key: str | None) -> BoolArray | None:
            if key is None or key not in raw:
                return None
            return np.asarray(raw[key], dtype=np.bool_).reshape(b, c)

        return optional(self.keys[3]), optional(self.keys[4])

    def _table_obs(self, raw: Mapping[str, Any], user: FloatArray) -> SlateObs:
        """An observation of candidate ids: features gathered from the item table."""
        assert self.item_table is not None
        items_key, ids_key = self.keys[1:3]
        if items_key is not None and items_key in raw:
            raise ValueError(
                f"GymSlateEnv: the observation holds item features {items_key!r} and the env "
                f"has an item_table: which one is meant is ambiguous. Pass items_key=None to "
                f"use the table (the observation's {items_key!r} is then ignored), or drop "
                f"the table"
            )
        if ids_key is None or ids_key not in raw:
            raise ValueError(
                f"GymSlateEnv: the env has an item_table, so the observation (keys "
                f"{sorted(raw)}) must hold candidate ids {ids_key!r}"
            )
        ids = np.asarray(raw[ids_key])
        if ids.ndim != (2 if self.vector else 1):
            want = "[n, C]" if self.vector else "[C]"
            raise ValueError(
                f"GymSlateEnv: {ids_key!r} must be {want} catalog ids, got shape {list(ids.shape)}"
            )
        ids = ids.reshape(self.batch_size, -1)
        b, c = ids.shape
        mask, ads = self._flags(raw, b, c)
        items = gather_item_features(self.item_table, ids, mask, f"observation {ids_key!r}")
        return SlateObs(user, items, ids.astype(np.int64, copy=False), mask, ads)

    def reset(self, seed: int | None = None) -> SlateObs:
        """Reset every sub-env (seeded when ``seed`` is given)."""
        raw, _ = self.env.reset(seed=seed)
        self._pending_reset[:] = False
        return self._obs(raw)

    def _slot_values(
        self, info: Mapping[str, Any], key: str, what: str, rows: BoolArray
    ) -> FloatArray:
        """``info[key]`` as per-slot float32 ``[B, S]``, checked; zeros outside ``rows``.

        ``rows``: the rows whose values must be there (all but a vector env's reset-step
        rows). A key absent while such a row exists, a sub-env that did not send it (a
        Gymnasium vector env's ``_key`` mask), a wrong shape or a non-finite value is a
        :class:`ValueError` naming the key.
        """
        b, s = self.batch_size, self.slate_size
        out = np.zeros((b, s), dtype=np.float32)
        if key not in info:
            if not rows.any():
                return out
            raise ValueError(
                f"GymSlateEnv: {what} is declared as info[{key!r}], but this step's info has "
                f"no {key!r} (its keys: {sorted(map(str, info))}); a declared key must come "
                "with every step"
            )
        raw = np.asarray(info[key])
        want = (b, s) if self.vector else (s,)
        if raw.dtype.kind not in "biuf" or raw.shape != want:
            raise ValueError(
                f"GymSlateEnv: info[{key!r}] ({what}) must be per-slot numbers of shape "
                f"{list(want)}, got {raw.dtype} {list(raw.shape)}"
            )
        values = raw.reshape(b, s).astype(np.float32)
        sent = info.get(f"_{key}") if self.vector else None
        if sent is not None:
            missing = np.flatnonzero(rows & ~np.asarray(sent, dtype=np.bool_).reshape(b))
            if missing.size:
                raise ValueError(
                    f"GymSlateEnv: sub-env(s) {missing.tolist()} sent no info[{key!r}] ({what}) "
                    "on this step; a declared key must come with every step"
                )
        if not np.isfinite(values[rows]).all():
            raise ValueError(f"GymSlateEnv: info[{key!r}] ({what}) holds non-finite values")
        out[rows] = values[rows]
        return out

    def _mapped_signals(self, info: Mapping[str, Any], rows: BoolArray) -> FloatArray:
        """``[B, S, 6]`` signals read through the declared mapping."""
        assert self.signals is not None
        out = np.zeros((self.batch_size, self.slate_size, NUM_SIGNALS), dtype=np.float32)
        for name, key in self.signals.items():
            values = self._slot_values(info, key, f"signal {name!r}", rows)
            if name in BINARY_SIGNALS:
                values = (values != 0).astype(np.float32)
            out[..., SIGNAL_NAMES.index(name)] = values
        return out

    def _check_signals_seen(
        self, info: Mapping[str, Any], click: FloatArray, reward: FloatArray, rows: BoolArray
    ) -> None:
        """Warn once when the default reader sees no click at all while the env earns reward
        and its info holds per-slot arrays: signals it cannot read, not an env without any."""
        if click.any():
            self._signals_checked = True
            return
        if not np.any(reward[rows] != 0):
            return
        shape = (self.batch_size, self.slate_size) if self.vector else (self.slate_size,)
        keys = per_slot_info_keys(info, shape)
        if not keys:
            return
        self._signals_checked = True
        click_key = next((k for k in keys if "click" in k.lower()), keys[0])
        logger.warning(
            "GymSlateEnv: the env's reward is not zero, but the default signals reader (the "
            "one-click info['signals']['click_position'] layout) has found no click so far, "
            "and the step's info holds per-slot arrays it ignores: %s. Clicks and the other "
            "signals count as 0 and the reward is credited to slot 0. Declare them, e.g. "
            "GymSlateEnv(env, signals={'click': %r}, reward_key=...), or signals={} for an "
            "env that sends no signals.",
            ", ".join(repr(k) for k in keys),
            click_key,
        )

    def step(self, slates: IntArray) -> EnvStep:
        """Step with candidate-index slates ``[B, S]``."""
        action = np.asarray(slates, dtype=np.int64)
        raw, reward, terminated, truncated, info = self.env.step(
            action if self.vector else action[0]
        )
        b, s = self.batch_size, self.slate_size
        terminal = np.asarray(terminated, dtype=np.bool_).reshape(b)
        cut = np.asarray(truncated, dtype=np.bool_).reshape(b) & ~terminal
        done = terminal | cut
        scalar = np.asarray(reward, dtype=np.float32).reshape(b)
        # Rows that must carry the declared signals: not a vector env's reset-step rows.
        real = ~self._pending_reset if self._next_step_autoreset else np.ones(b, np.bool_)
        if self.signals is not None:
            signals = self._mapped_signals(info, real)
        else:
            signals = np.asarray(self.signals_fn(info, b, s), dtype=np.float32)
            if not self._signals_checked:
                self._check_signals_seen(info, signals[..., 0], scalar, real)
        response = SlateResponse.from_signals(signals)
        slot = (
            None
            if self.reward_key is None
            else self._slot_values(info, self.reward_key, "the per-slot reward", real)
        )
        env_reward = credit_env_reward(scalar, signals[..., 0], slot)
        hidden = (
            None
            if self.hidden_reward_fn is None
            else np.asarray(self.hidden_reward_fn(info), dtype=np.float32).reshape(b)
        )
        valid = None
        end: BoolArray | None = None
        if self._next_step_autoreset:
            valid = ~self._pending_reset
            self._pending_reset = done.copy()
            # The step's observation is the truncated episode's last one: bootstrap from it.
            done = terminal & valid
            end = cut & valid
        elif not self.vector and done[0]:
            raw, _ = self.env.reset()
        return EnvStep(response, self._obs(raw), done, hidden, env_reward, valid, end)
