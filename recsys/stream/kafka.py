"""Kafka backend for the event stream: the only module that imports a Kafka client.

The event sink and source use confluent-kafka (librdkafka): its C threads batch, send and fetch
outside the GIL, and its fetcher reads a backlog several times faster than kafka-python's.
Topic administration and the dead-letter producer use kafka-python.

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

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka import KafkaError as ConsumerError
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from recsys.config import StreamSettings
from recsys.stream.events import (
    DeadLetter,
    DeadLetterHandler,
    EventDecodeError,
    EventPublishError,
    EventStreamError,
    decode_events,
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
    order: librdkafka's ``murmur2_random`` partitioner picks the partition kafka-python and the
    Java client pick for the same key, and one request in flight per broker keeps a retried
    batch from overtaking a later one. ``acks="all"`` trades a little latency for not losing
    acknowledged events; ``settings.linger_ms`` batches events into one produce request.

    The producer is librdkafka's (confluent-kafka): batching, retries and the network run on
    its C threads, outside the GIL. kafka-python's producer did that work in a Python thread
    and cost about twice the CPU per event on the server (docs/serving.md), on the same GIL
    as the request path. :meth:`publish` never waits for the broker: an event the client
    cannot queue (its queue of ``queue_max_events`` is full, or the event is over the size
    limit) raises :class:`EventPublishError` at once. Delivery failures (an event still
    unacknowledged after ``delivery_timeout_ms``) are collected from the delivery reports and
    raised by the next :meth:`flush`.
    """

    def __init__(
        self,
        bootstrap: str,
        settings: StreamSettings,
        *,
        create_topics: bool = True,
        queue_max_events: int = 100_000,
        delivery_timeout_ms: int = 300_000,
    ) -> None:
        self._settings = settings
        if create_topics:
            ensure_topics(
                bootstrap,
                (settings.impressions_topic, settings.feedback_topic),
                settings.partitions,
            )
        self.config: dict[str, str | int | bool] = {
            "bootstrap.servers": bootstrap,
            "client.id": "recsys-event-sink",
            "acks": "all",
            "linger.ms": settings.linger_ms,
            "partitioner": "murmur2_random",
            "max.in.flight.requests.per.connection": 1,
            "queue.buffering.max.messages": queue_max_events,
            "message.timeout.ms": delivery_timeout_ms,
            # Reports only for failures: a Python callback per delivered event costs CPU.
            "delivery.report.only.error": True,
        }
        self._producer = Producer(self.config, logger=_log)
        self._errors: list[str] = []
        self._errors_lock = threading.Lock()

    def publish(self, event: Event) -> None:
        """Queue ``event`` on its topic, keyed by user id; failures surface in :meth:`flush`."""
        topic = topic_for(event, self._settings)
        try:
            self._producer.produce(
                topic,
                encode_event(event),
                event.user_id.encode("utf-8"),
                on_delivery=self._delivered,
            )
        except BufferError as exc:
            raise EventPublishError(f"cannot publish to {topic}: the queue is full") from exc
        except KafkaException as exc:
            raise EventPublishError(f"cannot publish to {topic}: {exc}") from exc
        self._producer.poll(0)  # serve delivery reports and client errors, never waits

    def _delivered(self, error: ConsumerError | None, message: Message) -> None:
        if error is None:
            return
        _log.error("event delivery to %s failed: %s", message.topic(), error)
        with self._errors_lock:
            self._errors.append(f"{message.topic()}: {error.str()}")

    def flush(self, timeout_s: float = 10.0) -> None:
        """Wait until every queued event is acknowledged; raise if any failed or time ran out."""
        left = self._producer.flush(timeout_s)
        with self._errors_lock:
            errors, self._errors = self._errors, []
        if left:
            raise EventPublishError(f"flush did not complete in {timeout_s}s: {left} events left")
        if errors:
            raise EventPublishError(
                f"{len(errors)} event(s) were not delivered; first error: {errors[0]}"
            )

    def close(self) -> None:
        """Deliver what is queued (for up to 10 s, best effort) and release the producer."""
        left = self._producer.flush(10.0)
        if left:
            _log.error("closing the event sink with %d undelivered events", left)


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

    The consumer is librdkafka's (confluent-kafka): its own thread fetches ahead into a local
    queue and unpacks record batches in C, a few microseconds a record, where kafka-python's
    pure-Python fetcher cost more than decoding the events. The group id it needs is never
    used: no subscribe, no commit, so no group is ever joined.
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
        prefetch_kbytes: int = 32_768,
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
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "client.id": "recsys-event-source",
                # Required by librdkafka for any consumer; never joined (assign, no commits).
                "group.id": "recsys-event-source",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                # What kafka-python read: every record the leader has, not only committed
                # transactions (the producers here are not transactional).
                "isolation.level": "read_uncommitted",
                # The broker holds an empty fetch this long; keep it below typical poll
                # timeouts so poll(timeout_s=0.2) returns new records promptly.
                "fetch.wait.max.ms": fetch_max_wait_ms,
                # Read-ahead buffered in this process (all partitions together).
                "queued.max.messages.kbytes": prefetch_kbytes,
            },
            logger=_log,
        )
        self._bootstrap = bootstrap
        self._query: Consumer | None = None  # for end_offsets(), built on first use
        self.decode_errors = 0
        # How far behind "now" a caught-up partition's watermark is put: covers the age of
        # the high-water mark from the last fetch and events stamped but not yet published.
        self._watermark_delay_s = float(watermark_delay_s)
        self._polled_at = 0.0
        try:
            self._assigned = self._discover(topics, metadata_timeout_s)
        except BaseException:
            self._consumer.close()
            raise
        self._keys = {(tp.topic, tp.partition): partition_key(tp.topic, tp.partition)
                      for tp in self._assigned}  # fmt: skip
        self._tp_of = {key: tp for tp, key in self._keys.items()}
        # Next offset to read per partition, as this source knows it (None: "the beginning",
        # not resolved yet). librdkafka's own position() only knows consumed partitions.
        self._next: dict[tuple[str, int], int | None] = dict.fromkeys(self._keys)
        # (log start, high-water mark) of the last fetch, per partition fetched so far.
        self._marks: dict[tuple[str, int], tuple[int, int]] = {}
        # Assignment to apply before the next read: seek() only records it, so a source that
        # is positioned right after construction never prefetches from the wrong place.
        self._pending_assign = True
        self._error_logged_at = 0.0

    def _discover(self, topics: Sequence[str], timeout_s: float) -> list[TopicPartition]:
        # Metadata for a just-created topic can take a moment to show up.
        deadline = time.monotonic() + timeout_s
        assigned: list[TopicPartition] = []
        for topic in topics:
            while True:
                found = self._partitions_of(topic, max(deadline - time.monotonic(), 0.1))
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

    def _partitions_of(self, topic: str, timeout_s: float) -> list[int]:
        try:
            meta = self._consumer.list_topics(topic, timeout=timeout_s)
        except KafkaException as exc:
            _log.debug("no metadata for %s yet: %s", topic, exc)
            return []
        found = meta.topics.get(topic)
        if found is None or found.error is not None:
            return []
        return list(found.partitions)

    def partitions(self) -> list[str]:
        """Every assigned partition as ``"topic:partition"``."""
        return list(self._keys.values())

    def seek(self, offsets: Mapping[str, int]) -> None:
        """Resume listed partitions at their next offset; the others restart at the beginning.

        Keys for partitions this source does not read are ignored.
        """
        positions: dict[tuple[str, int], int | None] = {}
        for tp_key, key in self._keys.items():
            offset = offsets.get(key)
            if offset is not None and offset < 0:
                raise ValueError(f"offset for {tp_key[0]}:{tp_key[1]} must be >= 0")
            positions[tp_key] = None if offset is None else int(offset)
        self._next = positions
        self._pending_assign = True

    def _assign(self) -> None:
        # (Re-)assigning drops whatever librdkafka prefetched from the old positions.
        self._consumer.assign(
            [
                TopicPartition(t, p, OFFSET_BEGINNING if offset is None else offset)
                for (t, p), offset in self._next.items()
            ]
        )
        self._pending_assign = False

    def poll(self, max_records: int, timeout_s: float) -> list[EventRecord]:
        """Up to ``max_records`` decoded records, waiting at most ``timeout_s`` for the first."""
        if max_records < 1:
            raise ValueError(f"max_records must be >= 1, got {max_records}")
        if self._pending_assign:
            self._assign()
        deadline = time.monotonic() + max(timeout_s, 0.0)
        self._polled_at = time.time()
        consumer = self._consumer
        while True:
            # librdkafka's consume() waits for a *full* batch until its timeout; the contract
            # is "wait for the first record only": take what is queued, else block on one.
            messages = consumer.consume(max_records, 0)
            if not messages:
                remaining = deadline - time.monotonic()
                if remaining > 0:
                    first = consumer.poll(remaining)
                    if first is not None:
                        messages = [first]
                        if max_records > 1:
                            messages += consumer.consume(max_records - 1, 0)
            records = self._decode(messages)
            self._refresh_marks()
            # A batch of nothing but poison (or client errors) is not "no data": keep waiting
            # while time remains.
            if records or not messages or time.monotonic() >= deadline:
                return records

    def _refresh_marks(self) -> None:
        """Copy librdkafka's log start and high-water mark of the last fetch of each partition
        (local, no request). Read here, on the polling thread, because the client serializes
        them with a poll in progress: :meth:`lag` from a metrics thread would wait for it."""
        watermarks = self._consumer.get_watermark_offsets
        marks = self._marks
        for tp in self._assigned:
            low, high = watermarks(tp, cached=True)
            if high >= 0:
                marks[(tp.topic, tp.partition)] = (max(int(low), 0), int(high))

    def _decode(self, messages: Sequence[Message]) -> list[EventRecord]:
        """Records of the data messages that decode (errors logged, poison dead-lettered)."""
        data: list[tuple[str, int, Message]] = []
        keys = self._keys
        for msg in messages:
            error = msg.error()
            if error is not None:
                self._broker_error(error)
                continue
            key = keys.get((msg.topic(), msg.partition()))  # type: ignore[arg-type]
            offset = msg.offset()
            if key is None or offset is None:  # not ours (cannot happen when assigned)
                continue
            data.append((key, offset, msg))
        if not data:
            return []
        nexts = self._next
        records: list[EventRecord] = []
        append = records.append
        events = decode_events([msg.value() for _, _, msg in data])
        for (key, offset, msg), event in zip(data, events, strict=True):
            nexts[self._tp_of[key]] = offset + 1
            if isinstance(event, EventDecodeError):
                self.decode_errors += 1
                _log.warning("skipping undecodable record %s@%d: %s", key, offset, event)
                if self._dead_letters is not None:
                    value = msg.value()
                    payload = value if isinstance(value, bytes) else b""
                    self._dead_letters(DeadLetter(key, offset, str(event), payload))
                continue
            append(EventRecord(key, offset, event))
        return records

    def _broker_error(self, error: ConsumerError) -> None:
        """Errors the consumer reports between records: fatal ones raise, the rest (broker
        down, retrying) are logged, at most once a second, while librdkafka keeps trying."""
        if error.fatal():
            raise EventStreamError(f"the Kafka consumer failed: {error}")
        if error.code() == ConsumerError._PARTITION_EOF:
            return
        now = time.monotonic()
        if now - self._error_logged_at >= 1.0:
            self._error_logged_at = now
            _log.warning("Kafka consumer: %s", error)

    def _position(self, tp: tuple[str, int], low: int) -> int:
        position = self._next[tp]
        return low if position is None else position  # None: "the beginning", the log start

    def caught_up(self) -> dict[str, float]:
        """Partitions whose position reached the high-water mark of the last fetch, with a
        watermark ``watermark_delay_s`` before the last poll started."""
        if self._pending_assign:
            return {}
        at = self._polled_at - self._watermark_delay_s
        return {
            self._keys[tp]: at
            for tp, (low, high) in list(self._marks.items())
            if self._position(tp, low) >= high
        }

    def end_offsets(self) -> dict[str, int]:
        """The next offset the broker would give in each assigned partition (asks it now).

        Through a second, idle client: the reading one serializes such calls with its polls,
        so from another thread they could wait for as long as that thread keeps polling."""
        if self._query is None:
            self._query = Consumer(
                {"bootstrap.servers": self._bootstrap, "group.id": "recsys-event-source",
                 "client.id": "recsys-event-source-query",
                 "isolation.level": "read_uncommitted"},
                logger=_log,
            )  # fmt: skip
        out: dict[str, int] = {}
        for tp in self._assigned:
            try:
                _, high = self._query.get_watermark_offsets(tp, timeout=10.0)
            except KafkaException as exc:
                raise EventStreamError(
                    f"no end offset for {tp.topic}:{tp.partition}: {exc}"
                ) from exc
            out[self._keys[(tp.topic, tp.partition)]] = int(high)
        return out

    def lag(self) -> dict[str, int]:
        """Records between this source's position and the high-water mark of its last fetch,
        per partition (partitions not fetched yet are left out)."""
        if self._pending_assign:
            return {}
        return {
            self._keys[tp]: max(high - self._position(tp, low), 0)
            for tp, (low, high) in list(self._marks.items())
        }

    def close(self) -> None:
        """Close the consumer (no offsets are committed to Kafka; the store keeps them)."""
        if self._query is not None:
            self._query.close()
        self._consumer.close()
