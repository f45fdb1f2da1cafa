"""Joiner against the real broker: Kafka sink -> topics (2 partitions each) -> Kafka source
-> joined dataset on disk.

What this adds to the unit tests: offsets and partitions from a real broker, seeking a
manually-assigned consumer to a checkpoint, and the caught-up watermark of a real source. The
traffic is stamped two hours in the past, so that watermark is past all of it.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from recsys.config import StreamSettings
from recsys.embedded import EmbeddedBroker
from recsys.stream import (
    JoinConfig,
    JoinedDataset,
    Joiner,
    KafkaEventSink,
    KafkaEventSource,
    ensure_topics,
)
from recsys.types import Event
from tests.unit.stream.join_traffic import event_counters, join_traffic, outcome

pytestmark = pytest.mark.integration

CONFIG = JoinConfig(
    consumer="kafka-joiner",
    wait_s=30.0,
    late_horizon_s=60.0,
    session_gap_s=15.0,
    segment_max_rows=10,
    segment_max_s=1e9,
)


def _finish(joiner: Joiner, total: int, timeout_s: float = 60.0) -> None:
    """Run until every published record is joined and nothing is open, then commit."""
    deadline = time.monotonic() + timeout_s
    while joiner.stats.records < total or joiner.pending or joiner.waiting:
        if time.monotonic() > deadline:
            raise AssertionError(f"joined {joiner.stats.records} of {total} records in time")
        joiner.run_once(max_records=23, timeout_s=0.2)
    joiner.commit()


def test_joiner_over_kafka_restarts_without_losing_or_repeating_rows(
    kafka_broker: EmbeddedBroker, unique_name: str, tmp_path: Path
) -> None:
    bootstrap = kafka_broker.bootstrap
    settings = StreamSettings(
        bootstrap=bootstrap,
        impressions_topic=f"{unique_name}-imp",
        feedback_topic=f"{unique_name}-fb",
    )
    topics = [settings.impressions_topic, settings.feedback_topic]
    ensure_topics(bootstrap, topics, partitions=2)
    imps, fbs = join_traffic(60, seed=11, t0=time.time() - 7200.0)
    total = len(imps) + len(fbs)
    sink = KafkaEventSink(bootstrap, settings)
    try:
        events: list[Event] = [*imps, *fbs]
        for event in events:
            sink.publish(event)
        sink.flush()
    finally:
        sink.close()

    # One uninterrupted run: the answer.
    source = KafkaEventSource(bootstrap, topics)
    try:
        assert len(source.partitions()) == 4
        reference = Joiner(source, str(tmp_path / "once"), CONFIG)
        _finish(reference, total)
    finally:
        source.close()
    want = outcome(JoinedDataset(str(tmp_path / "once")))

    # The same stream, with the process dying part-way and a new one taking over.
    root = str(tmp_path / "restarted")
    source = KafkaEventSource(bootstrap, topics)
    try:
        first = Joiner(source, root, CONFIG)
        deadline = time.monotonic() + 60.0
        while first.stats.segments < 3:  # some segments committed, more work uncommitted
            assert time.monotonic() < deadline, "the first joiner made no progress"
            first.run_once(max_records=7, timeout_s=0.2)
        assert first.stats.records < total
        assert first.uncommitted or first.pending
    finally:
        source.close()  # the process dies here, without committing
    source = KafkaEventSource(bootstrap, topics)
    try:
        second = Joiner(source, root, CONFIG)
        _finish(second, total)
    finally:
        source.close()
    dataset = JoinedDataset(root)
    got = outcome(dataset)

    assert got == want
    assert event_counters(second.stats) == event_counters(reference.stats)
    assert second.stats.records == total  # every record joined exactly once
    # No row lost: every slot of every first-seen slate is there, once.
    first_seen = {e.request_id: e for e in reversed(imps)}
    want_slots = Counter((e.request_id, i.position) for e in first_seen.values() for i in e.items)
    got_slots = Counter((r["request_id"], r["position"]) for r in got["rows"])
    assert got_slots == want_slots
    # Orphans and late feedback are all kept, each once.
    side = [(x["partition"], x["offset"]) for x in got["orphans"] + got["late"]]
    assert len(side) == len(set(side)) == second.stats.late + sum(second.stats.orphans.values())
    assert len(dataset.segments(CONFIG.consumer)) == second.stats.segments > 3
