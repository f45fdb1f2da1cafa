"""One user state from simulator to updater to server: identical features for the same events.

Hypothesis drives simulated users (seeds, population, number of steps, which candidates are
shown). The simulator's training env folds their events itself and shows a policy its
event features; the same events, as wire events, go through the real Kafka-protocol broker
to the online updater, which folds them into the real Redis; the server reads each user's
state back and computes the features of their next request. All three must agree exactly:
the fold and the featuriser use only arithmetic that rounds the same on every path. Feedback
for slates that were never served is sprinkled in; it must change nothing.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsys.config import CatalogSettings, ServingSettings, SimulatorSettings, StreamSettings
from recsys.data.synthetic import SyntheticWorld, make_world
from recsys.embedded import EmbeddedBroker, EmbeddedRedis
from recsys.features import ItemFeaturizer
from recsys.live import feedback_events
from recsys.pipeline import make_fold, world_item_table
from recsys.policy.algorithms.myopic import MyopicPolicy
from recsys.policy.training.envs import SimulatedUsers, UniformCandidates
from recsys.serving.policies import PolicyRegistry
from recsys.serving.recommender import Recommender
from recsys.simulator.results import StepResult
from recsys.store import RedisUserStateStore
from recsys.stream import KafkaEventSink, KafkaEventSource, OnlineUpdater, ensure_topics
from recsys.types import Event, EventType, FeedbackEvent, ImpressionEvent, IntArray, SlateItem

pytestmark = pytest.mark.integration

CATALOG = CatalogSettings(num_items=300, num_users=64, num_topics=6, seed=3)
SIM = SimulatorSettings(num_candidates=12, slate_size=4)
_examples = itertools.count()
# Server times of successive examples never go back: the examples share the topics, and the
# updater orders a partition by its running maximum server time (a server's clock only moves
# forward), so an example starting before the previous one ended would be folded out of
# order. A day in the past, so every watermark has passed them; 30 s apart (steps <= 25).
_T_BASE = time.time() - 86_400.0


class _Service:
    """The updater over the real broker and Redis, and the server's view of the state."""

    def __init__(self, redis: EmbeddedRedis, broker: EmbeddedBroker, name: str) -> None:
        world = make_world(CATALOG)
        self.fold = make_fold(world_item_table(world))
        self.stream = StreamSettings(
            bootstrap=broker.bootstrap,
            impressions_topic=f"{name}-imp",
            feedback_topic=f"{name}-fb",
        )
        ensure_topics(broker.bootstrap, [self.stream.impressions_topic, self.stream.feedback_topic])
        self.sink = KafkaEventSink(broker.bootstrap, self.stream)
        self.bootstrap = broker.bootstrap
        self.store = RedisUserStateStore.from_url(redis.url, key_prefix=name)
        self.server = Recommender(
            store=RedisUserStateStore.from_url(redis.url, key_prefix=name),
            candidates=UniformCandidates(world.item_is_ad),
            policies=PolicyRegistry(Path("/nonexistent"), "none", _no_loader, MyopicPolicy(1.0)),
            fold=self.fold,
            sink=self.sink,
            settings=ServingSettings(),
            default_k=SIM.num_candidates,
            default_ads=0,
        )
        self.published = 0

    def publish(self, events: list[Event]) -> None:
        for event in events:
            self.sink.publish(event)
        self.sink.flush()
        self.published += len(events)

    def drain(self, timeout_s: float = 60.0) -> None:
        """Run the updater until every published event is committed."""
        # A fresh consumer per example, started after the events are in the broker (it resumes
        # from the offsets the store holds). A consumer that stayed up could take a partition's
        # cached end offset from a fetch before this example's flush for "caught up", and this
        # test's server times lie a day in the past, far behind any watermark delay that
        # covers that staleness for events stamped at real server time.
        source = KafkaEventSource(
            self.bootstrap, [self.stream.impressions_topic, self.stream.feedback_topic]
        )
        updater = OnlineUpdater(source, self.store, "parity", self.fold)
        deadline = time.monotonic() + timeout_s
        try:
            while sum(self.store.offsets("parity").values()) < self.published:
                if time.monotonic() > deadline:
                    raise AssertionError("the updater did not catch up with the published events")
                updater.run_once(max_records=500, timeout_s=0.2)
        finally:
            source.close()

    def close(self) -> None:
        self.sink.close()
        self.store.close()


