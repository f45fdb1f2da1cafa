"""The backend is picked by URL scheme; building never touches the network."""

from __future__ import annotations

import pytest

from recsys.config import StoreSettings
from recsys.protocols import UserStateStore
from recsys.store import InMemoryUserStateStore, RedisUserStateStore, build_user_state_store


def test_memory_url_builds_the_in_memory_store() -> None:
    store = build_user_state_store(StoreSettings(url="memory://"))

    assert isinstance(store, InMemoryUserStateStore)
    assert isinstance(store, UserStateStore)


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:1/0",  # nothing listens there: the client must connect lazily
        "rediss://user:secret@cache.invalid:6380/2",
        "unix:///nonexistent/redis.sock?db=1",
    ],
)
def test_redis_urls_build_the_redis_store_without_connecting(url: str) -> None:
    store = build_user_state_store(StoreSettings(url=url, key_prefix="svc"))
    try:
        assert isinstance(store, RedisUserStateStore)
        assert isinstance(store, UserStateStore)
        assert store.key_prefix == "svc"
    finally:
        store.close()


def test_unknown_scheme_is_rejected() -> None:
    # StoreSettings refuses this URL itself; model_construct skips that to test the factory.
    settings = StoreSettings.model_construct(url="http://example.invalid")

    with pytest.raises(ValueError, match="unsupported store url"):
        build_user_state_store(settings)
