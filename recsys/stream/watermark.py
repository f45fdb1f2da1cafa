"""Event-time watermark shared by the stream consumers (online updater, joiner).

Impressions and feedback arrive on different topics (and partitions), and a consumer may read
a click before its slate or the next slate before the click. Consumers therefore process
events in server-time order (:func:`recsys.types.event_time`) *behind a watermark*: a record
is released only when every partition is known to hold nothing older, so a slate is always
handled before its feedback, whatever the order the partitions were read in.

Each record gets a **key**: its event time, raised to the running maximum of its partition.
Within a partition keys never decrease, so a partition's key so far is a lower bound for the
keys of everything it will still deliver; for a partition read to its end, the source's
:meth:`~recsys.protocols.EventSource.caught_up` time bounds them too. The watermark is the
smallest of those bounds over all partitions, and exactly the records with a key *strictly*
below it are released, sorted by (key, impression before feedback, partition, offset). That
order depends only on each partition's sequence of records, never on how polls happened to
interleave them, so a consumer that decides everything in this order gets the same answer
for any batching, and after a crash (given the marks it checkpointed with its offsets). A
mis-ordered event (older than one before it in its partition) takes its predecessor's key:
it is handled where it was delivered, deterministically, rather than re-ordered by luck.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from recsys.protocols import EventSource
from recsys.types import EventRecord, ImpressionEvent, event_time


class Keyed(NamedTuple):
    """A record with the event-time key it is ordered by (see the module docstring)."""

    key: float
    record: EventRecord


def _processing_order(k: Keyed) -> tuple[float, bool, str, int]:
    r = k.record
    return (k.key, not isinstance(r.event, ImpressionEvent), r.partition, r.offset)


class Watermark:
    """Holds records read from a source until the event-time watermark passes them.

    ``marks`` (per partition: the key of the last record read) are the only state that must
    survive a restart for the keys to be reproduced; :meth:`reset` restores them (a consumer
    that does not persist them starts from none, which only matters for mis-ordered input).
    """

    def __init__(self) -> None:
        self._marks: dict[str, float] = {}
        self._held: dict[str, list[Keyed]] = {}
        self._count = 0
        self.safe = -math.inf
        """The watermark computed by the last :meth:`advance`."""

    def reset(self, marks: Mapping[str, float] | None = None) -> None:
        """Drop every held record (they will be read again) and restart from ``marks``."""
        self._marks = dict(marks or {})
        self._held = {}
        self._count = 0
        self.safe = -math.inf

    @property
    def marks(self) -> dict[str, float]:
        """Per partition, the key of the newest record read (a copy)."""
        return dict(self._marks)

    @property
    def held(self) -> int:
        """Records read but not released yet."""
        return self._count

    def add(self, records: Iterable[EventRecord]) -> None:
        """Key newly read records and hold them (each partition's records in read order)."""
        marks, held = self._marks, self._held
        for r in records:
            p = r.partition
            t = event_time(r.event)
            mark = marks.get(p, -math.inf)
            if t > mark:
                mark = marks[p] = t
            queue = held.get(p)
            if queue is None:
                queue = held[p] = []
            queue.append(Keyed(mark, r))
            self._count += 1

    def safe_time(self, partitions: Iterable[str], caught_up: Mapping[str, float]) -> float:
        """The watermark: no record with a smaller key can still be read from any partition.

        A partition nothing was read from, and that is not caught up, holds it at ``-inf``.
        """
        bounds = dict.fromkeys(partitions, -math.inf)
        bounds.update(self._marks)
        for p, t in caught_up.items():
            bounds[p] = max(bounds.get(p, -math.inf), t)
        return min(bounds.values(), default=math.inf)

    def take(self, safe: float) -> list[Keyed]:
        """Release every held record whose key is below ``safe``, in processing order.

        Strictly below: a partition at mark ``safe`` may still deliver more records with that
        very key, and at equal keys an impression must come before feedback.
        """
        ready: list[Keyed] = []
        for queue in self._held.values():
            # Keys never decrease within a partition: what is ready is a prefix.
            n = bisect_left(queue, safe, key=lambda k: k.key)
            if n:
                ready.extend(queue[:n])
                del queue[:n]
        self._count -= len(ready)
        ready.sort(key=_processing_order)
        return ready

    def advance(self, records: Iterable[EventRecord], source: EventSource) -> list[Keyed]:
        """:meth:`add` ``records``, recompute the watermark from ``source``, :meth:`take`."""
        self.add(records)
        self.safe = self.safe_time(source.partitions(), source.caught_up())
        return self.take(self.safe)