def _no_loader(path: Path) -> None:  # pragma: no cover - no artifacts in this test
    raise AssertionError(f"unexpected artifact {path}")


@pytest.fixture(scope="module")
def service(redis_server: EmbeddedRedis, kafka_broker: EmbeddedBroker) -> Iterator[_Service]:
    built = _Service(redis_server, kafka_broker, f"parity{time.time_ns()}")
    yield built
    built.close()


def _wire_events(
    prefix: str,
    t: int,
    t0: float,
    rows: IntArray,
    items: IntArray,
    life: IntArray,
    session: IntArray,
    result: StepResult,
    orphans: bool,
) -> list[Event]:
    """A step's impressions and feedback as a client and the server would send them."""
    events: list[Event] = []
    for j, b in enumerate(rows.tolist()):
        user = f"{prefix}-u{b}-l{int(life[j])}"
        req = f"{user}-t{t}"
        slate = tuple(SlateItem(int(i), p, 0.0, 0.5) for p, i in enumerate(items[j].tolist()))
        events.append(
            ImpressionEvent(req, user, t0 + t, "m", "p", slate, f"l{life[j]}-s{session[j]}")
        )
        for event, item, value in feedback_events(result, j):
            kind = EventType(event)
            events.append(
                FeedbackEvent(req, user, item, kind, 1.0 if value is None else value, 0.0,
                              server_ts=t0 + t + 0.5)
            )  # fmt: skip
        if orphans:
            events.append(
                FeedbackEvent(f"{req}-never", user, 1, EventType.CLICK, 1.0, 0.0, t0 + t + 0.6)
            )
    return events


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    seed=st.integers(0, 2**16),
    n_users=st.integers(1, 5),
    steps=st.integers(1, 25),
    orphans=st.booleans(),
)
def test_simulator_updater_and_server_compute_identical_features(
    service: _Service, seed: int, n_users: int, steps: int, orphans: bool
) -> None:
    example = next(_examples)
    prefix = f"x{example}"
    world = make_world(CATALOG).select_users(np.arange(n_users, dtype=np.int64))
    users = SimulatedUsers(
        world,
        SIM,
        seed=seed,
        fold=service.fold,
        candidates=UniformCandidates(world.item_is_ad, seed=seed),
        items=_observable(world),
    )
    rng = np.random.default_rng(seed)
    t0 = _T_BASE + 30.0 * example
    rows = np.arange(n_users, dtype=np.int64)
    for t in range(steps):
        life, session = users.core.upcoming_sessions(rows)
        obs = users.observe(rows)
        pick = np.argsort(rng.random(obs.candidate_ids.shape), axis=1)[:, : SIM.slate_size]
        items = np.take_along_axis(obs.candidate_ids, pick, axis=1)
        result = users.step(rows, items)
        service.publish(_wire_events(prefix, t, t0, rows, items, life, session, result, orphans))
    service.drain()

    simulated = users.event_features(rows)  # what the training env shows a policy next
    life, session = users.core.upcoming_sessions(rows)
    for b in rows.tolist():
        user = f"{prefix}-u{b}-l{int(life[b])}"
        _, served = service.server.user_state(user, f"l{life[b]}-s{session[b]}", t0 + steps)
        assert served.tobytes() == simulated[b].tobytes(), (
            f"user {b}: features differ at {np.flatnonzero(served != simulated[b]).tolist()}"
        )


def _observable(world: SyntheticWorld) -> ItemFeaturizer:
    table = world_item_table(world)
    values, names = table.observable()
    return ItemFeaturizer(values, table.topics, names)
