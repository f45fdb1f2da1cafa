"""Version pins of the serving arms (:class:`recsys.protocols.VersionPins`).

In Redis they are one hash, ``P:serving:pins`` (arm → version), beside the user states every
replica already reads, so an admin call on one replica reaches all of them. The in-memory
backend serves a single process (``memory://`` runs everything in one).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Self

import redis

from recsys.config import StoreSettings
from recsys.protocols import VersionPins
from recsys.store._common import check_id
from recsys.store.factory import MEMORY_SCHEMES, REDIS_SCHEMES
from recsys.types import StoreUnavailableError


class InMemoryVersionPins:
    """Pins in a dict (one process)."""

    def __init__(self) -> None:
        self._pins: dict[str, str] = {}
        self._lock = threading.Lock()

    def all(self) -> dict[str, str]:
        with self._lock:
            return dict(self._pins)

    def pin(self, arm: str, version: str) -> None:
        with self._lock:
            self._pins[check_id("arm", arm)] = check_id("version", version)

    def unpin(self, arm: str) -> None:
        with self._lock:
            self._pins.pop(arm, None)

    def close(self) -> None:
        """Nothing to release."""


class RedisVersionPins:
    """Pins in one Redis hash; every call is one round trip."""

    def __init__(self, client: redis.Redis, key_prefix: str = "recsys") -> None:
        self._client = client
        self._key = f"{check_id('key_prefix', key_prefix)}:serving:pins"

    @classmethod
    def from_url(cls, url: str, *, key_prefix: str = "recsys", **client_kwargs: Any) -> Self:
        """Connect lazily to ``url`` (5 s socket timeouts unless ``client_kwargs`` say)."""
        client_kwargs.setdefault("socket_connect_timeout", 5.0)
        client_kwargs.setdefault("socket_timeout", 5.0)
        return cls(redis.Redis.from_url(url, **client_kwargs), key_prefix=key_prefix)

    def all(self) -> dict[str, str]:
        with _answering():
            raw = self._client.hgetall(self._key)
        return {_text(k): _text(v) for k, v in raw.items()}

    def pin(self, arm: str, version: str) -> None:
        field, value = check_id("arm", arm), check_id("version", version)
        with _answering():
            self._client.hset(self._key, field, value)

    def unpin(self, arm: str) -> None:
        with _answering():
            self._client.hdel(self._key, arm)

    def close(self) -> None:
        self._client.close()


@contextmanager
def _answering() -> Iterator[None]:
    """A Redis call that fails or times out is the Protocol's StoreUnavailableError."""
    try:
        yield
    except (redis.RedisError, OSError) as exc:
        raise StoreUnavailableError(f"redis did not answer: {exc}") from exc


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def build_version_pins(settings: StoreSettings, timeout_s: float | None = None) -> VersionPins:
    """Pins beside the user states: Redis for a Redis store, in memory for ``memory://``."""
    if settings.url.startswith(MEMORY_SCHEMES):
        return InMemoryVersionPins()
    if settings.url.startswith(REDIS_SCHEMES):
        kwargs = {} if timeout_s is None else {"socket_timeout": timeout_s}
        return RedisVersionPins.from_url(settings.url, key_prefix=settings.key_prefix, **kwargs)
    raise ValueError(f"unsupported store url {settings.url!r}")
