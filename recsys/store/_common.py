"""Validation shared by every user-state backend.

Keeping these in one place is what makes the backends agree: the contract suite checks the
observable behaviour, and both stores reach it through the same rules.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Mapping

MAX_ID_CHARS = 256
# C0/C1 control characters would corrupt logs and key listings; lone surrogates cannot be
# encoded as UTF-8 at all, so they are refused with the same clear message.
_FORBIDDEN_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def id_problem(kind: str, value: str) -> str | None:
    """Why ``value`` is unusable as a user id / consumer / partition key, or ``None`` if fine.

    Ids end up inside Redis key names, so they must be non-empty, at most 256 characters and
    free of control characters. ``kind`` names the argument in the message.
    """
    if not isinstance(value, str):
        return f"{kind} must be a str, got {type(value).__name__}"
    if not value:
        return f"{kind} must be a non-empty string"
    if len(value) > MAX_ID_CHARS:
        return f"{kind} is {len(value)} characters long; at most {MAX_ID_CHARS} are allowed"
    bad = _FORBIDDEN_CHARS.search(value)
    if bad is not None:
        return (
            f"{kind} {value[:64]!r} contains the control character {bad.group()!r} "
            f"at index {bad.start()}"
        )
    return None


def check_id(kind: str, value: str) -> str:
    """Return ``value`` if :func:`id_problem` finds nothing wrong with it, else raise ValueError."""
    problem = id_problem(kind, value)
    if problem is not None:
        raise ValueError(problem)
    return value


MAX_STATE_BYTES = 64 * 1024


def check_states(states: Mapping[str, bytes]) -> dict[str, bytes]:
    """Validate user records: a valid id and non-empty bytes of a bounded size.

    The store never interprets a record; this only keeps garbage (an empty value, a megabyte
    blob) from ever reaching the backend.
    """
    checked: dict[str, bytes] = {}
    for user_id, blob in states.items():
        check_id("user_id", user_id)
        if not isinstance(blob, bytes | bytearray):
            raise TypeError(f"state of {user_id!r} must be bytes, got {type(blob).__name__}")
        if not 0 < len(blob) <= MAX_STATE_BYTES:
            raise ValueError(
                f"state of {user_id!r} has {len(blob)} bytes; 1..{MAX_STATE_BYTES} allowed"
            )
        checked[user_id] = bytes(blob)
    return checked


def check_offsets(offsets: Mapping[str, int]) -> dict[str, int]:
    """Validate stream offsets: partition key -> next offset to read (a non-negative int)."""
    checked: dict[str, int] = {}
    for partition, offset in offsets.items():
        check_id("partition", partition)
        if isinstance(offset, bool):
            raise TypeError(f"offset for {partition!r} must be an int, got bool")
        value = operator.index(offset)
        if value < 0:
            raise ValueError(f"offset for {partition!r} must be >= 0, got {value}")
        checked[partition] = value
    return checked


def check_expected(expected: Mapping[str, int | None] | None) -> dict[str, int | None]:
    """Validate the offsets a conditional commit expects (``None``: none stored yet)."""
    if expected is None:
        return {}
    present = check_offsets({k: v for k, v in expected.items() if v is not None})
    out: dict[str, int | None] = {}
    for partition in expected:
        check_id("partition", partition)
        out[partition] = present.get(partition)
    return out


def stale_partitions(stored: Mapping[str, int], expected: Mapping[str, int | None]) -> list[str]:
    """Partitions whose stored offset is not the expected one (the commit must not happen)."""
    return [p for p, want in expected.items() if stored.get(p) != want]
