"""A static item table: item features an environment declares once instead of every step.

Many environments' items do not change: a catalog of ``N`` items with fixed features. Sending
``[B, C, di]`` features in every observation then repeats the same rows step after step
(through a Gymnasium dict or across the process bridge), and an env that offers its whole
catalog as candidates sends the catalog every step. Instead an env may declare its
``item_table`` (``[N, di]``: row ``i`` is catalog item ``i``) once and observe only candidate
ids; the adapters (:class:`~recsys.policy.training.envs.GymSlateEnv`,
:class:`~recsys.policy.training.bridge.ProcessEnv`) gather ``item_features =
item_table[candidate_ids]``, one vectorised ``take`` per step of the ``[B, C, di]`` slice a
policy reads, never a copy of the table.

The table is checked once (:func:`check_item_table`), the ids every step
(:func:`gather_item_features`). Padding candidates (``candidate_mask`` False) may carry any
id, e.g. ``-1``: their features are zeros.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from recsys.types import FloatArray

__all__ = ["ITEM_TABLE_ATTR", "check_item_table", "gather_item_features"]

#: The attribute an environment declares its item table under.
ITEM_TABLE_ATTR = "item_table"


def check_item_table(table: Any, where: str = "item_table") -> FloatArray:
    """``table`` as a read-only float32 ``[N, di]`` array (``N, di >= 1``, all finite).

    Real numbers only (bool, integer or float; an integer table is converted once). The
    result is a read-only view when ``table`` already is float32 (the caller's array keeps
    its own flags), otherwise one converted copy. :class:`ValueError` names ``where``.
    """
    arr = np.asarray(table)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{where} must hold real numbers, got dtype {arr.dtype}")
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(
            f"{where} must be [num_items, item_dim] with both >= 1, got shape {list(arr.shape)}"
        )
    out: FloatArray = arr.astype(np.float32, copy=False).view()
    finite = np.isfinite(out)
    if not finite.all():
        row = int(np.argwhere(~finite)[0, 0])
        raise ValueError(
            f"{where} has {int((~finite).sum())} non-finite values (the first in row {row})"
        )
    out.flags.writeable = False
    return out


def gather_item_features(
    table: FloatArray,
    ids: npt.ArrayLike,
    valid: npt.NDArray[np.bool_] | None = None,
    where: str = "candidate_ids",
) -> FloatArray:
    """``table[ids]``: ``[..., di]`` features of catalog ids ``[...]`` (a checked table).

    Ids of valid candidates must lie in ``[0, N)`` (:class:`ValueError` naming ``where``
    and the first offending id otherwise); ids of invalid ones (``valid`` False) are not
    looked up and get zero features.
    """
    idx = np.asarray(ids)
    if idx.dtype.kind not in "iu":
        raise ValueError(f"{where} must be integer catalog ids, got dtype {idx.dtype}")
    n = table.shape[0]
    outside = (idx < 0) | (idx >= n)
    if valid is not None:
        outside &= valid
    if outside.any():
        bad = int(idx[outside].reshape(-1)[0])
        raise ValueError(
            f"{where} holds id {bad} (and {int(outside.sum()) - 1} more out of range): the "
            f"item table has {n} items, ids 0 to {n - 1}"
        )
    if valid is None or valid.all():
        out: FloatArray = table.take(idx, axis=0)
        return out
    out = table.take(np.where(valid, idx, 0), axis=0)
    out[~valid] = 0.0
    return out
