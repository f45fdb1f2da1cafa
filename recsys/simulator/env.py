"""A batched slate environment: many users are shown slates and respond in one vectorized step.

The environment owns the mutable per-user state (:class:`~recsys.simulator.user.LatentUserState`)
of a whole population and its own seeded random streams; the world stays immutable ground
truth. How users choose is injected as a :class:`~recsys.protocols.ChoiceModel`, how they
respond and evolve lives in :class:`~recsys.simulator.user.UserModel`, and where candidates come
from is a :class:`~recsys.simulator.candidates.CandidateSampler`, so each can be swapped
without touching the stepping logic. The Gymnasium wrappers are thin shells over it.

Two ways to step:

- ``step(user_idx, slates)``: any subset of the population (the demo serves one user per
  request, ``B = 1``). State is gathered for those users and written back.
- ``step(None, slates)``: the whole population in index order; state is updated in place with
  no gather or scatter, the fast path for training and benchmarks.

Lives restart automatically: stepping a user who churned starts a new life for them (fresh
interests, budget and memory; ``session.life`` increments), so a long-running caller never
runs out of users.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from recsys.config import SimulatorSettings
from recsys.data.synthetic import SyntheticWorld
from recsys.protocols import ChoiceModel
from recsys.simulator.candidates import CandidateSampler, UniformCandidateSampler
from recsys.simulator.choice import make_choice_model
from recsys.simulator.results import (
    BoolArray,
    HiddenTruth,
    ObservableResponses,
    SessionInfo,
    StepResult,
)
from recsys.simulator.user import LatentUserState, SlateView, UserModel
from recsys.types import FloatArray, IntArray


class SlateObservation(NamedTuple):
    """What a policy may observe about the population right after :meth:`SlateEnv.reset`.

    ``active_users`` are the user indices that can be served (every user: churned users are
    restarted when stepped). ``t`` counts environment steps since the last reset.
    """

    active_users: IntArray
    t: int


def _as_index_array(name: str, value: npt.ArrayLike, ndim: int) -> IntArray:
    arr = np.asarray(value)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _check_range(name: str, arr: IntArray, upper: int) -> None:
    if arr.size and (arr.min() < 0 or arr.max() >= upper):
        raise ValueError(
            f"{name} must lie in [0, {upper}), got values in [{arr.min()}, {arr.max()}]"
        )


def _duplicate_rows(items: IntArray) -> IntArray:
    """Rows of ``items`` ``[B, S]`` that repeat an id."""
    ordered = np.sort(items, axis=1)
    same = ordered[:, 1:] == ordered[:, :-1]
    if not same.any():  # the common case; a per-row any() over a short axis is slow
        return np.zeros(0, dtype=np.int64)
    dup: IntArray = np.flatnonzero(same.any(axis=1))
    return dup


def _last_occurrence(users: IntArray) -> tuple[IntArray, IntArray]:
    """Unique users and, for each, the batch row of its last occurrence."""
    if users.shape[0] <= 1:
        return users, np.arange(users.shape[0])
    uniq, first_in_reversed = np.unique(users[::-1], return_index=True)
    rows: IntArray = users.shape[0] - 1 - first_in_reversed
    return uniq, rows


class SlateEnv:
    """Shows slates to users, samples their multi-signal responses and evolves them.

    Click appeal of item ``i`` for user ``u`` is ``topics_i . (interests_u - w_F fatigue_u)``
    plus the item's static appeal (quality, clickbait, ad penalty) minus repeat and ad-fatigue
    penalties; the choice model turns a slate's appeals into at most one click. Same ``seed``
    and same inputs give identical results. ``settings`` holds every parameter (defaults:
    :class:`SimulatorSettings`); when ``choice_model`` is None it is built from them.
    """

    def __init__(
        self,
        world: SyntheticWorld,
        choice_model: ChoiceModel | None = None,
        seed: int | None = 0,
        *,
        settings: SimulatorSettings | None = None,
        candidate_sampler: CandidateSampler | None = None,
    ) -> None:
        # Re-validate: a settings object built with model_construct skips pydantic checks.
        cfg = SimulatorSettings.model_validate(
            (settings or SimulatorSettings()).model_dump(), strict=False
        )
        self.world = world
        self.settings = cfg
        self.choice_model: ChoiceModel = choice_model or make_choice_model(cfg)
        self.candidate_sampler: CandidateSampler = candidate_sampler or UniformCandidateSampler(
            world.num_items
        )
        self.user_model = UserModel(world, cfg)
        self._item_table = self.user_model.item_feature_table()
        self._all_users = np.arange(world.num_users, dtype=np.int64)
        self._all_users.setflags(write=False)
        self._seed(seed)
        self._state = self.user_model.initial_state(self._all_users)
        self._t = 0
        self._shift_users: BoolArray | None = None
        self._shift_items: FloatArray | None = None

    def _seed(self, seed: int | None) -> None:
        responses, candidates = np.random.SeedSequence(seed).spawn(2)
        self._rng = np.random.default_rng(responses)
        self._candidate_rng = np.random.default_rng(candidates)

    # -- sizes and feature metadata ---------------------------------------------------------

    @property
    def num_users(self) -> int:
        """Population size; valid user indices are ``0 .. num_users - 1``."""
        return self.world.num_users

    @property
    def num_items(self) -> int:
        """Catalog size; valid item ids are ``0 .. num_items - 1``."""
        return self.world.num_items

    @property
    def num_candidates(self) -> int:
        """Candidates per request (:meth:`sample_candidates`, the Gymnasium observation)."""
        return self.settings.num_candidates

    @property
    def user_feature_names(self) -> tuple[str, ...]:
        """Column names of :meth:`user_features` / ``StepResult.user_features``."""
        return self.user_model.user_feature_names()

    @property
    def item_feature_names(self) -> tuple[str, ...]:
        """Column names of :attr:`item_feature_table` / ``StepResult.item_features``."""
        return self.user_model.item_feature_names()

    @property
    def item_feature_table(self) -> FloatArray:
        """``[num_items, F_i]`` read-only observable item features."""
        return self._item_table

    # -- reset and observation --------------------------------------------------------------

    def reset(self, seed: int | None = None) -> SlateObservation:
        """Restore every user's initial state; reseed the random streams when ``seed`` is given.

        As in Gymnasium, ``seed=None`` keeps the current random streams going.
        """
        if seed is not None:
            self._seed(seed)
        self._state = self.user_model.initial_state(self._all_users)
        self._t = 0
        return SlateObservation(active_users=self._all_users.copy(), t=self._t)

    def reset_users(self, user_idx: npt.ArrayLike) -> None:
        """Start a new life for each listed user (the other users are untouched)."""
        users = self._users(user_idx)
        uniq = np.unique(users)
        self.user_model.restart(self._state, uniq, uniq)

    def alive(self, user_idx: npt.ArrayLike | None = None) -> BoolArray:
        """False for users who churned and have not been stepped (restarted) since."""
        if user_idx is None:
            return self._state.alive.copy()
        out: BoolArray = self._state.alive[self._users(user_idx)]
        return out

    def upcoming_sessions(self, user_idx: npt.ArrayLike | None = None) -> tuple[IntArray, IntArray]:
        """``(life, session)`` ``[B]`` the next step of each user belongs to.

        A churned user starts a new life when next stepped (life + 1, session 0); the
        observers of the simulator use this to know when a client would start a new user or
        a new session.
        """
        state = self._state
        users = self._all_users if user_idx is None else self._users(user_idx)
        alive = state.alive[users]
        life: IntArray = np.where(alive, state.life[users], state.life[users] + 1)
        session: IntArray = np.where(alive, state.session[users], 0)
        return life, session

    def user_features(self, user_idx: npt.ArrayLike | None = None) -> FloatArray:
        """``[B, F_u]`` observable features of users (all of them for ``None``), read-only use.

        A churned user shows the state they left in; they restart when next stepped.
        """
        if user_idx is None:
            return self.user_model.user_features(self._state, self._all_users)
        users = self._users(user_idx)
        return self.user_model.user_features(self._state.take(users), users)

    def item_features(self, items: npt.ArrayLike) -> FloatArray:
        """Observable features of item ids of any shape: ``[..., F_i]``."""
        idx = np.asarray(items)
        if idx.size and idx.dtype.kind not in "iu":
            raise ValueError(f"items must hold integers, got dtype {idx.dtype}")
        _check_range("items", idx.astype(np.int64, copy=False), self.num_items)
        out: FloatArray = np.take(self._item_table, idx, axis=0)
        return out

    def check_candidates_fit(self) -> None:
        """Raise if ``settings.num_candidates`` exceeds the catalog (checked where it matters:
        stepping chosen slates needs no candidates, so tiny worlds stay usable)."""
        if self.settings.num_candidates > self.num_items:
            raise ValueError(
                f"simulator.num_candidates ({self.settings.num_candidates}) exceeds the "
                f"catalog ({self.num_items} items)"
            )

    def sample_candidates(self, user_idx: npt.ArrayLike | None = None) -> IntArray:
        """``[B, num_candidates]`` distinct item ids per user, from the candidate stream.

        Candidates have their own random stream, so sampling them (or not) never changes the
        users' responses.
        """
        self.check_candidates_fit()
        users = self._all_users if user_idx is None else self._users(user_idx)
        return self.candidate_sampler.sample(
            users, self.settings.num_candidates, self._candidate_rng
        )

    # -- preference shifts -------------------------------------------------------------------

    def shift_preferences(self, user_idx: npt.ArrayLike, item_appeal: npt.ArrayLike) -> None:
        """From now on, add ``item_appeal[i]`` to the click appeal of item ``i`` for the listed
        users (a segment whose taste changed); other users are untouched.

        A change of taste that the users' click history cannot reveal, unlike drifting topic
        interests: a model has to learn it from how the segment responds (the adaptation
        experiment, :mod:`recsys.adaptation`). Replaces any earlier shift; the delta is
        hidden (not among the observable features) and persists across lives.
        """
        users = self._users(user_idx)
        delta = np.asarray(item_appeal, dtype=np.float32)
        if delta.shape != (self.num_items,):
            raise ValueError(f"item_appeal must have shape ({self.num_items},), got {delta.shape}")
        if not np.isfinite(delta).all():
            raise ValueError("item_appeal must be finite")
        mask = np.zeros(self.num_users, dtype=np.bool_)
        mask[users] = True
        self._shift_users, self._shift_items = mask, delta

    def _apply_shift(self, users: IntArray, items: IntArray, view: SlateView) -> SlateView:
        if self._shift_users is None or self._shift_items is None:
            return view
        shifted = self._shift_users[users]
        if shifted.any():
            view.appeal[shifted] += np.take(self._shift_items, items[shifted])
        return view

    # -- side-effect-free views of the hidden model (evaluation, oracles, tests) ------------

    def slate_view(self, user_idx: npt.ArrayLike, slates: npt.ArrayLike) -> SlateView:
        """Hidden click appeal ``[B, S]`` and its pieces (item memory, satiation), no change."""
        users, items = self._validated(user_idx, slates)
        return self._apply_shift(
            users, items, self.user_model.slate_view(self._state.take(users), items)
        )

    def appeal(self, user_idx: npt.ArrayLike, slates: npt.ArrayLike) -> FloatArray:
        """Hidden click appeal ``[B, S]`` of each user for each slotted item (no state change)."""
        return self.slate_view(user_idx, slates).appeal

    def choice_probabilities(self, user_idx: npt.ArrayLike, slates: npt.ArrayLike) -> FloatArray:
        """Hidden choice distribution ``[B, S + 1]`` (last column: no click), no state change."""
        return self.choice_model.probabilities(self.appeal(user_idx, slates))

    # -- stepping ---------------------------------------------------------------------------

    def step(
        self, user_idx: npt.ArrayLike | None, slates: npt.ArrayLike, *, check: bool = True
    ) -> StepResult:
        """Show ``slates[b]`` to user ``user_idx[b]`` and sample responses; evolve those users.

        ``user_idx=None`` steps the whole population in index order (``slates`` then has
        ``num_users`` rows) in place, the fast path. A user listed more than once sees the
        same pre-step state in each of its rows (parallel impressions) and keeps the state of
        its last row. Raises :class:`ValueError` for shapes that disagree, ids out of range,
        or a slate that repeats an item; ``check=False`` skips those checks for callers that
        guarantee them (slates drawn from :meth:`sample_candidates` rows).
        """
        full = user_idx is None
        if check:
            users, items = self._validated(
                self._all_users if user_idx is None else user_idx, slates
            )
        else:
            users = self._all_users if user_idx is None else np.asarray(user_idx, np.int64)
            items = np.asarray(slates, dtype=np.int64)
        state: LatentUserState = self._state if full else self._state.take(users)

        dead = np.flatnonzero(~state.alive)
        if dead.size:
            self.user_model.restart(state, dead, users[dead])
        user_features = self.user_model.user_features(state, users)
        life = state.life.copy()
        session = state.session.copy()
        session_step = state.session_step.copy()

        view = self._apply_shift(users, items, self.user_model.slate_view(state, items))
        probs = self.choice_model.probabilities(view.appeal)
        choice = self.choice_model.sample(probs, self._rng)
        resp = self.user_model.respond_and_update(state, users, items, choice, view, self._rng)

        if not full and users.shape[0]:
            uniq, rows = _last_occurrence(users)
            self._state.put(uniq, state, rows)
        self._t += 1
        return StepResult(
            user_idx=users.copy() if full else users,
            slates=items,
            user_features=user_features,
            observable=ObservableResponses(
                clicked_item=resp.clicked_item,
                click_position=resp.click_position,
                clicks=choice[:, None] == np.arange(items.shape[1])[None, :],
                dwell_s=resp.dwell_s,
                like=resp.like,
                conversion=resp.conversion,
                revenue=resp.revenue,
                skip=resp.skip,
            ),
            session=SessionInfo(
                life=life,
                session=session,
                step=session_step,
                session_end=resp.session_end,
                terminated=resp.terminated,
            ),
            hidden=HiddenTruth(
                appeal=view.appeal,
                probabilities=probs,
                satisfaction=resp.satisfaction,
                budget_s=state.budget.copy(),
                return_probability=resp.return_probability,
                lifetime_value=state.ltv.astype(np.float32),
                lifetime_revenue=state.revenue.astype(np.float32),
            ),
            item_feature_table=self._item_table,
        )

    # -- validation -------------------------------------------------------------------------

    def _users(self, user_idx: npt.ArrayLike) -> IntArray:
        users = _as_index_array("user_idx", user_idx, 1)
        _check_range("user_idx", users, self.num_users)
        return users

    def _validated(
        self, user_idx: npt.ArrayLike, slates: npt.ArrayLike
    ) -> tuple[IntArray, IntArray]:
        users = _as_index_array("user_idx", user_idx, 1)
        items = _as_index_array("slates", slates, 2)
        if items.shape[0] != users.shape[0]:
            raise ValueError(
                f"slates has {items.shape[0]} rows but user_idx has {users.shape[0]} users"
            )
        if items.shape[1] < 1:
            raise ValueError("slates must have at least one column (slate size >= 1)")
        _check_range("user_idx", users, self.num_users)
        _check_range("slates", items, self.num_items)
        dup_rows = _duplicate_rows(items)
        if dup_rows.size:
            raise ValueError(
                f"slates must not repeat an item within a row; {dup_rows.size} rows do "
                f"(first: row {int(dup_rows[0])})"
            )
        return users, items
