"""One contract suite for EventSink + EventSource, run against every backend.

``memory`` is the in-process :class:`InMemoryEventLog`; ``kafka`` is :class:`KafkaEventSink` /
:class:`KafkaEventSource` against the real tansu broker from the session fixture. The
``+buffered`` variants publish through :class:`BufferedEventSink` in front of that sink (what the
server does). Every test gets its own topics, so tests never see each other's records.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import pytest
from kafka import KafkaProducer

from recsys.config import StreamSettings
from recsys.embedded import EmbeddedBroker
from recsys.protocols import EventSink, EventSource
from recsys.stream import (
    InMemoryEventLog,
    KafkaEventSink,
    KafkaEventSource,
    encode_event,
    ensure_topics,
)
from recsys.stream.buffered import BufferedEventSink
from recsys.types import EventType
from tests.unit.stream.fakes import drain, feedback, impression


class Backend(Protocol):
    """What the suite needs from a backend: sinks, sources, and a way to write raw bytes."""

    def sink(self) -> EventSink: ...

    def source(self) -> EventSource: ...

    def produce_raw(self, topic: str, data: bytes) -> None: ...

    def close(self) -> None: ...


class MemoryBackend:
    def __init__(self, settings: StreamSettings) -> None:
        self.settings = settings
        self.log = InMemoryEventLog(settings)

    def sink(self) -> EventSink:
        return self.log.sink()

    def source(self) -> EventSource:
        return self.log.source()

    def produce_raw(self, topic: str, data: bytes) -> None:
        self.log.append(topic, data)

    def close(self) -> None:
        pass


class KafkaBackend:
    def __init__(self, settings: StreamSettings, bootstrap: str) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self._opened: list[Any] = []

    def sink(self) -> EventSink:
        sink = KafkaEventSink(self.bootstrap, self.settings)
        self._opened.append(sink)
        return sink

    def source(self) -> EventSource:
        topics = [self.settings.impressions_topic, self.settings.feedback_topic]
        source = KafkaEventSource(self.bootstrap, topics)
        self._opened.append(source)
        return source

    def produce_raw(self, topic: str, data: bytes) -> None:
        # tansu auto-creates unknown topics on produce with several partitions: create ours
        # first, as the sink and source would, so the topic keeps its single partition.
        ensure_topics(self.bootstrap, [topic])
        producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        try:
            producer.send(topic, value=data, key=b"poison").get(timeout=10)
        finally:
            producer.close()

    def close(self) -> None:
        for thing in reversed(self._opened):
            thing.close()


class BufferedBackend:
    """Any backend with its sinks behind a :class:`BufferedEventSink`."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.settings = getattr(inner, "settings", None)
        self._sinks: list[BufferedEventSink] = []

    def sink(self) -> EventSink:
        sink = BufferedEventSink(self.inner.sink(), capacity=1000)
        self._sinks.append(sink)
        return sink

    def source(self) -> EventSource:
        return self.inner.source()

    def produce_raw(self, topic: str, data: bytes) -> None:
        self.inner.produce_raw(topic, data)

    def close(self) -> None:
        for sink in self._sinks:
            sink.close()
        self.inner.close()


@pytest.fixture(
    params=[
        "memory",
        "memory+buffered",
        pytest.param("kafka", marks=pytest.mark.integration),
        pytest.param("kafka+buffered", marks=pytest.mark.integration),
    ],
)
def backend(request: pytest.FixtureRequest, unique_name: str) -> Iterator[Backend]:
    settings = StreamSettings(
        impressions_topic=f"{unique_name}-impressions", feedback_topic=f"{unique_name}-feedback"
    )
    impl: Backend
    kind, _, buffered = str(request.param).partition("+")
    if kind == "memory":
        impl = MemoryBackend(settings)
    else:
        broker: EmbeddedBroker = request.getfixturevalue("kafka_broker")
        impl = KafkaBackend(settings, broker.bootstrap)
    if buffered:
        impl = BufferedBackend(impl)
    try:
        yield impl
    finally:
        impl.close()


def _settings(backend: Backend) -> StreamSettings:
    settings = getattr(backend, "settings", None)
    assert isinstance(settings, StreamSettings)
    return settings


def _keys(backend: Backend) -> tuple[str, str]:
    s = _settings(backend)
    return f"{s.impressions_topic}:0", f"{s.feedback_topic}:0"


def _publish(sink: EventSink, events: Sequence[Any]) -> None:
    for event in events:
        sink.publish(event)
    sink.flush()


def test_implements_the_protocols(backend: Backend) -> None:
    assert isinstance(backend.sink(), EventSink)
    assert isinstance(backend.source(), EventSource)


def test_partitions_cover_both_topics(backend: Backend) -> None:
    assert sorted(backend.source().partitions()) == sorted(_keys(backend))


def test_round_trip_preserves_every_field(backend: Backend) -> None:
    imp_key, fb_key = _keys(backend)
    source = backend.source()
    imp = impression("req-ü-1", "user-1", [7, 3, 11], ts=1712345678.123456)
    fb = feedback("req-ü-1", "user-1", 3, event=EventType.DWELL, value=12.75, ts=1712345679.5)
    _publish(backend.sink(), [imp, fb])
    records = drain(source, 2)
    by_partition = {r.partition: r for r in records}
    assert by_partition[imp_key].event == imp
    assert by_partition[imp_key].offset == 0
    assert by_partition[fb_key].event == fb
    assert by_partition[fb_key].offset == 0


