"""Kafka-only behaviour the shared contract cannot express: partitions, topic creation, errors."""

from __future__ import annotations

from collections import defaultdict

import pytest

from recsys.config import StreamSettings
from recsys.embedded import EmbeddedBroker
from recsys.stream import EventPublishError, KafkaEventSink, KafkaEventSource, ensure_topics
from tests.unit.stream.fakes import drain, feedback, impression

pytestmark = pytest.mark.integration


def _partition_counts(bootstrap: str, topics: list[str]) -> dict[str, int]:
    source = KafkaEventSource(bootstrap, topics, create_topics=False)
    try:
        keys = source.partitions()
    finally:
        source.close()
    return {t: sum(k.rpartition(":")[0] == t for k in keys) for t in topics}


def test_ensure_topics_creates_missing_and_keeps_existing(
    kafka_broker: EmbeddedBroker, unique_name: str
) -> None:
    a, b = f"{unique_name}-a", f"{unique_name}-b"
    ensure_topics(kafka_broker.bootstrap, [a], partitions=2)
    ensure_topics(kafka_broker.bootstrap, [a, b], partitions=1)  # a exists: left alone
    ensure_topics(kafka_broker.bootstrap, [a, b])  # idempotent
    assert _partition_counts(kafka_broker.bootstrap, [a, b]) == {a: 2, b: 1}


def test_source_reads_every_partition_and_keeps_each_users_order(
    kafka_broker: EmbeddedBroker, unique_name: str
) -> None:
    settings = StreamSettings(
        impressions_topic=f"{unique_name}-imp", feedback_topic=f"{unique_name}-fb"
    )
    ensure_topics(kafka_broker.bootstrap, [settings.feedback_topic], partitions=3)
    sink = KafkaEventSink(kafka_broker.bootstrap, settings)
    source = KafkaEventSource(kafka_broker.bootstrap, [settings.feedback_topic])
    try:
        assert sorted(source.partitions()) == [f"{settings.feedback_topic}:{p}" for p in range(3)]
        events = [feedback("r", f"user-{i % 7}", i) for i in range(70)]
        for event in events:
            sink.publish(event)
        sink.flush()
        records = drain(source, len(events))
    finally:
        source.close()
        sink.close()
    per_user: dict[str, list[int]] = defaultdict(list)
    partition_of: dict[str, set[str]] = defaultdict(set)
    for r in records:
        per_user[r.event.user_id].append(r.event.item_id)  # type: ignore[union-attr]
        partition_of[r.event.user_id].add(r.partition)
    # Keyed by user id: one partition per user, and that user's events in publish order.
    assert all(len(parts) == 1 for parts in partition_of.values())
    for i in range(7):
        assert per_user[f"user-{i}"] == list(range(i, 70, 7))


def test_the_producer_batches_for_the_configured_linger(
    kafka_broker: EmbeddedBroker, unique_name: str
) -> None:
    settings = StreamSettings(
        impressions_topic=f"{unique_name}-imp", feedback_topic=f"{unique_name}-fb", linger_ms=7
    )
    sink = KafkaEventSink(kafka_broker.bootstrap, settings)
    try:
        assert sink.config["linger.ms"] == 7
    finally:
        sink.close()
    assert StreamSettings().linger_ms == 50


def test_seek_with_multiple_partitions(kafka_broker: EmbeddedBroker, unique_name: str) -> None:
    topic = f"{unique_name}-fb"
    settings = StreamSettings(impressions_topic=f"{unique_name}-imp", feedback_topic=topic)
    ensure_topics(kafka_broker.bootstrap, [topic], partitions=2)
    sink = KafkaEventSink(kafka_broker.bootstrap, settings)
    try:
        for i in range(40):
            sink.publish(feedback("r", f"user-{i % 5}", i))
        sink.flush()
    finally:
        sink.close()
    source = KafkaEventSource(kafka_broker.bootstrap, [topic])
    try:
        everything = drain(source, 40)
        ends = {
            p: max(r.offset for r in everything if r.partition == p) + 1
            for p in source.partitions()
        }
        # Resume one partition at its end, leave the other unlisted (read from the start).
        skipped, other = source.partitions()
        source.seek({skipped: ends[skipped]})
        again = drain(source, ends[other])
        assert {r.partition for r in again} == {other}
        assert source.poll(10, 0.2) == []
    finally:
        source.close()


def test_oversized_event_is_refused_with_a_clear_error(
    kafka_broker: EmbeddedBroker, unique_name: str
) -> None:
    settings = StreamSettings(
        impressions_topic=f"{unique_name}-imp", feedback_topic=f"{unique_name}-fb"
    )
    sink = KafkaEventSink(kafka_broker.bootstrap, settings)
    try:
        huge = impression("r", "u", list(range(40_000)))  # ~3 MB of JSON > 1 MB request limit
        with pytest.raises(EventPublishError, match=settings.impressions_topic):
            sink.publish(huge)
        sink.publish(feedback("r", "u", 1))
        sink.flush()  # the sink stays usable
    finally:
        sink.close()


def test_source_needs_topics(kafka_broker: EmbeddedBroker) -> None:
    with pytest.raises(ValueError, match="topic"):
        KafkaEventSource(kafka_broker.bootstrap, [])


def test_lag_and_end_offsets_answer_while_another_thread_polls(
    kafka_broker: EmbeddedBroker, unique_name: str
) -> None:
    """A metrics thread asks for lag while the consumer thread polls: the client serializes
    its own calls with a poll, so the source must answer without it (and without waiting)."""
    import threading
    import time

    settings = StreamSettings(
        impressions_topic=f"{unique_name}-imp", feedback_topic=f"{unique_name}-fb"
    )
    sink = KafkaEventSink(kafka_broker.bootstrap, settings)
    source = KafkaEventSource(
        kafka_broker.bootstrap, [settings.impressions_topic, settings.feedback_topic]
    )
    stop = threading.Event()
    read: list[object] = []

    def consume() -> None:
        while not stop.is_set():
            read.extend(source.poll(100, 1.0))

    for i in range(5):
        sink.publish(feedback("r", "u", i))
    sink.flush()
    thread = threading.Thread(target=consume)
    thread.start()
    try:
        deadline = time.monotonic() + 10.0
        while len(read) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(read) == 5
        start = time.monotonic()
        lag = source.lag()
        caught_up = source.caught_up()
        ends = source.end_offsets()
        assert time.monotonic() - start < 0.5
        fb = f"{settings.feedback_topic}:0"
        assert lag[fb] == 0
        assert fb in caught_up
        assert ends[fb] >= 1
    finally:
        stop.set()
        thread.join(5.0)
        source.close()
        sink.close()
