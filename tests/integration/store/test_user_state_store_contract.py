"""The one contract suite for :class:`recsys.protocols.UserStateStore`.

Every test runs against every backend: the in-memory store and a Redis store on the real
session ``redis-server``. A behaviour the serving path or the online updater relies on belongs
here, so swapping ``RECSYS_STORE__URL`` can never change what callers observe.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest

from recsys.protocols import UserStateStore
from recsys.store import InMemoryUserStateStore, RedisUserStateStore
from recsys.types import UserState, UserStateDelta

MAX_HISTORY = 5
DIM = 8
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
        built = InMemoryUserStateStore(max_history=MAX_HISTORY)
    else:
        server = request.getfixturevalue("redis_server")
        built = RedisUserStateStore.from_url(
            server.url, key_prefix=unique_name, max_history=MAX_HISTORY
        )
    yield built
    built.close()


def make_state(
    user_id: str,
    *,
    seed: int = 0,
    clicked: list[int] | None = None,
    impressions: int = 0,
    clicks: int = 0,
    updated_ts: float = 0.0,
) -> UserState:
    # Random float32 values are not short decimals, so an exact round trip proves the store
    # keeps raw bits rather than formatted numbers.
    rng = np.random.default_rng(seed)
    return UserState(
        user_id=user_id,
        embedding=rng.standard_normal(DIM).astype(np.float32),
        clicked=np.asarray(clicked or [], dtype=np.int64),
        impressions=impressions,
        clicks=clicks,
        updated_ts=updated_ts,
    )


def get_known(store: UserStateStore, user_id: str) -> UserState:
    state = store.get(user_id)
    assert state is not None, f"user {user_id!r} should exist"
    return state


def test_implements_protocol(store: UserStateStore) -> None:
    assert isinstance(store, UserStateStore)


def test_ping_is_true_when_backend_is_up(store: UserStateStore) -> None:
    assert store.ping() is True


def test_get_unknown_user_returns_none(store: UserStateStore) -> None:
    assert store.get("nobody") is None


def test_put_then_get_round_trips_exactly(store: UserStateStore) -> None:
    original = make_state(
        "u1", seed=3, clicked=[42, 7, 0], impressions=12, clicks=4, updated_ts=1715000000.123456
    )
    store.put(original)

    got = get_known(store, "u1")

    assert got.user_id == "u1"
    assert got.embedding.dtype == np.float32
    assert got.embedding.tobytes() == original.embedding.tobytes()
    assert got.clicked.dtype == np.int64
    assert got.clicked.tolist() == [42, 7, 0]
    assert (got.impressions, got.clicks) == (12, 4)
    assert got.updated_ts == 1715000000.123456


def test_put_replaces_the_whole_state(store: UserStateStore) -> None:
    store.put(make_state("u1", seed=1, clicked=[1, 2, 3], impressions=9, clicks=9))
    replacement = make_state("u1", seed=2, clicked=[8])
    store.put(replacement)

    got = get_known(store, "u1")

    np.testing.assert_array_equal(got.embedding, replacement.embedding)
    assert got.clicked.tolist() == [8]
    assert (got.impressions, got.clicks) == (0, 0)


def test_put_keeps_only_the_most_recent_history(store: UserStateStore) -> None:
    store.put(make_state("u1", clicked=list(range(100, 100 + MAX_HISTORY + 3))))

    assert get_known(store, "u1").clicked.tolist() == list(range(100, 100 + MAX_HISTORY))


@pytest.mark.parametrize(
    "embedding",
    [
        pytest.param(np.zeros((2, 4), dtype=np.float32), id="2-d"),
        pytest.param(np.zeros(0, dtype=np.float32), id="empty"),
        pytest.param(np.array([1.0, np.nan], dtype=np.float32), id="nan"),
    ],
)
def test_put_many_rejects_bad_embeddings_before_writing_anything(
    store: UserStateStore, embedding: np.ndarray
) -> None:
    bad = UserState(user_id="bad", embedding=embedding)

    with pytest.raises(ValueError, match="embedding"):
        store.put_many([make_state("good"), bad])

    assert store.get_many(["good", "bad"]) == [None, None]


def test_returned_arrays_do_not_alias_stored_state(store: UserStateStore) -> None:
    original = make_state("u1", clicked=[5])
    store.put(original)

    first = get_known(store, "u1")
    first.embedding[:] = 0.0
    first.clicked[:] = -1
    original.embedding[:] = 1.0

    again = get_known(store, "u1")
    assert again.embedding.tobytes() == make_state("u1").embedding.tobytes()
    assert again.clicked.tolist() == [5]


def test_get_many_keeps_order_and_returns_none_for_unknown(store: UserStateStore) -> None:
    store.put_many([make_state("a", seed=1), make_state("b", seed=2, clicked=[3])])

    got = store.get_many(["b", "missing", "a", "b"])

    assert [s.user_id if s is not None else None for s in got] == ["b", None, "a", "b"]
    b = got[0]
    assert b is not None
    assert b.clicked.tolist() == [3]
    assert store.get_many([]) == []


def test_apply_adds_counters_and_prepends_clicks_most_recent_first(
    store: UserStateStore,
) -> None:
    store.put(make_state("u1", clicked=[11, 10], impressions=1, clicks=1, updated_ts=100.0))

    store.apply(
        [UserStateDelta("u1", clicked=(1, 2), impressions=5, clicks=2, ts=150.5)],
        {"feedback:0": 7},
        CONSUMER,
    )

    got = get_known(store, "u1")
    assert got.clicked.tolist() == [2, 1, 11, 10]
    assert (got.impressions, got.clicks) == (6, 3)
    assert got.updated_ts == 150.5


def test_apply_merges_deltas_of_one_user_in_event_order(store: UserStateStore) -> None:
    store.put_many([make_state("u1", updated_ts=10.0), make_state("u2", clicked=[9])])

    store.apply(
        [
            UserStateDelta("u1", clicked=(1,), impressions=3, clicks=1, ts=50.0),
            UserStateDelta("u2", clicked=(4,), impressions=1, clicks=1, ts=20.0),
            UserStateDelta("u1", clicked=(2, 3), impressions=2, clicks=2, ts=40.0),
        ],
        {},
        CONSUMER,
    )

    u1, u2 = store.get_many(["u1", "u2"])
    assert u1 is not None
    assert u2 is not None
    assert u1.clicked.tolist() == [3, 2, 1]
    assert (u1.impressions, u1.clicks, u1.updated_ts) == (5, 3, 50.0)
    assert u2.clicked.tolist() == [4, 9]


def test_apply_caps_history_at_max_history(store: UserStateStore) -> None:
    store.put(make_state("u1", clicked=[100, 101]))

    store.apply([UserStateDelta("u1", clicked=(1, 2, 3, 4))], {}, CONSUMER)
    assert get_known(store, "u1").clicked.tolist() == [4, 3, 2, 1, 100]

    store.apply(
        [UserStateDelta("u1", clicked=tuple(range(20, 20 + 2 * MAX_HISTORY)))], {}, CONSUMER
    )
    newest_first = list(range(20 + 2 * MAX_HISTORY - 1, 19, -1))
    assert get_known(store, "u1").clicked.tolist() == newest_first[:MAX_HISTORY]


def test_apply_never_moves_updated_ts_backwards(store: UserStateStore) -> None:
    store.put(make_state("u1", updated_ts=500.0))

    store.apply([UserStateDelta("u1", impressions=1, ts=400.0)], {}, CONSUMER)

    got = get_known(store, "u1")
    assert (got.impressions, got.updated_ts) == (1, 500.0)


def test_apply_ignores_unknown_users_but_records_offsets(store: UserStateStore) -> None:
    store.put(make_state("known"))

    store.apply(
        [
            UserStateDelta("ghost", clicked=(1,), impressions=1, clicks=1, ts=1.0),
            UserStateDelta("known", impressions=1, ts=1.0),
        ],
        {"feedback:0": 3},
        CONSUMER,
    )

    assert store.get("ghost") is None
    assert get_known(store, "known").impressions == 1
    assert store.offsets(CONSUMER) == {"feedback:0": 3}


def test_offsets_are_per_consumer_and_merge_by_partition(store: UserStateStore) -> None:
    assert store.offsets(CONSUMER) == {}

    store.apply([], {"feedback:0": 10, "impressions:0": 4}, CONSUMER)
    store.apply([], {"feedback:0": 12}, CONSUMER)
    store.apply([], {"feedback:0": 99}, "other-consumer")

    assert store.offsets(CONSUMER) == {"feedback:0": 12, "impressions:0": 4}
    assert store.offsets("other-consumer") == {"feedback:0": 99}


def test_state_and_offsets_move_together_across_restarts(store: UserStateStore) -> None:
    """A consumer that resumes from stored offsets applies every event exactly once."""
    store.put(make_state("u1"))
    log = [UserStateDelta("u1", clicked=(item,), impressions=1, clicks=1) for item in range(8)]

    def consume(batch_size: int) -> None:
        start = store.offsets(CONSUMER).get("feedback:0", 0)
        batch = log[start : start + batch_size]
        store.apply(batch, {"feedback:0": start + len(batch)}, CONSUMER)

    consume(3)
    consume(2)  # each call is a fresh "process" that only knows the stored offsets
    state = get_known(store, "u1")
    assert store.offsets(CONSUMER) == {"feedback:0": 5}
    assert (state.impressions, state.clicks) == (5, 5)

    consume(100)
    consume(100)  # nothing left: must not double-apply
    state = get_known(store, "u1")
    assert store.offsets(CONSUMER) == {"feedback:0": 8}
    assert (state.impressions, state.clicks) == (8, 8)
    assert state.clicked.tolist() == [7, 6, 5, 4, 3]


def test_rejected_apply_changes_neither_state_nor_offsets(store: UserStateStore) -> None:
    store.put(make_state("u1"))
    store.apply([UserStateDelta("u1", impressions=1)], {"feedback:0": 1}, CONSUMER)

    with pytest.raises(ValueError, match="offset"):
        store.apply([UserStateDelta("u1", impressions=1)], {"feedback:0": -1}, CONSUMER)
    with pytest.raises(ValueError, match="ts"):
        store.apply(
            [UserStateDelta("u1", impressions=1), UserStateDelta("u1", ts=float("nan"))],
            {"feedback:0": 2},
            CONSUMER,
        )

    assert get_known(store, "u1").impressions == 1
    assert store.offsets(CONSUMER) == {"feedback:0": 1}


@pytest.mark.parametrize("bad_id", BAD_IDS)
def test_invalid_user_id_raises_value_error(store: UserStateStore, bad_id: str) -> None:
    with pytest.raises(ValueError, match="user_id"):
        store.get(bad_id)
    with pytest.raises(ValueError, match="user_id"):
        store.get_many(["ok", bad_id])
    with pytest.raises(ValueError, match="user_id"):
        store.put(make_state(bad_id))
    with pytest.raises(ValueError, match="user_id"):
        store.put_many([make_state("ok"), make_state(bad_id)])
    assert store.get("ok") is None


@pytest.mark.parametrize("bad_id", BAD_IDS)
def test_apply_skips_deltas_with_invalid_user_ids(store: UserStateStore, bad_id: str) -> None:
    """No user can have such an id, so it is an unknown user: one bad event on the stream
    must not make the batch, and so the online updater, fail forever."""
    store.put(make_state("u1"))

    store.apply(
        [UserStateDelta(bad_id, impressions=1), UserStateDelta("u1", impressions=1)],
        {"feedback:0": 2},
        CONSUMER,
    )

    assert get_known(store, "u1").impressions == 1
    assert store.offsets(CONSUMER) == {"feedback:0": 2}


@pytest.mark.parametrize("bad_id", BAD_IDS)
def test_invalid_consumer_raises_value_error(store: UserStateStore, bad_id: str) -> None:
    with pytest.raises(ValueError, match="consumer"):
        store.apply([], {"feedback:0": 1}, bad_id)
    with pytest.raises(ValueError, match="consumer"):
        store.offsets(bad_id)


@pytest.mark.parametrize("user_id", ["x" * 256, "ユーザー 1", "tenant:7/user@x.org"])
def test_unusual_but_valid_user_ids_work(store: UserStateStore, user_id: str) -> None:
    store.put(make_state(user_id, clicked=[1]))
    store.apply([UserStateDelta(user_id, clicked=(2,))], {}, CONSUMER)

    assert get_known(store, user_id).clicked.tolist() == [2, 1]


def test_ids_with_separators_do_not_collide(store: UserStateStore) -> None:
    ids = ["a", "a:clicked", "clicked:a", "a:user:a"]
    store.put_many([make_state(u, seed=i, clicked=[i]) for i, u in enumerate(ids)])
    store.apply([UserStateDelta("a", clicked=(50,))], {}, CONSUMER)

    got = store.get_many(ids)

    assert [s.clicked.tolist() if s is not None else None for s in got] == [
        [50, 0],
        [1],
        [2],
        [3],
    ]


def test_concurrent_applies_are_not_lost(store: UserStateStore) -> None:
    store.put(make_state("u1"))
    threads, per_thread = 4, 25

    def worker() -> None:
        for _ in range(per_thread):
            store.apply([UserStateDelta("u1", impressions=1, clicks=2)], {}, CONSUMER)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()

    got = get_known(store, "u1")
    assert (got.impressions, got.clicks) == (threads * per_thread, 2 * threads * per_thread)
