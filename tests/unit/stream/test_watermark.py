"""The shared event-time watermark: keys, what it releases, and in which order."""

from __future__ import annotations

import math
from collections.abc import Mapping

from recsys.stream import Watermark
from recsys.types import Event, EventRecord
from tests.unit.stream.fakes import feedback, impression


class _Source:
    """An EventSource that only reports partitions and caught-up times (all the watermark
    reads)."""

    def __init__(self, partitions: list[str], caught_up: Mapping[str, float] | None = None):
        self._partitions = partitions
        self.caught = dict(caught_up or {})

    def partitions(self) -> list[str]:
        return self._partitions

    def caught_up(self) -> dict[str, float]:
        return dict(self.caught)

    def seek(self, offsets: Mapping[str, int]) -> None:
        raise AssertionError("the watermark never seeks")

    def poll(self, max_records: int, timeout_s: float) -> list[EventRecord]:
        raise AssertionError("the watermark never polls")

    def close(self) -> None:
        pass


def _records(partition: str, events: list[Event], start: int = 0) -> list[EventRecord]:
    return [EventRecord(partition, start + i, e) for i, e in enumerate(events)]


def test_keys_are_each_partitions_running_maximum() -> None:
    wm = Watermark()
    wm.add(_records("fb:0", [feedback("a", "u", 1, ts=t) for t in (5.0, 3.0, 7.0, 6.0)]))
    released = wm.take(math.inf)
    assert [k.key for k in released] == [5.0, 5.0, 7.0, 7.0]
    assert [k.record.offset for k in released] == [0, 1, 2, 3]  # delivery order kept
    assert wm.marks == {"fb:0": 7.0}


def test_releases_only_what_every_partition_has_passed() -> None:
    wm = Watermark()
    source = _Source(["imp:0", "fb:0"])
    imps = _records("imp:0", [impression(f"r{i}", "u", [1], ts=float(i)) for i in (1, 4, 9)])
    # Nothing from fb yet and it is not caught up: nothing may go.
    assert wm.advance(imps, source) == []
    assert wm.safe == -math.inf
    assert wm.held == 3
    clicks = _records("fb:0", [feedback("r1", "u", 1, ts=2.0), feedback("r4", "u", 1, ts=4.0)])
    released = wm.advance(clicks, source)
    # Watermark 4 (fb's newest): strictly older records go, in event-time order, and the
    # impression at 4 waits (fb may still deliver more at 4, after which it must come first).
    assert wm.safe == 4.0
    assert [(k.key, k.record.partition) for k in released] == [(1.0, "imp:0"), (2.0, "fb:0")]
    source.caught["fb:0"] = 100.0
    released = wm.advance([], source)
    assert [(k.key, k.record.partition) for k in released] == [(4.0, "imp:0"), (4.0, "fb:0")]
    assert wm.held == 1  # the impression at 9: imp is neither caught up nor past 9
    source.caught["imp:0"] = 50.0
    assert [k.key for k in wm.advance([], source)] == [9.0]
    assert wm.held == 0


def test_at_equal_keys_impressions_come_first_then_partition_and_offset() -> None:
    wm = Watermark()
    wm.add(_records("b:0", [feedback("r", "u", 1, ts=3.0)]))
    wm.add(_records("a:0", [feedback("r", "u", 1, ts=3.0)]))
    wm.add(_records("z:0", [impression("r", "u", [1], ts=3.0)]))
    assert [k.record.partition for k in wm.take(4.0)] == ["z:0", "a:0", "b:0"]


def test_reset_restores_marks_and_drops_held_records() -> None:
    wm = Watermark()
    wm.add(_records("fb:0", [feedback("a", "u", 1, ts=9.0)]))
    wm.reset({"fb:0": 20.0})
    assert wm.held == 0
    wm.add(_records("fb:0", [feedback("a", "u", 1, ts=9.0)]))
    assert [k.key for k in wm.take(math.inf)] == [20.0]
    assert wm.safe_time(["fb:0", "imp:0"], {"imp:0": 30.0}) == 20.0
