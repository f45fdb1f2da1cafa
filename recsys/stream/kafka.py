"""Kafka backend for the event stream (kafka-python); the only module that imports ``kafka``.

The source never joins a consumer group: it assigns itself every partition of its topics and
positions itself from offsets the caller supplies (the online updater keeps them in the user
state store, in the same atomic write as the state they produced). That gives exactly-once
application without Kafka transactions, and it avoids group rebalances, which are slow on small
brokers (about 23 s per join on tansu) and pointless for a single updater per partition set.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from recsys.config import StreamSettings
from recsys.stream.events import (
    DeadLetter,
    DeadLetterHandler,
    EventDecodeError,
    EventPublishError,
    EventStreamError,
    decode_event,
    encode_dead_letter,
    encode_event,
    topic_for,
)
from recsys.stream.memory import partition_key
from recsys.types import Event, EventRecord

_log = logging.getLogger(__name__)


def ensure_topics(
    bootstrap: str,
    topics: Iterable[str],
    partitions: int = 1,
    *,
    timeout_s: float = 10.0,
) -> None:
    """Create any of ``topics`` that do not exist yet; existing topics are left as they are.

    Brokers without topic auto-creation (and producers racing a consumer) need the topics to
    exist up front. ``TopicAlreadyExistsError`` from a concurrent creator counts as success.
    """
    wanted = list(dict.fromkeys(topics))
    if not wanted:
        return
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="recsys-admin",
        request_timeout_ms=int(timeout_s * 1000),
    )
    try:
        existing = set(admin.list_topics())
        missing = [t for t in wanted if t not in existing]
        for topic in missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # a concurrent creator won
                admin.create_topics(
                    [NewTopic(topic, num_partitions=partitions, replication_factor=1)],
                    timeout_ms=int(timeout_s * 1000),
                )
    finally:
        admin.close()


class KafkaEventSink:
    """Publishes events to Kafka: impressions and feedback to their own topics.

    The key is the user id, so all of one user's events land on one partition and stay in
    order. ``acks="all"`` trades a little latency for not losing acknowledged events; a small
    ``linger_ms`` batches bursts from concurrent requests. Delivery failures are collected
    from the producer's callbacks and raised by the next :meth:`flush`.
    """

    def __init__(
        self,
        bootstrap: str,
        settings: StreamSettings,
        *,
        linger_ms: int = 5,
        max_block_ms: int = 10_000,
        create_topics: bool = True,
    ) -> None:
        self._settings = settings
        if create_topics:
            ensure_topics(
                bootstrap,
                (settings.impressions_topic, settings.feedback_topic),
                settings.partitions,
            )
        self._producer = KafkaProducer(
            bootstrap_servers=bootstrap,
            client_id="recsys-event-sink",
            acks="all",
            linger_ms=linger_ms,
            # Bounds how long publish() can block on metadata or a full buffer, so a broker
            # outage surfaces as an error in the request path instead of a hang.
            max_block_ms=max_block_ms,
            retries=5,
        )
        self._errors: list[BaseException] = []
        self._errors_lock = threading.Lock()

    def publish(self, event: Event) -> None:
        """Queue ``event`` on its topic, keyed by user id; failures surface in :meth:`flush`."""
        topic = topic_for(event, self._settings)
        try:
            future = self._producer.send(
                topic, value=encode_event(event), key=event.user_id.encode("utf-8")
            )
        except KafkaError as exc:
            raise EventPublishError(f"cannot publish to {topic}: {exc}") from exc
        future.add_errback(self._record_error)

    def _record_error(self, exc: BaseException) -> None:
        _log.error("event delivery failed: %s", exc)
        with self._errors_lock:
            self._errors.append(exc)

    def flush(self, timeout_s: float = 10.0) -> None:
        """Wait until every queued event is acknowledged; raise if any failed or time ran out."""
        try:
            self._producer.flush(timeout=timeout_s)
        except KafkaError as exc:
            raise EventPublishError(f"flush did not complete in {timeout_s}s: {exc}") from exc
        with self._errors_lock:
            errors, self._errors = self._errors, []
        if errors:
            raise EventPublishError(
                f"{len(errors)} event(s) were not delivered; first error: {errors[0]}"
            ) from errors[0]

    def close(self) -> None:
        """Flush what is queued (best effort) and close the producer."""
        try:
            self._producer.flush(timeout=10.0)
        finally:
            self._producer.close(timeout=10.0)


class KafkaDeadLetterSink:
    """Puts records a consumer skipped on the dead-letter topic (a :data:`DeadLetterHandler`).

    Sends are asynchronous and never raise into the consumer: a dead letter that cannot be
    delivered is logged and counted in :attr:`failed`, and the record stays counted as skipped.
    Delivery is at least once (a consumer that restarts from older offsets skips, and reports,
    the same record again).
    """

    def __init__(self, bootstrap: str, topic: str, *, create_topic: bool = True) -> None:
        if create_topic:
            ensure_topics(bootstrap, (topic,))
        self.topic = topic
        self.sent = 0
        self.failed = 0
        self._producer = KafkaProducer(
            bootstrap_servers=bootstrap, client_id="recsys-dead-letters", linger_ms=20,
            max_block_ms=2_000,
        )  # fmt: skip

    def __call__(self, letter: DeadLetter) -> None:
        try:
            future = self._producer.send(
                self.topic, value=encode_dead_letter(letter), key=letter.partition.encode()
            )
            future.add_errback(self._failed)
            self.sent += 1
        except KafkaError as exc:
            self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        self.failed += 1
        _log.warning("could not put a record on the dead-letter topic %s: %s", self.topic, exc)

    def close(self) -> None:
        """Deliver what is queued (bounded wait) and close the producer."""
        with contextlib.suppress(KafkaError):
            self._producer.flush(timeout=5.0)
        self._producer.close(timeout=5.0)


class KafkaEventSource:
    """Reads events from every partition of ``topics`` with manual assignment (no group).

    ``shard=(k, n)`` reads only partitions ``p`` with ``p % n == k`` of every topic, so ``n``
    consumers split the stream. Producers key every event by user id, so with the same number
    of partitions on both topics a user's impressions and feedback land on the same partition
    number, and one shard sees all of them, in order.

    Positions come from :meth:`seek` (partitions not listed start at the beginning). Payloads
    that do not decode are skipped and counted in :attr:`decode_errors`; their offsets are
    passed over like any other, so they are covered once a later record is committed.
    Partitions are discovered once, at construction. A position outside the log (older than
    retention, or past the end after a broker lost data) resets to the earliest record.
    """

    def __init__(
        self,
        bootstrap: str,
        topics: Sequence[str],
        *,
        create_topics: bool = True,
        partitions_if_created: int = 1,
        metadata_timeout_s: float = 10.0,
        fetch_max_wait_ms: int = 100,
        watermark_delay_s: float = 0.5,
        shard: tuple[int, int] | None = None,
        dead_letters: DeadLetterHandler | None = None,
    ) -> None:
        if not topics:
            raise ValueError("an event source needs at least one topic")
        if shard is not None and not 0 <= shard[0] < shard[1]:
            raise ValueError(f"shard must be (k, n) with 0 <= k < n, got {shard}")
        self._shard = shard
        self._dead_letters = dead_letters
        topics = list(dict.fromkeys(topics))
        if create_topics:
            ensure_topics(bootstrap, topics, partitions_if_created)
        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            client_id="recsys-event-source",
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # The broker holds an empty fetch this long; keep it below typical poll timeouts
            # so poll(timeout_s=0.2) returns new records promptly.
            fetch_max_wait_ms=fetch_max_wait_ms,
        )
        self.decode_errors = 0
        # How far behind "now" a caught-up partition's watermark is put: covers the age of
        # the high-water mark from the last fetch and events stamped but not yet published.
        self._watermark_delay_s = float(watermark_delay_s)
        self._polled_at = 0.0
        try:
            self._assigned = self._discover(topics, metadata_timeout_s)
            self._consumer.assign(self._assigned)
            self._consumer.seek_to_beginning(*self._assigned)
        except BaseException:
            self._consumer.close()
            raise

    def _discover(self, topics: Sequence[str], timeout_s: float) -> list[TopicPartition]:
        # Metadata for a just-created topic can take a moment to show up.
        deadline = time.monotonic() + timeout_s
        assigned: list[TopicPartition] = []
        for topic in topics:
            while True:
                found = self._consumer.partitions_for_topic(topic)
                if found:
                    mine = [
                        p for p in sorted(found)
                        if self._shard is None or p % self._shard[1] == self._shard[0]
                    ]  # fmt: skip
                    if not mine:
                        raise EventStreamError(
                            f"shard {self._shard} gets no partition of {topic!r} "
                            f"({len(found)} partitions)"
                        )
                    assigned.extend(TopicPartition(topic, p) for p in mine)
                    break
                if time.monotonic() >= deadline:
                    raise EventStreamError(f"topic {topic!r} has no partitions after {timeout_s}s")
                time.sleep(0.05)
        return assigned

    def partitions(self) -> list[str]:
        """Every assigned partition as ``"topic:partition"``."""
        return [partition_key(tp.topic, tp.partition) for tp in self._assigned]

    def seek(self, offsets: Mapping[str, int]) -> None:
        """Resume listed partitions at their next offset; the others restart at the beginning.

        Keys for partitions this source does not read are ignored.
        """
        for tp in self._assigned:
            offset = offsets.get(partition_key(tp.topic, tp.partition))
            if offset is None:
                self._consumer.seek_to_beginning(tp)
            elif offset < 0:
                raise ValueError(f"offset for {tp.topic}:{tp.partition} must be >= 0")
            else:
                self._consumer.seek(tp, offset)

    def poll(self, max_records: int, timeout_s: float) -> list[EventRecord]:
        """Up to ``max_records`` decoded records, waiting at most ``timeout_s`` for the first."""
        if max_records < 1:
            raise ValueError(f"max_records must be >= 1, got {max_records}")
        deadline = time.monotonic() + max(timeout_s, 0.0)
        self._polled_at = time.time()
        while True:
            remaining_ms = max(int((deadline - time.monotonic()) * 1000), 0)
            batch: dict[Any, list[Any]] = self._consumer.poll(
                timeout_ms=remaining_ms, max_records=max_records
            )
            raw_count = sum(len(msgs) for msgs in batch.values())
            records = self._decode(batch)
            # A batch of nothing but poison is not "no data": keep waiting while time remains.
            if records or raw_count == 0 or time.monotonic() >= deadline:
                return records

    def _decode(self, batch: Mapping[Any, Sequence[Any]]) -> list[EventRecord]:
        records: list[EventRecord] = []
        for tp, messages in batch.items():
            key = partition_key(tp.topic, tp.partition)
            for msg in messages:
                try:
                    event = decode_event(msg.value)
                except EventDecodeError as exc:
                    self.decode_errors += 1
                    _log.warning("skipping undecodable record %s@%d: %s", key, msg.offset, exc)
                    if self._dead_letters is not None:
                        payload = msg.value if isinstance(msg.value, bytes) else b""
                        self._dead_letters(DeadLetter(key, int(msg.offset), str(exc), payload))
                    continue
                records.append(EventRecord(key, int(msg.offset), event))
        return records

    def caught_up(self) -> dict[str, float]:
        """Partitions whose position reached the high-water mark of the last fetch, with a
        watermark ``watermark_delay_s`` before the last poll started."""
        out: dict[str, float] = {}
        for tp in self._assigned:
            high = self._consumer.highwater(tp)
            if high is not None and self._consumer.position(tp) >= high:
                key = partition_key(tp.topic, tp.partition)
                out[key] = self._polled_at - self._watermark_delay_s
        return out

    def end_offsets(self) -> dict[str, int]:
        """The next offset the broker would give in each assigned partition (asks it now)."""
        ends = self._consumer.end_offsets(self._assigned)
        return {partition_key(tp.topic, tp.partition): int(ends[tp]) for tp in self._assigned}

    def lag(self) -> dict[str, int]:
        """Records between this source's position and the high-water mark of its last fetch,
        per partition (partitions not fetched yet are left out)."""
        out: dict[str, int] = {}
        for tp in self._assigned:
            high = self._consumer.highwater(tp)
            if high is not None:
                out[partition_key(tp.topic, tp.partition)] = max(
                    int(high) - int(self._consumer.position(tp)), 0
                )
        return out

    def close(self) -> None:
        """Close the consumer (no offsets are committed to Kafka; the store keeps them)."""
        self._consumer.close()
