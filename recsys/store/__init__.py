"""User-state store: one packed event-derived record per user, plus stream offsets.

Backends implement :class:`recsys.protocols.UserStateStore`; :func:`build_user_state_store`
picks one from the configured URL; the serving arms' version pins
(:class:`recsys.protocols.VersionPins`) live beside them. This is the only package that
imports ``redis``.
"""

from recsys.store.factory import build_user_state_store
from recsys.store.memory import InMemoryUserStateStore
from recsys.store.pins import InMemoryVersionPins, RedisVersionPins, build_version_pins
from recsys.store.redis_store import RedisUserStateStore

__all__ = [
    "InMemoryUserStateStore",
    "InMemoryVersionPins",
    "RedisUserStateStore",
    "RedisVersionPins",
    "build_user_state_store",
    "build_version_pins",
]
