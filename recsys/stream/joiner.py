"""Stream joiner: impressions + feedback -> joined training rows, exactly once.

In the style of Microsoft's Decision Service: every served slate waits ``wait_s`` (in event
time) for its feedback, then becomes one row per slot in the logged-feedback
:data:`~recsys.data.logged.SCHEMA` (slots nobody reacted to are the negatives), ready for
reward-model and policy training and off-policy evaluation. Feedback that joins no slate is
never dropped silently: it is counted and written to the ``orphans/`` or ``late/`` side
dataset with its reason.

Determinism. Events are handled in the :class:`~recsys.stream.watermark.Watermark`'s order
(server time, impression before feedback), which depends only on each partition's records,
and every decision is taken in event time against that order: a slate closes before the
first event keyed after its deadline (``impression.ts + wait_s``) or when the watermark passes
the deadline, closed request ids are remembered for ``late_horizon_s`` after their deadline,
session step counters expire after ``session_gap_s`` without an impression. So the rows are a
pure function of the event streams, whatever the batching, and crashes and restarts change
nothing: between commits all state is in memory; each commit writes a segment whose metadata
holds the checkpoint (offsets, watermark marks, pending slates, closed ids, session counters,
counters), and a restarted joiner restores it and re-reads from its offsets.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import heapq
import json
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from itertools import chain
from operator import attrgetter
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
import pyarrow as pa

from recsys.data.logged import FIRST_ROW, SCHEMA, SLATE_LISTS_KEY
from recsys.features.fold import MAX_DWELL_S
from recsys.protocols import EventSource
from recsys.stream.joined_dataset import (
    LATE,
    ORPHANS,
    SIDE_SCHEMA,
    JoinedDataset,
    check_consumer,
    date_dir,
    offsets_label,
)
from recsys.stream.watermark import Keyed, Watermark
from recsys.types import (
    EventRecord,
    EventType,
    FeedbackEvent,
    FloatArray,
    ImpressionEvent,
    PackedArray,
    Signals,
    SlateItem,
    as_array,
    event_time,
)

_log = logging.getLogger(__name__)

SIGNAL_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Signals))
"""Columns of the signals matrix a reward function receives: the order of
:class:`recsys.types.Signals` (and of ``recsys.policy.batch.SIGNAL_NAMES``)."""

RewardFn = Callable[[FloatArray], npt.ArrayLike]
"""Maps ``[n, 6]`` float32 signals (order :data:`SIGNAL_NAMES`) to ``n`` rewards."""

CHECKPOINT_VERSION = 1
_CLICK, _DWELL, _LIKE, _CONVERSION, _REVENUE, _SKIP = range(6)
_FLAG = {
    EventType.CLICK: _CLICK,
    EventType.LIKE: _LIKE,
    EventType.CONVERSION: _CONVERSION,
    EventType.SKIP: _SKIP,
}
_ITEM_ID = attrgetter("item_id")
_U64 = np.dtype("<u8")
_I64 = np.dtype("<i8")
_F64 = np.dtype("<f8")
_JSON = msgspec.json.Encoder()  # compact JSON for the checkpoint (read back with json)
#: The rows' schema, saying that a slate's user features and candidate ids are on its first
#: row only (readers expand them: :func:`recsys.data.logged.expand_slate_lists`).
_COMPACT_SCHEMA = SCHEMA.with_metadata({**(SCHEMA.metadata or {}), SLATE_LISTS_KEY: FIRST_ROW})


def stable_hash(text: str) -> int:
    """A 63-bit hash of ``text`` that is the same in every process (unlike ``hash``)."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


def session_hash(user_id: str, session_id: str) -> int:
    """The ``session_id`` column: a stable non-negative int64 of (user, client session)."""
    return stable_hash(f"{user_id}\x1f{session_id}")


def click_reward(signals: FloatArray) -> FloatArray:
    """The default reward: the click."""
    out: FloatArray = np.ascontiguousarray(signals[:, _CLICK], dtype=np.float32)
    return out


