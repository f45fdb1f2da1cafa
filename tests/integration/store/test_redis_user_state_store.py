"""Redis-only behaviour of :class:`RedisUserStateStore`: key layout, round trips, failures.

What every backend must do lives in the contract suite; this file checks what only Redis can
get wrong: the bytes on the server, the number of network round trips, atomicity when stored
data is corrupt, and readiness when the server is gone.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import redis
from redis.connection import AbstractConnection

from recsys.embedded import EmbeddedRedis, free_port
from recsys.features import EventFold, FeatureSpec, UserFeaturizer
from recsys.store import RedisUserStateStore
from recsys.types import (
    EventType,
    FeedbackEvent,
    ImpressionEvent,
    SlateItem,
    StoreUnavailableError,
)

pytestmark = pytest.mark.integration

CONSUMER = "online-updater"


@pytest.fixture
def client(redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    raw = redis.Redis.from_url(redis_server.url)
    yield raw
    raw.close()


@pytest.fixture
def store(redis_server: EmbeddedRedis, unique_name: str) -> Iterator[RedisUserStateStore]:
    built = RedisUserStateStore.from_url(redis_server.url, key_prefix=unique_name)
    yield built
    built.close()


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts writes to the socket: a pipeline or a script call is one, whatever its size."""
    sent: list[int] = []
    original: Callable[..., None] = AbstractConnection.send_packed_command  # untyped upstream

    def counting(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        sent.append(1)
        original(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)
    return sent


def _fifty_event_user(fold: EventFold) -> bytes:
    """A realistic record: 20 slates of 10 items; a click with its dwell on every other one;
    likes on 8 of them and 2 conversions: 50 events, folded with the default spec."""
    rng = np.random.default_rng(3)
    events: list[ImpressionEvent | FeedbackEvent] = []
    for t in range(20):
        items = rng.choice(fold.num_items, 10, replace=False)
        req = f"r{t}"
        slate = tuple(SlateItem(int(i), p, 0.5, 0.1) for p, i in enumerate(items))
        events.append(ImpressionEvent(req, "u", 1.7e9 + t, "m", "p", slate, f"s{t // 8}"))
        if t % 2 == 0:
            item = int(items[3])
            events.append(FeedbackEvent(req, "u", item, EventType.CLICK, 1.0, 0.0))
            events.append(FeedbackEvent(req, "u", item, EventType.DWELL, 95.0, 0.0))
            kind = EventType.CONVERSION if t in (4, 12) else EventType.LIKE
            events.append(FeedbackEvent(req, "u", item, kind, 1.0, 0.0))
    assert len(events) == 50
    state = fold.codec.empty(1)
    counts = fold.fold_events(state, [0] * len(events), events)
    assert counts.orphans == 0
    return fold.codec.encode(state)[0]


def test_a_user_with_50_events_takes_at_most_340_bytes(
    store: RedisUserStateStore, unique_name: str
) -> None:
    rng = np.random.default_rng(0)
    topics = rng.dirichlet(np.full(16, 0.3), size=2000).astype(np.float32)
    fold = EventFold(FeatureSpec(num_topics=16), topics, rng.random(2000) < 0.1)
    record = _fifty_event_user(fold)
    user_id = "u1234567"
    store.commit({user_id: record}, {"feedback:0": 50}, CONSUMER)

    used = store.memory_usage(user_id)

    assert used is not None
    # 340: 264 before the slate Bloom filters (64 bytes) that refuse forged feedback.
    assert used <= 340, f"{used} bytes in Redis for {len(record)} bytes of state"
    back, known = fold.codec.decode([store.get(user_id)])
    assert known[0]
    assert back[0]["steps"] == 20
    features = UserFeaturizer(fold.spec).features(back)
    assert np.isfinite(features).all()


def test_key_layout_is_one_raw_string_per_user_and_an_offsets_hash(
    store: RedisUserStateStore, client: redis.Redis, unique_name: str
) -> None:
    store.commit({"u1": b"\x00\xffstate"}, {"p:0": 9}, CONSUMER)
    assert client.type(f"{unique_name}:s:u1") == b"string"
    assert client.get(f"{unique_name}:s:u1") == b"\x00\xffstate"
    assert client.hgetall(f"{unique_name}:offsets:{CONSUMER}") == {b"p:0": b"9"}


def test_reads_and_writes_are_one_round_trip_each(
    store: RedisUserStateStore, round_trips: list[int]
) -> None:
    ids = [f"u{i}" for i in range(50)]
    store.commit({"warm": b"w"}, {}, CONSUMER)  # loads the script
    assert store.ping()  # connection handshake happens outside the counted calls
    round_trips.clear()

    store.put_many({u: b"x" for u in ids[::2]})
    assert len(round_trips) == 1
    got = store.get_many(ids)
    assert len(round_trips) == 2
    assert [s is not None for s in got] == [i % 2 == 0 for i in range(50)]
    store.commit({u: b"y" for u in ids}, {"p:0": 1}, CONSUMER, expected={"p:0": None})
    assert len(round_trips) == 3


def test_commit_survives_a_script_cache_flush(
    store: RedisUserStateStore, client: redis.Redis
) -> None:
    store.commit({"u1": b"a"}, {}, CONSUMER)
    client.script_flush()
    store.commit({"u1": b"b"}, {"p:0": 1}, CONSUMER)
    assert store.get("u1") == b"b"


def test_many_partitions_and_users_in_one_commit(store: RedisUserStateStore) -> None:
    offsets = {f"p:{i}": i for i in range(3000)}
    states = {f"u{i}": bytes([i % 256]) * 20 for i in range(3000)}
    store.commit(states, offsets, CONSUMER, expected=dict.fromkeys(offsets))
    assert store.offsets(CONSUMER) == offsets
    assert store.get_many(["u0", "u2999"]) == [states["u0"], states["u2999"]]


def test_key_prefixes_isolate_stores(redis_server: EmbeddedRedis, unique_name: str) -> None:
    a = RedisUserStateStore.from_url(redis_server.url, key_prefix=f"{unique_name}-a")
    b = RedisUserStateStore.from_url(redis_server.url, key_prefix=f"{unique_name}-b")
    try:
        a.commit({"u1": b"x"}, {"p:0": 3}, CONSUMER)

        assert b.get("u1") is None
        assert b.offsets(CONSUMER) == {}
    finally:
        a.close()
        b.close()


def test_ping_is_false_when_nothing_listens() -> None:
    dead = RedisUserStateStore.from_url(
        f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5
    )
    try:
        assert dead.ping() is False
    finally:
        dead.close()


def test_client_that_decodes_responses_is_refused(redis_server: EmbeddedRedis) -> None:
    decoding = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        with pytest.raises(ValueError, match="decode_responses"):
            RedisUserStateStore(decoding)
    finally:
        decoding.close()


def test_a_paused_server_is_a_prompt_store_error_and_reads_resume() -> None:
    """With the request-path timeout, a paused Redis (SIGSTOP) costs one bounded wait and a
    :class:`StoreUnavailableError`, never a hang; reads work again once it resumes."""
    with EmbeddedRedis() as server:
        store = RedisUserStateStore.from_url(
            server.url, socket_timeout=0.05, socket_connect_timeout=0.05
        )
        try:
            store.put_many({"u1": b"x" * 8})
            os.kill(server.pid, signal.SIGSTOP)
            try:
                start = time.monotonic()
                with pytest.raises(StoreUnavailableError, match="did not answer"):
                    store.get_many(["u1"])
                assert time.monotonic() - start < 1.0
                assert store.ping() is False
            finally:
                os.kill(server.pid, signal.SIGCONT)
            assert store.get_many(["u1", "u2"]) == [b"x" * 8, None]
        finally:
            store.close()
