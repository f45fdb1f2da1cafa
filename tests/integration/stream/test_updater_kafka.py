"""OnlineUpdater against the real broker: Kafka sink -> topics -> Kafka source -> store.

The store is in-process here (the Redis end-to-end lives with the serving tests); what this
checks is the Kafka side: offsets from the broker, manual assignment, seeking on restart, and
the watermark that keeps a user's events in order across the two topics.
"""

from __future__ import annotations

import time

import pytest

from recsys.config import StreamSettings
from recsys.embedded import EmbeddedBroker
from recsys.store import InMemoryUserStateStore
from recsys.stream import KafkaEventSink, KafkaEventSource, OnlineUpdater
from recsys.types import Event, EventType, ImpressionEvent
from tests.unit.stream.fakes import (
    feedback,
    impression,
    reference_states,
    small_fold,
    stored_states,
)

pytestmark = pytest.mark.integration

USERS = ("u0", "u1", "u2", "u3")
CONSUMER = "kafka-updater-test"


def _traffic(start: int, n: int) -> list[Event]:
    """Steps with server times in the past (so every topic's watermark has passed them)."""
    t0 = time.time() - 3600.0
    events: list[Event] = []
    for i in range(start, start + n):
        user = USERS[i % len(USERS)]
        items = [i, i + 500, i + 1000]
        events.append(impression(f"r{i}", user, items, ts=t0 + i))
        if i % 2 == 0:
            events.append(feedback(f"r{i}", user, items[1], ts=t0 + i + 0.5))
        if i % 5 == 0:
            events.append(feedback(f"r{i}", user, items[1], EventType.SKIP, ts=t0 + i + 0.6))
    return events


def _drain(updater: OnlineUpdater, max_records: int, idle_polls: int = 2) -> int:
    """Run batches until the source has been idle ``idle_polls`` times in a row."""
    total, idle = 0, 0
    while idle < idle_polls:
        n = updater.run_once(max_records=max_records, timeout_s=0.2)
        total += n
        idle = idle + 1 if n == 0 and not updater.waiting else 0
    return total


def test_updater_over_kafka_restarts_exactly_once(
    kafka_broker: EmbeddedBroker, unique_name: str
) -> None:
    settings = StreamSettings(
        bootstrap=kafka_broker.bootstrap,
        impressions_topic=f"{unique_name}-imp",
        feedback_topic=f"{unique_name}-fb",
    )
    topics = [settings.impressions_topic, settings.feedback_topic]
    store = InMemoryUserStateStore()
    fold = small_fold()
    sink = KafkaEventSink(kafka_broker.bootstrap, settings)
    first_wave, second_wave = _traffic(0, 30), _traffic(30, 30)
    try:
        for event in first_wave:
            sink.publish(event)
        sink.flush()

        source = KafkaEventSource(kafka_broker.bootstrap, topics)
        first = OnlineUpdater(source, store, CONSUMER, fold)
        applied = 0
        while applied < 25:  # part of the stream, in small batches
            applied += first.run_once(max_records=10, timeout_s=0.5)
        source.close()  # the updater "crashes" here
        offsets = store.offsets(CONSUMER)
        assert sum(offsets.values()) == applied

        for event in second_wave:
            sink.publish(event)
        sink.flush()

        source = KafkaEventSource(kafka_broker.bootstrap, topics)
        try:
            second = OnlineUpdater(source, store, CONSUMER, fold)
            remaining = _drain(second, max_records=17)
        finally:
            source.close()
    finally:
        sink.close()

    everything = first_wave + second_wave
    assert applied + remaining == len(everything)
    assert stored_states(fold, store, USERS) == reference_states(fold, USERS, everything)
    end = store.offsets(CONSUMER)
    assert end == {
        f"{settings.impressions_topic}:0": sum(isinstance(e, ImpressionEvent) for e in everything),
        f"{settings.feedback_topic}:0": sum(not isinstance(e, ImpressionEvent) for e in everything),
    }
