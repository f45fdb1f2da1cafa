"""What the online learner keeps of the joined logs: a bounded replay buffer of logged slates,
the held-out split it never trains on, and the checks a joined row must pass first.

Joined logs arrive as :class:`~recsys.data.logged.LoggedFeedback` batches (one row per
impressed slot). The learner's unit is the *slate* (one request, ``slate_size`` rows): a
transition of offline training (:mod:`recsys.policy.training.offline`) is one logged slate
and the next slate of its session. So buffers are sized in slates, evict whole slates oldest
first, and every row remembers when it arrived (the learner's count of observed rows, not a
clock), which is how a session is judged finished.

The held-out split is by *session*, by a stable hash: ``blake2b(salt:user_id:session_id)``
as a fraction in ``[0, 1)``, held out when below ``fraction``. Whole sessions, not single
requests, because SARSA targets read the next slate of the session and REINFORCE returns sum
the rest of it: holding out one request of a session would still train on it as someone's
next state. Stable, so a session split across batches (or re-read after a restart) always
lands on the same side.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from recsys.data.logged import LoggedFeedback
from recsys.policy.batch import SIGNAL_NAMES
from recsys.types import IntArray

BoolArray = npt.NDArray[np.bool_]

__all__ = [
    "SlateBuffer",
    "clean_joined_rows",
    "heldout_mask",
    "session_fractions",
]


def session_fractions(
    user_id: npt.ArrayLike, session_id: npt.ArrayLike, salt: str
) -> npt.NDArray[np.float64]:
    """Each row's stable position in ``[0, 1)``: the first 8 bytes of
    ``blake2b(salt:user_id:session_id)``, hashed once per distinct session."""
    users = np.asarray(user_id).astype(str)
    sessions = np.asarray(session_id).astype(np.int64).astype(str)
    keys = np.char.add(np.char.add(users, ":"), sessions)
    uniq, inverse = np.unique(keys, return_inverse=True)
    frac = np.empty(uniq.shape[0], np.float64)
    for i, key in enumerate(uniq.tolist()):
        digest = hashlib.blake2b(f"{salt}:{key}".encode(), digest_size=8).digest()
        frac[i] = int.from_bytes(digest, "big") / 2.0**64
    out: npt.NDArray[np.float64] = frac[inverse.reshape(-1)]
    return out


def heldout_mask(logs: LoggedFeedback, fraction: float, salt: str) -> BoolArray:
    """Rows of sessions held out for evaluation (see the module docstring)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must lie in [0, 1], got {fraction}")
    if len(logs) == 0:
        return np.zeros(0, np.bool_)
    out: BoolArray = session_fractions(logs.user_id, logs.session_id, salt) < fraction
    return out


def _per_request(logs: LoggedFeedback) -> tuple[npt.NDArray[Any], IntArray]:
    """Distinct request ids (sorted) and each row's index among them."""
    uniq, inverse = np.unique(logs.request_id, return_inverse=True)
    return uniq, inverse.reshape(-1).astype(np.int64)


