"""OnlineUpdater over the in-memory log: the fold, one commit per batch, joins, exactly once.

Every test compares the store with :func:`reference_states`: each user's events folded one by
one in the order they happened. Whatever the batching, the order in which topics are read,
crashes and restarts, the updater must reach exactly those bytes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import numpy as np
import pytest

from recsys.config import StreamSettings
from recsys.features import EventFold
from recsys.store import InMemoryUserStateStore
from recsys.stream import InMemoryEventLog, OnlineUpdater
from recsys.types import Event, EventType, StaleOffsetsError
from tests.unit.stream.fakes import (
    FlakyStore,
    SimulatedCrashError,
    feedback,
    impression,
    reference_states,
    small_fold,
    stored_states,
)

CFG = StreamSettings(impressions_topic="imp", feedback_topic="fb")
USERS = ("alice", "bob", "carol")
CONSUMER = "updater-test"


@pytest.fixture
def log() -> InMemoryEventLog:
    return InMemoryEventLog(CFG)


@pytest.fixture
def fold() -> EventFold:
    return small_fold()


def _publish(log: InMemoryEventLog, events: Sequence[Event]) -> None:
    for event in events:
        log.publish(event)


def _run_until_idle(updater: OnlineUpdater, max_records: int = 500) -> int:
    """Run batches until nothing is left to read and no feedback waits for its slate."""
    total = 0
    while True:
        n = updater.run_once(max_records=max_records, timeout_s=0.01)
        total += n
        if n == 0 and not updater.waiting:
            return total


def _traffic(n: int, seed: int) -> list[Event]:
    """Steps of random users: an impression, then most of the time a click with its dwell,
    sometimes a like, a conversion or a skip, like a client reports them."""
    rng = np.random.default_rng(seed)
    events: list[Event] = []
    for i in range(n):
        user = USERS[int(rng.integers(3))]
        items = [int(x) for x in rng.choice(2000, size=int(rng.integers(1, 6)), replace=False)]
        req = f"{seed}-{i}"
        events.append(impression(req, user, items, ts=float(i), session=f"s{i // 15}"))
        if rng.random() < 0.7:
            item = items[int(rng.integers(len(items)))]
            at = float(i) + 0.5  # the server stamps feedback after its slate, before the next
            events.append(feedback(req, user, item, ts=at))
            value = float(rng.random() * 300)
            events.append(feedback(req, user, item, EventType.DWELL, ts=at, value=value))
            for kind in (EventType.LIKE, EventType.CONVERSION, EventType.SKIP):
                if rng.random() < 0.2:
                    events.append(feedback(req, user, item, kind, ts=at))
    return events


def test_events_fold_into_exactly_the_reference_states(
    log: InMemoryEventLog, fold: EventFold
) -> None:
    store = FlakyStore()
    events = _traffic(30, seed=1)
    _publish(log, events)
    updater = OnlineUpdater(log.source(), store, CONSUMER, fold)

    assert _run_until_idle(updater) == len(events)

    assert stored_states(fold, store, USERS) == reference_states(fold, USERS, events)
    n_imp = sum(isinstance(e, type(events[0])) for e in events)
    assert store.offsets(CONSUMER) == {"imp:0": n_imp, "fb:0": len(events) - n_imp}
    assert updater.stats.orphans == 0


def test_one_commit_per_batch(log: InMemoryEventLog, fold: EventFold) -> None:
    store = FlakyStore()
    _publish(log, [impression(f"r{i}", USERS[i % 3], [i, i + 1], ts=i) for i in range(9)])
    _publish(log, [feedback(f"r{i}", USERS[i % 3], i, ts=i + 0.5) for i in range(9)])
    updater = OnlineUpdater(log.source(), store, CONSUMER, fold)
    assert updater.run_once(max_records=500, timeout_s=0.1) == 18
    assert store.commits == [{"imp:0": 9, "fb:0": 9}]
    states, _ = fold.codec.decode(store.get_many(list(USERS)))
    assert states["steps"].tolist() == [3, 3, 3]
    # every click is folded right after its own slate, though the feedback came later
    assert states["clicks"].tolist() == [3, 3, 3]


def test_feedback_read_before_its_impression_waits_for_it(
    log: InMemoryEventLog, fold: EventFold
) -> None:
    """The reader gets the click first (it reads the feedback topic first); it must still be
    folded after its slate, exactly as if the events had come in order."""
    store = FlakyStore()
    updater = OnlineUpdater(log.source(["fb", "imp"]), store, CONSUMER, fold)
    events = [impression("r1", "alice", [3, 7], ts=1.0), feedback("r1", "alice", 7, ts=2.0)]
    _publish(log, events)
    assert updater.run_once(max_records=1, timeout_s=0.01) == 0  # only the click was read
    assert updater.waiting
    _run_until_idle(updater)
    assert stored_states(fold, store, USERS) == reference_states(fold, USERS, events)
    assert store.offsets(CONSUMER) == {"fb:0": 1, "imp:0": 1}


def test_the_next_slate_waits_for_the_feedback_of_the_previous_one(
    log: InMemoryEventLog, fold: EventFold
) -> None:
    """Two steps published in order; a reader that drains the impression topic first must
    not fold slate 2 before the click on slate 1 (the decay would differ)."""
    events = [
        impression("r1", "bob", [1, 2], ts=1.0),
        feedback("r1", "bob", 2, ts=2.0),
        impression("r2", "bob", [4, 5], ts=3.0),
        feedback("r2", "bob", 5, ts=4.0),
    ]
    _publish(log, events)
    store = FlakyStore()
    updater = OnlineUpdater(log.source(["imp", "fb"]), store, CONSUMER, fold)
    updater.run_once(max_records=2, timeout_s=0.01)  # reads both impressions only
    _run_until_idle(updater, max_records=2)
    assert stored_states(fold, store, USERS) == reference_states(fold, USERS, events)
    assert updater.stats.held_back >= 1


def test_feedback_for_an_unknown_slate_is_an_orphan(log: InMemoryEventLog, fold: EventFold) -> None:
    store = FlakyStore()
    updater = OnlineUpdater(log.source(), store, CONSUMER, fold)
    _publish(
        log,
        [
            impression("r1", "bob", [1], ts=1.0),
            feedback("nope", "bob", 1, ts=2.0),
            feedback("r1", "bob", 1, ts=3.0),
        ],
    )
    assert _run_until_idle(updater) == 3
    assert updater.stats.orphans == 1
    states, _ = fold.codec.decode([store.get("bob")])
    assert states["clicks"][0] == 1
    assert store.offsets(CONSUMER) == {"imp:0": 1, "fb:0": 2}


def test_crash_while_writing_replays_the_batch_exactly_once(
    log: InMemoryEventLog, fold: EventFold
) -> None:
    store = FlakyStore()
    events = _traffic(40, seed=3)
    _publish(log, events)
    first = OnlineUpdater(log.source(), store, CONSUMER, fold)
    first.run_once(max_records=10, timeout_s=0.05)
    store.fail_commits = 1  # the process dies while writing the second batch
    with pytest.raises(SimulatedCrashError):
        first.run_once(max_records=10, timeout_s=0.05)
    del first

    second = OnlineUpdater(log.source(), store, CONSUMER, fold)
    _run_until_idle(second, max_records=7)
    assert stored_states(fold, store, USERS) == reference_states(fold, USERS, events)


def test_failed_write_rewinds_the_same_updater(log: InMemoryEventLog, fold: EventFold) -> None:
    store = FlakyStore()
    events = _traffic(20, seed=4)
    _publish(log, events)
    updater = OnlineUpdater(log.source(), store, CONSUMER, fold)
    store.fail_commits = 2
    crashes = 0
    for _ in range(20):  # a batch may hold everything back and write nothing
        try:
            updater.run_once(max_records=8, timeout_s=0.05)
        except SimulatedCrashError:
            crashes += 1
    assert crashes == 2
    _run_until_idle(updater, max_records=8)
    assert stored_states(fold, store, USERS) == reference_states(fold, USERS, events)
    assert updater.stats.failures == 2


def test_a_second_updater_with_the_same_name_cannot_double_apply(
    log: InMemoryEventLog, fold: EventFold
) -> None:
    store = InMemoryUserStateStore()
    first, second = _traffic(20, seed=6), _traffic(20, seed=7)
    a = OnlineUpdater(log.source(), store, CONSUMER, fold)
    b = OnlineUpdater(log.source(), store, CONSUMER, fold)
    assert a.run_once(timeout_s=0.01) == b.run_once(timeout_s=0.01) == 0  # both at offset 0
    _publish(log, first)
    assert a.run_once(timeout_s=0.05) == len(first)
    with pytest.raises(StaleOffsetsError):  # b read the same events: its write is refused
        b.run_once(timeout_s=0.05)
    _publish(log, second)
    _run_until_idle(b)  # b rewound to the stored offsets: it folds only the second wave
    with pytest.raises(StaleOffsetsError):
        a.run_once(timeout_s=0.05)
    _run_until_idle(a)
    assert stored_states(fold, store, USERS) == reference_states(fold, USERS, first + second)


def test_poison_records_are_skipped_and_committed_past(
    log: InMemoryEventLog, fold: EventFold
) -> None:
    store = FlakyStore()
    log.append("fb", b"garbage")
    _publish(log, [impression("r", "alice", [3], ts=1.0), feedback("r", "alice", 3, ts=2.0)])
    source = log.source()
    updater = OnlineUpdater(source, store, CONSUMER, fold)
    assert _run_until_idle(updater) == 2
    assert source.decode_errors == 1
    assert store.offsets(CONSUMER) == {"imp:0": 1, "fb:0": 2}


def test_a_record_of_another_layout_is_started_afresh(
    log: InMemoryEventLog, fold: EventFold
) -> None:
    store = FlakyStore()
    store.put_many({"alice": b"\x07old layout"})
    _publish(log, [impression("r", "alice", [3])])
    updater = OnlineUpdater(log.source(), store, CONSUMER, fold)
    assert _run_until_idle(updater) == 1
    assert updater.stats.reset_states == 1
    states, known = fold.codec.decode([store.get("alice")])
    assert known[0]
    assert states["steps"][0] == 1


def _wait_for(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def test_run_loop_survives_store_outages_without_loss(
    log: InMemoryEventLog, fold: EventFold
) -> None:
    store = FlakyStore()
    store.fail_commits = 2
    events = _traffic(25, seed=5)
    _publish(log, events)
    updater = OnlineUpdater(log.source(), store, CONSUMER, fold)
    stop = threading.Event()
    thread = updater.start_in_thread(stop, max_records=9, timeout_s=0.05)
    try:
        with pytest.raises(RuntimeError, match="already running"):
            updater.start_in_thread()
        _wait_for(lambda: store.offsets(CONSUMER).get("imp:0") == 25)
    finally:
        stop.set()
        thread.join(5.0)
    assert not thread.is_alive()
    _run_until_idle(updater)
    assert stored_states(fold, store, USERS) == reference_states(fold, USERS, events)
    assert updater.stats.failures == 2


def test_consumer_name_is_required(log: InMemoryEventLog, fold: EventFold) -> None:
    with pytest.raises(ValueError, match="consumer"):
        OnlineUpdater(log.source(), FlakyStore(), "", fold)
