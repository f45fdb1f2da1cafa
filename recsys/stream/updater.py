"""Online updater: folds the event stream into per-user state records, exactly once.

Each batch is polled, the touched users' records are read in one round trip, the events are
folded into them with the same :class:`~recsys.features.EventFold` the simulator's training
env and the server use, and the records are written back with one
:meth:`UserStateStore.commit` that also stores the next offset of every partition the batch
consumed, conditional on the offsets the updater started from. The stored offsets therefore
always describe exactly the events already folded in: after a crash the updater seeks to
them and neither skips nor repeats an event, and a second updater racing it writes nothing.

Ordering across topics. Impressions and feedback arrive on different topics, and a consumer
may read a click before its slate, or the next slate before the click. The fold must see a
user's events in the order they happened (a slate, its feedback, the next slate), so the
updater folds in server-time order (:func:`recsys.types.event_time`) behind the shared
:class:`~recsys.stream.watermark.Watermark`: a batch only folds events older than what every
partition is known to have delivered (the last event read from it, or, for a partition read to
its end, the source's :meth:`~recsys.protocols.EventSource.caught_up` time). The rest of a
partition is held for the next batch. Feedback whose slate is not among
the user's last two is an orphan: counted, and it changes nothing. Records held back stay
in memory (the source keeps reading ahead, so a partition that is behind is always reached);
they are not committed, so a crash re-reads them from the stored offsets.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from recsys.features import EventFold, StateDecodeError
from recsys.protocols import EventSource, UserStateStore
from recsys.stream.watermark import Watermark
from recsys.types import EventRecord

_log = logging.getLogger(__name__)


@dataclass(slots=True)
class UpdaterStats:
    """Running counters, for logs, metrics and tests (not persisted; reset on restart).

    Counters cover batches the store accepted; ``failures`` counts batches that raised.
    ``orphans`` is feedback that joined none of its user's last two slates; ``held_back``
    counts records a batch read but left for later because they were newer than the
    watermark; ``reset_states`` records that could not be decoded (another layout) and were
    started afresh.
    """

    batches: int = 0
    records: int = 0
    impressions: int = 0
    feedback: int = 0
    orphans: int = 0
    held_back: int = 0
    reset_states: int = 0
    failures: int = 0

    def add(self, other: UpdaterStats) -> None:
        """Accumulate another batch's counters into these."""
        for name in self.__slots__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


class OnlineUpdater:
    """Consumes impression and feedback events and folds them into a store's user records.

    ``consumer`` names the offsets this updater owns in the store; a second updater with the
    same name loses every commit race (its commits are refused) instead of double-applying.
    ``fold`` must be the serving system's fold (same feature spec and catalog as the server).
    """

    def __init__(
        self,
        source: EventSource,
        store: UserStateStore,
        consumer: str,
        fold: EventFold,
    ) -> None:
        if not consumer:
            raise ValueError("consumer name must be non-empty")
        self.source = source
        self.store = store
        self.consumer = consumer
        self.fold = fold
        self.stats = UpdaterStats()
        self._needs_seek = True
        # Records read but not folded yet (newer than the watermark).
        self._watermark = Watermark()
        self._committed: dict[str, int] = {}
        self._stop = threading.Event()
        self._read = 0  # records the last poll returned
        self._thread: threading.Thread | None = None

    @property
    def waiting(self) -> bool:
        """True while records newer than the watermark are held back for a later batch."""
        return self._watermark.held > 0

    def run_once(self, max_records: int = 500, timeout_s: float = 0.2) -> int:
        """Poll one batch and commit what can be folded now; return records committed.

        The first call (and the first after any failure) positions the source at the
        offsets the store holds, so the store, not the source, decides where reading resumes.
        """
        try:
            if self._needs_seek:
                self._committed = self.store.offsets(self.consumer)
                self.source.seek(self._committed)
                self._watermark.reset()
                self._needs_seek = False
            records = self.source.poll(max_records, timeout_s)
            self._read = len(records)
            if not records and not self._watermark.held:
                return 0
            applied = self._apply(records)
        except BaseException:
            # The source may have moved past records the store never took: rewind to the
            # stored offsets before the next attempt.
            self._needs_seek = True
            self.stats.failures += 1
            raise
        return applied

    def _apply(self, records: Sequence[EventRecord]) -> int:
        # In server-time order; at equal times a slate before its feedback (see Watermark).
        taken = [k.record for k in self._watermark.advance(records, self.source)]
        stats = UpdaterStats(batches=1, records=len(taken), held_back=self._watermark.held)
        if not taken:
            self.stats.held_back += stats.held_back
            return 0
        users = list(dict.fromkeys(r.event.user_id for r in taken))
        row_of = {u: i for i, u in enumerate(users)}
        states, stats.reset_states = self._decode(self.store.get_many(users))

        counts = self.fold.fold_events(
            states, [row_of[r.event.user_id] for r in taken], [r.event for r in taken]
        )
        stats.impressions = counts.impressions
        stats.feedback = counts.feedback
        stats.orphans = counts.orphans

        next_offsets: dict[str, int] = {}
        for r in taken:
            next_offsets[r.partition] = max(next_offsets.get(r.partition, 0), r.offset + 1)
        self.store.commit(
            dict(zip(users, self.fold.codec.encode(states), strict=True)),
            next_offsets,
            self.consumer,
            expected={p: self._committed.get(p) for p in next_offsets},
        )
        self._committed.update(next_offsets)
        self.stats.add(stats)
        return len(taken)

    def _decode(self, blobs: list[bytes | None]) -> tuple[np.ndarray, int]:
        try:
            states, _ = self.fold.codec.decode(blobs)
            return states, 0
        except StateDecodeError:
            pass
        # One bad record must not stop the stream: start that user afresh and count it.
        good: list[bytes | None] = []
        reset = 0
        for blob in blobs:
            try:
                self.fold.codec.decode([blob])
                good.append(blob)
            except StateDecodeError:
                _log.warning("user state of another layout was reset")
                good.append(None)
                reset += 1
        states, _ = self.fold.codec.decode(good)
        return states, reset

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
                if self.waiting and not self._read:
                    # Only the watermark can release what is held, and the broker had nothing
                    # new: do not spin on it. (Sleeping whenever records are held cost a
                    # backlog a third of its rate: one topic is nearly always read ahead.)
                    stop.wait(0.01)
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
