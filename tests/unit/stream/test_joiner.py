"""Joiner over the in-memory log into a local dataset: the join rules, and exactly once.

The rules are checked on hand-made streams whose every row is known. The key property is
checked on seeded traffic with every awkward case in it: whatever the batch size, the order
the topics are read in, crashes between commits, or a crash in the middle of a commit, the
committed rows, orphans and late feedback are exactly those of one uninterrupted run.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from recsys.config import StreamSettings
from recsys.data.logged import SCHEMA, read_logged_feedback
from recsys.features.fold import MAX_DWELL_S
from recsys.protocols import EventSource
from recsys.stream import (
    SIGNAL_NAMES,
    InMemoryEventLog,
    JoinConfig,
    JoinedDataset,
    Joiner,
    session_hash,
)
from recsys.types import Event, EventType, FloatArray
from tests.unit.stream.join_traffic import (
    ClockedSource,
    canonical_rows,
    canonical_side,
    event_counters,
    fb,
    imp,
    join_traffic,
    outcome,
)

CFG = StreamSettings(impressions_topic="imp", feedback_topic="fb")
NOW = 1_000_000.0  # the caught-up watermark of a ClockedSource "long after" the traffic
# Small windows so the seeded traffic crosses every one of them; no wall-clock commits.
PROP = JoinConfig(
    consumer="prop",
    wait_s=30.0,
    late_horizon_s=60.0,
    session_gap_s=15.0,
    segment_max_rows=7,
    segment_max_s=1e9,
)


class SimulatedCrashError(RuntimeError):
    """Stands in for the process dying at a chosen point."""


@pytest.fixture
def log() -> InMemoryEventLog:
    return InMemoryEventLog(CFG)


def _publish(log: InMemoryEventLog, events: Sequence[Event]) -> None:
    for event in events:
        log.publish(event)


def _source(log: InMemoryEventLog, topics: Sequence[str] = ("imp", "fb")) -> ClockedSource:
    return ClockedSource(log.source(list(topics)), NOW)


def _drain(joiner: Joiner, max_records: int = 1000) -> None:
    """Run until nothing is left to read, and what is held (if anything) stays held; then
    commit."""
    stuck = 0
    while stuck < 2:
        held = joiner.held
        n = joiner.run_once(max_records, 0.0)
        if n == 0 and not joiner.waiting:
            break
        stuck = stuck + 1 if n == 0 and joiner.held == held else 0
    joiner.commit()


def _join(
    log: InMemoryEventLog, root: Path, config: JoinConfig | None = None, **kwargs: Any
) -> tuple[Joiner, JoinedDataset]:
    joiner = Joiner(_source(log), str(root), config or JoinConfig(consumer="t"), **kwargs)
    _drain(joiner)
    return joiner, JoinedDataset(str(root))


# --- the join rules -------------------------------------------------------------------------


def test_a_segment_stores_a_slates_lists_once_and_every_reader_sees_them_on_each_row(
    log: InMemoryEventLog, tmp_path: Path
) -> None:
    """The candidate ids and user features, the same on every slot of a slate, are written
    on its first row only (nine tenths of a segment's values otherwise); the dataset's and
    the logged-feedback reader give every row its slate's lists."""
    from recsys.data.logged import FIRST_ROW, SLATE_LISTS_KEY

    _publish(
        log,
        [
            imp("r1", "alice", [3, 7, 9], 100.0, candidates=[9, 3, 7, 40], features=[0.5, -1.0]),
            imp("r2", "bob", [4, 5], 101.0, candidates=[5, 4, 1, 2], features=[2.0, 0.25]),
        ],
    )
    _, ds = _join(log, tmp_path)
    (segment,) = [f for f in ds.files("rows") if not f.tmp]
    raw = pq.read_table(segment.path)
    assert (raw.schema.metadata or {})[SLATE_LISTS_KEY] == FIRST_ROW
    assert raw.column("candidate_ids").to_pylist() == [
        [9, 3, 7, 40], None, None, [5, 4, 1, 2], None,
    ]  # fmt: skip
    assert raw.column("user_features").to_pylist() == [[0.5, -1.0], [], [], [2.0, 0.25], []]

    want = {"r1": ([9, 3, 7, 40], [0.5, -1.0]), "r2": ([5, 4, 1, 2], [2.0, 0.25])}
    rows = canonical_rows(ds.read_rows())
    assert [(r["candidate_ids"], r["user_features"]) for r in rows] == [
        want[r["request_id"]] for r in rows
    ]
    assert len(rows) == 5
    logged = read_logged_feedback(tmp_path)
    assert logged.candidate_ids is not None
    assert logged.candidate_ids.tolist() == [want[r][0] for r in logged.request_id]
    assert logged.user_features.tolist() == [want[r][1] for r in logged.request_id]


def test_a_slate_becomes_one_row_per_slot_with_its_signals(
    log: InMemoryEventLog, tmp_path: Path
) -> None:
    _publish(
        log,
        [
            imp("r1", "alice", [3, 7, 9], 100.0, propensities=[0.5, 0.25, 0.8],
                candidates=[9, 3, 7, 40], features=[0.5, -1.0]),
            fb("r1", "alice", 7, 101.0),
            fb("r1", "alice", 7, 102.0, EventType.DWELL, 12.5),
            fb("r1", "alice", 7, 103.0, EventType.DWELL, -4.0),  # clamped to 0
            fb("r1", "alice", 7, 104.0, EventType.LIKE),
            fb("r1", "alice", 9, 105.0, EventType.CONVERSION, 4.5),
            fb("r1", "alice", 9, 106.0, EventType.CONVERSION, -2.0),  # revenue clamped at 0
            fb("r1", "alice", 9, 107.0, EventType.DWELL, 1e9),  # clamped to MAX_DWELL_S
        ],
    )  # fmt: skip
    joiner, ds = _join(log, tmp_path)

    rows = canonical_rows(ds.read_rows())
    assert [r["item_id"] for r in rows] == [3, 7, 9]
    assert [r["position"] for r in rows] == [0, 1, 2]
    assert [r["click"] for r in rows] == [False, True, False]
    assert [r["dwell_s"] for r in rows] == [0.0, 12.5, MAX_DWELL_S]
    assert [r["like"] for r in rows] == [False, True, False]
    assert [r["conversion"] for r in rows] == [False, False, True]
    assert [r["revenue"] for r in rows] == [0.0, 0.0, 4.5]
    assert [r["reward"] for r in rows] == [0.0, 1.0, 0.0]  # default reward: the click
    assert [r["propensity"] for r in rows] == [0.5, 0.25, pytest.approx(0.8)]
    want_log_p = math.log(0.5) + math.log(0.25) + math.log(np.float32(0.8))
    for r in rows:
        assert r["request_id"] == "r1"
        assert r["user_id"] == "alice"
        assert r["user_idx"] == -1
        assert r["ts"] == 100.0
        assert r["slate_size"] == 3
        assert r["step"] == 0
        assert r["session_id"] == session_hash("alice", "s") >= 0
        assert r["slate_log_propensity"] == pytest.approx(want_log_p, rel=1e-6)
        assert r["policy"] == "slateq@v1"
        assert r["is_ad"] is False
        assert r["skip"] is False
        assert r["candidate_ids"] == [9, 3, 7, 40]
        assert r["user_features"] == [0.5, -1.0]
        assert r["item_features"] == []
    if SCHEMA.field("position_propensity").nullable:
        assert all(r["position_propensity"] is None for r in rows)
    else:
        assert [r["position_propensity"] for r in rows] == [r["propensity"] for r in rows]
    s = joiner.stats
    assert (s.impressions, s.feedback, s.joined_feedback) == (1, 7, 7)
    assert (s.joined_rows, s.negatives, s.clicks) == (3, 1, 1)
    assert ds.read_side("orphans").num_rows == ds.read_side("late").num_rows == 0


def test_every_orphan_reason_and_late_feedback_is_counted_and_kept(
    log: InMemoryEventLog, tmp_path: Path
) -> None:
    config = JoinConfig(consumer="t", wait_s=30.0, late_horizon_s=100.0)
    _publish(
        log,
        [
            imp("r1", "alice", [3, 7], 100.0),
            fb("ghost", "alice", 3, 101.0),  # no such request
            fb("r1", "bob", 3, 102.0),  # someone else's slate
            fb("r1", "alice", 8, 103.0),  # not in the slate
            fb("r1", "alice", 7, 130.0),  # the last moment of the window: joins
            fb("r1", "alice", 3, 131.0),  # after the window: late
            fb("r1", "alice", 3, 230.0),  # window end + 100: still remembered, late
            fb("r1", "alice", 3, 231.0),  # forgotten: an unknown request
        ],
    )
    joiner, ds = _join(log, tmp_path, config)

    assert [r["click"] for r in canonical_rows(ds.read_rows())] == [False, True]
    orphans = canonical_side(ds.read_side("orphans"))
    assert [(o["reason"], o["request_id"], o["user_id"], o["item_id"]) for o in orphans] == [
        ("unknown_request", "ghost", "alice", 3),
        ("user_mismatch", "r1", "bob", 3),
        ("item_not_in_slate", "r1", "alice", 8),
        ("unknown_request", "r1", "alice", 3),
    ]
    assert [o["offset"] for o in orphans] == [0, 1, 2, 6]
    late = canonical_side(ds.read_side("late"))
    assert [(x["reason"], x["server_ts"], x["offset"]) for x in late] == [
        ("late", 131.0, 4),
        ("late", 230.0, 5),
    ]
    assert late[0]["event"] == "click"
    assert late[0]["ts"] == 130.75
    assert late[0]["partition"] == "fb:0"
    s = joiner.stats
    assert s.orphans == {"unknown_request": 2, "user_mismatch": 1, "item_not_in_slate": 1}
    assert (s.late, s.joined_feedback, s.feedback) == (2, 1, 7)


def test_a_repeated_request_id_is_a_duplicate_and_ignored(
    log: InMemoryEventLog, tmp_path: Path
) -> None:
    config = JoinConfig(consumer="t", wait_s=10.0, late_horizon_s=50.0)
    _publish(
        log,
        [
            imp("r1", "alice", [1, 2], 100.0),
            imp("r1", "alice", [5, 6, 7], 101.0),  # while pending
            imp("r1", "alice", [8], 150.0),  # closed (deadline 110) but remembered
            imp("r1", "alice", [9], 161.0),  # forgotten: a new slate
            fb("r1", "alice", 2, 105.0),
        ],
    )
    joiner, ds = _join(log, tmp_path, config)
    rows = canonical_rows(ds.read_rows())
    assert [(r["item_id"], r["ts"], r["click"]) for r in rows] == [
        (1, 100.0, False),
        (2, 100.0, True),
        (9, 161.0, False),
    ]
    assert joiner.stats.duplicates == 2
    assert joiner.stats.impressions == 4


def test_steps_count_slates_per_user_session_and_restart_after_a_gap(
    log: InMemoryEventLog, tmp_path: Path
) -> None:
    config = JoinConfig(consumer="t", session_gap_s=100.0)
    _publish(
        log,
        [
            imp("a0", "alice", [1], 0.0),
            imp("a1", "alice", [1], 50.0),
            imp("b0", "bob", [1], 60.0, session="s"),  # same session string, other user
            imp("a2", "alice", [1], 150.0),  # 100 s after a1: same session
            imp("x0", "alice", [1], 160.0, session="other"),
            imp("a3", "alice", [1], 251.0),  # 101 s without an impression: starts over
            imp("a4", "alice", [1], 260.0),
        ],
    )
    _, ds = _join(log, tmp_path, config)
    rows = {r["request_id"]: r for r in canonical_rows(ds.read_rows())}
    assert {k: r["step"] for k, r in rows.items()} == {
        "a0": 0, "a1": 1, "b0": 0, "a2": 2, "x0": 0, "a3": 0, "a4": 1,
    }  # fmt: skip
    assert rows["a0"]["session_id"] == rows["a4"]["session_id"] == session_hash("alice", "s")
    assert len({rows[k]["session_id"] for k in ("a0", "b0", "x0")}) == 3


def test_item_table_ads_and_a_learned_reward(log: InMemoryEventLog, tmp_path: Path) -> None:
    def reward(signals: FloatArray) -> FloatArray:
        assert signals.shape[1] == len(SIGNAL_NAMES) == 6
        weights = np.array([1.0, 0.01, 0.5, 2.0, 0.1, -1.0], dtype=np.float32)
        out: FloatArray = signals @ weights
        return out

    table = np.arange(12, dtype=np.float32).reshape(4, 3)
    is_ad = np.array([False, True, False, True])
    _publish(
        log,
        [
            imp("r1", "alice", [1, 2, 99], 10.0),  # 99 is outside the item table
            fb("r1", "alice", 1, 11.0),
            fb("r1", "alice", 1, 11.0, EventType.DWELL, 100.0),
            fb("r1", "alice", 1, 11.0, EventType.CONVERSION, 30.0),
            fb("r1", "alice", 2, 12.0, EventType.SKIP),
        ],
    )
    _, ds = _join(log, tmp_path, reward=reward, is_ad=is_ad, item_features=table)
    rows = canonical_rows(ds.read_rows())
    assert [r["item_features"] for r in rows] == [[3.0, 4.0, 5.0], [6.0, 7.0, 8.0], [0, 0, 0]]
    assert [r["is_ad"] for r in rows] == [True, False, False]
    assert [r["reward"] for r in rows] == [pytest.approx(1 + 1 + 2 + 3), -1.0, 0.0]


def test_signal_order_is_the_reward_models() -> None:
    from recsys.policy.batch import SIGNAL_NAMES as POLICY_SIGNALS

    assert SIGNAL_NAMES == POLICY_SIGNALS


# --- event time, the watermark, and what a checkpoint carries --------------------------------


def test_pending_slates_wait_for_the_watermark_and_survive_a_restart(
    log: InMemoryEventLog, tmp_path: Path
) -> None:
    """Event time, not batches, closes slates; a commit checkpoints the open ones."""
    config = JoinConfig(consumer="t", wait_s=30.0)
    _publish(log, [imp("r1", "alice", [3, 7], 100.0), fb("r1", "alice", 7, 110.0)])
    source = ClockedSource(log.source(), 120.0)
    first = Joiner(source, str(tmp_path), config)
    _drain(first)
    ds = JoinedDataset(str(tmp_path))
    assert first.pending == 1
    assert ds.read_rows().num_rows == 0  # committed: offsets and the open slate, no rows
    assert len(ds.segments("t")) == 1

    source = ClockedSource(log.source(), 130.0)  # restarted; the deadline is not passed yet
    second = Joiner(source, str(tmp_path), config)
    _drain(second)
    assert second.pending == 1
    assert second.stats.records == 2  # restored counters; nothing was read again
    assert ds.read_rows().num_rows == 0

    source.now = 130.5
    _drain(second)
    assert [r["click"] for r in canonical_rows(ds.read_rows())] == [False, True]
    assert second.pending == 0
    assert ds.read_rows().num_rows == 2


def test_feedback_read_before_its_impression_still_joins(
    log: InMemoryEventLog, tmp_path: Path
) -> None:
    _publish(log, [imp("r1", "alice", [3, 7], 100.0), fb("r1", "alice", 7, 101.0)])
    joiner = Joiner(ClockedSource(log.source(["fb", "imp"]), NOW), str(tmp_path))
    assert joiner.run_once(max_records=1, timeout_s=0.0) == 0  # only the click was read
    assert joiner.waiting
    _drain(joiner, max_records=1)
    assert [r["click"] for r in canonical_rows(JoinedDataset(str(tmp_path)).read_rows())] == [
        False,
        True,
    ]


def test_misordered_feedback_is_decided_where_it_was_delivered(tmp_path: Path) -> None:
    """The click on r1 (stamped 12) arrives after one stamped 50, past r1's deadline (40):
    it is late, for every batching and read order, not joined when batches happen to hold
    both."""
    events: list[Event] = [
        imp("r1", "alice", [3], 10.0),
        imp("r2", "bob", [4], 45.0),
        fb("r2", "bob", 4, 50.0),
        fb("r1", "alice", 3, 12.0),
    ]
    seen = []
    for topics in (("imp", "fb"), ("fb", "imp")):
        for max_records in (1, 2, 3, 10):
            log = InMemoryEventLog(CFG)
            _publish(log, events)
            root = tmp_path / f"{topics[0]}-{max_records}"
            joiner = Joiner(_source(log, topics), str(root), JoinConfig(consumer="t"))
            _drain(joiner, max_records)
            ds = JoinedDataset(str(root))
            rows = canonical_rows(ds.read_rows())
            seen.append(
                (
                    [(r["request_id"], r["click"]) for r in rows],
                    [(x["request_id"], x["reason"]) for x in ds.read_side("late").to_pylist()],
                )
            )
    assert seen == [([("r1", False), ("r2", True)], [("r1", "late")])] * 8


def test_a_far_future_event_waits_without_blocking_the_other_topic(
    log: InMemoryEventLog, tmp_path: Path
) -> None:
    far = 5_000_000.0
    _publish(
        log,
        [
            imp("r1", "alice", [3], 10.0),
            fb("r1", "alice", 3, far),  # a server clock far ahead
            fb("r1", "alice", 3, 11.0),  # behind it in its partition: waits with it
            imp("r2", "bob", [4], 20.0),
            imp("r3", "bob", [5], far + 1.0),
        ],
    )
    source = ClockedSource(log.source(), 1000.0)
    joiner = Joiner(source, str(tmp_path), JoinConfig(consumer="t"))
    _drain(joiner)
    ds = JoinedDataset(str(tmp_path))
    # The impressions before the far-future ones closed (as negatives: the click waits).
    assert [(r["request_id"], r["click"]) for r in canonical_rows(ds.read_rows())] == [
        ("r1", False),
        ("r2", False),
    ]
    assert joiner.waiting
    checkpoint = ds.read_checkpoint(ds.segments("t")[-1].path)
    assert '"fb:0":' not in checkpoint.split('"offsets":')[1].split("}")[0]  # not passed

    source.now = far + 100.0  # event time catches up: the held records are decided
    _drain(joiner)
    assert not joiner.waiting
    rows = canonical_rows(ds.read_rows())
    assert [(r["request_id"], r["click"]) for r in rows] == [
        ("r1", False),
        ("r2", False),
        ("r3", False),
    ]
    # Both clicks on r1 come after r3's key (far) in delivery order: r1 is long forgotten.
    assert [x["reason"] for x in canonical_side(ds.read_side("orphans"))] == [
        "unknown_request",
        "unknown_request",
    ]


# --- exactly once -------------------------------------------------------------------------


def _reference(events: Sequence[Event], root: Path) -> tuple[dict[str, Any], dict[str, int]]:
    log = InMemoryEventLog(CFG)
    _publish(log, events)
    joiner = Joiner(_source(log), str(root), PROP)
    _drain(joiner, max_records=100_000)
    return outcome(JoinedDataset(str(root))), event_counters(joiner.stats)


@pytest.fixture(scope="module")
def traffic() -> list[Event]:
    imps, fbs = join_traffic(120, seed=7)
    return [*imps, *fbs]


@pytest.fixture(scope="module")
def reference(
    traffic: list[Event], tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], dict[str, int]]:
    return _reference(traffic, tmp_path_factory.mktemp("reference"))


