"""A sink that never blocks a request on the broker and keeps events a full client refused.

The Kafka producer refuses an event when its own queue is full (a broker down for long), and
encoding an event costs tens of microseconds to a few hundred on a loaded box. On the request
path the first is a lost event and the second a slower answer, so the server publishes through
:class:`BufferedEventSink`: ``publish`` appends to a bounded in-memory queue and returns at once;
one background thread encodes and hands the events to the real sink in order, retrying while it
refuses them. When the queue is full the event is refused with :class:`EventBufferFullError`
(the caller answers 503 or counts it), never dropped silently.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

from recsys.protocols import EventSink
from recsys.stream.events import EventPublishError
from recsys.types import Event

_log = logging.getLogger(__name__)


class EventBufferFullError(EventPublishError):
    """The sink's buffer is full (the broker has been unreachable for a while): retry later."""


@dataclass
class BufferStats:
    """Counters of a :class:`BufferedEventSink` (read by the metrics endpoint)."""

    accepted: int = 0
    delivered: int = 0
    refused: int = 0
    retries: int = 0


class BufferedEventSink:
    """Implements :class:`~recsys.protocols.EventSink` over ``inner`` without blocking callers.

    ``capacity`` bounds the events held while ``inner`` refuses them; ``retry_s`` is the pause
    after a refusal. Order is kept: a refused event is retried before any later one.
    """

    def __init__(self, inner: EventSink, capacity: int = 100_000, retry_s: float = 0.5) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._inner = inner
        self.capacity = capacity
        self._retry_s = retry_s
        self._queue: deque[Event] = deque()
        self._cv = threading.Condition()
        self._in_flight = 0
        self._closing = False
        self.stats = BufferStats()
        self._thread = threading.Thread(target=self._drain, name="event-buffer", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Events accepted and not yet handed to the inner sink."""
        with self._cv:
            return len(self._queue) + self._in_flight

    def publish(self, event: Event) -> None:
        """Queue ``event``; raises :class:`EventBufferFullError` when ``capacity`` events wait."""
        with self._cv:
            if self._closing:
                raise EventPublishError("the event sink is closed")
            if len(self._queue) >= self.capacity:
                self.stats.refused += 1
                raise EventBufferFullError(
                    f"{len(self._queue)} events are waiting for the broker; retry later"
                )
            self._queue.append(event)
            self.stats.accepted += 1
            self._cv.notify()

    def _drain(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closing:
                    self._cv.wait()
                if not self._queue:
                    return
                event = self._queue[0]
                self._in_flight = 1
            try:
                self._inner.publish(event)
            except Exception as exc:  # the broker refused: keep the event, retry it first
                with self._cv:
                    self._in_flight = 0
                    self.stats.retries += 1
                    closing = self._closing
                _log.warning("event sink refused an event, retrying: %s", exc)
                if closing:
                    return
                time.sleep(self._retry_s)
                continue
            with self._cv:
                self._queue.popleft()
                self._in_flight = 0
                self.stats.delivered += 1
                self._cv.notify_all()

    def flush(self, timeout_s: float = 10.0) -> None:
        """Wait until every queued event reached the inner sink, then flush that."""
        deadline = time.monotonic() + timeout_s
        with self._cv:
            while self._queue:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise EventPublishError(
                        f"{len(self._queue)} events still buffered after {timeout_s}s"
                    )
                self._cv.wait(left)
        self._inner.flush(max(deadline - time.monotonic(), 0.1))

    def close(self, timeout_s: float = 10.0) -> None:
        """Deliver what is buffered (for up to ``timeout_s``), then close the inner sink."""
        try:
            self.flush(timeout_s)
        except EventPublishError as exc:
            _log.error("closing with undelivered events: %s", exc)
        finally:
            with self._cv:
                self._closing = True
                self._cv.notify_all()
            self._thread.join(timeout_s)
            self._inner.close()
