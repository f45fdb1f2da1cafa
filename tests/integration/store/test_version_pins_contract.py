"""The one contract suite for :class:`recsys.protocols.VersionPins`: the in-memory pins and
the Redis pins on the real session ``redis-server`` behave the same."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from recsys.protocols import VersionPins
from recsys.store import InMemoryVersionPins, RedisVersionPins
from recsys.types import StoreUnavailableError


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
def pins(request: pytest.FixtureRequest, unique_name: str) -> Iterator[VersionPins]:
    built: VersionPins
    if request.param == "memory":
        built = InMemoryVersionPins()
    else:
        server = request.getfixturevalue("redis_server")
        built = RedisVersionPins.from_url(server.url, key_prefix=unique_name)
    yield built
    built.close()


def test_pins_are_set_replaced_and_removed(pins: VersionPins) -> None:
    assert isinstance(pins, VersionPins)
    assert pins.all() == {}
    pins.pin("slateq", "v1")
    pins.pin("myopic@v0", "v0")
    pins.pin("slateq", "v2")
    assert pins.all() == {"slateq": "v2", "myopic@v0": "v0"}
    pins.unpin("slateq")
    pins.unpin("never-pinned")
    assert pins.all() == {"myopic@v0": "v0"}


@pytest.mark.parametrize(("arm", "version"), [("", "v1"), ("slateq", ""), ("a\nb", "v1")])
def test_bad_names_are_refused(pins: VersionPins, arm: str, version: str) -> None:
    with pytest.raises(ValueError, match=r"^(arm|version) "):
        pins.pin(arm, version)
    assert pins.all() == {}


@pytest.mark.integration
def test_two_clients_share_redis_pins(redis_server: object, unique_name: str) -> None:
    url = redis_server.url  # type: ignore[attr-defined]
    a = RedisVersionPins.from_url(url, key_prefix=unique_name)
    b = RedisVersionPins.from_url(url, key_prefix=unique_name)
    a.pin("slateq", "v7")
    assert b.all() == {"slateq": "v7"}
    a.close()
    b.close()


def test_an_unreachable_redis_is_a_store_error() -> None:
    from recsys.embedded import free_port

    pins = RedisVersionPins.from_url(
        f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.2, socket_timeout=0.2
    )
    with pytest.raises(StoreUnavailableError):
        pins.all()
    with pytest.raises(StoreUnavailableError):
        pins.pin("slateq", "v1")
    pins.close()
