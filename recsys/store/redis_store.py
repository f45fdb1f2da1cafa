"""Redis user-state store: one hash and one list per user, offsets beside them.

Key layout (``P`` is the key prefix):

- ``P:user:{user_id}`` — hash with ``emb`` (raw little-endian float32 bytes),
  ``impressions``, ``clicks`` (integers) and ``updated_ts`` (``repr`` of a float, so it
  round-trips exactly);
- ``P:clicked:{user_id}`` — list of item ids, most recent first, trimmed to ``max_history``;
- ``P:offsets:{consumer}`` — hash mapping partition key -> next offset to read.

The clicked list lives under its own ``clicked:`` namespace rather than as a
``P:user:{user_id}:clicked`` suffix: user ids may contain ``:``, and user ``"a:clicked"``
would otherwise collide with the history of user ``"a"``.

:meth:`RedisUserStateStore.apply` runs as one Lua script, which Redis executes atomically, so
the state derived from a batch of events and the offsets of that batch are written together or
not at all. The script touches many users' keys and the offsets key at once, so it needs a
single Redis primary (or a cluster with everything in one slot); that is the price of
exactly-once updates without a separate coordinator.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Self

import numpy as np
import redis

from recsys.store._common import (
    aggregate_deltas,
    check_id,
    check_max_history,
    check_offsets,
    normalize_state,
)
from recsys.types import UserState, UserStateDelta

_log = logging.getLogger(__name__)

_EMB_DTYPE = np.dtype("<f4")  # fixed byte order, so hosts of any endianness read the same bytes

# KEYS: [1] offsets hash, then per user a pair (state hash, clicked list).
# ARGV: max_history, n_offsets, n_offsets x (partition, offset),
#       then per user: impressions, clicks, ts, n_clicked, n_clicked x item (oldest first).
# Phase 1 reads and checks everything; phase 2 writes. Redis does not roll back a script that
# fails half-way, so every check that could fail runs before the first write.
_APPLY_LUA = """
local CHUNK = 4000  -- stays well under Lua's unpack() stack limit
local function call_chunked(cmd, key, first, last)
  for i = first, last, CHUNK do
    redis.call(cmd, key, unpack(ARGV, i, math.min(i + CHUNK - 1, last)))
  end
end
local function is_int(v) return v == false or string.match(v, '^%-?%d+$') ~= nil end

