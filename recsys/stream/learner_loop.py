"""The learner process: joined rows in, gated policy versions out (``recsys learner``).

:class:`LearnerLoop` closes the online loop between the joiner and serving::

    joiner ─► JoinedDataset rows/ ─► LearnerLoop ─► OnlineLearner.observe ─► candidate
      (staging) ─► PromotionGate.evaluate(candidate, serving, held-out rows) ─► promote
      ─► ROOT/policy-<name>/<version> ─► serving replicas hot-reload it

**Tailing.** It lists the dataset's *committed* rows segments (never a writer's ``.tmp`` file:
:meth:`~recsys.stream.joined_dataset.JoinedDataset.segments`) and consumes those it has not
consumed yet, in (consumer, sequence) order, one :meth:`~recsys.policy.online.OnlineLearner.
observe` call per segment. A joiner commits a consumer's segments in sequence order, so
"consumed" is one number per joiner consumer: the highest sequence number done.

**Gating.** Whenever the learner publishes a candidate (every ``publish_every_rows`` observed
rows), the gate estimates it against the version serving now on the learner's held-out rows
and promotes it only when the rule holds (:mod:`recsys.policy.gate`); a refusal is logged and
counted and the candidate stays in staging, with its decision beside it. "Serving now" is the
newest version under the artifact root: what an unpinned arm serves. An operator's pin (kept
by the serving side, :mod:`recsys.serving.routing`) is not visible here; a promotion while
pinned waits behind the pin, as the gate's docstring says.

**Restarts.** The cursor (which segments are consumed) is a small JSON file in the staging
directory, replaced atomically after each segment is observed and *before* its candidate, if
any, is gated. A restarted loop rebuilds the learner from the newest promoted version under the
root and skips every consumed segment, so no row is ever trained on twice by one lineage of
checkpoints. The price: the learner's in-memory state (replay buffer, held-out buffer, and the
updates since the last promotion) restarts from that checkpoint, and what it learned from
consumed but never promoted rows is lost. A lock file keeps a second loop off the same staging
directory, whose cursor it would race.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import pyarrow.parquet as pq
from prometheus_client import CollectorRegistry
from prometheus_client.core import InfoMetricFamily
from prometheus_client.registry import Collector

from recsys.data.logged import LoggedFeedback, LoggedFeedbackError
from recsys.policy.gate import GateConfig, GateDecision, PromotionGate
from recsys.policy.online import OnlineConfig, OnlineLearner
from recsys.stream.joined_dataset import JoinedDataset, SegmentFile
from recsys.types import ArtifactError

_log = logging.getLogger(__name__)

CURSOR_FILE = "learner-cursor.json"
LOCK_FILE = ".learner.lock"
_CURSOR_VERSION = 1

__all__ = [
    "CURSOR_FILE",
    "LearnerLoop",
    "LearnerLoopError",
    "LoopStats",
    "SegmentCursor",
    "register_model_version",
]


class LearnerLoopError(RuntimeError):
    """The loop cannot start: no checkpoint to continue from, a foreign cursor, a busy
    staging directory. The message says which and what to do."""


@dataclass
class LoopStats:
    """Counters over the loop's life (the numbers go to Prometheus via
    :class:`~recsys.stream.metrics.StatsExporter`, the version via
    :func:`register_model_version`)."""

    segments: int = 0
    rows: int = 0
    #: Segments that could not be read or learned from (logged, skipped, cursor advanced).
    bad_segments: int = 0
    updates: int = 0
    #: Learning steps the update guard took back (non-finite or exploding).
    refused_updates: int = 0
    candidates: int = 0
    promotions: int = 0
    refusals: int = 0
    #: The version the learner continues from: the base it started on, then each promotion.
    model_version: str = ""
    last_refusal: str = ""


@dataclass
class SegmentCursor:
    """Which segments of one dataset a staging directory's learner has consumed:
    the highest sequence number done per joiner consumer (JSON in ``path``)."""

    path: Path
    dataset: str
    consumed: dict[str, int]
    rows: int = 0

    @classmethod
    def load(cls, path: Path, dataset: str) -> SegmentCursor:
        """The cursor at ``path``, or an empty one; a cursor of another dataset is refused
        (its sequence numbers would skip or repeat this one's segments)."""
        if not path.is_file():
            return cls(path, dataset, {})
        try:
            data = json.loads(path.read_text())
            if data.get("version") != _CURSOR_VERSION:
                raise ValueError(f"unknown cursor version {data.get('version')!r}")
            consumed = {str(k): int(v) for k, v in data["consumed"].items()}
            rows, recorded = int(data.get("rows", 0)), str(data["dataset"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise LearnerLoopError(f"unreadable learner cursor {path}: {exc}") from None
        if recorded != dataset:
            raise LearnerLoopError(
                f"the cursor {path} belongs to dataset {recorded!r}, not {dataset!r}: use "
                "another staging directory for another dataset"
            )
        return cls(path, dataset, consumed, rows)

    def is_new(self, segment: SegmentFile) -> bool:
        """Not consumed yet."""
        return segment.seq > self.consumed.get(segment.consumer, -1)

    def advance(self, segment: SegmentFile, rows: int) -> None:
        """Mark ``segment`` consumed and persist (temp file, fsync, rename)."""
        self.consumed[segment.consumer] = segment.seq
        self.rows += rows
        payload = {
            "version": _CURSOR_VERSION,
            "dataset": self.dataset,
            "consumed": self.consumed,
            "rows": self.rows,
            "updated_ts": time.time(),
        }
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w") as out:
            out.write(json.dumps(payload, indent=2, sort_keys=True))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)


class LearnerLoop:
    """Tails a joined dataset into an :class:`~recsys.policy.online.OnlineLearner` and gates
    its candidates with a :class:`~recsys.policy.gate.PromotionGate` (module docstring).

    Build it with :meth:`open` (which takes the staging lock and continues from the newest
    promoted version), use it as a context manager or call :meth:`close`; drive it with
    :meth:`step` (one pass over new segments) or :meth:`run` (poll until stopped).
    """

    def __init__(
        self,
        dataset: JoinedDataset,
        learner: OnlineLearner,
        gate: PromotionGate,
        cursor: SegmentCursor,
        *,
        consumer: str | None = None,
        keep_candidates: int = 5,
        lock: IO[str] | None = None,
    ) -> None:
        if keep_candidates < 1:
            raise ValueError(f"keep_candidates must be >= 1, got {keep_candidates}")
        self.dataset = dataset
        self.learner = learner
        self.gate = gate
        self.cursor = cursor
        self.consumer = consumer
        self.keep_candidates = keep_candidates
        self.stats = LoopStats(model_version=learner.base_version or "")
        self.last_decision: GateDecision | None = None
        self._lock = lock

    @classmethod
    def open(
        cls,
        dataset: str | os.PathLike[str],
        root: Path,
        name: str,
        staging: Path,
        *,
        online: OnlineConfig | None = None,
        gate: GateConfig | None = None,
        consumer: str | None = None,
        keep_candidates: int = 5,
    ) -> LearnerLoop:
        """A loop over ``dataset`` continuing ``policy-<name>``'s newest version under
        ``root``, with candidates, decisions and the cursor in ``staging``.

        Raises :class:`LearnerLoopError` (nothing to continue from, an unloadable or
        non-learning checkpoint, a foreign cursor, another loop on ``staging``).
        """
        staging, root = Path(staging), Path(root)
        if staging.resolve() == root.resolve():
            raise LearnerLoopError(
                "the staging directory must not be the artifact root: candidates would be "
                "served before the gate saw them"
            )
        text = os.fspath(dataset)
        if "://" not in text:
            if not Path(text).is_dir():
                raise LearnerLoopError(f"no joined dataset directory at {text}")
            text = str(Path(text).resolve())
        joined = JoinedDataset(text)
        staging.mkdir(parents=True, exist_ok=True)
        lock = _take_lock(staging / LOCK_FILE)
        try:
            cursor = SegmentCursor.load(staging / CURSOR_FILE, text)
            promotion = PromotionGate(root, name, gate)
            base = promotion.newest()
            if base is None:
                raise LearnerLoopError(
                    f"no version of policy-{name} under {root} to continue from: train and "
                    "publish one first (recsys train policy)"
                )
            try:
                learner = OnlineLearner.from_checkpoint(base, staging, online=online)
            except (ArtifactError, ValueError, KeyError, OSError) as exc:
                raise LearnerLoopError(f"cannot learn from {base}: {exc}") from None
        except BaseException:
            lock.close()
            raise
        _log.info(
            "learner for policy-%s continues from %s; %d rows of %s consumed before",
            name,
            base.name,
            cursor.rows,
            text,
        )
        return cls(
            joined,
            learner,
            promotion,
            cursor,
            consumer=consumer,
            keep_candidates=keep_candidates,
            lock=lock,
        )

    def close(self) -> None:
        """Release the staging lock (the learner's state is not saved: see the docstring)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> LearnerLoop:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ---- one pass -----------------------------------------------------------------------

    def pending(self) -> list[SegmentFile]:
        """Committed segments not consumed yet, in the order they will be consumed."""
        return [f for f in self.dataset.segments(self.consumer) if self.cursor.is_new(f)]

    def step(self, stop: threading.Event | None = None) -> int:
        """Consume every pending segment (until ``stop`` is set); the number consumed."""
        done = 0
        for segment in self.pending():
            if stop is not None and stop.is_set():
                break
            self._consume(segment)
            done += 1
        return done

    def _consume(self, segment: SegmentFile) -> None:
        rows, candidate = 0, None
        try:
            batch = self._read(segment)
            if batch is not None:
                rows = len(batch)
                report = self.learner.observe(batch)
                candidate = report.candidate
                self.stats.updates += report.policy_updates + report.reward_updates
                self.stats.refused_updates += report.policy_refused + report.reward_refused
                if report.dropped:
                    _log.info("segment %s: dropped %s", segment.path, report.dropped)
        except (LoggedFeedbackError, ValueError, OSError) as exc:
            # A segment the learner cannot use would stop the loop forever if retried.
            self.stats.bad_segments += 1
            _log.error("skipping segment %s: %s", segment.path, exc)
        self.stats.segments += 1
        self.stats.rows += rows
        # Before gating: a promoted checkpoint never holds rows the cursor calls unconsumed.
        self.cursor.advance(segment, rows)
        if candidate is not None:
            self.consider(candidate)

    def _read(self, segment: SegmentFile) -> LoggedFeedback | None:
        table = pq.read_table(segment.path, filesystem=self.dataset.fs)
        return LoggedFeedback.from_table(table) if table.num_rows else None

    # ---- gating -------------------------------------------------------------------------

    def consider(self, candidate: Path) -> GateDecision | None:
        """Gate ``candidate`` against the version serving now on the learner's held-out rows
        and promote it if the rule holds. ``None`` when nothing is held out yet (counted as a
        refusal: no evidence is not evidence)."""
        self.stats.candidates += 1
        heldout = self.learner.heldout()
        if heldout is None or len(heldout) == 0:
            self._refused(candidate, "no held-out rows yet")
            self._prune()
            return None
        decision = self.gate.evaluate(candidate, self.gate.newest(), heldout)
        self.last_decision = decision
        published = self.gate.promote(decision)
        if published is None:
            self._refused(candidate, "; ".join(decision.reasons))
        else:
            self.stats.promotions += 1
            self.stats.model_version = published.name
        self._prune()
        return decision

    def _refused(self, candidate: Path, reason: str) -> None:
        self.stats.refusals += 1
        self.stats.last_refusal = reason
        _log.warning("candidate %s not promoted: %s", candidate.name, reason)

    def _prune(self) -> None:
        """Keep the newest ``keep_candidates`` candidate directories in staging (decisions,
        small JSON files beside them, stay as the audit trail)."""
        base = self.learner.staging / f"policy-{self.learner.name}"
        if not base.is_dir():
            return
        dirs = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
        for old in dirs[: -self.keep_candidates]:
            shutil.rmtree(old, ignore_errors=True)

    # ---- running ------------------------------------------------------------------------

    def run(
        self,
        stop: threading.Event,
        *,
        poll_s: float = 5.0,
        max_seconds: float | None = None,
        report: Callable[[LoopStats], None] | None = None,
    ) -> LoopStats:
        """Consume new segments as they are committed until ``stop`` is set or
        ``max_seconds`` pass; ``report`` is called after every pass that consumed any."""
        deadline = None if max_seconds is None else time.monotonic() + max_seconds

        def left() -> float:
            return float("inf") if deadline is None else deadline - time.monotonic()

        while not stop.is_set() and left() > 0:
            if self.step(stop):
                if report is not None:
                    report(self.stats)
                continue  # more may have been committed meanwhile
            stop.wait(min(poll_s, max(left(), 0.0)))
        return self.stats

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary: the loop's counters and the cursor."""
        return {**asdict(self.stats), "consumed": dict(self.cursor.consumed)}


def _take_lock(path: Path) -> IO[str]:
    handle = open(path, "a+")  # noqa: SIM115 - held open for the loop's life
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise LearnerLoopError(
            f"another learner holds {path}: one learner per staging directory"
        ) from None
    return handle


class _VersionCollector(Collector):
    def __init__(self, component: str, version: Callable[[], str]) -> None:
        self._name = f"recsys_{component}_model"
        self._version = version

    def collect(self) -> Iterator[InfoMetricFamily]:
        family = InfoMetricFamily(self._name, "the policy version the learner continues from")
        family.add_metric([], {"version": self._version()})
        yield family


def register_model_version(
    registry: CollectorRegistry, version: Callable[[], str], component: str = "learner"
) -> None:
    """Export ``recsys_<component>_model_info{version="..."} 1``, read at scrape time."""
    registry.register(_VersionCollector(component, version))
