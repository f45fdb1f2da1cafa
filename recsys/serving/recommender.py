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
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from recsys.config import ServingSettings
from recsys.features import EventFold, StateArray, UserFeaturizer, session_key
from recsys.protocols import EventSink, HistoryCandidateSource, SlatePolicy, UserStateStore
from recsys.serving.routing import PolicyRouter
from recsys.stream.buffered import BufferedEventSink
from recsys.stream.events import EventPublishError
from recsys.types import (
    CandidateBatch,
    CandidateFilters,
    EventType,
    FeedbackEvent,
    FloatArray,
    ImpressionEvent,
    IntArray,
    InvalidRequestError,
    PackedArray,
    ShadowSlate,
    Slate,
    SlateItem,
    StoreUnavailableError,
)

_log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

# Default ``value`` of a feedback event when the client sends none.
_DEFAULT_VALUE = {
    EventType.CLICK: 1.0,
    EventType.LIKE: 1.0,
    EventType.CONVERSION: 1.0,
    EventType.SKIP: 1.0,
    EventType.DWELL: 0.0,
}


def _rows(
    batch: CandidateBatch, rows: npt.NDArray[np.intp] | npt.NDArray[np.int64]
) -> CandidateBatch:
    """The candidate batch of some of its rows."""
    return CandidateBatch(
        batch.item_ids[rows], batch.scores[rows], batch.mask[rows], batch.is_ad[rows]
    )


def _slate_items(slate: Slate) -> tuple[SlateItem, ...]:
    """A slate's slots as the event schema's items."""
    return tuple(
        SlateItem(int(i), int(p), float(s), float(r))
        for i, p, s, r in zip(
            slate.item_ids.tolist(), slate.positions.tolist(),
            slate.scores.tolist(), slate.propensities.tolist(), strict=True,
        )
    )  # fmt: skip


class Decision(NamedTuple):
    """What a policy chose from, logged with its slate: the candidate ids (column order, padding
    dropped) and the request-time user features."""

    candidates: IntArray
    features: FloatArray


@dataclass(frozen=True, slots=True)
class RecommendQuery:
    """One ``/recommend`` request in domain terms (what :meth:`Recommender.recommend_many`
    batches)."""

    user_id: str
    slate_size: int
    num_candidates: int | None = None
    exclude: tuple[int, ...] = ()
    filters: CandidateFilters | None = None
    session_id: str | None = None


