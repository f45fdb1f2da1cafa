"""Redis-only behaviour of :class:`RedisUserStateStore`: key layout, round trips, failures.

What every backend must do lives in the contract suite; this file checks what only Redis can
get wrong: the bytes on the server, the number of network round trips, atomicity when stored
data is corrupt, and readiness when the server is gone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import redis
from redis.connection import AbstractConnection

from recsys.embedded import EmbeddedRedis, free_port
from recsys.store import RedisUserStateStore
from recsys.types import UserState, UserStateDelta

pytestmark = pytest.mark.integration

CONSUMER = "online-updater"


@pytest.fixture
def client(redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    raw = redis.Redis.from_url(redis_server.url)
    yield raw
    raw.close()


@pytest.fixture
def store(redis_server: EmbeddedRedis, unique_name: str) -> Iterator[RedisUserStateStore]:
    built = RedisUserStateStore.from_url(redis_server.url, key_prefix=unique_name, max_history=50)
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


def state(user_id: str, clicked: list[int] | None = None, dim: int = 16) -> UserState:
    rng = np.random.default_rng(len(user_id))
    return UserState(
        user_id=user_id,
        embedding=rng.standard_normal(dim).astype(np.float32),
        clicked=np.asarray(clicked or [], dtype=np.int64),
        updated_ts=12.5,
    )


def test_key_layout_stores_raw_float32_and_a_recent_first_list(
    store: RedisUserStateStore, client: redis.Redis, unique_name: str
) -> None:
    original = state("u1", clicked=[3, 2, 1])
    store.put(original)
    store.apply([UserStateDelta("u1", clicked=(4,), impressions=2, ts=20.0)], {"p:0": 9}, CONSUMER)

    fields = client.hgetall(f"{unique_name}:user:u1")
    assert fields[b"emb"] == original.embedding.astype("<f4").tobytes()
    assert (fields[b"impressions"], fields[b"clicks"], fields[b"updated_ts"]) == (
        b"2",
        b"0",
        b"20.0",
    )
    assert client.lrange(f"{unique_name}:clicked:u1", 0, -1) == [b"4", b"3", b"2", b"1"]
    assert client.hgetall(f"{unique_name}:offsets:{CONSUMER}") == {b"p:0": b"9"}


def test_get_many_is_one_round_trip(store: RedisUserStateStore, round_trips: list[int]) -> None:
    ids = [f"u{i}" for i in range(50)]
    store.put_many([state(u, clicked=[1, 2]) for u in ids[::2]])
    assert store.ping()  # connection handshake happens outside the counted calls
    round_trips.clear()

    got = store.get_many(ids)

    assert len(round_trips) == 1
    assert [s is not None for s in got] == [i % 2 == 0 for i in range(50)]


def test_put_many_and_apply_are_one_round_trip_each(
    store: RedisUserStateStore, round_trips: list[int]
) -> None:
    ids = [f"u{i}" for i in range(40)]
    store.put_many([state("warm")])
    store.apply([UserStateDelta("warm", impressions=1)], {}, CONSUMER)  # loads the script
    round_trips.clear()

    store.put_many([state(u) for u in ids])
    assert len(round_trips) == 1
    store.apply([UserStateDelta(u, clicked=(7,), impressions=1) for u in ids], {"p:0": 1}, CONSUMER)
    assert len(round_trips) == 2


def test_apply_survives_a_script_cache_flush(
    store: RedisUserStateStore, client: redis.Redis
) -> None:
    store.put(state("u1"))
    store.apply([UserStateDelta("u1", impressions=1)], {}, CONSUMER)
    client.script_flush()

    store.apply([UserStateDelta("u1", impressions=1)], {}, CONSUMER)

    got = store.get("u1")
    assert got is not None
    assert got.impressions == 2


def test_large_batches_are_chunked_inside_the_script(
    redis_server: EmbeddedRedis, unique_name: str
) -> None:
    # More arguments than Lua's unpack() accepts at once, in both the list push and offsets.
    big = RedisUserStateStore.from_url(redis_server.url, key_prefix=unique_name, max_history=9000)
    try:
        big.put(state("u1"))
        offsets = {f"p:{i}": i for i in range(5000)}

        big.apply([UserStateDelta("u1", clicked=tuple(range(9000)))], offsets, CONSUMER)

        got = big.get("u1")
        assert got is not None
        assert got.clicked.tolist() == list(range(8999, -1, -1))
        assert big.offsets(CONSUMER) == offsets
    finally:
        big.close()


def test_corrupt_state_aborts_the_whole_batch_before_any_write(
    store: RedisUserStateStore, client: redis.Redis, unique_name: str
) -> None:
    store.put_many([state("good"), state("bad")])
    store.apply([], {"p:0": 1}, CONSUMER)
    client.hset(f"{unique_name}:user:bad", "clicks", "not-a-number")

    with pytest.raises(redis.ResponseError, match="corrupt user state"):
        store.apply(
            [
                UserStateDelta("good", clicked=(1,), impressions=1, clicks=1),
                UserStateDelta("bad", clicks=1),
            ],
            {"p:0": 2},
            CONSUMER,
        )

    good = store.get("good")
    assert good is not None
    assert (good.impressions, good.clicks, good.clicked.tolist()) == (0, 0, [])
    assert store.offsets(CONSUMER) == {"p:0": 1}


def test_key_prefixes_isolate_stores(redis_server: EmbeddedRedis, unique_name: str) -> None:
    a = RedisUserStateStore.from_url(redis_server.url, key_prefix=f"{unique_name}-a")
    b = RedisUserStateStore.from_url(redis_server.url, key_prefix=f"{unique_name}-b")
    try:
        a.put(state("u1"))
        a.apply([], {"p:0": 3}, CONSUMER)

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
