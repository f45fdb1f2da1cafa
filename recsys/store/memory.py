"""In-process user-state store: the embedded default and the reference for the contract suite."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Mapping, Sequence

import numpy as np

from recsys.store._common import (
    aggregate_deltas,
    check_id,
    check_max_history,
    check_offsets,
    normalize_state,
)
from recsys.types import UserState, UserStateDelta

_log = logging.getLogger(__name__)


def _copy(state: UserState) -> UserState:
    # UserState is frozen but its arrays are not: hand out copies so no caller can mutate
    # what the store holds (the Redis store returns fresh arrays too).
    return dataclasses.replace(
        state, embedding=state.embedding.copy(), clicked=state.clicked.copy()
    )


class InMemoryUserStateStore:
    """A dict behind one lock, implementing :class:`recsys.protocols.UserStateStore`.

    Used by ``recsys demo`` with no settings and by tests. Every method takes the lock, so
    :meth:`apply` updates state and offsets together exactly as the Redis transaction does;
    state is lost with the process, which is why production uses Redis.
    """

    def __init__(self, max_history: int = 500) -> None:
        self._max_history = check_max_history(max_history)
        self._lock = threading.Lock()
        self._users: dict[str, UserState] = {}
        self._offsets: dict[str, dict[str, int]] = {}

    @property
    def max_history(self) -> int:
        """How many clicked items are kept per user (most recent first)."""
        return self._max_history

    def get(self, user_id: str) -> UserState | None:
        """State for one user, or ``None`` if the user is unknown."""
        check_id("user_id", user_id)
        with self._lock:
            state = self._users.get(user_id)
        return None if state is None else _copy(state)

    def get_many(self, user_ids: Sequence[str]) -> list[UserState | None]:
        """States in the order of ``user_ids`` (``None`` for unknown), from one snapshot."""
        for user_id in user_ids:
            check_id("user_id", user_id)
        with self._lock:
            states = [self._users.get(user_id) for user_id in user_ids]
        return [None if state is None else _copy(state) for state in states]

    def put(self, state: UserState) -> None:
        """Create or replace one user's state; ``clicked`` is capped at ``max_history``."""
        self.put_many([state])

    def put_many(self, states: Sequence[UserState]) -> None:
        """Create or replace several users at once (all validated before any is stored)."""
        prepared = []
        for state in states:
            embedding, clicked = normalize_state(state, self._max_history)
            prepared.append(
                dataclasses.replace(
                    state,
                    embedding=embedding.copy(),
                    clicked=clicked.copy(),
                    impressions=int(state.impressions),
                    clicks=int(state.clicks),
                    updated_ts=float(state.updated_ts),
                )
            )
        with self._lock:
            for state in prepared:
                self._users[state.user_id] = state

    def apply(
        self,
        deltas: Sequence[UserStateDelta],
        offsets: Mapping[str, int],
        consumer: str,
    ) -> None:
        """Apply deltas to known users and record ``consumer``'s offsets under one lock.

        Deltas for unknown users, and for ids no user can have, are skipped. Clicked items
        are prepended most recent first (the last item of a delta's ``clicked`` ends up at
        index 0) and capped at ``max_history``; counters add; ``updated_ts`` only moves
        forward.
        """
        check_id("consumer", consumer)
        merged, skipped = aggregate_deltas(deltas)
        checked_offsets = check_offsets(offsets)
        if skipped:
            _log.warning("skipped %d deltas whose user id no user can have", skipped)
        with self._lock:
            for user_id, agg in merged.items():
                old = self._users.get(user_id)
                if old is None:
                    continue
                recent = np.asarray(agg.recent_clicked(self._max_history)[::-1], dtype=np.int64)
                self._users[user_id] = dataclasses.replace(
                    old,
                    clicked=np.concatenate([recent, old.clicked])[: self._max_history],
                    impressions=old.impressions + agg.impressions,
                    clicks=old.clicks + agg.clicks,
                    updated_ts=max(old.updated_ts, agg.ts),
                )
            if checked_offsets:
                self._offsets.setdefault(consumer, {}).update(checked_offsets)

    def offsets(self, consumer: str) -> dict[str, int]:
        """Next offsets per partition last recorded by :meth:`apply` (empty if none)."""
        check_id("consumer", consumer)
        with self._lock:
            return dict(self._offsets.get(consumer, {}))

    def ping(self) -> bool:
        """Always ``True``: the store lives in this process."""
        return True

    def close(self) -> None:
        """Nothing to release; the store stays usable (it holds no connections)."""