def test_the_traffic_exercises_every_case(
    reference: tuple[dict[str, Any], dict[str, int]],
) -> None:
    out, counters = reference
    assert len(out["rows"]) == counters["joined_rows"] > 200
    assert {o["reason"] for o in out["orphans"]} == {
        "unknown_request",
        "user_mismatch",
        "item_not_in_slate",
    }
    assert counters["late"] == len(out["late"]) > 0
    assert counters["duplicates"] > 0
    assert 0 < counters["clicks"] < counters["joined_rows"]
    assert 0 < counters["negatives"] < counters["joined_rows"]
    assert max(r["step"] for r in out["rows"]) > 1
    assert any(r["candidate_ids"] is None for r in out["rows"])
    assert any(r["candidate_ids"] for r in out["rows"])
    # Every orphan and late feedback is accounted for: nothing dropped silently.
    assert counters["feedback"] == (
        counters["joined_feedback"]
        + counters["late"]
        + sum(v for k, v in counters.items() if k.startswith("orphan_"))
    )


@pytest.mark.parametrize(
    ("max_records", "topics", "write_behind"),
    [
        (1, ("imp", "fb"), False),
        (3, ("fb", "imp"), False),
        (17, ("imp", "fb"), False),
        (64, ("fb", "imp"), False),
        (3, ("imp", "fb"), True),
        (64, ("fb", "imp"), True),
    ],
)
def test_any_batching_gives_the_same_rows(
    traffic: list[Event],
    reference: tuple[dict[str, Any], dict[str, int]],
    tmp_path: Path,
    max_records: int,
    topics: tuple[str, str],
    write_behind: bool,
) -> None:
    log = InMemoryEventLog(CFG)
    _publish(log, traffic)
    joiner = Joiner(_source(log, topics), str(tmp_path), PROP, write_behind=write_behind)
    _drain(joiner, max_records)
    assert joiner.stats.segments > 3
    assert (outcome(JoinedDataset(str(tmp_path))), event_counters(joiner.stats)) == reference


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_crashes_between_commits_give_the_same_rows(
    traffic: list[Event],
    reference: tuple[dict[str, Any], dict[str, int]],
    tmp_path: Path,
    seed: int,
) -> None:
    """The joiner object is dropped (uncommitted work lost) after random batches; a new
    one on the same dataset carries on from the last commit."""
    rng = np.random.default_rng(seed)
    # At most 8 records a batch and a crash every 2-5 batches: the 6 crashes come well
    # before the ~430 records are through.
    max_records, every = int(rng.integers(2, 9)), int(rng.integers(2, 6))
    log = InMemoryEventLog(CFG)
    _publish(log, traffic)
    joiner = Joiner(_source(log), str(tmp_path), PROP)
    crashes = 0
    for batch in range(10_000):
        n = joiner.run_once(max_records, 0.0)
        if crashes < 6 and batch % every == every - 1:
            crashes += 1
            joiner = Joiner(_source(log), str(tmp_path), PROP)
        elif n == 0 and not joiner.waiting:
            break
    joiner.commit()
    assert crashes == 6
    assert joiner.stats.segments == len(JoinedDataset(str(tmp_path)).segments("prop"))
    assert (outcome(JoinedDataset(str(tmp_path))), event_counters(joiner.stats)) == reference


