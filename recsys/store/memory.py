"""In-process user-state store: the embedded default and the reference for the contract suite."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

from recsys.store._common import (
    check_expected,
    check_id,
    check_offsets,
    check_states,
    stale_partitions,
)
from recsys.types import StaleOffsetsError


class InMemoryUserStateStore:
    """A dict behind one lock, implementing :class:`recsys.protocols.UserStateStore`.

    Used by ``recsys serve`` with no settings and by tests. Every method takes the lock, so
    :meth:`commit` checks and writes records and offsets together exactly as the Redis script
    does; state is lost with the process, which is why production uses Redis.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[str, bytes] = {}
        self._offsets: dict[str, dict[str, int]] = {}

    def get(self, user_id: str) -> bytes | None:
        """One user's record, or ``None``."""
        return self.get_many([user_id])[0]

    def get_many(self, user_ids: Sequence[str]) -> list[bytes | None]:
        """Records in the order of ``user_ids`` (``None`` for unknown), from one snapshot."""
        for user_id in user_ids:
            check_id("user_id", user_id)
        with self._lock:
            return [self._states.get(u) for u in user_ids]

    def put_many(self, states: Mapping[str, bytes]) -> None:
        """Create or replace records (all validated before any is stored)."""
        checked = check_states(states)
        with self._lock:
            self._states.update(checked)

    def commit(
        self,
        states: Mapping[str, bytes],
        offsets: Mapping[str, int],
        consumer: str,
        expected: Mapping[str, int | None] | None = None,
    ) -> None:
        """Records and offsets under one lock, conditional on ``expected`` offsets."""
        check_id("consumer", consumer)
        checked = check_states(states)
        next_offsets = check_offsets(offsets)
        want = check_expected(expected)
        with self._lock:
            stored = self._offsets.setdefault(consumer, {})
            stale = stale_partitions(stored, want)
            if stale:
                p = stale[0]
                raise StaleOffsetsError(
                    f"stale offsets for {p}: stored {stored.get(p)}, expected {want[p]}"
                )
            self._states.update(checked)
            stored.update(next_offsets)

    def offsets(self, consumer: str) -> dict[str, int]:
        """Next offsets per partition last recorded by :meth:`commit` (empty if none)."""
        check_id("consumer", consumer)
        with self._lock:
            return dict(self._offsets.get(consumer, {}))

    def ping(self) -> bool:
        """Always ``True``: the store lives in this process."""
        return True

    def close(self) -> None:
        """Nothing to release; the store stays usable (it holds no connections)."""
