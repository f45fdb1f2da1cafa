"""In-process event log: the stream backend when no Kafka bootstrap is configured.

It behaves like a one-broker Kafka with a single partition per topic: events are encoded with
the wire codec on publish and decoded on poll, offsets are absolute and never reused, readers
keep their own positions, and a bad payload is skipped and counted rather than raised. That
keeps ``recsys demo`` and unit tests on the same code paths and semantics as production.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Mapping, Sequence

from recsys.config import StreamSettings
from recsys.stream.events import (
    DeadLetter,
    DeadLetterHandler,
    EventDecodeError,
    decode_events,
    encode_dead_letter,
    encode_event,
    topic_for,
)
from recsys.types import Event, EventRecord

_log = logging.getLogger(__name__)

DEFAULT_RETENTION = 1_000_000
"""Records kept per topic; older ones are dropped (like Kafka retention) to bound memory."""


def partition_key(topic: str, partition: int = 0) -> str:
    """Offset key for one partition, ``"topic:partition"`` (the form stores persist)."""
    return f"{topic}:{partition}"


class _TopicLog:
    """Append-only records of one topic; ``base`` is the offset of ``records[0]``."""

    __slots__ = ("base", "records")

    def __init__(self) -> None:
        self.base = 0
        self.records: list[bytes] = []

    @property
    def end(self) -> int:
        return self.base + len(self.records)


class InMemoryEventLog:
    """Thread-safe append-only log per topic; an :class:`EventSink` and an :class:`EventSource`.

    Used directly it publishes by the topics in ``settings`` and reads both of them through one
    built-in cursor. :meth:`sink` and :meth:`source` hand out further writers and independent
    readers over the same records, as separate producers and consumers would see one broker.
    ``retention`` bounds memory: beyond it the oldest records are dropped and a reader that
    falls behind resumes at the oldest record kept.
    """

    def __init__(
        self,
        settings: StreamSettings | None = None,
        *,
        retention: int = DEFAULT_RETENTION,
    ) -> None:
        if retention < 1:
            raise ValueError(f"retention must be >= 1, got {retention}")
        self.settings = settings if settings is not None else StreamSettings()
        self.retention = retention
        self._cond = threading.Condition()
        self._topics: dict[str, _TopicLog] = {}
        self._default_sink = InMemoryEventSink(self, self.settings)
        self._default_source: InMemoryEventSource | None = None

    # --- storage -------------------------------------------------------------------------

    def append(self, topic: str, data: bytes) -> int:
        """Append raw bytes to ``topic`` (created on first use); returns the record's offset.

        Raw appends exist so tests can inject payloads the codec would never produce.
        """
        with self._cond:
            log = self._topic(topic)
            offset = log.end
            log.records.append(bytes(data))
            # Trim in chunks so the amortised cost per append stays O(1).
            excess = len(log.records) - self.retention
            if excess > max(1, self.retention // 10):
                del log.records[:excess]
                log.base += excess
            self._cond.notify_all()
            return offset

    def end_offset(self, topic: str) -> int:
        """Offset the next record appended to ``topic`` will get."""
        with self._cond:
            return self._topic(topic).end

    def topics(self) -> list[str]:
        """Topics that exist (published to or read from)."""
        with self._cond:
            return sorted(self._topics)

    def _topic(self, topic: str) -> _TopicLog:
        # Caller holds the lock.
        log = self._topics.get(topic)
        if log is None:
            log = self._topics[topic] = _TopicLog()
        return log

    def _read(
        self, positions: Mapping[str, int], order: Sequence[str], max_records: int
    ) -> list[tuple[str, int, bytes]]:
        """Up to ``max_records`` (topic, offset, payload) from ``positions``; lock held."""
        out: list[tuple[str, int, bytes]] = []
        for topic in order:
            room = max_records - len(out)
            if room <= 0:
                break
            log = self._topic(topic)
            start = max(positions[topic], log.base)
            chunk = log.records[start - log.base : start - log.base + room]
            out.extend((topic, start + i, data) for i, data in enumerate(chunk))
        return out

    def _has_data(self, positions: Mapping[str, int]) -> bool:
        return any(self._topic(t).end > max(pos, 0) for t, pos in positions.items())

    # --- views ---------------------------------------------------------------------------

    def sink(self, settings: StreamSettings | None = None) -> InMemoryEventSink:
        """A writer into this log that routes by ``settings``' topics (default: the log's)."""
        return InMemoryEventSink(self, settings if settings is not None else self.settings)

    def source(
        self, topics: Sequence[str] | None = None, dead_letters: DeadLetterHandler | None = None
    ) -> InMemoryEventSource:
        """A reader with its own positions (default: the impressions and feedback topics)."""
        if topics is None:
            topics = (self.settings.impressions_topic, self.settings.feedback_topic)
        return InMemoryEventSource(self, topics, dead_letters)

    def dead_letter_handler(self, topic: str | None = None) -> DeadLetterHandler:
        """A handler that appends skipped records to ``topic`` (default: the settings')."""
        name = topic or self.settings.dead_letter_topic

        def handle(letter: DeadLetter) -> None:
            self.append(name, encode_dead_letter(letter))

        return handle

    # --- EventSink / EventSource through the built-in writer and cursor ------------------

    @property
    def decode_errors(self) -> int:
        """Payloads the built-in cursor skipped because they did not decode."""
        return self._default_source.decode_errors if self._default_source is not None else 0

    def _cursor(self) -> InMemoryEventSource:
        if self._default_source is None:
            self._default_source = self.source()
        return self._default_source

    def publish(self, event: Event) -> None:
        """Append ``event`` to its topic (impressions or feedback)."""
        self._default_sink.publish(event)

    def flush(self, timeout_s: float = 10.0) -> None:
        """Nothing is buffered: a published event is readable as soon as publish returns."""

    def partitions(self) -> list[str]:
        """Partition keys of the built-in cursor: ``"<impressions>:0"``, ``"<feedback>:0"``."""
        return self._cursor().partitions()

    def seek(self, offsets: Mapping[str, int]) -> None:
        """Move the built-in cursor; unlisted partitions restart at the beginning."""
        self._cursor().seek(offsets)

    def poll(self, max_records: int, timeout_s: float) -> list[EventRecord]:
        """Read from the built-in cursor, waiting up to ``timeout_s`` for the first record."""
        return self._cursor().poll(max_records, timeout_s)

    def caught_up(self) -> dict[str, float]:
        """The built-in cursor's caught-up partitions."""
        return self._cursor().caught_up()

    def close(self) -> None:
        """Keep the records: other writers and readers may still share this log."""


class InMemoryEventSink:
    """Writer into an :class:`InMemoryEventLog`; encodes through the wire codec like Kafka."""

    def __init__(self, log: InMemoryEventLog, settings: StreamSettings) -> None:
        self._log = log
        self._settings = settings

    def publish(self, event: Event) -> None:
        """Encode ``event`` and append it to its topic."""
        self._log.append(topic_for(event, self._settings), encode_event(event))

    def flush(self, timeout_s: float = 10.0) -> None:
        """Nothing is buffered, so there is nothing to wait for."""

    def close(self) -> None:
        """Nothing to release; the log outlives its writers."""


class InMemoryEventSource:
    """Reader over some topics of an :class:`InMemoryEventLog`, with its own positions.

    Like a manually-assigned Kafka consumer: it starts at the beginning, :meth:`seek` moves it,
    and payloads that fail to decode are skipped and counted in :attr:`decode_errors`.
    """

    def __init__(
        self,
        log: InMemoryEventLog,
        topics: Sequence[str],
        dead_letters: DeadLetterHandler | None = None,
    ) -> None:
        if not topics:
            raise ValueError("an event source needs at least one topic")
        self._log = log
        self._dead_letters = dead_letters
        self._topics = list(dict.fromkeys(topics))
        self._positions = dict.fromkeys(self._topics, 0)
        # Rotating the topic we read first keeps a busy topic from starving the others.
        self._rotation = itertools.cycle(range(len(self._topics)))
        self.decode_errors = 0
        with log._cond:
            for topic in self._topics:
                log._topic(topic)

    def partitions(self) -> list[str]:
        """One partition per topic: ``"topic:0"``."""
        return [partition_key(t) for t in self._topics]

    def seek(self, offsets: Mapping[str, int]) -> None:
        """Resume each listed partition at its next offset; unlisted ones restart at 0.

        Keys for partitions this source does not read are ignored (a store may hold offsets
        for more topics than one reader consumes).
        """
        for topic in self._topics:
            offset = offsets.get(partition_key(topic), 0)
            if offset < 0:
                raise ValueError(f"offset for {partition_key(topic)} must be >= 0, got {offset}")
            self._positions[topic] = offset

    def poll(self, max_records: int, timeout_s: float) -> list[EventRecord]:
        """Up to ``max_records`` decoded records, waiting at most ``timeout_s`` for the first."""
        if max_records < 1:
            raise ValueError(f"max_records must be >= 1, got {max_records}")
        deadline = time.monotonic() + max(timeout_s, 0.0)
        while True:
            first = next(self._rotation)
            order = self._topics[first:] + self._topics[:first]
            with self._log._cond:
                self._log._cond.wait_for(
                    lambda: self._log._has_data(self._positions),
                    timeout=max(deadline - time.monotonic(), 0.0),
                )
                raw = self._log._read(self._positions, order, max_records)
            records = self._decode(raw)
            # A batch of nothing but poison is not "no data": keep waiting while time remains.
            if records or not raw or time.monotonic() >= deadline:
                return records

    def _decode(self, raw: list[tuple[str, int, bytes]]) -> list[EventRecord]:
        records: list[EventRecord] = []
        decoded = decode_events([data for _, _, data in raw])
        for (topic, offset, data), event in zip(raw, decoded, strict=True):
            self._positions[topic] = offset + 1
            if isinstance(event, EventDecodeError):
                self.decode_errors += 1
                _log.warning("skipping undecodable record %s@%d: %s", topic, offset, event)
                if self._dead_letters is not None:
                    self._dead_letters(DeadLetter(partition_key(topic), offset, str(event), data))
                continue
            records.append(EventRecord(partition_key(topic), offset, event))
        return records

    def caught_up(self) -> dict[str, float]:
        """Partitions read to their end, with the current time: publishing is synchronous,
        so anything published from now on carries a later server time."""
        now = time.time()
        with self._log._cond:
            return {
                partition_key(t): now
                for t in self._topics
                if self._positions[t] >= self._log._topic(t).end
            }

    def lag(self) -> dict[str, int]:
        """Records between this source's position and the end of each topic."""
        with self._log._cond:
            return {
                partition_key(t): max(self._log._topic(t).end - self._positions[t], 0)
                for t in self._topics
            }

    def close(self) -> None:
        """Nothing to release."""