@dataclass(frozen=True, slots=True)
class Recommendation:
    """What :meth:`Recommender.recommend` returns: the slate plus the ids to log it under."""

    request_id: str
    model_version: str
    slate: Slate
    #: True when the store did not answer and the user's state came from this replica's
    #: cache of recent reads, or was taken as a cold start.
    degraded: bool = False
    #: True when no state was found for the user (a new user, or one unknown to this
    #: replica's cache in degraded mode): the slate rests on the popular-and-fresh fallback
    #: candidates and the policy's exploration, not on the user's history.
    cold_start: bool = False


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
        self.batch_size = Histogram(
            "recsys_recommend_batch_size", "Requests answered together by one batch",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=self.registry,
        )  # fmt: skip
        self.stage = Histogram(
            "recsys_recommend_stage_seconds",
            "Time of each step of a batch: state (store and features), retrieval, policy, publish",
            ["stage"], buckets=_LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.store_errors = Counter(
            "recsys_store_errors", "User-state reads that failed or timed out",
            registry=self.registry,
        )  # fmt: skip
        self.degraded = Counter(
            "recsys_degraded_answers", "Slates served without the store (cached or cold state)",
            registry=self.registry,
        )  # fmt: skip
        self.clamped_ts = Counter(
            "recsys_feedback_ts_clamped", "Feedback whose client timestamp was moved into range",
            registry=self.registry,
        )  # fmt: skip
        self.unlogged = Counter(
            "recsys_impressions_unlogged", "Slates served whose impression could not be queued",
            registry=self.registry,
        )  # fmt: skip
        self.events_buffered = Gauge(
            "recsys_events_buffered", "Events waiting in the server for the broker",
            registry=self.registry,
        )  # fmt: skip
        self.events_refused = Gauge(
            "recsys_events_refused", "Events refused because the buffer for the broker was full",
            registry=self.registry,
        )  # fmt: skip
        self.serving = Gauge(
            "recsys_policy_serving", "1 for each policy version this replica serves, by arm",
            ["arm", "role", "version"], registry=self.registry,
        )  # fmt: skip
        self.arm_slates = Counter(
            "recsys_policy_slates", "Slates served, by arm and policy version",
            ["arm", "version"], registry=self.registry,
        )  # fmt: skip
        self.arm_seconds = Histogram(
            "recsys_policy_seconds", "Policy time of one batch group, by arm",
            ["arm"], buckets=_LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.shadow_slates = Counter(
            "recsys_shadow_slates", "Slates the shadow policy picked (logged, never served)",
            ["arm", "version"], registry=self.registry,
        )  # fmt: skip
        self.shadow_errors = Counter(
            "recsys_shadow_errors", "Batches the shadow policy failed on (answers unaffected)",
            registry=self.registry,
        )  # fmt: skip
        self.shadow_overlap = Histogram(
            "recsys_shadow_overlap", "Share of a served slate's items the shadow also picked",
            buckets=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
            registry=self.registry,
        )  # fmt: skip


class Recommender:
    """Serves slates and accepts feedback; thread-safe for concurrent requests.

    Randomness is per batch (a generator seeded from ``seed`` and a batch counter) so
    concurrent threads never share a ``numpy`` generator and a sequence of batches is
    reproducible; the shadow policy draws from its own generator, so it cannot change what
    is served. Each user's arm comes from ``policies`` (the A/B split), and each arm's policy
    is read once per batch, so a new version swapped in by the watcher never fails a request
    in flight.
    """

    def __init__(
        self,
        *,
        store: UserStateStore,
        candidates: HistoryCandidateSource,
        policies: PolicyRouter,
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
        self._store_down_until = 0.0
        self._state_cache: OrderedDict[str, bytes] = OrderedDict()

    @property
    def num_items(self) -> int:
        """Catalog size served by this replica."""
        return self._fold.num_items

    @property
    def model_version(self) -> str:
        """``policy@version`` serving right now."""
        return self.policies.current().version

    def _rngs(self) -> tuple[np.random.Generator, np.random.Generator]:
        """The batch's generators: one for served slates, one for the shadow's."""
        with self._counter_lock:
            n = next(self._counter)
        return np.random.default_rng([self._seed, n]), np.random.default_rng([self._seed, n, 1])

    def recommend(
        self,
        user_id: str,
        slate_size: int,
        num_candidates: int | None = None,
        exclude: Sequence[int] = (),
        filters: CandidateFilters | None = None,
        session_id: str | None = None,
    ) -> Recommendation:
        """One request through :meth:`recommend_many`; raises its :class:`InvalidRequestError`."""
        query = RecommendQuery(user_id, slate_size, num_candidates, tuple(exclude), filters,
                               session_id)  # fmt: skip
        out = self.recommend_many([query])[0]
        if isinstance(out, InvalidRequestError):
            raise out
        return out

    def recommend_many(
        self, queries: Sequence[RecommendQuery], *, log: bool = True
    ) -> list[Recommendation | InvalidRequestError]:
        """Pick a slate for each query, batched: what ``@serve.batch`` hands a replica.

        Per query: its user's stored state (none is a cold start) → request-time features
        (the event fold's session rule with ``session_id``) → retrieval candidates from the
        user's recent clicks (an organic block and an ad block, never the recent clicks nor
        ``exclude``) → the policy's slate with exact propensities → the impression on the
        stream. The batch costs one store round trip, one featurisation, and one retrieval
        and one policy forward per group of queries sharing slate size, candidate count and
        filters. A bad query gets its :class:`InvalidRequestError` in its own slot (a 4xx
        that leaves no trace in the store or stream) and never fails the others. With
        ``log=False`` nothing is published nor counted (:meth:`warm_up`).
        """
        start = time.perf_counter()
        out: list[Recommendation | InvalidRequestError] = [
            InvalidRequestError("body", "not processed")
        ] * len(queries)
        router = self.policies
        arms = router.assign([q.user_id for q in queries])
        policies = [router.current(a) for a in range(len(router.arms))]
        ads = [getattr(p, "num_ads", self._default_ads) for p in policies]
        shadow = router.shadow_policy()
        valid: list[int] = []
        for i, q in enumerate(queries):
            try:
                self._check(q, ads[arms[i]])
                valid.append(i)
            except InvalidRequestError as exc:
                out[i] = exc
        if not valid:
            return out
        now = self._clock()
        stage = dict.fromkeys(("retrieval", "policy", "shadow", "publish"), 0.0)
        t0 = time.perf_counter()
        states, features, degraded, cold = self._states_for(
            [queries[i].user_id for i in valid], [queries[i].session_id for i in valid], now
        )
        stage["state"] = time.perf_counter() - t0
        groups: dict[tuple[int, int, int, CandidateFilters | None], list[int]] = {}
        for row, i in enumerate(valid):
            q = queries[i]
            k = self._default_k if q.num_candidates is None else q.num_candidates
            groups.setdefault((int(arms[i]), q.slate_size, k, q.filters), []).append(row)
        rng, shadow_rng = self._rngs()
        for (arm, slate_size, k, filters), rows in groups.items():
            policy, num_ads = policies[arm], ads[arm]
            t0 = time.perf_counter()
            batch = self._candidates.candidates_for_histories(
                states["recent"][rows],
                k - num_ads,
                num_ads,
                exclude=[np.asarray(queries[valid[r]].exclude, np.int64) for r in rows],
                filters=filters,
            )
            counts = batch.mask.sum(axis=1)
            short = counts < slate_size
            for j in np.flatnonzero(short):
                out[valid[rows[j]]] = InvalidRequestError(
                    "filters" if filters is not None and not filters.is_noop else "slate_size",
                    f"only {int(counts[j])} candidates remain after exclusions and filters for "
                    f"this user, fewer than slate_size={slate_size}",
                )
            ok = np.flatnonzero(~short)
            t1 = time.perf_counter()
            stage["retrieval"] += t1 - t0
            if not ok.size:
                continue
            sub = _rows(batch, ok)
            sub_features = features[[rows[j] for j in ok]]
            slates = self._select(policy, sub_features, sub, slate_size, filters, rng)
            t2 = time.perf_counter()
            stage["policy"] += t2 - t1
            shadows = (
                self._shadow_slates(shadow, sub_features, sub, slate_size, shadow_rng, log)
                if shadow is not None
                else [None] * len(ok)
            )
            t3 = time.perf_counter()
            stage["shadow"] += t3 - t2
            if log:
                self.metrics.arm_seconds.labels(router.arms[arm].key).observe(t2 - t1)
            for n, (j, slate, shadow_slate) in enumerate(zip(ok, slates, shadows, strict=True)):
                i = valid[rows[j]]
                if isinstance(slate, InvalidRequestError):
                    out[i] = slate
                elif log:
                    self.metrics.arm_slates.labels(router.arms[arm].key, slate.version).inc()
                    decision = Decision(sub.item_ids[n][sub.mask[n]], sub_features[n])
                    out[i] = self._log_impression(
                        queries[i], slate, now, degraded, cold[rows[j]], shadow_slate, decision
                    )
                else:
                    out[i] = Recommendation("", slate.version, slate, degraded, cold[rows[j]])
            stage["publish"] += time.perf_counter() - t3
        if not log:
            return out
        for name, seconds in stage.items():
            self.metrics.stage.labels(name).observe(seconds)
        self.metrics.batch_size.observe(len(queries))
        elapsed = time.perf_counter() - start
        for o in out:
            if isinstance(o, Recommendation):
                self.metrics.latency.observe(elapsed)
                self.metrics.slate_size.observe(len(o.slate))
        return out

    def warm_up(self, max_batch_size: int, slate_size: int = 10) -> None:
        """Run the whole path once per batch size 1, 2, 4, ... ``max_batch_size`` for a user
        nobody knows, publishing nothing: first calls pay one-time costs (allocator growth,
        lazily built kernels for each shape) that would otherwise land on the first real
        requests after the service says it is ready."""
        size = min(slate_size, self._settings.max_slate_size, self._default_k)
        b = 1
        while True:
            self.recommend_many([RecommendQuery("warm-up", size)] * min(b, max_batch_size),
                                log=False)  # fmt: skip
            if b >= max_batch_size:
                return
            b *= 2

    def _check(self, q: RecommendQuery, num_ads: int) -> None:
        """Reject a query the service cannot answer, naming the field."""
        max_slate = self._settings.max_slate_size
        if not 1 <= q.slate_size <= max_slate:
            raise InvalidRequestError("slate_size", f"must be between 1 and {max_slate}")
        k = self._default_k if q.num_candidates is None else q.num_candidates
        if k < q.slate_size or k <= num_ads:
            raise InvalidRequestError(
                "num_candidates",
                f"must be at least slate_size ({q.slate_size}) and more than the "
                f"{num_ads} ads the policy expects among them, got {k}",
            )
        if k > self.num_items:
            raise InvalidRequestError(
                "num_candidates", f"must be at most the catalog size ({self.num_items}), got {k}"
            )
        if len(q.exclude) > self._settings.max_exclude:
            raise InvalidRequestError(
                "exclude", f"at most {self._settings.max_exclude} ids, got {len(q.exclude)}"
            )
        requested = np.asarray(q.exclude, dtype=np.int64)
        if requested.size and (requested.min() < 0 or requested.max() >= self.num_items):
            bad = int(requested[(requested < 0) | (requested >= self.num_items)][0])
            raise InvalidRequestError(
                "exclude", f"unknown item id {bad} (catalog has ids 0..{self.num_items - 1})"
            )

    @staticmethod
    def _select(
        policy: SlatePolicy,
        features: FloatArray,
        batch: CandidateBatch,
        slate_size: int,
        filters: CandidateFilters | None,
        rng: np.random.Generator,
    ) -> Sequence[Slate | InvalidRequestError]:
        """The policy's slates for a group; when the batch fails (a row whose ad load cannot
        be met), rows are retried alone so only the offending ones get the error."""
        try:
            return policy.select_batch(features, batch, slate_size, rng)
        except InvalidRequestError as exc:
            n = len(batch.item_ids)
            if n > 1:
                return [
                    r
                    for b in range(n)
                    for r in Recommender._select(
                        policy, features[b : b + 1],
                        _rows(batch, np.arange(b, b + 1)),
                        slate_size, filters, rng,
                    )
                ]  # fmt: skip
            if filters is not None and filters.ads == "only":  # the ad load caps ads per slate
                exc = InvalidRequestError(
                    "filters", f"ads=only cannot fill this slate: {exc.message}"
                )
            return [exc]

    def _shadow_slates(
        self,
        shadow: SlatePolicy,
        features: FloatArray,
        batch: CandidateBatch,
        slate_size: int,
        rng: np.random.Generator,
        log: bool,
    ) -> list[Slate | None]:
        """The shadow policy's slates for a group, or ``None`` for rows it could not fill.

        Any failure of the shadow is counted and costs only its log entry: the served slates
        are already chosen, from a generator the shadow never touches.
        """
        try:
            slates = shadow.select_batch(features, batch, slate_size, rng)
        except Exception as exc:  # a shadow must never fail the request
            if log:
                self.metrics.shadow_errors.inc()
            _log.debug("shadow policy failed: %s", exc)
            return [None] * len(batch.item_ids)
        return list(slates)

    def _log_impression(
        self,
        q: RecommendQuery,
        slate: Slate,
        now: float,
        degraded: bool,
        cold_start: bool,
        shadow: Slate | None = None,
        decision: Decision | None = None,
    ) -> Recommendation:
        """Publish the impression of ``slate`` and return it under a fresh request id."""
        request_id = uuid.uuid4().hex
        self._publish_impression(
            ImpressionEvent(
                request_id=request_id,
                user_id=q.user_id,
                ts=now,
                model_version=slate.version,
                policy=slate.policy,
                items=_slate_items(slate),
                session_id=q.session_id or "",
                shadow=None if shadow is None else self._shadow_record(slate, shadow),
                candidates=() if decision is None else PackedArray.of(decision.candidates, "<i8"),
                features=() if decision is None else PackedArray.of(decision.features, "<f4"),
            )
        )  # fmt: skip
        return Recommendation(request_id, slate.version, slate, degraded, cold_start)

    def _shadow_record(self, served: Slate, shadow: Slate) -> ShadowSlate:
        """The shadow's slate as logged beside the impression, counted with its overlap."""
        arm = self.policies.shadow
        self.metrics.shadow_slates.labels(arm.key if arm else shadow.policy, shadow.version).inc()
        overlap = np.isin(served.item_ids, shadow.item_ids).mean() if len(served) else 0.0
        self.metrics.shadow_overlap.observe(float(overlap))
        return ShadowSlate(
            policy=shadow.policy,
            model_version=shadow.version,
            items=_slate_items(shadow),
        )

    def _publish_impression(self, event: ImpressionEvent) -> None:
        """Log an impression; a full buffer (broker down for long) costs the log, not the
        answer: the slate is still served and the loss is counted."""
        try:
            self._sink.publish(event)
        except EventPublishError:
            self.metrics.unlogged.inc()

    def user_states(
        self, user_ids: Sequence[str], session_ids: Sequence[str | None], now: float
    ) -> tuple[StateArray, FloatArray]:
        """Stored states of ``user_ids`` (one round trip; none is a cold start) and their
        features ``[B, F]`` for requests at server time ``now``: the event fold's session rule
        applied on a copy, then the featuriser the policy was trained with."""
        states, features, _, _ = self._states_for(user_ids, session_ids, now)
        return states, features

    def _states_for(
        self, user_ids: Sequence[str], session_ids: Sequence[str | None], now: float
    ) -> tuple[StateArray, FloatArray, bool, list[bool]]:
        """:meth:`user_states` plus whether the store failed to answer (degraded) and which
        users had no state at all (cold starts)."""
        records, degraded = self._read_records(list(user_ids))
        states, _ = self._fold.codec.decode(records)
        keys = np.array([session_key(s) for s in session_ids], np.uint32)
        features = self._users.features_at(self._fold, states, np.full(len(user_ids), now), keys)
        return states, features, degraded, [r is None for r in records]

    def _read_records(self, user_ids: list[str]) -> tuple[list[bytes | None], bool]:
        """Stored records, or in degraded mode this replica's cached copies.

        A failed read (the store's client has a short timeout) opens a breaker for
        ``store_retry_s``: batches in that window do not touch the store at all, so an outage
        costs one timeout per window instead of one per batch, and the first read after the
        window brings normal answers back by itself.
        """
        if time.monotonic() >= self._store_down_until:
            try:
                records = self._store.get_many(user_ids)
            except StoreUnavailableError as exc:
                self._store_down_until = time.monotonic() + self._settings.store_retry_s
                self.metrics.store_errors.inc()
                _log.warning("user-state store unavailable, serving degraded: %s", exc)
            else:
                self._remember(user_ids, records)
                return records, False
        self.metrics.degraded.inc(len(user_ids))
        cache = self._state_cache
        return [cache.get(u) for u in user_ids], True

    def _remember(self, user_ids: list[str], records: list[bytes | None]) -> None:
        """Keep the newest ``state_cache_size`` records read, for degraded answers."""
        cap = self._settings.state_cache_size
        if cap <= 0:
            return
        cache = self._state_cache
        for u, r in zip(user_ids, records, strict=True):
            if r is not None:
                cache[u] = r
                cache.move_to_end(u)
        while len(cache) > cap:
            cache.popitem(last=False)

    def user_state(
        self, user_id: str, session_id: str | None, now: float
    ) -> tuple[StateArray, FloatArray]:
        """:meth:`user_states` of one user: the state (``[1]``) and its features ``[F]``."""
        states, features = self.user_states([user_id], [session_id], now)
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
        """Validate one feedback signal, stamp it with server time and publish it.

        The client's ``ts`` is kept for the logs but clamped to
        ``[now - feedback_max_age_s, now + feedback_max_skew_s]``: a client clock cannot put
        an event in the far future or past of the joined data.
        """
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
            ts=now if ts is None else self._clamped(float(ts), now),
            server_ts=now,
        )
        self._sink.publish(fb)
        return fb

    def _clamped(self, ts: float, now: float) -> float:
        """``ts`` within the accepted window around server time ``now`` (counted if moved)."""
        lo = now - self._settings.feedback_max_age_s
        hi = now + self._settings.feedback_max_skew_s
        if lo <= ts <= hi:
            return ts
        self.metrics.clamped_ts.inc()
        return min(max(ts, lo), hi)

    def refresh_metrics(self) -> None:
        """Copy the policy registry's state into the gauges (called when metrics are read)."""
        stats = self.policies.stats
        self.metrics.policy_versions.labels("loaded").set(stats.loaded)
        self.metrics.policy_versions.labels("refused").set(stats.refused)
        if isinstance(self._sink, BufferedEventSink):
            self.metrics.events_buffered.set(self._sink.pending)
            self.metrics.events_refused.set(self._sink.stats.refused)
        self.metrics.serving.clear()
        shadow = self.policies.shadow
        roles = [(a, "traffic") for a in self.policies.arms]
        for arm, role in roles + ([] if shadow is None else [(shadow, "shadow")]):
            self.metrics.serving.labels(arm.key, role, arm.registry.current().version).set(1)

    def not_ready(self) -> str | None:
        """Why this replica should not take traffic yet, or ``None`` when it should: every
        arm's trained policy is loaded (the fallback answers until then) and the store
        answers."""
        missing = self.policies.not_ready()
        if missing:
            return f"no policy version loaded yet for {', '.join(missing)}"
        if not self._store.ping():
            return "user-state store unreachable"
        return None

    def ready(self) -> bool:
        """True when :meth:`not_ready` has no reason."""
        return self.not_ready() is None

    def close(self) -> None:
        """Stop background work, flush the stream and release connections."""
        for stop in self._on_close:
            stop()
        self._sink.close()
        self._store.close()
