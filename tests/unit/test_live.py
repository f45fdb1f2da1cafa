"""The live evaluation's client side without services: what it waits for, what it posts.

The whole loop over HTTP runs in tests/e2e/test_live_eval_cli.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from recsys.features import EventFold, FeatureSpec
from recsys.live import COUNTED, StateWatcher
from recsys.store import InMemoryUserStateStore
from recsys.types import EventType, FeedbackEvent, ImpressionEvent, SlateItem


def _fold() -> EventFold:
    topics = np.eye(2, dtype=np.float32)[np.arange(6) % 2]
    return EventFold(FeatureSpec(num_topics=2), topics, np.zeros(6, np.bool_))


def _expected(**counts: float) -> np.ndarray:
    return np.array([counts.get(name, 0.0) for name, _ in COUNTED])


def test_the_watcher_waits_for_every_signal_not_just_the_click() -> None:
    """A click folded without its dwell is not visible yet: the next request would see a
    half-updated state (and the live run would drift from the in-process one)."""
    fold = _fold()
    store = InMemoryUserStateStore()
    impression = ImpressionEvent("r1", "u", 0.0, "v", "p", (SlateItem(3, 0, 0.0, 1.0),))
    click = FeedbackEvent("r1", "u", 3, EventType.CLICK, None, 1.0)
    dwell = FeedbackEvent("r1", "u", 3, EventType.DWELL, 42.5, 2.0)
    state = fold.codec.empty(1)
    fold.fold_events(state, [0, 0], [impression, click])
    store.commit({"u": fold.codec.encode(state)[0]}, {"f:0": 2}, "c")
    watcher = StateWatcher(store, fold.codec, timeout_s=0.1)
    want = _expected(steps=1, clicks=1, dwell_s=42.5)
    with pytest.raises(TimeoutError, match=r"dwell_s 42\.5.*dwell_s 0"):
        watcher.wait("u", want)
    fold.fold_events(state, [0], [dwell])
    store.commit({"u": fold.codec.encode(state)[0]}, {"f:0": 3}, "c")
    first, waited = watcher.wait("u", want)
    assert first
    assert waited < 0.1


def test_an_unknown_user_is_not_visible() -> None:
    fold = _fold()
    watcher = StateWatcher(InMemoryUserStateStore(), fold.codec, timeout_s=0.05)
    with pytest.raises(TimeoutError, match="user nobody"):
        watcher.wait("nobody", _expected(steps=1))
