"""``join_all``: the joiner runs until every impression and feedback event the clients caused
is joined and every slate closed, then commits; events that never arrive are a timeout naming
what is missing (the over-HTTP path is ``tests/integration/test_offline_from_logs.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys.config import StreamSettings
from recsys.data.logged import read_logged_feedback
from recsys.served_logs import join_all
from recsys.stream import InMemoryEventLog, JoinConfig, Joiner
from tests.unit.stream.join_traffic import ClockedSource, fb, imp

CFG = StreamSettings(impressions_topic="imp", feedback_topic="fb")


def _joiner(log: InMemoryEventLog, root: Path, now: float) -> Joiner:
    source = ClockedSource(log.source(["imp", "fb"]), now)
    return Joiner(source, str(root), JoinConfig(consumer="t", wait_s=5.0, segment_max_s=1e9))


def test_join_all_joins_every_slate_and_commits(tmp_path: Path) -> None:
    log = InMemoryEventLog(CFG)
    for i in range(6):
        log.publish(imp(f"r{i}", "alice", [10 + i, 20 + i, 30 + i], 100.0 + i))
    for i in (0, 3):
        log.publish(fb(f"r{i}", "alice", 20 + i, 100.5 + i))
    joiner = _joiner(log, tmp_path, now=1_000.0)  # the watermark is past every deadline
    stats = join_all(joiner, impressions=6, feedback=2, timeout_s=30.0)
    assert (stats.impressions, stats.feedback, stats.joined_feedback) == (6, 2, 2)
    assert joiner.pending == 0
    rows = read_logged_feedback(tmp_path)  # committed: readable as a joined dataset
    assert len(rows) == 18
    assert int(rows.click.sum()) == 2


def test_join_all_times_out_naming_what_never_arrived(tmp_path: Path) -> None:
    log = InMemoryEventLog(CFG)
    log.publish(imp("r0", "alice", [1, 2], 100.0))
    joiner = _joiner(log, tmp_path, now=1_000.0)
    with pytest.raises(TimeoutError, match=r"read 1/2 impressions and 0/1 feedback"):
        join_all(joiner, impressions=2, feedback=1, timeout_s=0.5)
    # A slate whose deadline the watermark has not passed keeps it waiting too.
    log2 = InMemoryEventLog(CFG)
    log2.publish(imp("r0", "alice", [1, 2], 100.0))
    waiting = _joiner(log2, tmp_path / "open", now=101.0)
    with pytest.raises(TimeoutError, match="1 slates still open"):
        join_all(waiting, impressions=1, feedback=0, timeout_s=0.5)
