"""Event stream: versioned event codec, Kafka and in-process backends, the online updater.

Serving publishes impressions and feedback through an :class:`~recsys.protocols.EventSink`;
the :class:`OnlineUpdater` reads them back through an :class:`~recsys.protocols.EventSource`
and folds them into the user-state store exactly once. :func:`build_event_sink` and
:func:`build_event_source` pick Kafka or the shared in-process log from
``StreamSettings.bootstrap``. This is the only package that imports ``kafka``.
"""

from recsys.stream.events import (
    SCHEMA_VERSION,
    EventDecodeError,
    EventPublishError,
    EventStreamError,
    decode_event,
    encode_event,
    topic_for,
)
from recsys.stream.factory import build_event_sink, build_event_source, shared_event_log
from recsys.stream.kafka import KafkaEventSink, KafkaEventSource, ensure_topics
from recsys.stream.memory import (
    InMemoryEventLog,
    InMemoryEventSink,
    InMemoryEventSource,
    partition_key,
)
from recsys.stream.updater import OnlineUpdater, UpdaterStats

__all__ = [
    "SCHEMA_VERSION",
    "EventDecodeError",
    "EventPublishError",
    "EventStreamError",
    "InMemoryEventLog",
    "InMemoryEventSink",
    "InMemoryEventSource",
    "KafkaEventSink",
    "KafkaEventSource",
    "OnlineUpdater",
    "UpdaterStats",
    "build_event_sink",
    "build_event_source",
    "decode_event",
    "encode_event",
    "ensure_topics",
    "partition_key",
    "shared_event_log",
    "topic_for",
]