class _CrashingDataset(JoinedDataset):
    """Dies in the middle of chosen commits: after the side files, before the rename."""

    def __init__(self, root: str, fail_commits: set[int]) -> None:
        super().__init__(root)
        self.fail_commits = fail_commits
        self.commits = 0

    def _rename(self, tmp: Path, target: Path) -> None:
        self.commits += 1
        if self.commits in self.fail_commits:
            raise SimulatedCrashError(f"died before renaming {tmp.name}")
        super()._rename(tmp, target)


def test_a_crash_between_side_files_and_the_commit_leaves_nothing_visible(
    traffic: list[Event],
    reference: tuple[dict[str, Any], dict[str, int]],
    tmp_path: Path,
) -> None:
    log = InMemoryEventLog(CFG)
    _publish(log, traffic)
    crashing = _CrashingDataset(str(tmp_path), fail_commits=set(range(5, 40, 3)))
    joiner = Joiner(_source(log), crashing, PROP)
    crashes = stranded = 0
    while True:
        try:
            n = joiner.run_once(9, 0.0)
        except SimulatedCrashError:
            crashes += 1
            # What the dead process left: a temporary rows file and maybe side files, which
            # readers must not see while their segment is not committed.
            assert any(f.tmp for f in crashing.files("rows", "prop"))
            committed = {f.seq for f in crashing.segments("prop")}
            for kind in ("orphans", "late"):
                files = crashing.files(kind, "prop")
                stranded += sum(f.seq not in committed for f in files)
                want = sum(pq.read_metadata(f.path).num_rows for f in files if f.seq in committed)
                assert crashing.read_side(kind).num_rows == want
            joiner = Joiner(_source(log), crashing, PROP)  # a new process
            continue
        if n == 0 and not joiner.waiting:
            break
    joiner.commit()
    assert crashes >= 3
    assert stranded > 0  # the crash did strike between side files and rename
    assert not any(f.tmp for f in crashing.files("rows", "prop"))
    committed = {f.seq for f in crashing.segments("prop")}
    for kind in ("orphans", "late"):
        assert {f.seq for f in crashing.files(kind, "prop")} <= committed
    assert (outcome(crashing), event_counters(joiner.stats)) == reference


