"""Event stream: versioned event codec, Kafka and in-process backends, the online updater,
the joiner.

Serving publishes impressions and feedback through an :class:`~recsys.protocols.EventSink`;
the :class:`OnlineUpdater` reads them back through an :class:`~recsys.protocols.EventSource`
and folds them into the user-state store exactly once, and the :class:`Joiner` turns them
into joined training rows in a :class:`JoinedDataset`, exactly once. Both handle events in
event-time order behind the shared :class:`Watermark`. :func:`build_event_sink` and
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
from recsys.stream.joined_dataset import JoinedDataset, JoinedDatasetError
from recsys.stream.joiner import (
    SIGNAL_NAMES,
    JoinConfig,
    Joiner,
    JoinStats,
    RewardFn,
    click_reward,
    session_hash,
)
from recsys.stream.kafka import KafkaEventSink, KafkaEventSource, ensure_topics
from recsys.stream.memory import (
    InMemoryEventLog,
    InMemoryEventSink,
    InMemoryEventSource,
    partition_key,
)
from recsys.stream.updater import OnlineUpdater, UpdaterStats
from recsys.stream.watermark import Keyed, Watermark

__all__ = [
    "SCHEMA_VERSION",
    "SIGNAL_NAMES",
    "EventDecodeError",
    "EventPublishError",
    "EventStreamError",
    "InMemoryEventLog",
    "InMemoryEventSink",
    "InMemoryEventSource",
    "JoinConfig",
    "JoinStats",
    "JoinedDataset",
    "JoinedDatasetError",
    "Joiner",
    "KafkaEventSink",
    "KafkaEventSource",
    "Keyed",
    "OnlineUpdater",
    "RewardFn",
    "UpdaterStats",
    "Watermark",
    "build_event_sink",
    "build_event_source",
    "click_reward",
    "decode_event",
    "encode_event",
    "ensure_topics",
    "partition_key",
    "session_hash",
    "shared_event_log",
    "topic_for",
]
