"""Batch types shared by every slate policy, the trainer and off-policy evaluation.

A batch holds ``B`` independent requests (users), each with ``C`` candidates and a slate of
``S`` slots. Slates are indices *into the candidate axis*, not catalog ids, so a policy never
needs a catalog lookup; ``candidate_ids`` maps them back when a slate is served or logged.
Everything is a numpy array (the simulator, the logs and the serving path are numpy); policies
convert to torch internally. NamedTuples keep the batches cheap, immutable and picklable (Ray).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, TypeVar, cast

import numpy as np
import numpy.typing as npt

from recsys.types import FloatArray, IntArray, Signals

BoolArray = npt.NDArray[np.bool_]

#: Fixed order of the signal axis of :meth:`SlateResponse.signals` (same as
#: :class:`recsys.types.Signals`); reward models are trained and served in this order.
SIGNAL_NAMES: tuple[str, ...] = ("click", "dwell_s", "like", "conversion", "revenue", "skip")
NUM_SIGNALS = len(SIGNAL_NAMES)
#: Index of the revenue signal, used by the ``revenue_weight`` term of the objective.
REVENUE_INDEX = SIGNAL_NAMES.index("revenue")


class SlateObs(NamedTuple):
    """What a policy sees for ``B`` requests before choosing their slates.

    - ``user_features`` ``[B, du]`` float32: the user/context state.
    - ``item_features`` ``[B, C, di]`` float32: features of each candidate.
    - ``candidate_ids`` ``[B, C]`` int64: catalog ids of the candidates.
    - ``candidate_mask`` ``[B, C]`` bool or ``None``: valid candidates (padding is False), so
      rows with fewer candidates can share a batch. ``None`` means all valid.
    - ``is_ad`` ``[B, C]`` bool or ``None``: sponsored candidates, limited by a ``max_ads``
      cap when a slate is built. ``None`` means no ads.
    """

    user_features: FloatArray
    item_features: FloatArray
    candidate_ids: IntArray
    candidate_mask: BoolArray | None = None
    is_ad: BoolArray | None = None

    @property
    def batch_size(self) -> int:
        """``B``: requests in the batch."""
        return int(self.item_features.shape[0])

    @property
    def num_candidates(self) -> int:
        """``C``: candidates per request (padding included)."""
        return int(self.item_features.shape[1])

    def valid(self) -> BoolArray:
        """``candidate_mask``, or all-True when absent."""
        if self.candidate_mask is None:
            return np.ones(self.candidate_ids.shape, dtype=np.bool_)
        return self.candidate_mask

    def ads(self) -> BoolArray:
        """``is_ad``, or all-False when absent."""
        if self.is_ad is None:
            return np.zeros(self.candidate_ids.shape, dtype=np.bool_)
        return self.is_ad

    def validate(self) -> None:
        """Raise :class:`ValueError` when shapes or dtypes disagree."""
        if self.user_features.ndim != 2 or self.item_features.ndim != 3:
            raise ValueError(
                f"user_features must be [B, du] and item_features [B, C, di], got "
                f"{self.user_features.shape} and {self.item_features.shape}"
            )
        b, c = self.item_features.shape[:2]
        if self.user_features.shape[0] != b or self.candidate_ids.shape != (b, c):
            raise ValueError(
                f"batch shapes disagree: user_features {self.user_features.shape}, "
                f"item_features {self.item_features.shape}, candidate_ids "
                f"{self.candidate_ids.shape}"
            )
        for name, arr in (("candidate_mask", self.candidate_mask), ("is_ad", self.is_ad)):
            if arr is not None and (arr.shape != (b, c) or arr.dtype != np.bool_):
                raise ValueError(f"{name} must be bool [{b}, {c}], got {arr.dtype} {arr.shape}")

    def take(self, rows: IntArray) -> SlateObs:
        """The sub-batch of the given rows (e.g. a minibatch)."""
        return SlateObs(
            user_features=self.user_features[rows],
            item_features=self.item_features[rows],
            candidate_ids=self.candidate_ids[rows],
            candidate_mask=None if self.candidate_mask is None else self.candidate_mask[rows],
            is_ad=None if self.is_ad is None else self.is_ad[rows],
        )


class SlateAction(NamedTuple):
    """Slates chosen for a batch, with what off-policy evaluation needs to reweight them.

    - ``slates`` ``[B, S]`` int64: indices into the candidate axis, slot 0 on top.
    - ``propensities`` ``[B, S]`` float32: exact ``P(slot s = slates[:, s] | slots above)``
      under the policy that acted (1 for a deterministic choice).
    - ``log_prob`` ``[B]`` float32: log-probability of the whole ordered slate (sum of the
      per-slot log-propensities, computed in float64 before the cast).
    - ``scores`` ``[B, S]`` float32 or ``None``: the policy's score of each slotted item (for
      serving and logging; ``None`` when rebuilt from logs).
    """

    slates: IntArray
    propensities: FloatArray
    log_prob: FloatArray
    scores: FloatArray | None = None

    @property
    def slate_size(self) -> int:
        """``S``: slots per slate."""
        return int(self.slates.shape[1])

    def take(self, rows: IntArray) -> SlateAction:
        """The sub-batch of the given rows."""
        return SlateAction(
            slates=self.slates[rows],
            propensities=self.propensities[rows],
            log_prob=self.log_prob[rows],
            scores=None if self.scores is None else self.scores[rows],
        )


class SlateResponse(NamedTuple):
    """Per-slot observable responses ``[B, S]`` float32 (0/1 for the binary signals).

    ``revenue`` is ad revenue earned in that slot (0 for organic items).
    """

    click: FloatArray
    dwell_s: FloatArray
    like: FloatArray
    conversion: FloatArray
    revenue: FloatArray
    skip: FloatArray

    def signals(self) -> FloatArray:
        """``[B, S, 6]`` float32 in the order of :data:`SIGNAL_NAMES`."""
        return np.stack([np.asarray(getattr(self, n), np.float32) for n in SIGNAL_NAMES], -1)

    @classmethod
    def from_signals(cls, signals: npt.ArrayLike) -> SlateResponse:
        """Inverse of :meth:`signals`: split a ``[B, S, 6]`` array into named fields."""
        arr = np.asarray(signals, dtype=np.float32)
        if arr.ndim != 3 or arr.shape[2] != NUM_SIGNALS:
            raise ValueError(f"signals must be [B, S, {NUM_SIGNALS}], got {arr.shape}")
        return cls(*(np.ascontiguousarray(arr[..., k]) for k in range(NUM_SIGNALS)))

    @classmethod
    def from_fields(cls, source: object) -> SlateResponse:
        """Copy ``[B, S]`` fields with the signal names off any object (e.g. the simulator's
        per-slot signals), cast to float32."""
        return cls(*(np.asarray(getattr(source, n), dtype=np.float32) for n in SIGNAL_NAMES))

    @classmethod
    def zeros(cls, batch_size: int, slate_size: int) -> SlateResponse:
        """No response at all (e.g. for padding)."""
        return cls.from_signals(np.zeros((batch_size, slate_size, NUM_SIGNALS), np.float32))

    def clicks(self) -> BoolArray:
        """``[B, S]`` bool: which slots were clicked (any number per row, none included).

        The full response of a multi-click user; what SlateQ's ``clicks="multi"`` mode credits
        (each clicked slot its own reward) and the independent-click choice model is fit on.
        """
        out: BoolArray = np.asarray(self.click) > 0
        return out

    def num_clicks(self) -> IntArray:
        """``[B]`` int64: clicked slots per row (0 for an ignored slate)."""
        out: IntArray = self.clicks().sum(axis=1, dtype=np.int64)
        return out

    def choice(self) -> IntArray:
        """``[B]`` int64: the first clicked slot, or ``S`` when nothing was clicked.

        Same convention as the simulator's choice models (the last outcome is "no click"), so a
        conditional-logit choice model can be trained directly on it. With several clicks in a
        row this keeps the first (top-most) one only: it is the single-click view of the
        response (the default SlateQ, the single-choice model); :meth:`clicks` is the whole.
        """
        clicked = np.asarray(self.click) > 0
        first = np.argmax(clicked, axis=1)
        out: IntArray = np.where(clicked.any(axis=1), first, clicked.shape[1]).astype(np.int64)
        return out

    def take(self, rows: IntArray) -> SlateResponse:
        """The sub-batch of the given rows."""
        return SlateResponse(*(np.asarray(f)[rows] for f in self))


class Transition(NamedTuple):
    """One environment step for ``B`` users: what was seen, served, answered and earned.

    ``reward`` ``[B, S]`` float32 is the per-slot reward (learned engagement reward plus
    ``revenue_weight * revenue``, see
    :meth:`recsys.policy.reward.model.LearnedRewardModel.slate_rewards`).
    ``done`` ``[B]`` bool marks terminal steps (no bootstrapping past them). ``next_action`` is
    the slate actually served at ``next_obs`` when known; SARSA targets need it.
    ``valid`` ``[B]`` bool marks the rows that are real transitions (``None``: all of them);
    a vector env's next-step autoreset spends a step per finished row on resetting, and a
    rollout keeps that row, masked, so every step keeps the same ``B`` (a shared time axis).
    """

    obs: SlateObs
    action: SlateAction
    response: SlateResponse
    reward: FloatArray
    next_obs: SlateObs
    done: BoolArray
    next_action: SlateAction | None = None
    valid: BoolArray | None = None

    @property
    def batch_size(self) -> int:
        """``B``: rows in the batch."""
        return int(self.reward.shape[0])

    def valid_rows(self) -> Transition:
        """The sub-batch of the real transitions, unmasked (itself when every row is valid)."""
        if self.valid is None:
            return self
        return self.take(np.flatnonzero(self.valid))._replace(valid=None)

    def take(self, rows: IntArray) -> Transition:
        """The sub-batch of the given rows (e.g. a minibatch drawn from a replay buffer)."""
        return Transition(
            obs=self.obs.take(rows),
            action=self.action.take(rows),
            response=self.response.take(rows),
            reward=self.reward[rows],
            next_obs=self.next_obs.take(rows),
            done=self.done[rows],
            next_action=None if self.next_action is None else self.next_action.take(rows),
            valid=None if self.valid is None else self.valid[rows],
        )


_A = TypeVar("_A", bound=npt.NDArray[Any])


def _concat_optional(parts: Sequence[_A | None]) -> _A | None:
    if all(p is None for p in parts):
        return None
    present = [p for p in parts if p is not None]
    if len(present) != len(parts):
        raise ValueError("cannot concatenate batches where an optional field is only sometimes set")
    return cast(_A, np.concatenate(present))


def concat_obs(parts: Sequence[SlateObs]) -> SlateObs:
    """Concatenate observation batches along ``B`` (they must share ``C`` and feature widths)."""
    return SlateObs(
        user_features=np.concatenate([p.user_features for p in parts]),
        item_features=np.concatenate([p.item_features for p in parts]),
        candidate_ids=np.concatenate([p.candidate_ids for p in parts]),
        candidate_mask=_concat_optional([p.candidate_mask for p in parts]),
        is_ad=_concat_optional([p.is_ad for p in parts]),
    )


def concat_actions(parts: Sequence[SlateAction]) -> SlateAction:
    """Concatenate action batches along ``B``."""
    return SlateAction(
        slates=np.concatenate([p.slates for p in parts]),
        propensities=np.concatenate([p.propensities for p in parts]),
        log_prob=np.concatenate([p.log_prob for p in parts]),
        scores=_concat_optional([p.scores for p in parts]),
    )


def concat_transitions(parts: Sequence[Transition]) -> Transition:
    """Concatenate transition batches along ``B`` (e.g. a rollout into a replay batch)."""
    if not parts:
        raise ValueError("nothing to concatenate")
    next_actions = [p.next_action for p in parts]
    return Transition(
        obs=concat_obs([p.obs for p in parts]),
        action=concat_actions([p.action for p in parts]),
        response=SlateResponse(
            *(np.concatenate([np.asarray(p.response[k]) for p in parts]) for k in range(6))
        ),
        reward=np.concatenate([p.reward for p in parts]),
        next_obs=concat_obs([p.next_obs for p in parts]),
        done=np.concatenate([p.done for p in parts]),
        next_action=(
            None
            if any(a is None for a in next_actions)
            else concat_actions([a for a in next_actions if a is not None])
        ),
        valid=(
            None
            if all(p.valid is None for p in parts)
            else np.concatenate(
                [np.ones(p.batch_size, np.bool_) if p.valid is None else p.valid for p in parts]
            )
        ),
    )


def gather_slots(values: npt.NDArray[np.generic], slates: IntArray) -> npt.NDArray[np.generic]:
    """``values[b, slates[b, s], ...]``: per-candidate arrays ``[B, C, ...]`` → ``[B, S, ...]``."""
    rows = np.arange(slates.shape[0])[:, None]
    out: npt.NDArray[np.generic] = values[rows, slates]
    return out


def signals_array(signals: Signals | Sequence[Signals]) -> FloatArray:
    """:class:`recsys.types.Signals` → ``[6]`` (or ``[N, 6]``) float32, in signal order."""
    if isinstance(signals, Signals):
        return np.array([getattr(signals, n) for n in SIGNAL_NAMES], dtype=np.float32)
    return np.array([[getattr(s, n) for n in SIGNAL_NAMES] for s in signals], dtype=np.float32)
