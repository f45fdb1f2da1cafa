"""Online updater: folds the event stream into per-user serving state, exactly once.

Each batch is polled, aggregated to at most one :class:`~recsys.types.UserStateDelta` per user
and written with a single :meth:`UserStateStore.apply` call that also records the next offset
of every partition the batch touched. The store applies both atomically, so the stored offsets
always describe exactly the events already folded in: after a crash the updater seeks to them
and neither skips nor repeats an event. The updater itself keeps no durable state.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from recsys.protocols import EventSource, UserStateStore
from recsys.types import EventRecord, EventType, FeedbackEvent, ImpressionEvent, UserStateDelta

_log = logging.getLogger(__name__)


@dataclass(slots=True)
class UpdaterStats:
    """Running counters, for logs, metrics and tests (not persisted; reset on restart).

    Counters cover batches the store accepted; ``failures`` counts batches that raised.

    The join counters describe clicks against the in-memory impression cache: ``joined`` when
    the clicked item was in the cached slate, ``unmatched`` when the slate is cached but lacks
    the item, ``unjoined`` when the impression is not cached (not read yet, evicted, or read
    before a restart).
    """

    batches: int = 0
    records: int = 0
    impressions: int = 0
    feedback: int = 0
    clicks: int = 0
    clicks_joined: int = 0
    clicks_unmatched: int = 0
    clicks_unjoined: int = 0
    failures: int = 0

    def add(self, other: UpdaterStats) -> None:
        """Accumulate another batch's counters into these."""
        for name in self.__slots__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


class _UserAccumulator:
    """Additive changes for one user within one batch."""

    __slots__ = ("clicked", "clicks", "impressions", "ts")

    def __init__(self) -> None:
        self.clicked: list[int] = []
        self.impressions = 0
        self.clicks = 0
        self.ts = 0.0


class ImpressionJoinCache:
    """Bounded map of recent ``request_id`` -> impressed item ids (LRU eviction).

    Feedback arrives on a different topic than its impression, so it is joined back to the slate
    by request id. The cache is best effort: it lives in memory and only covers impressions this
    process has read. It will feed reward joining (position, propensity) later; for now it only
    lets the updater count whether clicks refer to items that were actually shown.
    """

    def __init__(self, capacity: int = 100_000) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._slates: OrderedDict[str, frozenset[int]] = OrderedDict()

    def add(self, event: ImpressionEvent) -> None:
        """Remember which items ``event`` showed, evicting the oldest entry when full."""
        self._slates[event.request_id] = frozenset(it.item_id for it in event.items)
        self._slates.move_to_end(event.request_id)
        while len(self._slates) > self.capacity:
            self._slates.popitem(last=False)

    def items_for(self, request_id: str) -> frozenset[int] | None:
        """Item ids impressed by ``request_id``, or ``None`` if that impression is not cached."""
        return self._slates.get(request_id)

    def __len__(self) -> int:
        return len(self._slates)


