"""The event fold: how impressions and feedback change a user's compact state.

One fold for the three places that keep user state (the simulator's training env, the online
updater, the server at request time), so a policy sees in production exactly what it saw in
training. Every operation is vectorised over a batch of users (``rows`` of a
:data:`~recsys.features.state.StateArray`); the online updater folds an arbitrary event list
with :meth:`EventFold.fold_events`, which replays each user's events in order, one round per
event, every round vectorised over users.

A step of a user's life is:

1. :meth:`EventFold.begin` when a slate is requested: a new session starts if the client's
   session id changed (or, without one, after ``session_gap_s`` of inactivity); one tick of
   decay passes, plus ``session_gap_steps`` ticks between sessions. The server featurises the
   state right after this (on a copy); the updater applies it with the impression.
2. :meth:`EventFold.impress`: the slate's topic mass and ads are added, counters move, and the
   request id is remembered.
3. Feedback (:meth:`EventFold.feedback`): a click adds the item's topic mixture to the click
   vectors and the item to the recent items; dwell, likes, skips and conversions add to their
   counters (a conversion also to the per-topic conversions). Feedback joins the user's last
   impression by request id (or the one before: late feedback still counts); feedback for any
   other request is an orphan and changes nothing.

Determinism: the fold uses only ``+ - * /`` in float32 (correctly rounded, so identical on any
path and batch size), sums slots and topics in a fixed order, takes its decay factors as
precomputed constants (no ``pow``/``exp`` at run time, whose vectorised and scalar versions may
round differently), and rounds every per-topic vector to float16 after each update.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from recsys.features.spec import FeatureSpec, half_life_factor
from recsys.features.state import BLOOM_HASHES, BLOOM_WORDS, StateArray, StateCodec
from recsys.types import (
    Event,
    EventType,
    FeedbackEvent,
    FloatArray,
    ImpressionEvent,
    IntArray,
)

BoolArray = npt.NDArray[np.bool_]
U32Array = npt.NDArray[np.uint32]
Rows = IntArray | slice

_U2_MAX = 65535
_U4_MAX = 2**32 - 1
#: Dwell per feedback event is clamped to a day: a bogus value must not dominate the state.
MAX_DWELL_S = 86_400.0

#: (state field, spec attribute holding its half-life)
_DECAYED = (
    ("clicks_fast", "fast_half_life"),
    ("clicks_slow", "slow_half_life"),
    ("impressions", "impression_half_life"),
    ("conversions_topic", "conversion_half_life"),
    ("ad_exposure", "ad_half_life"),
)


def request_key(request_id: str) -> int:
    """The 32-bit key a state remembers a request by (never 0, which means "none")."""
    return zlib.crc32(request_id.encode("utf-8")) | 1


def session_key(session_id: str | None) -> int:
    """The 32-bit key of a client session id; 0 when the client gave none."""
    if not session_id:
        return 0
    return zlib.crc32(session_id.encode("utf-8")) | 1


def ts_seconds(ts: npt.ArrayLike) -> U32Array:
    """Server timestamps as whole seconds in ``[0, 2**32)`` (what the state stores)."""
    t = np.nan_to_num(np.asarray(ts, dtype=np.float64), nan=0.0, posinf=_U4_MAX, neginf=0.0)
    out: U32Array = np.clip(np.floor(t), 0, _U4_MAX).astype(np.uint32)
    return out


_BLOOM_MULT = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: the top bits mix well
_BLOOM_BITS = 64 * BLOOM_WORDS


def _bloom_bits(items: npt.ArrayLike) -> IntArray:
    """Bit positions ``[..., BLOOM_HASHES]`` in ``[0, 256)`` of item ids: successive bytes of
    the top of a multiplicative hash (uint64 arithmetic wraps, identically on every path)."""
    h = np.asarray(items, dtype=np.int64).astype(np.uint64) * _BLOOM_MULT
    shifts = np.array([56 - 8 * j for j in range(BLOOM_HASHES)], dtype=np.uint64)
    bits: IntArray = ((h[..., None] >> shifts) % np.uint64(_BLOOM_BITS)).astype(np.int64)
    return bits


def slate_bloom(items: npt.ArrayLike) -> npt.NDArray[np.uint64]:
    """The ``[B, BLOOM_WORDS]`` Bloom filter of each row of a slate matrix ``[B, S]`` (ids
    ``< 0`` are empty slots and set nothing)."""
    ids = np.asarray(items, dtype=np.int64)
    bits = _bloom_bits(np.maximum(ids, 0)).reshape(ids.shape[0], -1)
    valid = np.repeat(ids >= 0, BLOOM_HASHES, axis=1)
    one = np.left_shift(np.uint64(1), (bits % 64).astype(np.uint64))
    out = np.zeros((ids.shape[0], BLOOM_WORDS), dtype=np.uint64)
    for w in range(BLOOM_WORDS):
        hit = valid & (bits // 64 == w)
        out[:, w] = np.bitwise_or.reduce(np.where(hit, one, np.uint64(0)), axis=1)
    return out


def bloom_contains(blooms: npt.NDArray[np.uint64], items: npt.ArrayLike) -> BoolArray:
    """Whether each row's filter ``blooms[i]`` may hold ``items[i]`` (no false negatives)."""
    bits = _bloom_bits(items)
    words = np.take_along_axis(np.asarray(blooms, dtype=np.uint64), bits // 64, axis=1)
    mask = np.left_shift(np.uint64(1), (bits % 64).astype(np.uint64))
    out: BoolArray = np.all((words & mask) != 0, axis=1)
    return out


def _saturating_add(values: npt.NDArray[np.unsignedinteger], add: npt.ArrayLike, cap: int) -> Any:
    return np.minimum(values.astype(np.int64) + np.asarray(add, dtype=np.int64), cap)


@dataclass(frozen=True, slots=True)
class FoldCounts:
    """What :meth:`EventFold.fold_events` did with a list of events."""

    impressions: int = 0
    feedback: int = 0
    orphans: int = 0


class EventFold:
    """Folds events into states of one :class:`FeatureSpec` over one item catalog.

    ``item_topics`` ``[num_items, T]`` and ``item_is_ad`` ``[num_items]`` are the catalog's
    (item ids are dense indices); an impressed or clicked id outside the catalog counts as an
    item with no topics (the updater never crashes on one bad event).
    """

    def __init__(
        self, spec: FeatureSpec, item_topics: npt.ArrayLike, item_is_ad: npt.ArrayLike
    ) -> None:
        topics = np.asarray(item_topics, dtype=np.float32)
        ads = np.asarray(item_is_ad, dtype=np.bool_)
        if topics.ndim != 2 or topics.shape[1] != spec.num_topics:
            raise ValueError(
                f"item_topics must be [num_items, {spec.num_topics}], got {topics.shape}"
            )
        if ads.shape != (topics.shape[0],):
            raise ValueError(f"item_is_ad must be [{topics.shape[0]}], got {ads.shape}")
        if not np.isfinite(topics).all():
            raise ValueError("item_topics contain NaN or inf")
        self.spec = spec
        self.codec = StateCodec(spec)
        self.num_items = int(topics.shape[0])
        # One extra all-zero row: padding (-1) and out-of-catalog ids map onto it.
        self._topics = np.concatenate([topics, np.zeros((1, spec.num_topics), np.float32)])
        self._ads = np.concatenate([ads, [False]]).astype(np.float32)
        self._step: dict[str, np.float32] = {}
        self._gap: dict[str, np.float32] = {}
        for field, attr in _DECAYED:
            half_life = float(getattr(spec, attr))
            self._step[field] = np.float32(half_life_factor(half_life))
            self._gap[field] = np.float32(half_life_factor(half_life, 1.0 + spec.session_gap_steps))

    # ---- helpers ------------------------------------------------------------------------

    def _safe_items(self, items: npt.ArrayLike) -> IntArray:
        ids = np.asarray(items, dtype=np.int64)
        out: IntArray = np.where((ids >= 0) & (ids < self.num_items), ids, self.num_items)
        return out

    def item_topics(self, items: npt.ArrayLike) -> FloatArray:
        """Topic mixtures ``[..., T]`` of item ids (zeros for padding and unknown ids)."""
        out: FloatArray = self._topics[self._safe_items(items)]
        return out

    def item_is_ad(self, items: npt.ArrayLike) -> npt.NDArray[np.bool_]:
        """Ad flags of item ids (``False`` for padding and unknown ids)."""
        out: npt.NDArray[np.bool_] = self._ads[self._safe_items(items)] > 0
        return out

    # ---- one step -----------------------------------------------------------------------

    def begin(
        self,
        states: StateArray,
        ts: npt.ArrayLike,
        sessions: npt.ArrayLike,
        rows: Rows | None = None,
    ) -> None:
        """A slate is being requested: start a new session where one starts; decay one tick.

        ``ts`` are server times (seconds), ``sessions`` the :func:`session_key` of each row
        (0: the client gave none, so ``session_gap_s`` of inactivity starts a new session).
        In place on ``states[rows]``.
        """
        r = slice(None) if rows is None else rows
        t = ts_seconds(ts)
        key = np.asarray(sessions, dtype=np.uint32)
        steps = states["steps"][r]
        fresh = steps == 0
        last = states["last_ts"][r]
        idle = (t.astype(np.int64) - last.astype(np.int64)) > self.spec.session_gap_s
        new = fresh | np.where(key != 0, key != states["session_key"][r], idle)
        gap = new & ~fresh
        for field, _ in _DECAYED:
            factor = np.where(gap, self._gap[field], self._step[field]).astype(np.float32)
            old = states[field][r].astype(np.float32)
            if old.ndim == 2:
                factor = factor[:, None]
            states[field][r] = (old * factor).astype(np.float16)
        states["sessions"][r] = _saturating_add(states["sessions"][r], new, _U2_MAX)
        states["session_step"][r] = np.where(new, 0, states["session_step"][r])
        states["session_key"][r] = key
        states["last_ts"][r] = np.maximum(last, t)

    def impress(
        self,
        states: StateArray,
        requests: npt.ArrayLike,
        items: npt.ArrayLike,
        rows: Rows | None = None,
    ) -> None:
        """The slate ``items`` ``[B, S]`` (``-1``: empty slot) was shown under ``requests``."""
        r = slice(None) if rows is None else rows
        ids = self._safe_items(items)
        if ids.ndim != 2:
            raise ValueError(f"items must be [B, S], got shape {ids.shape}")
        mass = np.zeros((ids.shape[0], self.spec.num_topics), dtype=np.float32)
        ads = np.zeros(ids.shape[0], dtype=np.float32)
        for slot in range(ids.shape[1]):  # fixed order: the same sum on every path
            mass += self._topics[ids[:, slot]]
            ads += self._ads[ids[:, slot]]
        states["impressions"][r] = (states["impressions"][r].astype(np.float32) + mass).astype(
            np.float16
        )
        states["ad_exposure"][r] = (states["ad_exposure"][r].astype(np.float32) + ads).astype(
            np.float16
        )
        states["steps"][r] = _saturating_add(states["steps"][r], 1, _U4_MAX)
        states["session_step"][r] = _saturating_add(states["session_step"][r], 1, _U2_MAX)
        states["prev_request"][r] = states["request"][r]
        states["request"][r] = np.asarray(requests, dtype=np.uint32)
        states["prev_slate_bloom"][r] = states["slate_bloom"][r]
        # Raw ids, not the catalog-clamped ones: a slate may show items newer than this catalog.
        states["slate_bloom"][r] = slate_bloom(np.asarray(items, dtype=np.int64))

    def feedback(
        self,
        states: StateArray,
        requests: npt.ArrayLike,
        kind: EventType,
        items: npt.ArrayLike,
        values: npt.ArrayLike,
        rows: IntArray | None = None,
    ) -> BoolArray:
        """Apply one feedback event per row where it joins one of the row's last two impressions.

        ``requests`` are :func:`request_key` values, ``items`` the item each event is about,
        ``values`` the event's value (dwell seconds for ``dwell``; ignored otherwise). An event
        joins when its request is the row's last or previous impression *and* its item was in
        that slate (by the slate's Bloom filter), so feedback with an unknown request id, another
        user's request id or an item the user was never shown changes nothing. Returns the mask
        of rows it applied to (the rest are orphans and leave the state unchanged).
        """
        idx = np.arange(states.shape[0]) if rows is None else np.asarray(rows, dtype=np.int64)
        req = np.asarray(requests, dtype=np.uint32)
        all_items = np.broadcast_to(np.asarray(items, dtype=np.int64), idx.shape)
        shown = np.where(all_items >= 0, all_items, 0)
        joined: BoolArray = np.asarray(
            (all_items >= 0)
            & (
                (
                    (states["request"][idx] == req)
                    & bloom_contains(states["slate_bloom"][idx], shown)
                )
                | (
                    (states["prev_request"][idx] == req)
                    & bloom_contains(states["prev_slate_bloom"][idx], shown)
                )
            ),
            dtype=np.bool_,
        )
        r = idx[joined]
        if r.size == 0:
            return joined
        item = all_items[joined]
        if kind == EventType.CLICK:
            theta = self.item_topics(item)
            for field in ("clicks_fast", "clicks_slow"):
                states[field][r] = (states[field][r].astype(np.float32) + theta).astype(np.float16)
            states["clicks"][r] = _saturating_add(states["clicks"][r], 1, _U4_MAX)
            recent = states["recent"][r]
            recent[:, 1:] = recent[:, :-1].copy()
            recent[:, 0] = np.where((item >= 0) & (item < self.num_items), item, -1)
            states["recent"][r] = recent
        elif kind == EventType.DWELL:
            value = np.broadcast_to(np.asarray(values, dtype=np.float64), joined.shape)[joined]
            seconds = np.clip(np.nan_to_num(value, nan=0.0), 0.0, MAX_DWELL_S).astype(np.float32)
            states["dwell_s"][r] = states["dwell_s"][r] + seconds
        elif kind == EventType.LIKE:
            states["likes"][r] = _saturating_add(states["likes"][r], 1, _U2_MAX)
        elif kind == EventType.SKIP:
            states["skips"][r] = _saturating_add(states["skips"][r], 1, _U2_MAX)
        elif kind == EventType.CONVERSION:
            field = "conversions_topic"
            states[field][r] = (
                states[field][r].astype(np.float32) + self.item_topics(item)
            ).astype(np.float16)
            states["conversions"][r] = _saturating_add(states["conversions"][r], 1, _U2_MAX)
        else:  # pragma: no cover - EventType is closed
            raise ValueError(f"unknown feedback kind {kind!r}")
        return joined

    def fold_step(
        self,
        states: StateArray,
        *,
        ts: npt.ArrayLike,
        sessions: npt.ArrayLike,
        requests: npt.ArrayLike,
        slates: npt.ArrayLike,
        clicked_item: npt.ArrayLike,
        dwell_s: npt.ArrayLike,
        like: npt.ArrayLike,
        conversion: npt.ArrayLike,
        skip: npt.ArrayLike,
    ) -> None:
        """One whole step of every row, as the simulator produces it (vectorised).

        Equivalent to folding the impression and then, for rows with a click
        (``clicked_item >= 0``), the click, dwell, like, conversion and skip events that a
        client would post for it: what :meth:`fold_events` does with those events.
        """
        self.begin(states, ts, sessions)
        self.impress(states, requests, slates)
        item = np.asarray(clicked_item, dtype=np.int64)
        hit = np.flatnonzero(item >= 0)
        if hit.size == 0:
            return
        req = np.asarray(requests, dtype=np.uint32)[hit]
        one = np.ones(hit.size)
        self.feedback(states, req, EventType.CLICK, item[hit], one, rows=hit)
        dwell = np.asarray(dwell_s, dtype=np.float64)[hit]
        self.feedback(states, req, EventType.DWELL, item[hit], dwell, rows=hit)
        for kind, flags in (
            (EventType.LIKE, like),
            (EventType.CONVERSION, conversion),
            (EventType.SKIP, skip),
        ):
            on = np.asarray(flags, dtype=np.bool_)[hit]
            if on.any():
                self.feedback(states, req[on], kind, item[hit][on], one[on], rows=hit[on])

    # ---- arbitrary event lists (the online updater) -----------------------------------

    def fold_events(
        self, states: StateArray, rows: Sequence[int], events: Sequence[Event]
    ) -> FoldCounts:
        """Fold ``events[i]`` into ``states[rows[i]]``, each row's events in list order.

        Round ``j`` applies every row's ``j``-th event, vectorised over rows and split by
        kind, so the result equals folding the events one by one. Impressions bring their own
        session id and server time; impressed items are taken in slot (position) order.
        """
        if len(rows) != len(events):
            raise ValueError(f"{len(rows)} rows for {len(events)} events")
        if not events:
            return FoldCounts()
        row = np.asarray(rows, dtype=np.int64)
        order = np.argsort(row, kind="stable")
        sorted_rows = row[order]
        starts = np.r_[0, np.flatnonzero(np.diff(sorted_rows)) + 1]
        group_start = np.repeat(starts, np.diff(np.r_[starts, row.size]))
        rank = np.empty(row.size, dtype=np.int64)
        rank[order] = np.arange(row.size) - group_start
        impressions = feedback = orphans = 0
        for j in range(int(rank.max()) + 1):
            picked: list[int] = np.flatnonzero(rank == j).tolist()
            imp = [i for i in picked if isinstance(events[i], ImpressionEvent)]
            if imp:
                self._fold_impressions(states, row[imp], [events[i] for i in imp])
                impressions += len(imp)
            fb = [i for i in picked if isinstance(events[i], FeedbackEvent)]
            for kind in EventType:
                of_kind = [i for i in fb if _feedback(events[i]).event == kind]
                if not of_kind:
                    continue
                evs = [_feedback(events[i]) for i in of_kind]
                joined = self.feedback(
                    states,
                    np.array([request_key(e.request_id) for e in evs], dtype=np.uint32),
                    kind,
                    np.array([e.item_id for e in evs], dtype=np.int64),
                    np.array([e.value for e in evs], dtype=np.float64),
                    rows=row[of_kind],
                )
                feedback += int(joined.sum())
                orphans += int((~joined).sum())
        return FoldCounts(impressions=impressions, feedback=feedback, orphans=orphans)

    def _fold_impressions(
        self, states: StateArray, rows: IntArray, events: Sequence[Event]
    ) -> None:
        imps = [e for e in events if isinstance(e, ImpressionEvent)]
        width = max((len(e.items) for e in imps), default=0)
        items = np.full((len(imps), max(width, 1)), -1, dtype=np.int64)
        for b, e in enumerate(imps):
            ordered = sorted(e.items, key=lambda it: it.position)
            items[b, : len(ordered)] = [it.item_id for it in ordered]
        self.begin(
            states,
            np.array([e.ts for e in imps], dtype=np.float64),
            np.array([session_key(e.session_id) for e in imps], dtype=np.uint32),
            rows=rows,
        )
        self.impress(
            states,
            np.array([request_key(e.request_id) for e in imps], dtype=np.uint32),
            items,
            rows=rows,
        )


def _feedback(event: Event) -> FeedbackEvent:
    assert isinstance(event, FeedbackEvent)
    return event
