"""BufferedEventSink: publishing never waits on the sink behind it, order is kept, a refusing
sink is retried, a full buffer refuses loudly, and close delivers what was accepted."""

from __future__ import annotations

import threading
import time

import pytest

from recsys.stream.buffered import BufferedEventSink, EventBufferFullError
from recsys.stream.events import EventPublishError
from recsys.types import Event
from tests.unit.stream.fakes import feedback


class GatedSink:
    """An inner sink that blocks while ``gate`` is clear and refuses while ``down`` is set."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.down = threading.Event()
        self.events: list[Event] = []
        self.attempts = 0
        self.closed = False

    def publish(self, event: Event) -> None:
        self.attempts += 1
        self.gate.wait(10)
        if self.down.is_set():
            raise EventPublishError("broker down")
        self.events.append(event)

    def flush(self, timeout_s: float = 10.0) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def _wait(cond: object, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_delivers_everything_in_order() -> None:
    inner = GatedSink()
    sink = BufferedEventSink(inner, capacity=100)
    events = [feedback(f"r{i}", "u", i) for i in range(50)]
    for e in events:
        sink.publish(e)
    sink.flush(5)
    assert inner.events == events
    assert sink.stats.accepted == sink.stats.delivered == 50
    sink.close()
    assert inner.closed


def test_publish_returns_while_the_inner_sink_blocks() -> None:
    inner = GatedSink()
    inner.gate.clear()  # the broker hangs
    sink = BufferedEventSink(inner, capacity=100)
    start = time.monotonic()
    for i in range(20):
        sink.publish(feedback("r", "u", i))
    assert time.monotonic() - start < 0.5
    assert sink.pending == 20
    inner.gate.set()
    sink.flush(5)
    assert [e.item_id for e in inner.events] == list(range(20))  # type: ignore[union-attr]
    sink.close()


def test_a_refusing_sink_is_retried_without_losing_or_reordering() -> None:
    inner = GatedSink()
    inner.down.set()
    sink = BufferedEventSink(inner, capacity=100, retry_s=0.01)
    for i in range(5):
        sink.publish(feedback("r", "u", i))
    _wait(lambda: sink.stats.retries >= 3)
    assert inner.events == []
    inner.down.clear()
    sink.flush(5)
    assert [e.item_id for e in inner.events] == [0, 1, 2, 3, 4]  # type: ignore[union-attr]
    sink.close()


def test_a_full_buffer_refuses_and_counts() -> None:
    inner = GatedSink()
    inner.gate.clear()
    sink = BufferedEventSink(inner, capacity=3)
    for i in range(3):  # the one in flight still counts against the capacity
        sink.publish(feedback("r", "u", i))
    with pytest.raises(EventBufferFullError, match="retry later"):
        sink.publish(feedback("r", "u", 99))
    assert sink.stats.refused == 1
    inner.gate.set()
    sink.flush(5)
    assert [e.item_id for e in inner.events] == [0, 1, 2]  # type: ignore[union-attr]
    sink.close()


def test_flush_times_out_loudly_and_close_still_returns() -> None:
    inner = GatedSink()
    inner.down.set()
    sink = BufferedEventSink(inner, capacity=10, retry_s=0.01)
    sink.publish(feedback("r", "u", 1))
    with pytest.raises(EventPublishError, match="still buffered"):
        sink.flush(0.2)
    start = time.monotonic()
    sink.close(timeout_s=0.3)
    assert time.monotonic() - start < 3
    assert inner.closed
    with pytest.raises(EventPublishError, match="closed"):
        sink.publish(feedback("r", "u", 2))


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity"):
        BufferedEventSink(GatedSink(), capacity=0)
