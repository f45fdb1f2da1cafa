"""The one contract suite for :class:`recsys.protocols.UserStateStore`.

Every test runs against every backend: the in-memory store and a Redis store on the real
session ``redis-server``. A behaviour the serving path or the online updater relies on belongs
here, so swapping ``RECSYS_STORE__URL`` can never change what callers observe.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from recsys.protocols import UserStateStore
from recsys.store import InMemoryUserStateStore, RedisUserStateStore
from recsys.types import StaleOffsetsError

CONSUMER = "online-updater"

BAD_IDS = [
    pytest.param("", id="empty"),
    pytest.param("x" * 257, id="too-long"),
    pytest.param("a\nb", id="newline"),
    pytest.param("a\x00b", id="nul"),
    pytest.param("a\x7f", id="del"),
    pytest.param("a\x85", id="c1-control"),
]


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
def store(request: pytest.FixtureRequest, unique_name: str) -> Iterator[UserStateStore]:
    built: UserStateStore
    if request.param == "memory":
        built = InMemoryUserStateStore()
    else:
        server = request.getfixturevalue("redis_server")
        built = RedisUserStateStore.from_url(server.url, key_prefix=unique_name)
    yield built
    built.close()


def blob(seed: int, size: int = 189) -> bytes:
    """Random bytes, NUL and high bytes included: a store must keep them exactly."""
    return bytes((seed * 31 + i * 7) % 256 for i in range(size))


def test_implements_protocol(store: UserStateStore) -> None:
    assert isinstance(store, UserStateStore)


def test_ping_is_true_when_backend_is_up(store: UserStateStore) -> None:
    assert store.ping() is True


def test_unknown_users_read_as_none_in_order(store: UserStateStore) -> None:
    store.put_many({"b": blob(1)})
    assert store.get("a") is None
    assert store.get_many(["a", "b", "c", "b"]) == [None, blob(1), None, blob(1)]
    assert store.get_many([]) == []


def test_put_then_get_round_trips_exact_bytes_and_replaces(store: UserStateStore) -> None:
    store.put_many({"u1": blob(1), "u2": blob(2, 10)})
    store.put_many({"u1": blob(3)})
    assert store.get_many(["u1", "u2"]) == [blob(3), blob(2, 10)]


def test_commit_writes_states_and_offsets_together(store: UserStateStore) -> None:
    store.commit({"u1": blob(1), "u2": blob(2)}, {"feedback:0": 5}, CONSUMER)
    store.commit({"u1": blob(4)}, {"impressions:0": 3}, CONSUMER)
    assert store.get_many(["u1", "u2"]) == [blob(4), blob(2)]
    assert store.offsets(CONSUMER) == {"feedback:0": 5, "impressions:0": 3}
    assert store.offsets("someone-else") == {}


def test_commit_with_expected_offsets_refuses_a_stale_writer(store: UserStateStore) -> None:
    store.commit({"u1": blob(1)}, {"feedback:0": 5}, CONSUMER, expected={"feedback:0": None})
    with pytest.raises(StaleOffsetsError, match="feedback:0"):
        store.commit({"u1": blob(9)}, {"feedback:0": 9}, CONSUMER, expected={"feedback:0": 4})
    with pytest.raises(StaleOffsetsError):
        store.commit({"u2": blob(9)}, {"feedback:0": 9}, CONSUMER, expected={"feedback:0": None})
    # nothing of a refused commit was written
    assert store.get_many(["u1", "u2"]) == [blob(1), None]
    assert store.offsets(CONSUMER) == {"feedback:0": 5}
    store.commit({"u1": blob(2)}, {"feedback:0": 6}, CONSUMER, expected={"feedback:0": 5})
    assert store.get("u1") == blob(2)


def test_invalid_input_is_refused_before_anything_is_written(store: UserStateStore) -> None:
    with pytest.raises(ValueError, match="offset"):
        store.commit({"u1": blob(1)}, {"feedback:0": -1}, CONSUMER)
    with pytest.raises(ValueError, match="bytes"):
        store.commit({"u1": blob(1), "u2": b""}, {"feedback:0": 1}, CONSUMER)
    with pytest.raises(TypeError, match="bytes"):
        store.put_many({"u1": "text"})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="bytes"):
        store.put_many({"u1": b"x" * (64 * 1024 + 1)})
    assert store.get("u1") is None
    assert store.offsets(CONSUMER) == {}


@pytest.mark.parametrize("bad_id", BAD_IDS)
def test_invalid_ids_raise_value_error(store: UserStateStore, bad_id: str) -> None:
    with pytest.raises(ValueError, match="user_id"):
        store.get(bad_id)
    with pytest.raises(ValueError, match="user_id"):
        store.get_many(["ok", bad_id])
    with pytest.raises(ValueError, match="user_id"):
        store.put_many({"ok": blob(1), bad_id: blob(2)})
    with pytest.raises(ValueError, match="consumer"):
        store.commit({}, {"feedback:0": 1}, bad_id)
    with pytest.raises(ValueError, match="consumer"):
        store.offsets(bad_id)
    assert store.get("ok") is None


@pytest.mark.parametrize("user_id", ["x" * 256, "ユーザー 1", "tenant:7/user@x.org"])
def test_unusual_but_valid_user_ids_work(store: UserStateStore, user_id: str) -> None:
    store.commit({user_id: blob(5)}, {}, CONSUMER)
    assert store.get(user_id) == blob(5)


def test_ids_that_look_like_keys_do_not_collide(store: UserStateStore) -> None:
    ids = ["a", "s:a", "offsets:online-updater", "a:s:a"]
    store.put_many({u: blob(i) for i, u in enumerate(ids)})
    store.commit({}, {"feedback:0": 7}, CONSUMER)
    assert store.get_many(ids) == [blob(i) for i in range(len(ids))]
    assert store.offsets(CONSUMER) == {"feedback:0": 7}


def test_racing_conditional_commits_let_exactly_one_writer_win(store: UserStateStore) -> None:
    """Two updaters that both read offset 0 and both try to move it: one must lose."""
    store.commit({}, {"feedback:0": 0}, CONSUMER)
    outcomes: list[str] = []
    barrier = threading.Barrier(4)

    def writer(i: int) -> None:
        barrier.wait()
        try:
            store.commit({"u": blob(i)}, {"feedback:0": 10 + i}, CONSUMER, {"feedback:0": 0})
            outcomes.append(f"won{i}")
        except StaleOffsetsError:
            outcomes.append("lost")

    pool = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    winners = [o for o in outcomes if o.startswith("won")]
    assert len(winners) == 1
    i = int(winners[0][3:])
    assert store.get("u") == blob(i)
    assert store.offsets(CONSUMER) == {"feedback:0": 10 + i}
