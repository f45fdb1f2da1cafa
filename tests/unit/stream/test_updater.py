"""OnlineUpdater over the in-memory log: delta semantics, one write per batch, exactly once.

Semantics tests run against both the test's fake store and the real in-memory store (when the
store package provides it), so the updater's deltas agree with what stores actually do.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import numpy as np
import pytest

from recsys.config import StreamSettings
from recsys.protocols import UserStateStore
from recsys.stream import ImpressionJoinCache, InMemoryEventLog, OnlineUpdater
from recsys.types import Event, EventType, ImpressionEvent, UserState
from tests.unit.stream.fakes import FakeUserStateStore, SimulatedCrashError, feedback, impression

CFG = StreamSettings(impressions_topic="imp", feedback_topic="fb")
USERS = ("alice", "bob", "carol")
CONSUMER = "updater-test"


def _real_store() -> UserStateStore:
    memory = pytest.importorskip("recsys.store.memory")
    store: UserStateStore = memory.InMemoryUserStateStore()
    store.put_many([UserState(uid, np.zeros(4, dtype=np.float32)) for uid in USERS])
    return store


@pytest.fixture(params=["fake", "memory"])
def store(request: pytest.FixtureRequest) -> UserStateStore:
    if request.param == "fake":
        return FakeUserStateStore(USERS)
    return _real_store()


@pytest.fixture
def log() -> InMemoryEventLog:
    return InMemoryEventLog(CFG)


def _publish(log: InMemoryEventLog, events: Sequence[Event]) -> None:
    for event in events:
        log.publish(event)


def _run_until_idle(updater: OnlineUpdater, max_records: int = 500) -> int:
    total = 0
    while n := updater.run_once(max_records=max_records, timeout_s=0.01):
        total += n
    return total


def _state(store: UserStateStore, user_id: str) -> UserState:
    state = store.get(user_id)
    assert state is not None
    return state


def test_impressions_and_clicks_become_deltas(log: InMemoryEventLog, store: UserStateStore) -> None:
    _publish(
        log,
        [
            impression("r1", "alice", [10, 11, 12], ts=1.0),
            impression("r2", "bob", [20, 21], ts=1.5),
            feedback("r1", "alice", 11, ts=2.0),
            feedback("r1", "alice", 12, ts=3.0),
            feedback("r2", "bob", 20, event=EventType.DWELL, value=30.0, ts=4.0),
            feedback("rX", "nobody", 5, ts=5.0),  # unknown users are ignored by the store
        ],
    )
    updater = OnlineUpdater(log.source(), store, CONSUMER)
    assert _run_until_idle(updater) == 6

    alice, bob = _state(store, "alice"), _state(store, "bob")
    assert (alice.impressions, alice.clicks) == (3, 2)
    assert alice.clicked.tolist() == [12, 11]  # newest first
    assert alice.updated_ts == 3.0
    assert (bob.impressions, bob.clicks, bob.clicked.tolist()) == (2, 0, [])
    assert bob.updated_ts == 4.0  # non-click feedback only bumps the timestamp
    assert store.get("nobody") is None
    assert store.offsets(CONSUMER) == {"imp:0": 2, "fb:0": 4}


def test_one_store_write_per_batch_with_one_delta_per_user(log: InMemoryEventLog) -> None:
    store = FakeUserStateStore(USERS)
    _publish(log, [impression(f"r{i}", USERS[i % 3], [i, i + 1]) for i in range(9)])
    _publish(log, [feedback(f"r{i}", USERS[i % 3], i) for i in range(9)])
    updater = OnlineUpdater(log.source(), store, CONSUMER)
    assert updater.run_once(max_records=500, timeout_s=0.1) == 18
    assert len(store.applies) == 1
    deltas, offsets = store.applies[0]
    assert sorted(d.user_id for d in deltas) == sorted(USERS)
    assert offsets == {"imp:0": 9, "fb:0": 9}
    by_user = {d.user_id: d for d in deltas}
    assert by_user["alice"].clicked == (0, 3, 6)  # event order; the store prepends
    assert by_user["alice"].impressions == 6
    assert by_user["alice"].clicks == 3


def test_batches_respect_max_records_and_advance_offsets(log: InMemoryEventLog) -> None:
    store = FakeUserStateStore(USERS)
    _publish(log, [feedback("r", "alice", i) for i in range(10)])
    updater = OnlineUpdater(log.source(["fb"]), store, CONSUMER)
    assert [updater.run_once(4, 0.05) for _ in range(4)] == [4, 4, 2, 0]
    assert [offsets for _, offsets in store.applies] == [{"fb:0": 4}, {"fb:0": 8}, {"fb:0": 10}]
    assert updater.stats.batches == 3
    assert updater.stats.records == 10


def test_no_records_means_no_write(log: InMemoryEventLog) -> None:
    store = FakeUserStateStore(USERS)
    updater = OnlineUpdater(log.source(), store, CONSUMER)
    assert updater.run_once(timeout_s=0.01) == 0
    assert store.applies == []


def _expected_totals(events: Sequence[Event]) -> dict[str, tuple[int, int, list[int]]]:
    totals: dict[str, tuple[int, int, list[int]]] = {u: (0, 0, []) for u in USERS}
    for e in events:
        imp, clicks, clicked = totals[e.user_id]
        if isinstance(e, ImpressionEvent):
            totals[e.user_id] = (imp + len(e.items), clicks, clicked)
        elif e.event == EventType.CLICK:
            totals[e.user_id] = (imp, clicks + 1, [e.item_id, *clicked])
    return totals


def _assert_totals(store: UserStateStore, events: Sequence[Event]) -> None:
    for user_id, (imp, clicks, clicked) in _expected_totals(events).items():
        state = _state(store, user_id)
        assert (state.impressions, state.clicks, state.clicked.tolist()) == (imp, clicks, clicked)


def _traffic(n: int, seed: int) -> list[Event]:
    rng = np.random.default_rng(seed)
    events: list[Event] = []
    for i in range(n):
        user = USERS[int(rng.integers(3))]
        items = [int(x) for x in rng.choice(1000, size=int(rng.integers(1, 6)), replace=False)]
        events.append(impression(f"{seed}-{i}", user, items, ts=float(i)))
        if rng.random() < 0.6:
            events.append(feedback(f"{seed}-{i}", user, items[0], ts=float(i) + 0.5))
    return events


def test_restart_neither_loses_nor_repeats_events(
    log: InMemoryEventLog, store: UserStateStore
) -> None:
    first_wave, second_wave = _traffic(40, seed=1), _traffic(40, seed=2)
    _publish(log, first_wave)

    # Process part of the stream, then "crash": drop updater and source without closing.
    first = OnlineUpdater(log.source(), store, CONSUMER)
    assert first.run_once(max_records=7, timeout_s=0.05) == 7
    assert first.run_once(max_records=11, timeout_s=0.05) == 11
    del first

    _publish(log, second_wave)
    second = OnlineUpdater(log.source(), store, CONSUMER)
    processed = _run_until_idle(second, max_records=13)
    assert processed == len(first_wave) + len(second_wave) - 18
    _assert_totals(store, first_wave + second_wave)


def test_crash_between_poll_and_write_replays_the_batch(log: InMemoryEventLog) -> None:
    store = FakeUserStateStore(USERS)
    events = _traffic(30, seed=3)
    _publish(log, events)
    first = OnlineUpdater(log.source(), store, CONSUMER)
    first.run_once(max_records=10, timeout_s=0.05)
    store.fail_applies = 1  # the process dies while writing the second batch
    with pytest.raises(SimulatedCrashError):
        first.run_once(max_records=10, timeout_s=0.05)

    second = OnlineUpdater(log.source(), store, CONSUMER)
    _run_until_idle(second, max_records=10)
    _assert_totals(store, events)


def test_failed_write_rewinds_the_same_updater(log: InMemoryEventLog) -> None:
    store = FakeUserStateStore(USERS)
    events = _traffic(20, seed=4)
    _publish(log, events)
    updater = OnlineUpdater(log.source(), store, CONSUMER)
    store.fail_applies = 2
    for _ in range(2):
        with pytest.raises(SimulatedCrashError):
            updater.run_once(max_records=8, timeout_s=0.05)
    _run_until_idle(updater, max_records=8)
    _assert_totals(store, events)
    assert updater.stats.failures == 2


def test_poison_records_are_skipped_and_committed_past(log: InMemoryEventLog) -> None:
    store = FakeUserStateStore(USERS)
    log.append("fb", b"garbage")
    log.publish(feedback("r", "alice", 3))
    source = log.source()
    updater = OnlineUpdater(source, store, CONSUMER)
    assert _run_until_idle(updater) == 1
    assert source.decode_errors == 1
    assert store.offsets(CONSUMER) == {"fb:0": 2}
    assert _state(store, "alice").clicked.tolist() == [3]


def test_join_cache_classifies_clicks(log: InMemoryEventLog) -> None:
    store = FakeUserStateStore(USERS)
    _publish(log, [impression("r1", "alice", [1, 2, 3])])
    updater = OnlineUpdater(log.source(), store, CONSUMER)
    _run_until_idle(updater)
    _publish(
        log,
        [
            feedback("r1", "alice", 2),  # shown in r1
            feedback("r1", "alice", 9),  # r1 known, item not shown
            feedback("r-unknown", "alice", 1),  # impression never seen
            feedback("r1", "alice", 1, event=EventType.SKIP),  # not a click: not joined
        ],
    )
    _run_until_idle(updater)
    s = updater.stats
    assert (s.clicks, s.clicks_joined, s.clicks_unmatched, s.clicks_unjoined) == (3, 1, 1, 1)
    assert s.impressions == 1
    assert s.feedback == 4


def test_join_cache_is_bounded() -> None:
    cache = ImpressionJoinCache(capacity=2)
    for i in range(3):
        cache.add(impression(f"r{i}", "u", [i]))
    assert len(cache) == 2
    assert cache.items_for("r0") is None
    assert cache.items_for("r2") == frozenset({2})
    with pytest.raises(ValueError, match="capacity"):
        ImpressionJoinCache(0)


def _wait_for(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def test_background_thread_applies_new_events_and_stops(log: InMemoryEventLog) -> None:
    store = FakeUserStateStore(USERS)
    updater = OnlineUpdater(log.source(), store, CONSUMER)
    thread = updater.start_in_thread(timeout_s=0.05)
    try:
        assert thread.is_alive()
        with pytest.raises(RuntimeError, match="already running"):
            updater.start_in_thread()
        _publish(log, [impression("r", "bob", [1, 2]), feedback("r", "bob", 2)])
        _wait_for(lambda: _state(store, "bob").clicks == 1)
        assert _state(store, "bob").impressions == 2
    finally:
        updater.stop(timeout_s=5.0)
    assert not thread.is_alive()


def test_run_loop_survives_store_outages_without_loss(log: InMemoryEventLog) -> None:
    store = FakeUserStateStore(USERS)
    store.fail_applies = 2
    events = _traffic(25, seed=5)
    _publish(log, events)
    updater = OnlineUpdater(log.source(), store, CONSUMER)
    stop = threading.Event()
    thread = updater.start_in_thread(stop, max_records=9, timeout_s=0.05)
    try:
        _wait_for(lambda: store.offsets(CONSUMER).get("imp:0") == 25)
    finally:
        stop.set()
        thread.join(5.0)
    assert not thread.is_alive()
    _run_until_idle(updater)
    _assert_totals(store, events)
    assert updater.stats.failures == 2


def test_consumer_name_is_required(log: InMemoryEventLog) -> None:
    with pytest.raises(ValueError, match="consumer"):
        OnlineUpdater(log.source(), FakeUserStateStore(), "")


def test_click_joins_an_impression_read_in_the_same_batch(log: InMemoryEventLog) -> None:
    # The click is on the feedback topic, which this source reads before the impressions one.
    log.publish(feedback("r1", "alice", 2))
    log.publish(impression("r1", "alice", [1, 2]))
    updater = OnlineUpdater(log.source(["fb", "imp"]), FakeUserStateStore(USERS), CONSUMER)
    assert updater.run_once(timeout_s=0.05) == 2
    assert updater.stats.clicks_joined == 1
