"""The compact per-user state: one packed little-endian record per user.

A batch of states is a numpy structured array (one row per user), so the fold updates
thousands of simulated users with a handful of vectorised operations, and one user's state is
``row.tobytes()``: the exact bytes a store keeps. Decayed per-topic counts are float16 (three
significant digits are plenty for a decayed count, and half the bytes of float32); the fold
computes in float32 and rounds back after every update, on every path, so a state folded in
the simulator and one folded by the online updater are bit for bit the same.

Layout (``num_topics`` = T, ``recent_items`` = K), 125 + 8 T bytes (253 for T = 16):

=================  ========  ==========================================================
field              type      meaning
=================  ========  ==========================================================
layout             u1        :data:`LAYOUT_VERSION` (a store refuses other versions)
steps              u4        slates shown to the user, ever
clicks             u4        clicks, ever
likes              u2        likes, ever (saturates at 65535, like the other u2 counters)
skips              u2        skips, ever
conversions        u2        conversions, ever
session_step       u2        slates shown in the current session
sessions           u2        sessions started
dwell_s            f4        dwell seconds, ever
last_ts            u4        server time of the last impression (whole seconds)
session_key        u4        hash of the current session id (0: none given)
request            u4        hash of the last impression's request id (feedback joins it)
prev_request       u4        the one before (late feedback for it still joins)
slate_bloom        u8 x 4    256-bit Bloom filter of the last impression's items (3 bits per
                               item): feedback on an item that was not in the slate is refused
prev_slate_bloom   u8 x 4    the same for the impression before
recent             i4 x K    last clicked items, newest first (-1: empty)
ad_exposure        f2        decayed ads shown
clicks_fast        f2 x T    decayed clicks per topic, fast (boredom)
clicks_slow        f2 x T    decayed clicks per topic, slow (interest)
impressions        f2 x T    decayed impressions per topic (exposure)
conversions_topic  f2 x T    decayed conversions per topic (satiation)
=================  ========  ==========================================================
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from recsys.features.spec import FeatureSpec

LAYOUT_VERSION = 2

#: 64-bit words of a slate's Bloom filter, and bits set per item. With 256 bits and 3 hashes a
#: forged item passes for a 10-item slate with probability ~0.14% (~2% for 30 items).
BLOOM_WORDS = 4
BLOOM_HASHES = 3

StateArray = npt.NDArray[np.void]
"""A batch of user states: a structured array with :func:`state_dtype` (one row per user)."""


class StateDecodeError(ValueError):
    """Stored bytes are not a state of this layout (wrong version or length)."""


def state_dtype(spec: FeatureSpec) -> np.dtype[Any]:
    """The packed record type of one user's state under ``spec``."""
    t, k = spec.num_topics, spec.recent_items
    return np.dtype(
        [
            ("layout", "u1"),
            ("steps", "<u4"),
            ("clicks", "<u4"),
            ("likes", "<u2"),
            ("skips", "<u2"),
            ("conversions", "<u2"),
            ("session_step", "<u2"),
            ("sessions", "<u2"),
            ("dwell_s", "<f4"),
            ("last_ts", "<u4"),
            ("session_key", "<u4"),
            ("request", "<u4"),
            ("prev_request", "<u4"),
            ("slate_bloom", "<u8", (BLOOM_WORDS,)),
            ("prev_slate_bloom", "<u8", (BLOOM_WORDS,)),
            ("recent", "<i4", (k,)),
            ("ad_exposure", "<f2"),
            ("clicks_fast", "<f2", (t,)),
            ("clicks_slow", "<f2", (t,)),
            ("impressions", "<f2", (t,)),
            ("conversions_topic", "<f2", (t,)),
        ],
        align=False,
    )


class StateCodec:
    """Creates, encodes and decodes state batches of one :class:`FeatureSpec`."""

    def __init__(self, spec: FeatureSpec) -> None:
        self.spec = spec
        self.dtype = state_dtype(spec)

    @property
    def nbytes(self) -> int:
        """Bytes of one user's state."""
        return int(self.dtype.itemsize)

    def empty(self, n: int) -> StateArray:
        """``n`` users who have seen nothing: a cold start."""
        out: StateArray = np.zeros(n, dtype=self.dtype)
        out["layout"] = LAYOUT_VERSION
        out["recent"] = -1
        return out

    def encode(self, states: StateArray) -> list[bytes]:
        """One ``bytes`` per row (what a store keeps under the user's key)."""
        arr = np.ascontiguousarray(states, dtype=self.dtype)
        raw = arr.tobytes()
        n = self.nbytes
        return [raw[i * n : (i + 1) * n] for i in range(arr.shape[0])]

    def decode(self, blobs: Sequence[bytes | None]) -> tuple[StateArray, npt.NDArray[np.bool_]]:
        """States for stored blobs (``None``: unknown user, decoded as a cold start).

        Returns the batch and a mask of the users that had state. Raises
        :class:`StateDecodeError` for a blob of the wrong length or layout version, naming
        the row, so a store written by an incompatible version is never misread.
        """
        out = self.empty(len(blobs))
        known = np.zeros(len(blobs), dtype=np.bool_)
        rows = [i for i, b in enumerate(blobs) if b is not None]
        if not rows:
            return out, known
        for i in rows:
            blob = blobs[i]
            assert blob is not None
            if len(blob) != self.nbytes or blob[0] != LAYOUT_VERSION:
                raise StateDecodeError(
                    f"state of row {i} has {len(blob)} bytes and layout {blob[:1]!r}; this "
                    f"version expects {self.nbytes} bytes with layout {LAYOUT_VERSION} "
                    f"(num_topics={self.spec.num_topics}, recent_items={self.spec.recent_items})"
                )
        joined = b"".join(blobs[i] or b"" for i in rows)
        out[np.asarray(rows)] = np.frombuffer(joined, dtype=self.dtype)
        known[rows] = True
        return out, known