class OnlineUpdater:
    """Consumes impression and feedback events and applies per-user deltas to a store.

    ``consumer`` names the offsets this updater owns in the store; two updaters with the same
    name over the same partitions would both apply every event, so run one per name.

    Delta semantics: an impression adds ``len(items)`` impressions to its user; a click adds a
    click and appends its item id to ``clicked`` (in event order, oldest first: stores prepend
    them so the newest click ends up first in :attr:`UserState.clicked`); other feedback only
    advances the user's ``ts``. ``ts`` is the newest event time seen for the user in the batch.
    """

    def __init__(
        self,
        source: EventSource,
        store: UserStateStore,
        consumer: str,
        *,
        join_cache_size: int = 100_000,
    ) -> None:
        if not consumer:
            raise ValueError("consumer name must be non-empty")
        self.source = source
        self.store = store
        self.consumer = consumer
        self.join_cache = ImpressionJoinCache(join_cache_size)
        self.stats = UpdaterStats()
        self._needs_seek = True
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self, max_records: int = 500, timeout_s: float = 0.2) -> int:
        """Poll one batch, apply it with its offsets in one store write; return records applied.

        The first call (and the first after any failure) positions the source at the offsets
        the store holds, so the store, not the source, decides where reading resumes.
        """
        try:
            if self._needs_seek:
                self.source.seek(self.store.offsets(self.consumer))
                self._needs_seek = False
            records = self.source.poll(max_records, timeout_s)
            if not records:
                return 0
            deltas, batch = self._aggregate(records)
            next_offsets = self._next_offsets(records)
            self.store.apply(deltas, next_offsets, self.consumer)
        except BaseException:
            # The source may have moved past records the store never took: rewind to the
            # stored offsets before the next attempt.
            self._needs_seek = True
            self.stats.failures += 1
            raise
        self.stats.add(batch)
        return len(records)

    def _aggregate(
        self, records: Sequence[EventRecord]
    ) -> tuple[list[UserStateDelta], UpdaterStats]:
        acc: dict[str, _UserAccumulator] = {}
        stats = UpdaterStats(batches=1, records=len(records))
        # Cache the batch's impressions first: a click read in the same batch as its slate
        # (from the other topic, so possibly ahead of it) still joins.
        for record in records:
            if isinstance(record.event, ImpressionEvent):
                self.join_cache.add(record.event)
        for record in records:
            event = record.event
            user = acc.get(event.user_id)
            if user is None:
                user = acc[event.user_id] = _UserAccumulator()
            user.ts = max(user.ts, event.ts)
            if isinstance(event, ImpressionEvent):
                stats.impressions += 1
                user.impressions += len(event.items)
            elif isinstance(event, FeedbackEvent):
                stats.feedback += 1
                if event.event == EventType.CLICK:
                    stats.clicks += 1
                    user.clicks += 1
                    user.clicked.append(event.item_id)
                    shown = self.join_cache.items_for(event.request_id)
                    if shown is None:
                        stats.clicks_unjoined += 1
                    elif event.item_id in shown:
                        stats.clicks_joined += 1
                    else:
                        stats.clicks_unmatched += 1
        deltas = [
            UserStateDelta(
                user_id=user_id,
                clicked=tuple(a.clicked),
                impressions=a.impressions,
                clicks=a.clicks,
                ts=a.ts,
            )
            for user_id, a in acc.items()
        ]
        return deltas, stats

    @staticmethod
    def _next_offsets(records: Sequence[EventRecord]) -> dict[str, int]:
        nxt: dict[str, int] = {}
        for record in records:
            if record.offset + 1 > nxt.get(record.partition, -1):
                nxt[record.partition] = record.offset + 1
        return nxt

    def run(self, stop: threading.Event, max_records: int = 500, timeout_s: float = 0.2) -> None:
        """Apply batches until ``stop`` is set; store or broker errors are logged and retried.

        A failed write rewinds the source to the stored offsets (see :meth:`run_once`), so an
        outage delays events but never drops or duplicates them.
        """
        backoff_s = 0.1
        while not stop.is_set():
            try:
                self.run_once(max_records, timeout_s)
                backoff_s = 0.1
            except Exception:
                _log.exception("online updater batch failed; retrying in %.1fs", backoff_s)
                if stop.wait(backoff_s):
                    break
                backoff_s = min(backoff_s * 2, 5.0)

    def start_in_thread(
        self,
        stop: threading.Event | None = None,
        *,
        max_records: int = 500,
        timeout_s: float = 0.2,
    ) -> threading.Thread:
        """Run :meth:`run` in a daemon thread (for the demo and tests) and return the thread.

        Without ``stop``, the updater's own event is used; :meth:`stop` sets it and joins.
        """
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("online updater is already running")
        event = stop if stop is not None else threading.Event()
        self._stop = event
        thread = threading.Thread(
            target=self.run,
            args=(event, max_records, timeout_s),
            name=f"online-updater-{self.consumer}",
            daemon=True,
        )
        thread.start()
        self._thread = thread
        return thread

    def stop(self, timeout_s: float = 10.0) -> None:
        """Signal the background thread to finish its current batch and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
