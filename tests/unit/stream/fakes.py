"""Test helpers for the stream tests: event factories, a failing store, reference folds.

:class:`FlakyStore` is the real in-memory store that counts commits and can fail one on
purpose to simulate a crash; :func:`reference_states` folds events one by one, the answer an
updater must reach whatever its batching, ordering or restarts.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np

from recsys.features import EventFold, FeatureSpec
from recsys.protocols import EventSource, UserStateStore
from recsys.store import InMemoryUserStateStore
from recsys.types import (
    Event,
    EventRecord,
    EventType,
    FeedbackEvent,
    ImpressionEvent,
    SlateItem,
)


def impression(
    request_id: str, user_id: str, items: Sequence[int], ts: float = 1.0, session: str = "s"
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
        session_id=session,
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
    """Raised by :class:`FlakyStore` to stand in for a process dying mid-write."""


class FlakyStore(InMemoryUserStateStore):
    """The in-memory store that counts commits and fails the next ``fail_commits`` of them."""

    def __init__(self) -> None:
        super().__init__()
        self.commits: list[dict[str, int]] = []
        self.fail_commits = 0

    def commit(
        self,
        states: Mapping[str, bytes],
        offsets: Mapping[str, int],
        consumer: str,
        expected: Mapping[str, int | None] | None = None,
    ) -> None:
        if self.fail_commits > 0:
            self.fail_commits -= 1
            raise SimulatedCrashError("store write failed")
        super().commit(states, offsets, consumer, expected)
        self.commits.append(dict(offsets))


def small_fold(num_items: int = 2000, num_topics: int = 4) -> EventFold:
    """A fold over a small seeded catalog (the updater tests' catalog)."""
    rng = np.random.default_rng(11)
    topics = rng.dirichlet(np.full(num_topics, 0.5), size=num_items).astype(np.float32)
    return EventFold(FeatureSpec(num_topics=num_topics), topics, rng.random(num_items) < 0.1)


def reference_states(fold: EventFold, users: Sequence[str], events: Sequence[Event]) -> bytes:
    """What every user's state must be: their events folded one by one, in order."""
    states = fold.codec.empty(len(users))
    row = {u: i for i, u in enumerate(users)}
    for e in events:
        i = row[e.user_id]
        fold.fold_events(states[i : i + 1], [0], [e])
    return states.tobytes()


def stored_states(fold: EventFold, store: UserStateStore, users: Sequence[str]) -> bytes:
    """The users' states as the store holds them (cold users as empty states)."""
    states, _ = fold.codec.decode(store.get_many(list(users)))
    return states.tobytes()
