"""Two updaters split two-partition topics on the real broker; poison goes to the real
dead-letter topic."""

from __future__ import annotations

import time

import pytest
from kafka import KafkaConsumer, KafkaProducer

from recsys.config import StreamSettings
from recsys.embedded import EmbeddedBroker
from recsys.store import InMemoryUserStateStore
from recsys.stream import KafkaEventSink, KafkaEventSource, OnlineUpdater
from recsys.stream.events import decode_dead_letter
from recsys.stream.kafka import KafkaDeadLetterSink
from recsys.types import Event
from tests.unit.stream.fakes import (
    feedback,
    impression,
    reference_states,
    small_fold,
    stored_states,
)

pytestmark = pytest.mark.integration

USERS = [f"user-{i}" for i in range(12)]


def _traffic(n: int) -> list[Event]:
    t0 = time.time() - 3600.0
    events: list[Event] = []
    for i in range(n):
        user = USERS[i % len(USERS)]
        items = [i % 500, (i + 1) % 500, (i + 2) % 500]
        events.append(impression(f"r{i}", user, items, ts=t0 + i))
        events.append(feedback(f"r{i}", user, items[i % 3], ts=t0 + i + 0.5))
    return events


def test_two_shards_split_the_partitions_and_reach_the_reference_state(
    kafka_broker: EmbeddedBroker, unique_name: str
) -> None:
    settings = StreamSettings(
        bootstrap=kafka_broker.bootstrap,
        impressions_topic=f"{unique_name}-imp",
        feedback_topic=f"{unique_name}-fb",
        dead_letter_topic=f"{unique_name}-dlq",
        partitions=2,
    )
    topics = [settings.impressions_topic, settings.feedback_topic]
    fold = small_fold()
    events = _traffic(120)
    sink = KafkaEventSink(kafka_broker.bootstrap, settings)
    poison = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
    dead = KafkaDeadLetterSink(kafka_broker.bootstrap, settings.dead_letter_topic)
    store = InMemoryUserStateStore()
    sources = [
        KafkaEventSource(kafka_broker.bootstrap, topics, shard=(k, 2), dead_letters=dead)
        for k in range(2)
    ]
    try:
        for event in events:
            sink.publish(event)
        poison.send(settings.feedback_topic, value=b"\x00not an event", partition=1)
        sink.flush()
        poison.flush()
        assert [sorted(s.partitions()) for s in sources] == [
            sorted(f"{t}:0" for t in topics),
            sorted(f"{t}:1" for t in topics),
        ]
        # The same consumer name: each commit covers only its own partitions' offsets.
        updaters = [OnlineUpdater(s, store, "sharded", fold) for s in sources]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for u in updaters:
                u.run_once(max_records=50, timeout_s=0.2)
            if sum(u.stats.impressions + u.stats.feedback for u in updaters) == len(events):
                break
        assert all(u.stats.impressions > 0 for u in updaters)
        assert stored_states(fold, store, USERS) == reference_states(fold, USERS, events)
        assert sum(s.decode_errors for s in sources) == 1
        dead.close()
        consumer = KafkaConsumer(
            settings.dead_letter_topic,
            bootstrap_servers=kafka_broker.bootstrap,
            auto_offset_reset="earliest",
            consumer_timeout_ms=10_000,
        )
        letters = [decode_dead_letter(m.value) for m in consumer]
        consumer.close()
        assert [(x.partition, x.payload) for x in letters] == [
            (f"{settings.feedback_topic}:1", b"\x00not an event")
        ]
    finally:
        for s in sources:
            s.close()
        sink.close()
        poison.close()
        dead.close()
