"""Validation and delta aggregation shared by every user-state backend.

Keeping these in one place is what makes the backends agree: the contract suite checks the
observable behaviour, and both stores reach it through the same rules.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from recsys.types import FloatArray, IntArray, UserState, UserStateDelta

MAX_ID_CHARS = 256
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
# C0/C1 control characters would corrupt logs and key listings; lone surrogates cannot be
# encoded as UTF-8 at all, so they are refused with the same clear message.
_FORBIDDEN_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def id_problem(kind: str, value: str) -> str | None:
    """Why ``value`` is unusable as a user id / consumer / partition key, or ``None`` if fine.

    Ids end up inside Redis key names, so they must be non-empty, at most 256 characters and
    free of control characters. ``kind`` names the argument in the message.
    """
    if not isinstance(value, str):
        return f"{kind} must be a str, got {type(value).__name__}"
    if not value:
        return f"{kind} must be a non-empty string"
    if len(value) > MAX_ID_CHARS:
        return f"{kind} is {len(value)} characters long; at most {MAX_ID_CHARS} are allowed"
    bad = _FORBIDDEN_CHARS.search(value)
    if bad is not None:
        return (
            f"{kind} {value[:64]!r} contains the control character {bad.group()!r} "
            f"at index {bad.start()}"
        )
    return None


def check_id(kind: str, value: str) -> str:
    """Return ``value`` if :func:`id_problem` finds nothing wrong with it, else raise ValueError."""
    problem = id_problem(kind, value)
    if problem is not None:
        raise ValueError(problem)
    return value


def check_max_history(max_history: int) -> int:
    """Validate the cap on stored clicked items (at least one item must fit)."""
    max_history = operator.index(max_history)
    if max_history < 1:
        raise ValueError(f"max_history must be >= 1, got {max_history}")
    return max_history


def check_offsets(offsets: Mapping[str, int]) -> dict[str, int]:
    """Validate stream offsets: partition key -> next offset to read (a non-negative int)."""
    checked: dict[str, int] = {}
    for partition, offset in offsets.items():
        check_id("partition", partition)
        if isinstance(offset, bool):
            raise TypeError(f"offset for {partition!r} must be an int, got bool")
        value = operator.index(offset)
        if value < 0:
            raise ValueError(f"offset for {partition!r} must be >= 0, got {value}")
        checked[partition] = value
    return checked


def normalize_state(state: UserState, max_history: int) -> tuple[FloatArray, IntArray]:
    """The embedding as 1-D finite float32 and ``clicked`` as 1-D int64 capped at the history.

    A NaN or infinite embedding would silently poison every retrieval score for the user, so
    it is refused at write time rather than discovered at serving time.
    """
    check_id("user_id", state.user_id)
    embedding = np.asarray(state.embedding, dtype=np.float32)
    if embedding.ndim != 1 or embedding.size == 0:
        raise ValueError(
            f"embedding of user {state.user_id!r} must be a non-empty 1-D array, "
            f"got shape {embedding.shape}"
        )
    if not np.isfinite(embedding).all():
        raise ValueError(f"embedding of user {state.user_id!r} has NaN or infinite values")
    clicked = np.asarray(state.clicked, dtype=np.int64).reshape(-1)[:max_history]
    return embedding, clicked


@dataclass(slots=True)
class AggregatedDelta:
    """All deltas of one batch for one user, summed; ``clicked`` stays in event order."""

    user_id: str
    clicked: list[int] = field(default_factory=list)
    impressions: int = 0
    clicks: int = 0
    ts: float = -math.inf

    def recent_clicked(self, max_history: int) -> list[int]:
        """The newest ``max_history`` clicked items, oldest first (older ones would be trimmed)."""
        return self.clicked[-max_history:]


def aggregate_deltas(deltas: Sequence[UserStateDelta]) -> tuple[dict[str, AggregatedDelta], int]:
    """Validate and merge deltas per user, in order of first appearance; count skipped ones.

    Applying the merged delta gives the same state as applying the originals one by one
    (counters add, clicked items keep event order, ``ts`` is the maximum), and lets a remote
    store touch each user once per batch. Everything is validated before anything is written.

    A delta whose user id is invalid is skipped, not raised: no such user can have state (puts
    refuse the id), so it is an unknown user like any other, and raising would turn one bad
    event on the stream into a batch the online updater can never get past.
    """
    merged: dict[str, AggregatedDelta] = {}
    skipped = 0
    for delta in deltas:
        user_id = delta.user_id
        if id_problem("user_id", user_id) is not None:
            skipped += 1
            continue
        ts = float(delta.ts)
        if not math.isfinite(ts):
            raise ValueError(f"delta ts for user {user_id!r} must be finite, got {ts}")
        items = [operator.index(item) for item in delta.clicked]
        if any(not _INT64_MIN <= item <= _INT64_MAX for item in items):
            raise ValueError(f"clicked item ids for user {user_id!r} must fit in int64: {items}")
        agg = merged.get(user_id)
        if agg is None:
            agg = merged[user_id] = AggregatedDelta(user_id)
        agg.clicked.extend(items)
        agg.impressions += operator.index(delta.impressions)
        agg.clicks += operator.index(delta.clicks)
        agg.ts = max(agg.ts, ts)
    return merged, skipped