@pytest.mark.parametrize("write_behind", [False, True])
def test_a_failed_commit_rewinds_the_same_joiner(
    traffic: list[Event],
    reference: tuple[dict[str, Any], dict[str, int]],
    tmp_path: Path,
    write_behind: bool,
) -> None:
    """A failed write (in the background too: it fails the next call) rewinds the same
    object to the newest durable segment, and the rows come out the same."""
    log = InMemoryEventLog(CFG)
    _publish(log, traffic)
    crashing = _CrashingDataset(str(tmp_path), fail_commits={2, 4, 9})
    joiner = Joiner(_source(log), crashing, PROP, write_behind=write_behind)
    crashes = 0
    for _ in range(10_000):
        try:
            n = joiner.run_once(13, 0.0)
        except SimulatedCrashError:
            crashes += 1
            continue  # the same object carries on: it must rewind to the last commit
        if n == 0 and not joiner.waiting:
            break
    _drain(joiner, 13)
    assert crashes == 3
    assert joiner.stats.failures == 3
    assert (outcome(crashing), event_counters(joiner.stats)) == reference


def _wait_for(predicate: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


@pytest.mark.parametrize("write_behind", [False, True])
def test_run_loop_survives_failing_commits_and_commits_on_stop(
    traffic: list[Event],
    reference: tuple[dict[str, Any], dict[str, int]],
    tmp_path: Path,
    write_behind: bool,
) -> None:
    log = InMemoryEventLog(CFG)
    _publish(log, traffic)
    crashing = _CrashingDataset(str(tmp_path), fail_commits={1, 3})
    joiner = Joiner(_source(log), crashing, PROP, write_behind=write_behind)
    stop = threading.Event()
    thread = joiner.start_in_thread(stop, max_records=11, timeout_s=0.01)
    try:
        with pytest.raises(RuntimeError, match="already running"):
            joiner.start_in_thread()
        end = {"imp:0": log.end_offset("imp"), "fb:0": log.end_offset("fb")}
        _wait_for(lambda: joiner._offsets == end and not joiner.waiting and not joiner.pending)
    finally:
        stop.set()
        thread.join(20.0)
    assert not thread.is_alive()
    assert joiner.stats.failures == 2
    assert not joiner.uncommitted  # the loop committed on its way out
    assert (outcome(crashing), event_counters(joiner.stats)) == reference


# --- the dataset ----------------------------------------------------------------------------


def test_segment_names_dates_and_consumers(log: InMemoryEventLog, tmp_path: Path) -> None:
    day = 1_700_000_000.0  # 2023-11-14 UTC
    _publish(log, [imp(f"r{i}", "alice", [i], day + i) for i in range(5)])
    for consumer in ("a", "b-1"):
        joiner = Joiner(
            ClockedSource(log.source(), day + 100),
            str(tmp_path),
            JoinConfig(consumer=consumer, segment_max_rows=2, wait_s=1.0),
        )
        _drain(joiner, max_records=2)
    ds = JoinedDataset(str(tmp_path))
    names = [Path(f.path).relative_to(tmp_path).as_posix() for f in ds.segments("a")]
    assert names[0] == "rows/date=2023-11-14/a-0000000001-imp.0-0.3.parquet"
    assert [f.seq for f in ds.segments("a")] == list(range(1, len(names) + 1))
    assert ds.read_rows("a").num_rows == ds.read_rows("b-1").num_rows == 5
    assert ds.read_rows().num_rows == 10
    assert ds.read_rows("a").column("request_id").to_pylist() == [f"r{i}" for i in range(5)]
    with pytest.raises(ValueError, match="consumer name"):
        JoinConfig(consumer="x-0000000001")
    with pytest.raises(ValueError, match="consumer name"):
        JoinConfig(consumer="../up")


def test_an_object_store_root_gets_the_same_rows(
    traffic: list[Event],
    reference: tuple[dict[str, Any], dict[str, int]],
) -> None:
    """Through a pyarrow filesystem that is not a local disk (segments are single PUTs),
    with a crash between commits."""
    filesystem, root = pafs.FileSystem.from_uri("mock:///bucket/joined")
    log = InMemoryEventLog(CFG)
    _publish(log, traffic)
    first = Joiner(_source(log), JoinedDataset(root, filesystem), PROP)
    for _ in range(30):
        first.run_once(10, 0.0)
    second = Joiner(_source(log), JoinedDataset(root, filesystem), PROP)
    _drain(second, 10)
    ds = JoinedDataset(root, filesystem)
    assert not any(f.tmp for f in ds.files("rows"))
    assert (outcome(ds), event_counters(second.stats)) == reference


def test_the_source_is_positioned_by_the_dataset(log: InMemoryEventLog, tmp_path: Path) -> None:
    """A restarted joiner reads on from the checkpoint's offsets, not from the start."""
    _publish(log, [imp(f"r{i}", "alice", [i], float(i)) for i in range(4)])
    _join(log, tmp_path)
    _publish(log, [imp("r9", "alice", [9], 9.0)])

    class Counting(ClockedSource):
        read = 0

        def poll(self, max_records: int, timeout_s: float) -> list[Any]:
            out = super().poll(max_records, timeout_s)
            Counting.read += len(out)
            return out

    source: EventSource = Counting(log.source(), NOW)
    joiner = Joiner(source, str(tmp_path), JoinConfig(consumer="t"))
    _drain(joiner)
    assert Counting.read == 1
    assert JoinedDataset(str(tmp_path)).read_rows().num_rows == 5
    assert joiner.stats.impressions == 5


def test_segments_are_logged_feedback_files(log: InMemoryEventLog, tmp_path: Path) -> None:
    """With one feature width and one candidate-list length (one serving configuration),
    the joined dataset reads back as a logged-feedback log, reward column included."""
    _publish(
        log,
        [
            imp(f"r{i}", "alice", [i, i + 10], float(i), candidates=[i + 10, i, 99],
                features=[float(i), 1.0])
            for i in range(6)
        ]
        + [fb("r2", "alice", 12, 2.5)],
    )  # fmt: skip
    config = JoinConfig(consumer="t", wait_s=1.0, segment_max_rows=4)
    _drain(Joiner(_source(log), str(tmp_path), config), max_records=2)
    assert len(JoinedDataset(str(tmp_path)).segments("t")) > 1
    logged = read_logged_feedback(tmp_path)
    assert len(logged) == 12
    assert int(logged.click.sum()) == 1
    assert logged.candidate_ids is not None
    assert logged.candidate_ids.shape == (12, 3)
    assert logged.user_features.shape == (12, 2)
    assert logged.reward is not None
    assert float(logged.reward.sum()) == 1.0
