"""Test helpers for the stream tests: event factories, a fake store, a draining poll.

The fake store implements :class:`recsys.protocols.UserStateStore` with the documented delta
semantics (counters add, clicked items prepended newest first, ``ts`` only moves forward,
unknown users ignored) and records every :meth:`apply` call, so tests can count store writes
and make a write fail on purpose to simulate a crash.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Mapping, Sequence

import numpy as np

from recsys.protocols import EventSource
from recsys.types import (
    EventRecord,
    EventType,
    FeedbackEvent,
    ImpressionEvent,
    SlateItem,
    UserState,
    UserStateDelta,
)


def impression(
    request_id: str, user_id: str, items: Sequence[int], ts: float = 1.0
) -> ImpressionEvent:
    """An impression of ``items`` (in slate order) with made-up scores and propensities."""
    return ImpressionEvent(
        request_id=request_id,
        user_id=user_id,
        ts=ts,
        model_version="v1",
        policy="myopic",
        items=tuple(
            SlateItem(item_id=item, position=pos, score=1.0 / (pos + 1), propensity=0.5)
            for pos, item in enumerate(items)
        ),
    )


def feedback(
    request_id: str,
    user_id: str,
    item_id: int,
    event: EventType = EventType.CLICK,
    ts: float = 2.0,
    value: float = 1.0,
) -> FeedbackEvent:
    """One feedback signal (a click unless told otherwise)."""
    return FeedbackEvent(
        request_id=request_id, user_id=user_id, item_id=item_id, event=event, value=value, ts=ts
    )


def drain(source: EventSource, n: int, timeout_s: float = 10.0) -> list[EventRecord]:
    """Poll until ``n`` records arrived (or fail after ``timeout_s``)."""
    out: list[EventRecord] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n:
        if time.monotonic() > deadline:
            raise AssertionError(f"got {len(out)} of {n} records within {timeout_s}s")
        out.extend(source.poll(n - len(out), 0.2))
    return out


class SimulatedCrashError(RuntimeError):
    """Raised by :class:`FakeUserStateStore` to stand in for a process dying mid-write."""


class FakeUserStateStore:
    """A dict-backed :class:`UserStateStore` that records its ``apply`` calls."""

    def __init__(self, user_ids: Sequence[str] = (), dim: int = 4) -> None:
        self._lock = threading.Lock()
        self._users: dict[str, UserState] = {}
        self._offsets: dict[str, dict[str, int]] = {}
        self.applies: list[tuple[list[UserStateDelta], dict[str, int]]] = []
        self.fail_applies = 0
        self.put_many([UserState(uid, np.zeros(dim, dtype=np.float32)) for uid in user_ids])

    def get(self, user_id: str) -> UserState | None:
        with self._lock:
            return self._users.get(user_id)

    def get_many(self, user_ids: Sequence[str]) -> list[UserState | None]:
        with self._lock:
            return [self._users.get(uid) for uid in user_ids]

    def put(self, state: UserState) -> None:
        self.put_many([state])

    def put_many(self, states: Sequence[UserState]) -> None:
        with self._lock:
            for state in states:
                self._users[state.user_id] = state

    def apply(
        self, deltas: Sequence[UserStateDelta], offsets: Mapping[str, int], consumer: str
    ) -> None:
        with self._lock:
            if self.fail_applies > 0:
                self.fail_applies -= 1
                raise SimulatedCrashError("store write failed")
            self.applies.append((list(deltas), dict(offsets)))
            for d in deltas:
                old = self._users.get(d.user_id)
                if old is None:
                    continue
                recent = np.asarray(d.clicked[::-1], dtype=np.int64)
                self._users[d.user_id] = dataclasses.replace(
                    old,
                    clicked=np.concatenate([recent, old.clicked]),
                    impressions=old.impressions + d.impressions,
                    clicks=old.clicks + d.clicks,
                    updated_ts=max(old.updated_ts, d.ts),
                )
            self._offsets.setdefault(consumer, {}).update(offsets)

    def offsets(self, consumer: str) -> dict[str, int]:
        with self._lock:
            return dict(self._offsets.get(consumer, {}))

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        pass