local max_history = tonumber(ARGV[1])
local n_offsets = tonumber(ARGV[2])
local pos = 3 + 2 * n_offsets
local plan = {}
for u = 1, (#KEYS - 1) / 2 do
  local hkey, lkey = KEYS[2 * u], KEYS[2 * u + 1]
  local n_clicked = tonumber(ARGV[pos + 3])
  if redis.call('EXISTS', hkey) == 1 then
    local cur = redis.call('HMGET', hkey, 'impressions', 'clicks', 'updated_ts')
    local ltype = redis.call('TYPE', lkey).ok
    if not (is_int(cur[1]) and is_int(cur[2]) and (cur[3] == false or tonumber(cur[3]))
            and (ltype == 'list' or ltype == 'none')) then
      return redis.error_reply('recsys: corrupt user state under ' .. hkey .. '; nothing applied')
    end
    plan[#plan + 1] = {hkey, lkey, pos, n_clicked, cur[3]}
  end
  pos = pos + 4 + n_clicked
end

for _, p in ipairs(plan) do
  local hkey, lkey, at, n_clicked, old_ts = p[1], p[2], p[3], p[4], p[5]
  if ARGV[at] ~= '0' then redis.call('HINCRBY', hkey, 'impressions', ARGV[at]) end
  if ARGV[at + 1] ~= '0' then redis.call('HINCRBY', hkey, 'clicks', ARGV[at + 1]) end
  -- the client's string is stored, not a Lua number, so the float round-trips exactly
  if old_ts == false or tonumber(ARGV[at + 2]) > tonumber(old_ts) then
    redis.call('HSET', hkey, 'updated_ts', ARGV[at + 2])
  end
  if n_clicked > 0 then
    call_chunked('LPUSH', lkey, at + 4, at + 3 + n_clicked)
    redis.call('LTRIM', lkey, 0, max_history - 1)
  end
end
if n_offsets > 0 then call_chunked('HSET', KEYS[1], 3, 2 + 2 * n_offsets) end
return #plan
"""


class RedisUserStateStore:
    """User state in Redis, implementing :class:`recsys.protocols.UserStateStore`.

    Batch reads are one pipelined ``MULTI``/``EXEC`` round trip and :meth:`apply` is one
    atomic script call, so the cost per batch does not grow with round trips per user. The
    store owns ``client``: :meth:`close` closes it.
    """

    def __init__(
        self, client: redis.Redis, key_prefix: str = "recsys", max_history: int = 500
    ) -> None:
        if client.get_connection_kwargs().get("decode_responses"):
            raise ValueError(
                "RedisUserStateStore needs a client with decode_responses=False: embeddings "
                "are stored as raw float32 bytes"
            )
        self._client = client
        self._prefix = check_id("key_prefix", key_prefix)
        self._max_history = check_max_history(max_history)
        self._apply_script = client.register_script(_APPLY_LUA)  # no I/O until first use

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        key_prefix: str = "recsys",
        max_history: int = 500,
        **client_kwargs: Any,
    ) -> Self:
        """Connect lazily to ``redis://``, ``rediss://`` or ``unix://`` ``url``.

        Socket timeouts default to 5 s so a readiness probe or a request never hangs on a
        dead server; ``client_kwargs`` go to :meth:`redis.Redis.from_url` and override them
        (``decode_responses=True`` is refused: embeddings are raw bytes).
        """
        client_kwargs.setdefault("socket_connect_timeout", 5.0)
        client_kwargs.setdefault("socket_timeout", 5.0)
        client = redis.Redis.from_url(url, **client_kwargs)
        return cls(client, key_prefix=key_prefix, max_history=max_history)

    @property
    def key_prefix(self) -> str:
        """Prefix of every key this store reads or writes."""
        return self._prefix

    @property
    def max_history(self) -> int:
        """How many clicked items are kept per user (most recent first)."""
        return self._max_history

    def _user_key(self, user_id: str) -> str:
        return f"{self._prefix}:user:{user_id}"

    def _clicked_key(self, user_id: str) -> str:
        return f"{self._prefix}:clicked:{user_id}"

    def _offsets_key(self, consumer: str) -> str:
        return f"{self._prefix}:offsets:{consumer}"

    def get(self, user_id: str) -> UserState | None:
        """State for one user, or ``None`` if the user is unknown."""
        return self.get_many([user_id])[0]

    def get_many(self, user_ids: Sequence[str]) -> list[UserState | None]:
        """States in the order of ``user_ids`` (``None`` for unknown) in one round trip.

        The reads run inside ``MULTI``/``EXEC`` so each user's counters and history come from
        the same instant, never half-way through someone else's :meth:`apply`.
        """
        ids = [check_id("user_id", user_id) for user_id in user_ids]
        if not ids:
            return []
        with self._client.pipeline(transaction=True) as pipe:
            for user_id in ids:
                pipe.hgetall(self._user_key(user_id))
                pipe.lrange(self._clicked_key(user_id), 0, self._max_history - 1)
            replies = pipe.execute()
        return [
            self._decode(user_id, fields, clicked)
            for user_id, fields, clicked in zip(ids, replies[0::2], replies[1::2], strict=True)
        ]

    @staticmethod
    def _decode(user_id: str, fields: dict[bytes, bytes], clicked: list[bytes]) -> UserState | None:
        if not fields:
            return None
        return UserState(
            user_id=user_id,
            # astype copies: a writable, native-order array independent of the reply buffer
            embedding=np.frombuffer(fields[b"emb"], dtype=_EMB_DTYPE).astype(np.float32),
            clicked=np.array(clicked, dtype=np.bytes_).astype(np.int64),
            impressions=int(fields.get(b"impressions", b"0")),
            clicks=int(fields.get(b"clicks", b"0")),
            updated_ts=float(fields.get(b"updated_ts", b"0")),
        )

    def put(self, state: UserState) -> None:
        """Create or replace one user's state; ``clicked`` is capped at ``max_history``."""
        self.put_many([state])

    def put_many(self, states: Sequence[UserState]) -> None:
        """Create or replace several users in one ``MULTI``/``EXEC`` round trip.

        Every state is validated first, and the old hash and list are deleted inside the same
        transaction, so readers see either the old or the new state, never a mix.
        """
        prepared = [(state, *normalize_state(state, self._max_history)) for state in states]
        if not prepared:
            return
        with self._client.pipeline(transaction=True) as pipe:
            for state, embedding, clicked in prepared:
                user_key = self._user_key(state.user_id)
                clicked_key = self._clicked_key(state.user_id)
                pipe.delete(user_key, clicked_key)
                pipe.hset(
                    user_key,
                    mapping={
                        "emb": embedding.astype(_EMB_DTYPE).tobytes(),
                        "impressions": int(state.impressions),
                        "clicks": int(state.clicks),
                        "updated_ts": repr(float(state.updated_ts)),
                    },
                )
                if clicked.size:
                    pipe.rpush(clicked_key, *clicked.tolist())
            pipe.execute()

    def apply(
        self,
        deltas: Sequence[UserStateDelta],
        offsets: Mapping[str, int],
        consumer: str,
    ) -> None:
        """Apply deltas to known users and record ``consumer``'s offsets in one atomic script.

        Deltas are merged per user first (counters add, clicked keep event order, ``ts`` is
        the max; deltas with ids no user can have are dropped), then one script call checks
        which users exist, applies to those, and writes the offsets. A crash before the call
        leaves both untouched; after it, both are stored.
        """
        consumer = check_id("consumer", consumer)
        merged, skipped = aggregate_deltas(deltas)
        checked_offsets = check_offsets(offsets)
        if skipped:
            _log.warning("skipped %d deltas whose user id no user can have", skipped)
        if not merged and not checked_offsets:
            return
        keys: list[str] = [self._offsets_key(consumer)]
        args: list[int | str] = [self._max_history, len(checked_offsets)]
        for partition, offset in checked_offsets.items():
            args += [partition, offset]
        for user_id, agg in merged.items():
            keys += [self._user_key(user_id), self._clicked_key(user_id)]
            recent = agg.recent_clicked(self._max_history)
            args += [agg.impressions, agg.clicks, repr(agg.ts), len(recent), *recent]
        self._apply_script(keys=keys, args=args)

    def offsets(self, consumer: str) -> dict[str, int]:
        """Next offsets per partition last recorded by :meth:`apply` (empty if none)."""
        raw = self._client.hgetall(self._offsets_key(check_id("consumer", consumer)))
        return {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}

    def ping(self) -> bool:
        """``True`` when Redis answers; ``False`` (never an exception) when it does not."""
        try:
            return bool(self._client.ping())
        except (redis.RedisError, OSError):
            return False

    def close(self) -> None:
        """Close the client's connection pool."""
        self._client.close()
