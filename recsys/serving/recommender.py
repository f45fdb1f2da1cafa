"""The plain orchestrator behind ``POST /recommend`` and ``POST /feedback``.

Ray Serve and FastAPI only convert wire schemas and delegate here, so the whole request path is
testable without a cluster. One request: the user's event-derived state from the store →
request-time user features (the same fold and featuriser the policy was trained on) → FAISS
candidates from the user's recent clicks → the served slate policy with exact propensities →
impression event on the stream. Feedback is validated, stamped with server time and published;
the online updater folds both into the user's state.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from recsys.config import ServingSettings
from recsys.features import EventFold, StateArray, UserFeaturizer, session_key
from recsys.protocols import EventSink, HistoryCandidateSource, UserStateStore
from recsys.serving.policies import PolicyRegistry
from recsys.types import (
    CandidateFilters,
    Candidates,
    EventType,
    FeedbackEvent,
    FloatArray,
    ImpressionEvent,
    InvalidRequestError,
    Slate,
    SlateItem,
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
        self.policy_versions = Gauge(
            "recsys_policy_versions", "Policy artifact versions loaded or refused by this replica",
            ["outcome"], registry=self.registry,
        )  # fmt: skip
        self.serving = Gauge(
            "recsys_policy_serving", "1 for the policy version this replica serves",
            ["version"], registry=self.registry,
        )  # fmt: skip


class Recommender:
    """Serves slates and accepts feedback; thread-safe for concurrent requests.

    Randomness is per request (a generator seeded from ``seed`` and a request counter) so
    concurrent threads never share a ``numpy`` generator and runs are reproducible. The
    policy is read from ``policies`` once per request, so a new version swapped in by the
    registry's watcher never fails a request in flight.
    """

    def __init__(
        self,
        *,
        store: UserStateStore,
        candidates: HistoryCandidateSource,
        policies: PolicyRegistry,
        fold: EventFold,
        sink: EventSink,
        settings: ServingSettings,
        default_k: int,
        default_ads: int,
        seed: int = 0,
        clock: Callable[[], float] = time.time,
        on_close: Sequence[Callable[[], None]] = (),
    ) -> None:
        self._store = store
        self._fold = fold
        self._users = UserFeaturizer(fold.spec)
        self._candidates = candidates
        self.policies = policies
        self._sink = sink
        self._settings = settings
        self._default_k = min(default_k, fold.num_items)
        self._default_ads = default_ads
        self._seed = seed
        self._counter = itertools.count()
        self._counter_lock = threading.Lock()
        self._clock = clock
        self._on_close = tuple(on_close)
        self.metrics = RecommenderMetrics()

    @property
    def num_items(self) -> int:
        """Catalog size served by this replica."""
        return self._fold.num_items

    @property
    def model_version(self) -> str:
        """``policy@version`` serving right now."""
        return self.policies.current().version

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
        session_id: str | None = None,
    ) -> Recommendation:
        """Pick a slate for a user from their event-derived state.

        State from the store (a user with none is a cold start) → request-time features
        (the event fold's session rule with ``session_id``) → retrieval candidates from the
        user's recent clicks (an organic block and an ad block, never the recent clicks nor
        ``exclude``) → the policy's slate with exact propensities → the impression on the
        stream. Raises :class:`InvalidRequestError` on bad input: a 4xx answer that leaves no
        trace in the store or stream.
        """
        start = time.perf_counter()
        max_slate = self._settings.max_slate_size
        if not 1 <= slate_size <= max_slate:
            raise InvalidRequestError("slate_size", f"must be between 1 and {max_slate}")
        policy = self.policies.current()
        num_ads = getattr(policy, "num_ads", self._default_ads)
        k = self._default_k if num_candidates is None else num_candidates
        if k < slate_size or k <= num_ads:
            raise InvalidRequestError(
                "num_candidates",
                f"must be at least slate_size ({slate_size}) and more than the "
                f"{num_ads} ads the policy expects among them, got {k}",
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
        now = self._clock()
        states, features = self.user_state(user_id, session_id, now)
        batch = self._candidates.candidates_for_histories(
            states["recent"], k - num_ads, num_ads, exclude=[requested], filters=filters
        )
        keep = batch.mask[0]
        if int(keep.sum()) < slate_size:
            raise InvalidRequestError(
                "filters" if filters is not None and not filters.is_noop else "slate_size",
                f"only {int(keep.sum())} candidates remain after exclusions and filters for "
                f"this user, fewer than slate_size={slate_size}",
            )
        ids = batch.item_ids[0, keep]
        candidates = Candidates(
            item_ids=ids,
            scores=batch.scores[0, keep],
            embeddings=np.zeros((ids.shape[0], 0), dtype=np.float32),
            is_ad=batch.is_ad[0, keep],
        )
        try:
            slate = policy.select(features, candidates, slate_size, self._rng())
        except InvalidRequestError as exc:
            if filters is not None and filters.ads == "only":  # the ad load caps ads per slate
                raise InvalidRequestError(
                    "filters", f"ads=only cannot fill this slate: {exc.message}"
                ) from exc
            raise
        request_id = uuid.uuid4().hex
        self._sink.publish(
            ImpressionEvent(
                request_id=request_id,
                user_id=user_id,
                ts=now,
                model_version=slate.version,
                policy=slate.policy,
                items=tuple(
                    SlateItem(int(i), int(p), float(s), float(q))
                    for i, p, s, q in zip(
                        slate.item_ids, slate.positions, slate.scores, slate.propensities,
                        strict=True,
                    )
                ),
                session_id=session_id or "",
            )
        )  # fmt: skip
        self.metrics.latency.observe(time.perf_counter() - start)
        self.metrics.slate_size.observe(len(slate))
        return Recommendation(request_id, slate.version, slate)

    def user_state(
        self, user_id: str, session_id: str | None, now: float
    ) -> tuple[StateArray, FloatArray]:
        """The user's stored state (``[1]``; a cold start when there is none) and their
        features for a request at server time ``now`` in session ``session_id``: the event
        fold's session rule applied on a copy, then the featuriser the policy was trained
        with."""
        states, _ = self._fold.codec.decode([self._store.get(user_id)])
        features = self._users.features_at(
            self._fold, states, np.array([now]), np.array([session_key(session_id)], np.uint32)
        )
        return states, features[0]

    def feedback(
        self,
        request_id: str,
        user_id: str,
        item_id: int,
        event: EventType,
        value: float | None = None,
        ts: float | None = None,
    ) -> FeedbackEvent:
        """Validate one feedback signal, stamp it with server time and publish it."""
        if not 0 <= item_id < self.num_items:
            raise InvalidRequestError(
                "item_id", f"unknown item id {item_id} (catalog has ids 0..{self.num_items - 1})"
            )
        now = self._clock()
        fb = FeedbackEvent(
            request_id=request_id,
            user_id=user_id,
            item_id=item_id,
            event=event,
            value=_DEFAULT_VALUE[event] if value is None else float(value),
            ts=now if ts is None else float(ts),
            server_ts=now,
        )
        self._sink.publish(fb)
        return fb

    def refresh_metrics(self) -> None:
        """Copy the policy registry's state into the gauges (called when metrics are read)."""
        stats = self.policies.stats
        self.metrics.policy_versions.labels("loaded").set(stats.loaded)
        self.metrics.policy_versions.labels("refused").set(stats.refused)
        self.metrics.serving.clear()
        self.metrics.serving.labels(self.model_version).set(1)

    def ready(self) -> bool:
        """True when the store answers; the retriever and policy are in memory already."""
        return self._store.ping()

    def close(self) -> None:
        """Stop background work, flush the stream and release connections."""
        for stop in self._on_close:
            stop()
        self._sink.close()
        self._store.close()
