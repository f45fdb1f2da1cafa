"""Event streams for the joiner tests (unit and Kafka), and helpers to compare its output.

:func:`join_traffic` is seeded traffic with every case the joiner must decide: clicks and
other signals within the window, late feedback (some past the late horizon), orphans of
every reason, repeated impressions, and feedback delivered out of server-time order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import pyarrow as pa

from recsys.protocols import EventSource
from recsys.stream import JoinedDataset, JoinStats
from recsys.types import EventRecord, EventType, FeedbackEvent, ImpressionEvent, SlateItem

USERS = ("alice", "bob", "carol", "dave")


def imp(
    request_id: str,
    user_id: str,
    items: Sequence[int],
    ts: float,
    *,
    session: str = "s",
    propensities: Sequence[float] | None = None,
    candidates: Sequence[int] = (),
    features: Sequence[float] = (),
    version: str = "v1",
) -> ImpressionEvent:
    """An impression of ``items`` in slate order (propensity 0.5 per slot unless given)."""
    props = propensities if propensities is not None else [0.5] * len(items)
    return ImpressionEvent(
        request_id=request_id,
        user_id=user_id,
        ts=ts,
        model_version=version,
        policy="slateq",
        items=tuple(
            SlateItem(item_id=int(item), position=pos, score=1.0 / (pos + 1), propensity=p)
            for pos, (item, p) in enumerate(zip(items, props, strict=True))
        ),
        session_id=session,
        candidates=tuple(int(c) for c in candidates),
        features=tuple(float(f) for f in features),
    )


def fb(
    request_id: str,
    user_id: str,
    item_id: int,
    server_ts: float,
    event: EventType = EventType.CLICK,
    value: float = 1.0,
) -> FeedbackEvent:
    """Feedback stamped by the server at ``server_ts`` (the client's ``ts`` a bit earlier)."""
    return FeedbackEvent(
        request_id=request_id,
        user_id=user_id,
        item_id=item_id,
        event=event,
        value=value,
        ts=max(server_ts - 0.25, 0.0),
        server_ts=server_ts,
    )


def join_traffic(
    n: int, seed: int, *, t0: float = 1000.0, wait_s: float = 30.0
) -> tuple[list[ImpressionEvent], list[FeedbackEvent]]:
    """``n`` slates and their feedback, each topic in the order it is to be published.

    About one slate in ten is published twice, a few percent of the feedback is orphaned
    (unknown request, another user, an item not in the slate), one in twenty comes after the
    window (``wait_s + 1..80`` s after the slate), and one feedback in fifteen is delivered
    before the one stamped just ahead of it.
    """
    rng = np.random.default_rng(seed)
    imps: list[ImpressionEvent] = []
    fbs: list[FeedbackEvent] = []
    for i in range(n):
        ts = t0 + 2.0 * i + float(rng.random())
        user = USERS[int(rng.integers(len(USERS)))]
        k = int(rng.integers(1, 6))
        items = [int(x) for x in rng.choice(400, size=k, replace=False)]
        extra = [int(x) for x in rng.choice(np.arange(400, 500), size=3, replace=False)]
        cands = [] if rng.random() < 0.25 else [*items, *extra]
        feats = [] if rng.random() < 0.25 else rng.random(3).astype(np.float32).tolist()
        props = rng.uniform(0.05, 1.0, size=k).astype(np.float32).tolist()
        rid = f"{seed}-{i}"
        event = imp(
            rid, user, items, ts, session=f"s{i // 25}", propensities=props,
            candidates=cands, features=feats,
        )  # fmt: skip
        imps.append(event)
        if rng.random() < 0.1:  # a producer retry: same request id, a second later
            imps.append(imp(rid, user, items[::-1], ts + 1.0, session="retry", version="v2"))
        for _ in range(int(rng.integers(0, 3))):
            item = items[int(rng.integers(k))]
            at = ts + float(rng.uniform(0.1, wait_s - 0.5))
            roll = rng.random()
            if roll < 0.05:
                at = ts + wait_s + float(rng.uniform(1.0, 80.0))
            elif roll < 0.08:
                fbs.append(fb(f"nope-{seed}-{i}", user, item, at))
                continue
            elif roll < 0.11:
                fbs.append(fb(rid, "mallory", item, at))
                continue
            elif roll < 0.14:
                fbs.append(fb(rid, user, 10_000 + item, at))
                continue
            fbs.append(fb(rid, user, item, at))
            fbs.append(fb(rid, user, item, at, EventType.DWELL, float(rng.uniform(-5, 300))))
            for kind in (EventType.LIKE, EventType.CONVERSION, EventType.SKIP):
                if rng.random() < 0.2:
                    fbs.append(fb(rid, user, item, at, kind, float(rng.uniform(-1, 20))))
    fbs.sort(key=lambda e: e.server_ts or 0.0)
    for j in range(1, len(fbs)):
        if rng.random() < 1 / 15:  # delivered out of order
            fbs[j - 1], fbs[j] = fbs[j], fbs[j - 1]
    return imps, fbs


class ClockedSource:
    """An event source whose caught-up watermark is ``now`` (set by the test), not the wall
    clock: lets a test say exactly how far event time has advanced."""

    def __init__(self, inner: EventSource, now: float) -> None:
        self.inner = inner
        self.now = now

    def partitions(self) -> list[str]:
        return self.inner.partitions()

    def seek(self, offsets: Mapping[str, int]) -> None:
        self.inner.seek(offsets)

    def poll(self, max_records: int, timeout_s: float) -> list[EventRecord]:
        return self.inner.poll(max_records, timeout_s)

    def caught_up(self) -> dict[str, float]:
        return dict.fromkeys(self.inner.caught_up(), self.now)

    def close(self) -> None:
        self.inner.close()


def canonical_rows(table: pa.Table) -> list[dict[str, Any]]:
    """Rows sorted by (request_id, ts, position), NaN (hidden_ltv) checked and dropped so that
    rows compare with ``==``."""
    rows = table.to_pylist()
    for row in rows:
        ltv = row.pop("hidden_ltv")
        assert ltv is not None
        assert math.isnan(ltv)
    return sorted(rows, key=lambda r: (r["request_id"], r["ts"], r["position"]))


def canonical_side(table: pa.Table) -> list[dict[str, Any]]:
    """Side rows sorted by where they were read."""
    return sorted(table.to_pylist(), key=lambda r: (r["partition"], r["offset"]))


def outcome(dataset: JoinedDataset) -> dict[str, Any]:
    """Everything a run produced that must not depend on batching or restarts."""
    return {
        "rows": canonical_rows(dataset.read_rows()),
        "orphans": canonical_side(dataset.read_side("orphans")),
        "late": canonical_side(dataset.read_side("late")),
    }


def event_counters(stats: JoinStats) -> dict[str, int]:
    """The counters that describe the stream (not this process's commits and failures)."""
    out = asdict(stats)
    del out["segments"], out["failures"]
    return out
