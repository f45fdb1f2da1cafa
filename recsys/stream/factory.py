"""Pick the event-stream backend from settings: Kafka when a bootstrap is set, else in-process.

With an empty ``bootstrap`` every sink and source built here shares ONE process-wide
:class:`InMemoryEventLog`, so the serving path's impressions and feedback reach an online
updater running in the same process (``recsys demo`` with no configuration). Events then live
only as long as the process; separate processes do not see each other's events.
"""

from __future__ import annotations

import threading
from typing import Protocol

from recsys.config import StreamSettings
from recsys.protocols import EventSink, EventSource
from recsys.stream.events import DeadLetter, DeadLetterHandler
from recsys.stream.kafka import KafkaDeadLetterSink, KafkaEventSink, KafkaEventSource
from recsys.stream.memory import InMemoryEventLog

_shared_log: InMemoryEventLog | None = None
_shared_lock = threading.Lock()


def shared_event_log() -> InMemoryEventLog:
    """The process-wide in-memory log behind every backend built with an empty bootstrap."""
    global _shared_log
    with _shared_lock:
        if _shared_log is None:
            _shared_log = InMemoryEventLog()
        return _shared_log


def build_event_sink(settings: StreamSettings) -> EventSink:
    """A sink for ``settings``: Kafka producer, or a writer into the shared in-process log."""
    if settings.bootstrap:
        return KafkaEventSink(settings.bootstrap, settings)
    return shared_event_log().sink(settings)


def build_event_source(
    settings: StreamSettings,
    *,
    shard: tuple[int, int] | None = None,
    dead_letters: DeadLetterHandler | None = None,
) -> EventSource:
    """A source over the impressions and feedback topics, positioned at the beginning.

    Kafka: a manually-assigned consumer (of the partitions of ``shard`` only, when given).
    In-process: a reader with its own positions over the shared log, so several sources do not
    steal each other's records (the in-process log has one partition, so only shard ``(0, 1)``).
    Skipped records go to ``dead_letters`` (see :func:`build_dead_letter_sink`).
    """
    topics = (settings.impressions_topic, settings.feedback_topic)
    if settings.bootstrap:
        return KafkaEventSource(
            settings.bootstrap, topics, partitions_if_created=settings.partitions,
            shard=shard, dead_letters=dead_letters,
            watermark_delay_s=settings.watermark_delay_s,
        )  # fmt: skip
    if shard is not None and shard[1] != 1:
        raise ValueError("the in-process event log has one partition: shards need Kafka")
    return shared_event_log().source(topics, dead_letters)


class DeadLetterSink(Protocol):
    """A dead-letter handler that holds a connection: close it when the consumer stops."""

    def __call__(self, letter: DeadLetter) -> None: ...

    def close(self) -> None: ...


class _InMemoryDeadLetters:
    def __init__(self, handler: DeadLetterHandler) -> None:
        self._handler = handler

    def __call__(self, letter: DeadLetter) -> None:
        self._handler(letter)

    def close(self) -> None:
        """Nothing to release."""


def build_dead_letter_sink(settings: StreamSettings) -> DeadLetterSink:
    """Where a consumer puts records it cannot use: the ``dead_letter_topic`` on Kafka, or on
    the shared in-process log."""
    if settings.bootstrap:
        return KafkaDeadLetterSink(settings.bootstrap, settings.dead_letter_topic)
    return _InMemoryDeadLetters(shared_event_log().dead_letter_handler(settings.dead_letter_topic))
