"""User-state store: one packed event-derived record per user, plus stream offsets.

Backends implement :class:`recsys.protocols.UserStateStore`; :func:`build_user_state_store`
picks one from the configured URL. This is the only package that imports ``redis``.
"""

from recsys.store.factory import build_user_state_store
from recsys.store.memory import InMemoryUserStateStore
from recsys.store.redis_store import RedisUserStateStore

__all__ = ["InMemoryUserStateStore", "RedisUserStateStore", "build_user_state_store"]