def clean_joined_rows(
    logs: LoggedFeedback,
    *,
    slate_size: int,
    num_items: int,
    user_dim: int,
    known_requests: npt.NDArray[Any] | None = None,
) -> tuple[LoggedFeedback, Counter[str]]:
    """Keep the complete, well-formed slates of a joined batch; count what was dropped.

    A slate is dropped, whole, when it is not exactly ``slate_size`` rows at positions
    ``0..S-1`` (a partial join, or another slate size: offline training batches are
    rectangular), when any of its signals or user features is not finite (a NaN dwell would
    poison every minibatch that samples it), when an item or candidate id lies outside the
    catalog, when its user features have another width, or when its request was already
    seen (``known_requests``; a re-read segment). Returns the kept rows and a counter of
    dropped *rows* by reason (the first reason that applies).
    """
    n = len(logs)
    reasons: Counter[str] = Counter()
    if n == 0:
        return logs, reasons
    if logs.user_features.shape[1] != user_dim:
        reasons["user_features_width"] += n
        return logs.take(np.zeros(0, np.int64)), reasons
    uniq, req = _per_request(logs)
    m = uniq.shape[0]
    counts = np.bincount(req, minlength=m)
    pos = logs.position.astype(np.int64)
    in_range = (pos >= 0) & (pos < slate_size)
    # Distinct positions 0..S-1 each exactly once <=> S rows whose bit sum is 2^S - 1.
    bits = np.bincount(req, weights=2.0 ** np.where(in_range, pos, 62), minlength=m)
    shape_ok = (counts == slate_size) & (bits == 2.0**slate_size - 1)
    shape_ok &= np.bincount(req, weights=logs.slate_size != slate_size, minlength=m) == 0

    signals = np.stack([np.asarray(getattr(logs, s), np.float64) for s in SIGNAL_NAMES], 1)
    row_finite = np.isfinite(signals).all(axis=1) & np.isfinite(logs.user_features).all(axis=1)
    finite = np.bincount(req, weights=~row_finite, minlength=m) == 0
    ids_ok_row = (logs.item_id >= 0) & (logs.item_id < num_items)
    if logs.candidate_ids is not None:
        ids_ok_row &= ((logs.candidate_ids >= 0) & (logs.candidate_ids < num_items)).all(axis=1)
    ids_ok = np.bincount(req, weights=~ids_ok_row, minlength=m) == 0
    fresh = (
        np.ones(m, np.bool_)
        if known_requests is None or known_requests.size == 0
        else ~np.isin(uniq, known_requests)
    )
    keep_request = np.ones(m, np.bool_)
    for name, ok in (
        ("duplicate_request", fresh),
        ("incomplete_slate", shape_ok),
        ("non_finite", finite),
        ("unknown_item", ids_ok),
    ):
        dropped = keep_request & ~ok
        if dropped.any():
            reasons[name] += int(counts[dropped].sum())
        keep_request &= ok
    return logs.take(keep_request[req]), reasons


@dataclass
class SlateBuffer:
    """A FIFO of logged slates bounded by ``capacity`` slates (not rows).

    ``arrival[i]`` is the learner's observed-row count when row ``i`` arrived. Appending past
    capacity evicts the oldest slates whole; within one append, rows keep their order.
    """

    capacity: int
    logs: LoggedFeedback | None = None
    arrival: IntArray | None = None

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise ValueError(f"capacity must be >= 1 slate, got {self.capacity}")

    @property
    def num_slates(self) -> int:
        """Slates held now (at most ``capacity``)."""
        return 0 if self.logs is None else int(np.unique(self.logs.request_id).shape[0])

    @property
    def num_rows(self) -> int:
        """Rows held now."""
        return 0 if self.logs is None else len(self.logs)

    def request_ids(self) -> npt.NDArray[Any]:
        """Distinct request ids held now (sorted)."""
        if self.logs is None:
            return np.zeros(0, dtype=str)
        out: npt.NDArray[Any] = np.unique(self.logs.request_id)
        return out

    def append(self, batch: LoggedFeedback, arrival: int) -> int:
        """Add ``batch`` (complete slates) stamped ``arrival``; returns slates evicted."""
        if len(batch) == 0:
            return 0
        stamp = np.full(len(batch), arrival, dtype=np.int64)
        if self.logs is None or self.arrival is None:
            logs, stamps = batch, stamp
        else:
            logs = LoggedFeedback.concat([self.logs, batch])
            stamps = np.concatenate([self.arrival, stamp])
        uniq, first, inverse = np.unique(logs.request_id, return_index=True, return_inverse=True)
        excess = uniq.shape[0] - self.capacity
        if excess > 0:
            # Rows are stored oldest first, so a slate's first row orders slates by age.
            rank = np.empty(uniq.shape[0], np.int64)
            rank[np.argsort(first, kind="stable")] = np.arange(uniq.shape[0])
            keep = rank[inverse.reshape(-1)] >= excess
            logs, stamps = logs.take(keep), stamps[keep]
        self.logs, self.arrival = logs, stamps
        return max(int(excess), 0)
