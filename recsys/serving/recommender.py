"""The plain orchestrator behind ``POST /recommend`` and ``POST /feedback``.

Ray Serve and FastAPI only convert wire schemas and delegate here, so the whole request path is
testable without a cluster. One request: user state from the store → FAISS candidates excluding
what the user already consumed → slate policy with exact propensities → impression event on the
stream. Feedback is validated and published; the online updater turns it into state.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram

from recsys.config import ServingSettings
from recsys.features import EventFold
from recsys.protocols import CandidateGenerator, EventSink, SlatePolicy, UserStateStore
from recsys.types import (
    CandidateFilters,
    EventType,
    FeedbackEvent,
    ImpressionEvent,
    InvalidRequestError,
    Slate,
    SlateItem,
    UserState,
)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

# Default ``value`` of a feedback event when the client sends none.
_DEFAULT_VALUE = {
    EventType.CLICK: 1.0,
    EventType.LIKE: 1.0,
    EventType.CONVERSION: 1.0,
    EventType.SKIP: 1.0,
    EventType.DWELL: 0.0,
}


@dataclass(frozen=True, slots=True)
class Recommendation:
    """What :meth:`Recommender.recommend` returns: the slate plus the ids to log it under."""

    request_id: str
    model_version: str
    slate: Slate


class RecommenderMetrics:
    """Prometheus metrics on a private registry (one per Recommender, so tests don't collide)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "recsys_requests", "Requests by route and outcome", ["route", "outcome"],
            registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "recsys_recommend_latency_seconds", "Recommend latency inside the replica",
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.slate_size = Histogram(
            "recsys_slate_size", "Items returned per slate",
            buckets=(1, 2, 5, 10, 20, 50, 100), registry=self.registry,
        )  # fmt: skip


class Recommender:
    """Serves slates and accepts feedback; thread-safe for concurrent requests.

    Randomness is per request (a generator seeded from ``seed`` and a request counter) so
    concurrent threads never share a ``numpy`` generator and runs are reproducible.
    """

    def __init__(
        self,
        *,
        store: UserStateStore,
        candidates: CandidateGenerator,
        policy: SlatePolicy,
        fold: EventFold,
        sink: EventSink,
        settings: ServingSettings,
        default_k: int,
        model_version: str,
        seed: int = 0,
        clock: Callable[[], float] = time.time,
        on_close: Sequence[Callable[[], None]] = (),
    ) -> None:
        self._store = store
        self._fold = fold
        self._candidates = candidates
        self._policy = policy
        self._sink = sink
        self._settings = settings
        self._default_k = min(default_k, candidates.num_items)
        self.model_version = model_version
        self._seed = seed
        self._counter = itertools.count()
        self._counter_lock = threading.Lock()
        self._clock = clock
        self._on_close = tuple(on_close)
        self.metrics = RecommenderMetrics()

    @property
    def num_items(self) -> int:
        """Catalog size served by this replica."""
        return self._candidates.num_items

    def _rng(self) -> np.random.Generator:
        with self._counter_lock:
            n = next(self._counter)
        return np.random.default_rng([self._seed, n])

    def recommend(
        self,
        user_id: str,
        slate_size: int,
        num_candidates: int | None = None,
        exclude: Sequence[int] = (),
        filters: CandidateFilters | None = None,
    ) -> Recommendation:
        """Pick a slate for a known user, excluding clicked items and ``exclude``.

        Raises :class:`InvalidRequestError` on bad input (a 4xx answer that leaves no trace
        in the store or stream). A user with no state yet is served as a cold start.
        """
        start = time.perf_counter()
        max_slate = self._settings.max_slate_size
        if not 1 <= slate_size <= max_slate:
            raise InvalidRequestError("slate_size", f"must be between 1 and {max_slate}")
        k = self._default_k if num_candidates is None else num_candidates
        if k < slate_size:
            raise InvalidRequestError(
                "num_candidates", f"must be at least slate_size ({slate_size}), got {k}"
            )
        if k > self.num_items:
            raise InvalidRequestError(
                "num_candidates", f"must be at most the catalog size ({self.num_items}), got {k}"
            )
        if len(exclude) > self._settings.max_exclude:
            raise InvalidRequestError(
                "exclude", f"at most {self._settings.max_exclude} ids, got {len(exclude)}"
            )
        requested = np.asarray(exclude, dtype=np.int64)
        if requested.size and (requested.min() < 0 or requested.max() >= self.num_items):
            bad = int(requested[(requested < 0) | (requested >= self.num_items)][0])
            raise InvalidRequestError(
                "exclude", f"unknown item id {bad} (catalog has ids 0..{self.num_items - 1})"
            )
        records, _ = self._fold.codec.decode([self._store.get(user_id)])
        recent = records["recent"][0]
        # An unknown user is a cold start, not an error: state is folded from their events.
        state = UserState(
            user_id=user_id,
            embedding=np.zeros(0, dtype=np.float32),
            clicked=recent[recent >= 0].astype(np.int64),
        )
        excluded = np.union1d(state.clicked, requested)
        available = self._candidates.count_eligible(excluded, filters)
        if available < slate_size:
            raise InvalidRequestError(
                "filters" if filters is not None and not filters.is_noop else "slate_size",
                f"only {available} items remain after exclusions and filters for this user, "
                f"fewer than slate_size={slate_size}",
            )
        candidates = self._candidates.generate(state, min(k, available), excluded, filters)
        slate = self._policy.select(state, candidates, slate_size, self._rng())
        request_id = uuid.uuid4().hex
        self._sink.publish(
            ImpressionEvent(
                request_id=request_id,
                user_id=user_id,
                ts=self._clock(),
                model_version=self.model_version,
                policy=slate.policy,
                items=tuple(
                    SlateItem(int(i), int(p), float(s), float(q))
                    for i, p, s, q in zip(
                        slate.item_ids, slate.positions, slate.scores, slate.propensities,
                        strict=True,
                    )
                ),
            )
        )  # fmt: skip
        self.metrics.latency.observe(time.perf_counter() - start)
        self.metrics.slate_size.observe(len(slate))
        return Recommendation(request_id, self.model_version, slate)

    def feedback(
        self,
        request_id: str,
        user_id: str,
        item_id: int,
        event: EventType,
        value: float | None = None,
        ts: float | None = None,
    ) -> FeedbackEvent:
        """Validate one feedback signal and publish it to the stream; returns the event."""
        if not 0 <= item_id < self.num_items:
            raise InvalidRequestError(
                "item_id", f"unknown item id {item_id} (catalog has ids 0..{self.num_items - 1})"
            )
        fb = FeedbackEvent(
            request_id=request_id,
            user_id=user_id,
            item_id=item_id,
            event=event,
            value=_DEFAULT_VALUE[event] if value is None else float(value),
            ts=self._clock() if ts is None else float(ts),
        )
        self._sink.publish(fb)
        return fb

    def ready(self) -> bool:
        """True when the store answers; the retriever and policy are in memory already."""
        return self._store.ping()

    def close(self) -> None:
        """Stop background work, flush the stream and release connections."""
        for stop in self._on_close:
            stop()
        self._sink.close()
        self._store.close()