@dataclass(frozen=True, slots=True)
class JoinConfig:
    """How the joiner waits, remembers and commits (all windows in event-time seconds).

    ``wait_s``: how long after an impression its feedback still joins. ``late_horizon_s``:
    how long after a slate's deadline its id is remembered, so later feedback counts as
    ``late`` rather than an orphan of an ``unknown_request``. ``session_gap_s``: a (user,
    session) with no impression for this long starts its slate counter (``step``) again.
    ``segment_max_rows`` / ``segment_max_s``: commit a segment once this many rows are
    pending, or this many wall-clock seconds after the last commit (only when something
    advanced). ``consumer`` names the joiner's segments and checkpoints.
    """

    consumer: str = "joiner"
    wait_s: float = 30.0
    late_horizon_s: float = 3600.0
    session_gap_s: float = 1800.0
    segment_max_rows: int = 100_000
    segment_max_s: float = 60.0

    def __post_init__(self) -> None:
        check_consumer(self.consumer)
        for name in ("wait_s", "late_horizon_s", "session_gap_s", "segment_max_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.segment_max_rows < 1:
            raise ValueError(f"segment_max_rows must be >= 1, got {self.segment_max_rows}")


@dataclass(slots=True)
class JoinStats:
    """Running counters, for logs, metrics and tests.

    Everything but ``failures`` is checkpointed with the segments, so after a restart the
    counters describe the whole stream so far, as if the joiner had never stopped.
    ``joined_rows`` counts slot rows of closed slates, ``negatives`` those without any
    feedback, ``clicks`` those clicked; ``joined_feedback`` feedback events that joined a
    slot; ``orphan_*`` feedback that joined no slate, by reason; ``late`` feedback after its
    slate's window; ``duplicates`` impressions whose request id was already seen;
    ``segments`` commits; ``failures`` batches that raised (process-local).
    """

    records: int = 0
    impressions: int = 0
    feedback: int = 0
    joined_feedback: int = 0
    joined_rows: int = 0
    negatives: int = 0
    clicks: int = 0
    orphan_unknown_request: int = 0
    orphan_user_mismatch: int = 0
    orphan_item_not_in_slate: int = 0
    late: int = 0
    duplicates: int = 0
    segments: int = 0
    failures: int = 0

    @property
    def orphans(self) -> dict[str, int]:
        """Orphaned feedback by reason."""
        return {
            "unknown_request": self.orphan_unknown_request,
            "user_mismatch": self.orphan_user_mismatch,
            "item_not_in_slate": self.orphan_item_not_in_slate,
        }


class _Slate:
    """A pending impression: its slots wait for feedback until the deadline."""

    __slots__ = ("deadline", "event", "ids", "key", "session", "signals", "snapshot", "step")

    def __init__(
        self, event: ImpressionEvent, session: int, step: int, deadline: float, key: int
    ) -> None:
        self.event = event
        self.session = session
        self.step = step
        self.deadline = deadline
        self.key = key  # stable_hash(request_id): how the id is remembered once closed
        self.ids: tuple[int, ...] | None = None
        self.signals: dict[int, list[float]] | None = None
        self.snapshot: str | None = None  # cached checkpoint JSON of the immutable part

    def slot_signals(self, slot: int) -> list[float]:
        if self.signals is None:
            self.signals = {}
        sig = self.signals.get(slot)
        if sig is None:
            sig = self.signals[slot] = [0.0] * 6
        return sig

    def to_json(self) -> str:
        # Encoded by msgspec (bytes become base64 strings): every slate still pending at a
        # commit is encoded once, thousands a second on a backlog, at a sixth of json's cost.
        if self.snapshot is None:
            e = self.event
            self.snapshot = _JSON.encode(
                [
                    e.request_id,
                    e.user_id,
                    e.ts,
                    e.model_version,
                    e.policy,
                    e.session_id,
                    [[i.item_id, i.position, i.score, i.propensity] for i in e.items],
                    as_array(e.candidates, "<i8").tobytes(),
                    as_array(e.features, "<f4").tobytes(),
                    self.session,
                    self.step,
                    self.deadline,
                    self.key,
                ]
            ).decode("utf-8")
        return self.snapshot

    @classmethod
    def from_json(cls, obj: list[Any]) -> _Slate:
        rid, user, ts, version, policy, session_id, items, cands, feats, *rest = obj
        session, step, deadline, key = rest
        event = ImpressionEvent(
            request_id=rid,
            user_id=user,
            ts=float(ts),
            model_version=version,
            policy=policy,
            items=tuple(SlateItem(int(a), int(b), float(c), float(d)) for a, b, c, d in items),
            session_id=session_id,
            candidates=PackedArray(base64.b64decode(cands), "<i8"),
            features=PackedArray(base64.b64decode(feats), "<f4"),
        )
        return cls(event, int(session), int(step), float(deadline), int(key))


def _b64(array: npt.NDArray[Any]) -> str:
    return base64.b64encode(array.tobytes()).decode("ascii")


def _unb64(text: str, dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    return np.frombuffer(base64.b64decode(text), dtype=dtype)


class Joiner:
    """Joins impressions with their feedback into training rows, written exactly once.

    ``source`` reads both topics; ``dataset`` (or its root) receives the segments;
    ``reward`` maps a ``[n, 6]`` signals matrix (:data:`SIGNAL_NAMES`) to the ``reward``
    column (default: the click). ``is_ad`` (``[num_items]`` bool) and ``item_features``
    (``[num_items, d]`` float32) are looked up by item id for the rows; ids outside them
    count as organic with zero features. Only one joiner may run per consumer name.

    ``write_behind``: encode and write each segment's Parquet in a background thread while
    the next batches are joined (Arrow releases the GIL, so on a second core the write costs
    the stream nothing). At most one segment is in flight; :meth:`commit` and the next
    segment wait for it, and a failed write surfaces at the next call like a failed
    synchronous one: the joiner restores the newest durable checkpoint and re-reads, so the
    rows are the same. Off by default: a dropped (not stopped) joiner object would otherwise
    race its own last write against the next one's recovery, which a real crash cannot.
    """

    def __init__(
        self,
        source: EventSource,
        dataset: JoinedDataset | str,
        config: JoinConfig | None = None,
        reward: RewardFn | None = None,
        *,
        is_ad: npt.ArrayLike | None = None,
        item_features: npt.ArrayLike | None = None,
        write_behind: bool = False,
    ) -> None:
        self.source = source
        self.dataset = dataset if isinstance(dataset, JoinedDataset) else JoinedDataset(dataset)
        self.config = config if config is not None else JoinConfig()
        self.reward: RewardFn = reward if reward is not None else click_reward
        self._is_ad = None if is_ad is None else np.asarray(is_ad, dtype=np.bool_).reshape(-1)
        self._items: FloatArray | None = None
        if item_features is not None:
            table = np.asarray(item_features, dtype=np.float32)
            if table.ndim != 2:
                raise ValueError(f"item_features must be [num_items, d], got {table.shape}")
            self._items = table
        self.stats = JoinStats()
        self._watermark = Watermark()
        self._needs_restore = True
        self._stop = threading.Event()
        self._read = 0  # records the last poll returned
        self._thread: threading.Thread | None = None
        self._write_behind = write_behind
        self._writer: ThreadPoolExecutor | None = None
        self._in_flight: Future[str] | None = None
        self._reset_state()

    # --- state ---------------------------------------------------------------------------

    def _reset_state(self) -> None:
        self._seq = 0
        self._pending: dict[str, _Slate] = {}
        self._deadlines: list[tuple[float, int, str]] = []
        self._tick = 0  # tie-breaker for equal deadlines in the heap
        self._closed: OrderedDict[int, float] = OrderedDict()
        # (user, client session) -> (next step, key of its last impression, session hash);
        # tuples of atomic values, which the garbage collector stops tracking.
        self._sessions: OrderedDict[tuple[str, str], tuple[int, float, int]] = OrderedDict()
        self._clock = -math.inf
        self._offsets: dict[str, int] = {}
        self._committed_offsets: dict[str, int] = {}
        self._done_marks: dict[str, float] = {}
        self._closed_slates: list[_Slate] = []
        self._side: dict[str, list[tuple[Any, ...]]] = {ORPHANS: [], LATE: []}
        self._rows_pending = 0
        self._last_commit = time.monotonic()

    @property
    def waiting(self) -> bool:
        """True while records newer than the watermark are held for a later batch."""
        return self._watermark.held > 0

    @property
    def held(self) -> int:
        """Records read but held back, newer than the watermark."""
        return self._watermark.held

    @property
    def pending(self) -> int:
        """Slates still waiting for feedback."""
        return len(self._pending)

    @property
    def uncommitted(self) -> bool:
        """True when something happened since the last commit (a crash now would redo it):
        offsets advanced, or slates closed because the watermark moved."""
        return (
            self._offsets != self._committed_offsets
            or bool(self._closed_slates)
            or any(self._side.values())
        )

    def _restore(self) -> None:
        """Load the newest checkpoint (cleaning up after a crashed writer) and seek to it."""
        # A write still in flight must land (or fail) before recovery looks at the files.
        with contextlib.suppress(Exception):
            self._settle()
        failures = self.stats.failures
        self._reset_state()
        self.stats = JoinStats(failures=failures)
        committed = self.dataset.recover(self.config.consumer)
        marks: dict[str, float] = {}
        if committed is not None:
            ckpt = json.loads(committed.checkpoint)
            if ckpt.get("version") != CHECKPOINT_VERSION:
                raise ValueError(f"unknown joiner checkpoint version {ckpt.get('version')!r}")
            self._seq = committed.seq
            self._offsets = {k: int(v) for k, v in ckpt["offsets"].items()}
            marks = {k: float(v) for k, v in ckpt["marks"].items()}
            self._clock = -math.inf if ckpt["clock"] is None else float(ckpt["clock"])
            for obj in ckpt["pending"]:
                self._add_pending(_Slate.from_json(obj))
            for rid, slots in ckpt["signals"].items():
                self._pending[rid].signals = {int(s): [float(v) for v in sig] for s, sig in slots}
            keys = _unb64(ckpt["closed"]["keys"], _U64).tolist()
            deadlines = _unb64(ckpt["closed"]["deadlines"], _F64).tolist()
            self._closed = OrderedDict(zip(keys, deadlines, strict=True))
            sessions = ckpt["sessions"]
            steps = _unb64(sessions["steps"], _I64).tolist()
            last = _unb64(sessions["last"], _F64).tolist()
            self._sessions = OrderedDict(
                ((u, sid), (n, t, session_hash(u, sid)))
                for u, sid, n, t in zip(
                    sessions["users"], sessions["ids"], steps, last, strict=True
                )
            )
            self.stats = JoinStats(**{**ckpt["stats"], "failures": failures})
        self._committed_offsets = dict(self._offsets)
        self._done_marks = dict(marks)
        self._watermark.reset(marks)
        self.source.seek(self._offsets)
        self._last_commit = time.monotonic()
        self._needs_restore = False

    def _checkpoint(self) -> str:
        closed_keys = np.fromiter(self._closed.keys(), dtype=_U64, count=len(self._closed))
        closed_deadlines = np.fromiter(self._closed.values(), dtype=_F64, count=len(self._closed))
        stats = asdict(self.stats)
        del stats["failures"]
        # Columns of the session table, transposed at C speed.
        users, ids = zip(*self._sessions.keys(), strict=True) if self._sessions else ((), ())
        steps, last, _ = zip(*self._sessions.values(), strict=True) if self._sessions else ((),) * 3
        head = {
            "version": CHECKPOINT_VERSION,
            "consumer": self.config.consumer,
            "offsets": self._offsets,
            "marks": self._done_marks,
            "clock": self._clock if math.isfinite(self._clock) else None,
            "signals": {
                rid: [[slot, sig] for slot, sig in s.signals.items()]
                for rid, s in self._pending.items()
                if s.signals
            },
            "closed": {"keys": _b64(closed_keys), "deadlines": _b64(closed_deadlines)},
            "sessions": {
                "users": list(users),
                "ids": list(ids),
                "steps": _b64(np.array(steps, dtype=_I64)),
                "last": _b64(np.array(last, dtype=_F64)),
            },
            "stats": stats,
        }
        # Pending slates are immutable once seen: their JSON is built once and reused.
        pending = ",".join(s.to_json() for s in self._pending.values())
        return _JSON.encode(head).decode("utf-8")[:-1] + f',"pending":[{pending}]}}'

    # --- running -------------------------------------------------------------------------

    def run_once(self, max_records: int = 500, timeout_s: float = 0.2) -> int:
        """Poll one batch, join what the watermark releases, commit when a segment is due;
        return the number of records joined.

        The first call (and the first after any failure) restores the newest checkpoint, so
        the dataset, not this object's memory, decides where reading resumes.
        """
        try:
            if self._needs_restore:
                self._restore()
            elif self._in_flight is not None and self._in_flight.done():
                self._settle()  # a failed background write fails this call
            records = self.source.poll(max_records, timeout_s)
            self._read = len(records)
            ready = self._watermark.advance(records, self.source)
            self._process(ready, self._watermark.safe)
            if self._segment_due():
                self._commit()
        except BaseException:
            # Memory may be half-way through a batch or a commit: start again from the
            # newest committed segment before the next attempt.
            self._needs_restore = True
            self.stats.failures += 1
            raise
        return len(ready)

    def commit(self) -> bool:
        """Commit a segment now if anything advanced since the last one; True if one was.

        Returns once every segment committed so far is durable (a background write
        included)."""
        if self._needs_restore:
            return False
        try:
            wrote = self.uncommitted
            if wrote:
                self._commit()
            self._settle()
        except BaseException:
            self._needs_restore = True
            self.stats.failures += 1
            raise
        return wrote

    def _settle(self) -> None:
        """Wait for the segment being written in the background; raise what its write
        raised."""
        future, self._in_flight = self._in_flight, None
        if future is not None:
            future.result()

    def _segment_due(self) -> bool:
        if self._rows_pending >= self.config.segment_max_rows:
            return True
        elapsed = time.monotonic() - self._last_commit
        return self.uncommitted and elapsed >= self.config.segment_max_s

    def run(self, stop: threading.Event, max_records: int = 500, timeout_s: float = 0.2) -> None:
        """Join batches until ``stop`` is set, then commit; errors are logged and retried.

        A failure restores the newest checkpoint (see :meth:`run_once`), so an outage of the
        broker or the bucket delays rows but never drops or duplicates them.
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
                _log.exception("joiner batch failed; retrying in %.1fs", backoff_s)
                if stop.wait(backoff_s):
                    break
                backoff_s = min(backoff_s * 2, 5.0)
        try:
            self.commit()  # less to re-read on the next start
        except Exception:
            _log.exception("joiner could not commit on stop; the next start re-reads")

    def start_in_thread(
        self,
        stop: threading.Event | None = None,
        *,
        max_records: int = 500,
        timeout_s: float = 0.2,
    ) -> threading.Thread:
        """Run :meth:`run` in a daemon thread and return the thread.

        Without ``stop``, the joiner's own event is used; :meth:`stop` sets it and joins.
        """
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("joiner is already running")
        event = stop if stop is not None else threading.Event()
        self._stop = event
        thread = threading.Thread(
            target=self.run,
            args=(event, max_records, timeout_s),
            name=f"joiner-{self.config.consumer}",
            daemon=True,
        )
        thread.start()
        self._thread = thread
        return thread

    def stop(self, timeout_s: float = 10.0) -> None:
        """Signal the background thread to finish (it commits what it joined) and wait."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    # --- joining -------------------------------------------------------------------------

    def _process(self, ready: Sequence[Keyed], safe: float) -> None:
        stats = self.stats
        heap = self._deadlines
        offsets, marks = self._offsets, self._done_marks
        for key, record in ready:
            if heap and heap[0][0] < key:
                self._close_before(key)
            if key > self._clock:
                self._clock = key
            event = record.event
            if isinstance(event, ImpressionEvent):
                self._impression(event, key)
            else:
                self._feedback(record, event, key)
            offsets[record.partition] = record.offset + 1
            marks[record.partition] = key
        stats.records += len(ready)
        # Nothing keyed below the watermark can still come: settle everything due before it.
        if heap and heap[0][0] < safe:
            self._close_before(safe)
        self._expire(safe)

    def _impression(self, event: ImpressionEvent, key: float) -> None:
        stats = self.stats
        stats.impressions += 1
        rid = event.request_id
        rkey = stable_hash(rid)
        closed = self._closed.get(rkey)
        if rid in self._pending or (
            closed is not None and key <= closed + self.config.late_horizon_s
        ):
            stats.duplicates += 1
            return
        skey = (event.user_id, event.session_id)
        entry = self._sessions.get(skey)
        if entry is None:
            step, h = 0, session_hash(*skey)
        else:
            # A session idle for longer than the gap starts over (same hash, step 0).
            step = entry[0] if key - entry[1] <= self.config.session_gap_s else 0
            h = entry[2]
            self._sessions.move_to_end(skey)
        self._sessions[skey] = (step + 1, key, h)
        self._add_pending(_Slate(event, h, step, event.ts + self.config.wait_s, rkey))

    def _add_pending(self, slate: _Slate) -> None:
        self._pending[slate.event.request_id] = slate
        self._tick += 1
        heapq.heappush(self._deadlines, (slate.deadline, self._tick, slate.event.request_id))

    def _feedback(self, record: EventRecord, event: FeedbackEvent, key: float) -> None:
        self.stats.feedback += 1
        slate = self._pending.get(event.request_id)
        if slate is None:
            closed = self._closed.get(stable_hash(event.request_id))
            if closed is not None and key <= closed + self.config.late_horizon_s:
                self._reject(LATE, "late", record, event)
            else:
                self._reject(ORPHANS, "unknown_request", record, event)
            return
        if event.user_id != slate.event.user_id:
            self._reject(ORPHANS, "user_mismatch", record, event)
            return
        ids = slate.ids
        if ids is None:
            ids = slate.ids = tuple(map(_ITEM_ID, slate.event.items))
        try:
            slot = ids.index(event.item_id)
        except ValueError:
            self._reject(ORPHANS, "item_not_in_slate", record, event)
            return
        if event_time(event) > slate.deadline:
            self._reject(LATE, "late", record, event)
            return
        sig = slate.slot_signals(slot)
        kind = event.event
        if kind == EventType.DWELL:
            value = event.value if math.isfinite(event.value) else 0.0
            sig[_DWELL] += min(max(value, 0.0), MAX_DWELL_S)
        else:
            sig[_FLAG[kind]] = 1.0
            if kind == EventType.CONVERSION and event.value > 0:
                sig[_REVENUE] += event.value
        self.stats.joined_feedback += 1

    def _reject(self, kind: str, reason: str, record: EventRecord, event: FeedbackEvent) -> None:
        if kind == LATE:
            self.stats.late += 1
        else:
            name = f"orphan_{reason}"
            setattr(self.stats, name, getattr(self.stats, name) + 1)
        self._side[kind].append(
            (
                reason,
                record.partition,
                record.offset,
                event.request_id,
                event.user_id,
                event.item_id,
                str(event.event),
                event.value,
                event.ts,
                event.server_ts,
            )
        )

    def _close_before(self, t: float) -> None:
        """Close every pending slate whose deadline is before ``t``: its rows are final."""
        heap, stats = self._deadlines, self.stats
        while heap and heap[0][0] < t:
            deadline, _, rid = heapq.heappop(heap)
            slate = self._pending.pop(rid)
            self._closed.pop(slate.key, None)  # a reused id: keep deadline order
            self._closed[slate.key] = deadline
            self._closed_slates.append(slate)
            n = len(slate.event.items)
            self._rows_pending += n
            stats.joined_rows += n
            touched = slate.signals
            if touched is None:
                stats.negatives += n
            else:
                stats.negatives += n - len(touched)
                for sig in touched.values():
                    if sig[_CLICK]:
                        stats.clicks += 1

    def _expire(self, t: float) -> None:
        """Forget closed ids and session counters no event keyed from ``t`` on can need."""
        closed, horizon = self._closed, self.config.late_horizon_s
        # Closed in deadline order (almost: see the module docstring); what is left behind
        # an unexpired entry only costs memory, lookups check the horizon themselves.
        while closed:
            _, deadline = next(iter(closed.items()))
            if deadline + horizon >= t:
                break
            closed.popitem(last=False)
        sessions, gap = self._sessions, self.config.session_gap_s
        while sessions:
            _, entry = next(iter(sessions.items()))
            if entry[1] + gap >= t:
                break
            sessions.popitem(last=False)

    # --- committing ----------------------------------------------------------------------

    def _commit(self) -> None:
        rows = self._rows_table(self._closed_slates)
        side = {kind: _side_table(rows_) for kind, rows_ in self._side.items()}
        seq = self._seq + 1
        self.stats.segments += 1  # counted in its own checkpoint (a failure restores all)
        args = (
            self.config.consumer,
            seq,
            offsets_label(self._committed_offsets, self._offsets),
            date_dir(self._clock),
            rows,
            side,
            self._checkpoint(),
        )
        self._settle()  # one segment in flight at most, committed in order
        if self._write_behind:
            if self._writer is None:
                self._writer = ThreadPoolExecutor(1, thread_name_prefix="joiner-writer")
            self._in_flight = self._writer.submit(self.dataset.commit, *args)
        else:
            self.dataset.commit(*args)
        self._seq = seq
        self._committed_offsets = dict(self._offsets)
        self._closed_slates = []
        self._side = {ORPHANS: [], LATE: []}
        self._rows_pending = 0
        self._last_commit = time.monotonic()

    def _rows_table(self, slates: Sequence[_Slate]) -> pa.Table:
        """One row per slot of ``slates``, built column by column (no per-row objects)."""
        slates = [s for s in slates if s.event.items]
        events = [s.event for s in slates]
        m = len(slates)
        sizes = np.fromiter((len(e.items) for e in events), dtype=np.int64, count=m)
        n = int(sizes.sum())
        starts = np.zeros(m, dtype=np.int64)
        np.cumsum(sizes[:-1], out=starts[1:])
        of_slate = np.repeat(np.arange(m), sizes)
        items: list[SlateItem] = list(chain.from_iterable(e.items for e in events))
        item_id = np.fromiter(map(attrgetter("item_id"), items), dtype=np.int64, count=n)
        position = np.fromiter(map(attrgetter("position"), items), dtype=np.int64, count=n)
        propensity = np.fromiter(map(attrgetter("propensity"), items), dtype=np.float64, count=n)
        if n:
            log_p = np.add.reduceat(np.log(propensity), starts)
            size = np.maximum(sizes, np.maximum.reduceat(position, starts) + 1)
        else:
            log_p = size = np.zeros(0)

        signals = np.zeros((n, len(SIGNAL_NAMES)), dtype=np.float32)
        touched = [(i, s.signals) for i, s in enumerate(slates) if s.signals]
        if touched:
            at = [int(starts[i]) + slot for i, sig in touched for slot in sig]
            signals[at] = [v for _, sig in touched for v in sig.values()]
        reward = np.asarray(self.reward(signals.copy()), dtype=np.float32).reshape(-1)
        if reward.shape != (n,):
            raise ValueError(f"reward returned shape {reward.shape} for {n} rows")

        row_slate = pa.array(of_slate)

        def per_slate(values: list[Any], type_: pa.DataType) -> pa.Array:
            return pa.array(values, type=type_).take(row_slate)

        inside = (item_id >= 0) & (item_id < (0 if self._is_ad is None else len(self._is_ad)))
        is_ad = np.zeros(n, dtype=np.bool_)
        if self._is_ad is not None:
            is_ad[inside] = self._is_ad[item_id[inside]]
        columns: dict[str, Any] = {
            "request_id": per_slate([e.request_id for e in events], pa.string()),
            "session_id": np.repeat(
                np.fromiter((s.session for s in slates), np.int64, count=m), sizes
            ),
            "step": np.repeat(np.fromiter((s.step for s in slates), np.int32, count=m), sizes),
            "ts": np.repeat(np.fromiter((e.ts for e in events), np.float64, count=m), sizes),
            "user_id": per_slate([e.user_id for e in events], pa.string()),
            "user_idx": np.full(n, -1, dtype=np.int64),
            "item_id": item_id,
            "position": position.astype(np.int16),
            "slate_size": np.repeat(size, sizes).astype(np.int16),
            "propensity": propensity.astype(np.float32),
            "slate_log_propensity": np.repeat(log_p, sizes).astype(np.float32),
            "position_propensity": (
                pa.nulls(n, pa.float32())
                if SCHEMA.field("position_propensity").nullable
                # The format cannot say "unknown" yet: the slot propensity, exact at the top.
                else propensity.astype(np.float32)
            ),
            "policy": per_slate([f"{e.policy}@{e.model_version}" for e in events], pa.string()),
            "is_ad": is_ad,
            "click": signals[:, _CLICK] > 0,
            "dwell_s": signals[:, _DWELL],
            "like": signals[:, _LIKE] > 0,
            "conversion": signals[:, _CONVERSION] > 0,
            "revenue": signals[:, _REVENUE],
            "skip": signals[:, _SKIP] > 0,
            "hidden_ltv": np.full(n, np.nan, dtype=np.float32),
            "user_features": _first_slot([e.features for e in events], np.float32, starts, n),
            "item_features": self._item_features(item_id),
            "candidate_ids": _first_slot(
                [e.candidates for e in events], np.int64, starts, n, null_if_empty=True
            ),
            "reward": reward,
        }
        arrays = [
            pa.array(columns[f.name], type=f.type)
            if not isinstance(columns[f.name], pa.Array)
            else columns[f.name]
            for f in SCHEMA
        ]
        return pa.Table.from_arrays(arrays, schema=_COMPACT_SCHEMA)

    def _item_features(self, item_id: npt.NDArray[np.int64]) -> pa.Array:
        n = item_id.shape[0]
        if self._items is None:
            return pa.ListArray.from_arrays(
                pa.array(np.zeros(n + 1, dtype=np.int32)), pa.array([], pa.float32())
            )
        num, width = self._items.shape
        inside = (item_id >= 0) & (item_id < num)
        mat = np.zeros((n, width), dtype=np.float32)
        mat[inside] = self._items[item_id[inside]]
        offsets = np.arange(n + 1, dtype=np.int32) * np.int32(width)
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(mat.reshape(-1)))


def _first_slot(
    rows: Sequence[Sequence[float] | Sequence[int]],
    dtype: type[np.generic],
    starts: npt.NDArray[np.int64],
    n: int,
    *,
    null_if_empty: bool = False,
) -> pa.ListArray:
    """Arrow list column of ``n`` rows holding ``rows[s]`` on the first row of slate ``s``
    (row ``starts[s]``) and an empty list (null if ``null_if_empty``) on the others."""
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    per_row = np.zeros(n, dtype=np.int64)
    per_row[starts] = lengths
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(per_row, out=offsets[1:])
    values = _concat(rows, np.dtype(dtype), int(offsets[-1]))
    mask = pa.array(per_row == 0) if null_if_empty else None
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values), mask=mask)