def test_events_come_back_in_publish_order(backend: Backend) -> None:
    _, fb_key = _keys(backend)
    events = [feedback(f"r{i}", f"u{i % 3}", i, ts=float(i)) for i in range(60)]
    _publish(backend.sink(), events)
    records = drain(backend.source(), len(events))
    assert [r.partition for r in records] == [fb_key] * len(events)
    assert [r.offset for r in records] == list(range(len(events)))
    assert [r.event for r in records] == events


def test_poll_returns_at_most_max_records(backend: Backend) -> None:
    _publish(backend.sink(), [feedback("r", "u", i) for i in range(5)])
    source = backend.source()
    first = drain(source, 2)
    assert len(first) == 2
    rest = drain(source, 3)
    assert [r.offset for r in first + rest] == [0, 1, 2, 3, 4]


def test_seek_resumes_from_an_offset(backend: Backend) -> None:
    imp_key, fb_key = _keys(backend)
    _publish(backend.sink(), [feedback("r", "u", i) for i in range(10)])
    _publish(backend.sink(), [impression("r", "u", [1])])
    source = backend.source()
    source.seek({fb_key: 4, "unrelated-topic:0": 99})
    records = drain(source, 7)
    fb = [r for r in records if r.partition == fb_key]
    assert [r.offset for r in fb] == [4, 5, 6, 7, 8, 9]
    assert [r.event.item_id for r in fb] == [4, 5, 6, 7, 8, 9]  # type: ignore[union-attr]
    # A partition not listed starts at the beginning.
    assert [(r.partition, r.offset) for r in records if r.partition == imp_key] == [(imp_key, 0)]


def test_seek_can_rewind_after_reading(backend: Backend) -> None:
    _, fb_key = _keys(backend)
    _publish(backend.sink(), [feedback("r", "u", i) for i in range(4)])
    source = backend.source()
    assert len(drain(source, 4)) == 4
    source.seek({fb_key: 2})
    assert [r.offset for r in drain(source, 2)] == [2, 3]


def test_seek_to_the_end_reads_only_new_events(backend: Backend) -> None:
    imp_key, fb_key = _keys(backend)
    _publish(backend.sink(), [feedback("r", "u", i) for i in range(3)])
    source = backend.source()
    source.seek({fb_key: 3, imp_key: 0})
    assert source.poll(10, 0.2) == []
    _publish(backend.sink(), [feedback("r", "u", 99)])
    assert [(r.offset, r.event.item_id) for r in drain(source, 1)] == [(3, 99)]  # type: ignore[union-attr]


def test_empty_poll_returns_nothing_within_roughly_the_timeout(backend: Backend) -> None:
    source = backend.source()
    source.poll(1, 0.05)  # first poll may do one-off set-up work (offset lookups)
    timeout_s = 0.3
    start = time.monotonic()
    assert source.poll(10, timeout_s) == []
    elapsed = time.monotonic() - start
    assert timeout_s * 0.5 <= elapsed < timeout_s + 1.0


def test_poll_wakes_up_for_an_event_published_while_waiting(backend: Backend) -> None:
    source = backend.source()
    source.poll(1, 0.05)
    sink = backend.sink()
    timer = threading.Timer(0.2, lambda: _publish(sink, [feedback("r", "u", 1)]))
    timer.start()
    try:
        start = time.monotonic()
        records: list[Any] = []
        while not records and time.monotonic() - start < 5.0:
            records = source.poll(10, 5.0)
        assert [r.event for r in records] == [feedback("r", "u", 1)]
        assert time.monotonic() - start < 3.0
    finally:
        timer.join()


def test_poison_messages_are_skipped_and_counted(backend: Backend) -> None:
    _, fb_key = _keys(backend)
    topic = _settings(backend).feedback_topic
    backend.produce_raw(topic, b"\x00\x01 definitely not an event")
    newer = encode_event(feedback("r", "u", 1)).replace(b'"v":1', b'"v":99')
    backend.produce_raw(topic, newer)
    _publish(backend.sink(), [feedback("r", "u", 7)])
    backend.produce_raw(topic, b"{}")
    source = backend.source()
    records = drain(source, 1)
    assert [(r.partition, r.offset, r.event) for r in records] == [
        (fb_key, 2, feedback("r", "u", 7))
    ]
    assert source.poll(10, 0.2) == []
    assert getattr(source, "decode_errors", None) == 3


def test_a_second_source_reads_the_same_events(backend: Backend) -> None:
    _publish(backend.sink(), [feedback("r", "u", i) for i in range(3)])
    first, second = backend.source(), backend.source()
    assert [r.offset for r in drain(first, 3)] == [0, 1, 2]
    assert [r.offset for r in drain(second, 3)] == [0, 1, 2]


def test_flush_and_close_are_safe_to_call(backend: Backend) -> None:
    sink = backend.sink()
    sink.flush(timeout_s=5.0)
    sink.publish(feedback("r", "u", 1))
    sink.close()
    assert [r.event for r in drain(backend.source(), 1)] == [feedback("r", "u", 1)]
