"""Redis user-state store: one small string per user, offsets beside them.

Key layout (``P`` is the key prefix):

- ``P:s:{user_id}``: the user's packed state record (:mod:`recsys.features.state`, 253
  bytes for 16 topics; Redis reports 328 bytes of ``MEMORY USAGE`` for it). A plain string
  is the smallest encoding Redis has for it: no hash overhead, one ``GET``/``MGET``.
- ``P:offsets:{consumer}``: hash mapping partition key -> next offset to read.

User ids go after a fixed namespace, so no id can reach the offsets key (ids may contain ``:``,
but ``s:`` and ``offsets:`` are distinct prefixes).

:meth:`RedisUserStateStore.commit` runs as one Lua script, which Redis executes atomically:
it first compares the stored offsets with the ones the writer expected, and only then writes
every record and the new offsets, so the state derived from a batch of events and the offsets
of that batch are stored together or not at all, and an updater that lost a race writes
nothing. The script touches many users' keys and the offsets key at once, so it needs a
single Redis primary (or a cluster with everything in one slot); that is the price of
exactly-once updates without a separate coordinator.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Self

import redis

from recsys.store._common import (
    check_expected,
    check_id,
    check_offsets,
    check_states,
)
from recsys.types import StaleOffsetsError, StoreUnavailableError

# KEYS: [1] offsets hash, then one key per state.
# ARGV: n_expected, n_expected x (partition, offset or "" for "none stored"),
#       n_offsets, n_offsets x (partition, offset), then one value per state key.
# Every check runs before the first write (Redis does not roll back a failed script).
_COMMIT_LUA = """
local n_expected = tonumber(ARGV[1])
local pos = 2
for i = 1, n_expected do
  local stored = redis.call('HGET', KEYS[1], ARGV[pos])
  local want = ARGV[pos + 1]
  if (want == '' and stored ~= false) or (want ~= '' and stored ~= want) then
    return redis.error_reply('recsys: stale offsets for ' .. ARGV[pos] .. ': stored ' ..
      tostring(stored) .. ', expected ' .. (want == '' and 'none' or want))
  end
  pos = pos + 2
end
local n_offsets = tonumber(ARGV[pos])
local first_offset = pos + 1
pos = pos + 1 + 2 * n_offsets
for k = 2, #KEYS do
  redis.call('SET', KEYS[k], ARGV[pos + k - 2])
end
if n_offsets > 0 then
  redis.call('HSET', KEYS[1], unpack(ARGV, first_offset, first_offset + 2 * n_offsets - 1))
end
return #KEYS - 1
"""


class RedisUserStateStore:
    """User state in Redis, implementing :class:`recsys.protocols.UserStateStore`.

    Reads are one ``MGET``; writes one ``MSET`` or one script call, so the cost of a batch
    does not grow with round trips per user. The store owns ``client``: :meth:`close` closes
    it.
    """

    def __init__(self, client: redis.Redis, key_prefix: str = "recsys") -> None:
        if client.get_connection_kwargs().get("decode_responses"):
            raise ValueError(
                "RedisUserStateStore needs a client with decode_responses=False: states are "
                "raw bytes"
            )
        self._client = client
        self._prefix = check_id("key_prefix", key_prefix)
        self._commit_script = client.register_script(_COMMIT_LUA)  # no I/O until first use

    @classmethod
    def from_url(cls, url: str, *, key_prefix: str = "recsys", **client_kwargs: Any) -> Self:
        """Connect lazily to ``redis://``, ``rediss://`` or ``unix://`` ``url``.

        Socket timeouts default to 5 s so a readiness probe or a request never hangs on a
        dead server; ``client_kwargs`` go to :meth:`redis.Redis.from_url` and override them.
        """
        client_kwargs.setdefault("socket_connect_timeout", 5.0)
        client_kwargs.setdefault("socket_timeout", 5.0)
        client = redis.Redis.from_url(url, **client_kwargs)
        return cls(client, key_prefix=key_prefix)

    @property
    def key_prefix(self) -> str:
        """Prefix of every key this store reads or writes."""
        return self._prefix

    def state_key(self, user_id: str) -> str:
        """The Redis key holding one user's record."""
        return f"{self._prefix}:s:{check_id('user_id', user_id)}"

    def _offsets_key(self, consumer: str) -> str:
        return f"{self._prefix}:offsets:{consumer}"

    def get(self, user_id: str) -> bytes | None:
        """One user's record, or ``None``."""
        return self.get_many([user_id])[0]

    def get_many(self, user_ids: Sequence[str]) -> list[bytes | None]:
        """Records in the order of ``user_ids`` (``None`` for unknown), one ``MGET``."""
        if not user_ids:
            return []
        keys = [self.state_key(u) for u in user_ids]
        try:
            values = self._client.mget(keys)
        except (redis.RedisError, OSError) as exc:
            raise StoreUnavailableError(f"redis did not answer: {exc}") from exc
        return [v if v is None or isinstance(v, bytes) else str(v).encode() for v in values]

    def put_many(self, states: Mapping[str, bytes]) -> None:
        """Create or replace records in one ``MSET`` (validated first, all or nothing)."""
        checked = check_states(states)
        if checked:
            self._client.mset({self.state_key(u): blob for u, blob in checked.items()})

    def commit(
        self,
        states: Mapping[str, bytes],
        offsets: Mapping[str, int],
        consumer: str,
        expected: Mapping[str, int | None] | None = None,
    ) -> None:
        """Records and offsets in one atomic script, conditional on ``expected`` offsets."""
        consumer = check_id("consumer", consumer)
        checked = check_states(states)
        next_offsets = check_offsets(offsets)
        want = check_expected(expected)
        if not checked and not next_offsets:
            return
        keys = [self._offsets_key(consumer), *(self.state_key(u) for u in checked)]
        args: list[int | str | bytes] = [len(want)]
        for partition, offset in want.items():
            args += [partition, "" if offset is None else str(offset)]
        args.append(len(next_offsets))
        for partition, offset in next_offsets.items():
            args += [partition, offset]
        args += list(checked.values())
        try:
            self._commit_script(keys=keys, args=args)
        except redis.ResponseError as exc:
            if "recsys: stale offsets" in str(exc):
                raise StaleOffsetsError(str(exc).split("recsys: ", 1)[-1]) from None
            raise

    def offsets(self, consumer: str) -> dict[str, int]:
        """Next offsets per partition last recorded by :meth:`commit` (empty if none)."""
        raw = self._client.hgetall(self._offsets_key(check_id("consumer", consumer)))
        return {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}

    def memory_usage(self, user_id: str) -> int | None:
        """Bytes Redis attributes to one user's record (``MEMORY USAGE``), None if absent."""
        value = self._client.memory_usage(self.state_key(user_id), samples=0)
        return None if value is None else int(value)

    def ping(self) -> bool:
        """``True`` when Redis answers; ``False`` (never an exception) when it does not."""
        try:
            return bool(self._client.ping())
        except (redis.RedisError, OSError):
            return False

    def close(self) -> None:
        """Close the client's connection pool."""
        self._client.close()