def _concat(
    rows: Sequence[Sequence[float] | Sequence[int]], dtype: np.dtype[Any], count: int
) -> npt.NDArray[Any]:
    """Every row's values end to end, as ``dtype``: one ``frombuffer`` per packed dtype run
    when the rows are packed (empty rows skipped), else one pass over the Python numbers."""
    filled = [r for r in rows if len(r)]
    packed = [r for r in filled if isinstance(r, PackedArray)]
    if packed and len(packed) == len(filled):
        codes = {r.dtype for r in packed}
        if len(codes) == 1:
            data = b"".join(r.data for r in packed)
            return np.frombuffer(data, dtype=codes.pop()).astype(dtype, copy=False)
        return np.concatenate([as_array(r, dtype.str) for r in packed])
    return np.fromiter(chain.from_iterable(rows), dtype=dtype, count=count)


def _side_table(rows: Sequence[tuple[Any, ...]]) -> pa.Table:
    columns: list[Sequence[Any]] = (
        list(zip(*rows, strict=True)) if rows else [[] for _ in SIDE_SCHEMA]
    )
    return pa.Table.from_arrays(
        [pa.array(col, type=f.type) for col, f in zip(columns, SIDE_SCHEMA, strict=True)],
        schema=SIDE_SCHEMA,
    )
