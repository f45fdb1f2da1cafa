"""Pick the event-stream backend from settings: Kafka when a bootstrap is set, else in-process.

With an empty ``bootstrap`` every sink and source built here shares ONE process-wide
:class:`InMemoryEventLog`, so the serving path's impressions and feedback reach an online
updater running in the same process (``recsys demo`` with no configuration). Events then live
only as long as the process; separate processes do not see each other's events.
"""

from __future__ import annotations

import threading

from recsys.config import StreamSettings
from recsys.protocols import EventSink, EventSource
from recsys.stream.kafka import KafkaEventSink, KafkaEventSource
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


def build_event_source(settings: StreamSettings) -> EventSource:
    """A source over the impressions and feedback topics, positioned at the beginning.

    Kafka: a manually-assigned consumer. In-process: a reader with its own positions over the
    shared log, so several sources do not steal each other's records.
    """
    topics = (settings.impressions_topic, settings.feedback_topic)
    if settings.bootstrap:
        return KafkaEventSource(settings.bootstrap, topics)
    return shared_event_log().source(topics)
