"""Pick the user-state backend from the configured URL scheme (the only place that decides)."""

from __future__ import annotations

from recsys.config import StoreSettings
from recsys.protocols import UserStateStore
from recsys.store.memory import InMemoryUserStateStore
from recsys.store.redis_store import RedisUserStateStore

MEMORY_SCHEMES = ("memory://",)
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def build_user_state_store(
    settings: StoreSettings, timeout_s: float | None = None
) -> UserStateStore:
    """Build the store ``settings.url`` names: ``memory://`` or a Redis URL.

    Redis clients connect lazily, so building never blocks on the network; readiness checks
    call :meth:`UserStateStore.ping`. ``timeout_s`` bounds every Redis call (connect and
    read; default 5 s): the server passes its short request-path budget.
    """
    if settings.url.startswith(MEMORY_SCHEMES):
        return InMemoryUserStateStore()
    if settings.url.startswith(REDIS_SCHEMES):
        timeouts = (
            {}
            if timeout_s is None
            else {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
        )
        return RedisUserStateStore.from_url(
            settings.url, key_prefix=settings.key_prefix, **timeouts
        )
    raise ValueError(
        f"unsupported store url {settings.url!r}: expected one of "
        f"{', '.join(MEMORY_SCHEMES + REDIS_SCHEMES)}"
    )
