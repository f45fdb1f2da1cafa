"""InMemoryEventLog specifics beyond the shared contract: views, retention, threads, factory."""

from __future__ import annotations

import threading

import pytest

from recsys.config import StreamSettings
from recsys.protocols import EventSink, EventSource
from recsys.stream import (
    InMemoryEventLog,
    build_event_sink,
    build_event_source,
    encode_event,
    shared_event_log,
)
from tests.unit.stream.fakes import drain, feedback, impression

CFG = StreamSettings(impressions_topic="imp", feedback_topic="fb")


def test_log_is_both_sink_and_source() -> None:
    log = InMemoryEventLog(CFG)
    assert isinstance(log, EventSink)
    assert isinstance(log, EventSource)
    log.publish(impression("r", "u", [1, 2]))
    log.publish(feedback("r", "u", 2))
    log.flush()
    assert log.partitions() == ["imp:0", "fb:0"]
    events = [r.event for r in drain(log, 2)]
    assert events == [impression("r", "u", [1, 2]), feedback("r", "u", 2)]
    assert log.poll(10, 0.0) == []


def test_readers_have_independent_positions() -> None:
    log = InMemoryEventLog(CFG)
    for i in range(4):
        log.publish(feedback("r", "u", i))
    a, b = log.source(["fb"]), log.source(["fb"])
    assert [r.offset for r in a.poll(3, 0.1)] == [0, 1, 2]
    assert [r.offset for r in b.poll(10, 0.1)] == [0, 1, 2, 3]
    assert [r.offset for r in a.poll(10, 0.1)] == [3]


def test_sink_view_routes_by_its_own_settings() -> None:
    log = InMemoryEventLog(CFG)
    other = StreamSettings(impressions_topic="imp2", feedback_topic="fb2")
    log.sink(other).publish(feedback("r", "u", 1))
    assert log.end_offset("fb2") == 1
    assert log.end_offset("fb") == 0


def test_retention_drops_oldest_and_readers_skip_ahead() -> None:
    log = InMemoryEventLog(CFG, retention=10)
    for i in range(30):
        log.publish(feedback("r", "u", i))
    assert log.end_offset("fb") == 30
    records = log.source(["fb"]).poll(100, 0.1)
    # Offsets stay absolute; only the newest records (at least ``retention``) are kept.
    assert records[-1].offset == 29
    assert 10 <= len(records) < 30
    assert [r.event.item_id for r in records] == [r.offset for r in records]  # type: ignore[union-attr]


def test_concurrent_publishers_lose_nothing() -> None:
    log = InMemoryEventLog(CFG)
    per_thread, threads = 200, 4

    def work(t: int) -> None:
        for i in range(per_thread):
            log.publish(feedback("r", f"u{t}", i))

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    records = drain(log.source(["fb"]), per_thread * threads)
    assert [r.offset for r in records] == list(range(per_thread * threads))
    for t in range(threads):
        # Each publisher's events keep their order.
        mine = [r.event.item_id for r in records if r.event.user_id == f"u{t}"]  # type: ignore[union-attr]
        assert mine == list(range(per_thread))


def test_busy_topic_does_not_starve_the_other() -> None:
    log = InMemoryEventLog(CFG)
    for i in range(50):
        log.publish(impression(f"r{i}", "u", [i]))
    log.publish(feedback("r0", "u", 0))
    source = log.source()
    seen = {r.partition for _ in range(2) for r in source.poll(5, 0.1)}
    assert seen == {"imp:0", "fb:0"}


def test_rejects_bad_arguments() -> None:
    log = InMemoryEventLog(CFG)
    with pytest.raises(ValueError, match="max_records"):
        log.poll(0, 0.1)
    with pytest.raises(ValueError, match="offset"):
        log.seek({"fb:0": -1})
    with pytest.raises(ValueError, match="topic"):
        log.source([])
    with pytest.raises(ValueError, match="retention"):
        InMemoryEventLog(CFG, retention=0)


def test_raw_append_is_decoded_like_a_published_event() -> None:
    log = InMemoryEventLog(CFG)
    assert log.append("fb", encode_event(feedback("r", "u", 3))) == 0
    assert log.append("fb", b"\x00garbage") == 1
    source = log.source(["fb"])
    assert [r.event for r in source.poll(10, 0.1)] == [feedback("r", "u", 3)]
    assert source.decode_errors == 1


def test_factory_without_bootstrap_shares_one_process_wide_log() -> None:
    cfg = StreamSettings(bootstrap="", impressions_topic="factory-imp", feedback_topic="factory-fb")
    sink = build_event_sink(cfg)
    source_a, source_b = build_event_source(cfg), build_event_source(cfg)
    # The log is process-wide: start both readers at its current end, past any earlier events.
    log = shared_event_log()
    at_end = {f"{t}:0": log.end_offset(t) for t in ("factory-imp", "factory-fb")}
    source_a.seek(at_end)
    source_b.seek(at_end)
    sink.publish(feedback("r", "u", 1))
    sink.flush()
    sink.close()  # closing one writer must not affect the shared log
    assert [r.event for r in source_a.poll(10, 0.5)] == [feedback("r", "u", 1)]
    assert [r.event for r in source_b.poll(10, 0.5)] == [feedback("r", "u", 1)]
    assert shared_event_log() is shared_event_log()
