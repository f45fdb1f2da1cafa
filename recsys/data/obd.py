"""The Open Bandit Dataset (OBD) as logged feedback: one impression per row, marginals only.

OBD (Saito, Aihara, Matsutani & Narita 2020, "Open Bandit Dataset and Pipeline: Towards
Realistic and Reproducible Off-Policy Evaluation", https://arxiv.org/abs/2008.07146; data and
field list: https://github.com/st-tech/zr-obp/tree/master/obd) logs ZOZOTOWN's fashion
recommendations: ``{behavior_policy}/{campaign}.csv`` (behavior policy ``random`` or ``bts``,
campaign ``all``, ``men`` or ``women``), comma-separated, with an unnamed index column first
and the fields

- ``timestamp``: the impression's time;
- ``item_id``: the item shown (an arm index);
- ``position``: where it was shown, ``1``, ``2`` or ``3`` (left, center, right of a
  three-item interface);
- ``click``: ``1`` when clicked;
- ``propensity_score``: the logging policy's probability of this item *at this position*,
  i.e. a marginal item-position propensity (``pscore`` in the Open Bandit Pipeline,
  ``obp.dataset.OpenBanditDataset``);
- ``user_feature_0..3``: hashed (categorical) user features;
- ``user-item_affinity_0..``: the user's affinity to every item (past clicks), numeric.

A row does not say which other items shared its impression, and the slate's conditional
propensities are unknown. :func:`read_obd_csv` therefore writes the layout
``docs/logged_feedback.md`` defines for such logs: every row is its own request
(``request_id`` unique per row) holding only its logged slot of a ``slate_size``-slot slate
(a partial slate), ``position`` 0-based, ``propensity`` and ``slate_log_propensity`` unknown
(null), ``position_propensity`` the ``propensity_score``. The item-position estimators
(``iips``, ``position_dr``) run on it with a target's marginal position probabilities
(``evaluate_ope_file(..., position_column=...)``); the slate estimators refuse it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv

from recsys.data.logged import LoggedFeedback, LoggedFeedbackError

__all__ = ["OBD_SLATE_SIZE", "read_obd_csv"]

#: Slots of the ZOZOTOWN recommendation interface OBD was logged on (positions 1, 2, 3).
OBD_SLATE_SIZE = 3
_REQUIRED = ("timestamp", "item_id", "position", "click", "propensity_score")
_AFFINITY = re.compile(r"^user-item_affinity_(\d+)$")


def _column(table: pa.Table, name: str, path: Path) -> pa.ChunkedArray:
    col = table.column(name)
    if col.null_count:
        raise LoggedFeedbackError(f"{path}: column {name!r} is empty on {col.null_count} rows")
    return col


def _numbers(table: pa.Table, name: str, path: Path, kind: pa.DataType) -> npt.NDArray[np.generic]:
    col = _column(table, name, path)
    try:
        out: npt.NDArray[np.generic] = col.cast(kind).to_numpy()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise LoggedFeedbackError(f"{path}: column {name!r} must be numeric: {exc}") from exc
    return out


def _seconds(table: pa.Table, path: Path) -> npt.NDArray[np.float64]:
    """``timestamp`` as seconds since the epoch (a zone-less time is read as UTC)."""
    col = _column(table, "timestamp", path)
    if pa.types.is_timestamp(col.type):
        nanos = pc.cast(col.cast(pa.timestamp("ns", tz=col.type.tz)), pa.int64()).to_numpy()
        seconds: npt.NDArray[np.float64] = nanos.astype(np.float64) / 1e9
        return seconds
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
        raw: npt.NDArray[np.float64] = col.to_numpy().astype(np.float64)
        return raw
    raise LoggedFeedbackError(
        f"{path}: column 'timestamp' must hold times (e.g. 2019-11-24 00:00:17+00:00) or "
        f"seconds since the epoch, found {col.type}"
    )


def read_obd_csv(
    path: Path | str, *, policy: str | None = None, slate_size: int = OBD_SLATE_SIZE
) -> LoggedFeedback:
    """An OBD ``{behavior_policy}/{campaign}.csv`` as logged feedback (see the module
    docstring for the layout).

    ``policy`` names the logging policy (default ``obd:{behavior_policy}/{campaign}`` from the
    path); request ids are ``{policy}#{row}``, so logs of different files stay distinct.
    ``user_features`` are the numeric ``user-item_affinity_*`` columns in index order (the
    hashed categorical ``user_feature_*`` have no numeric meaning and are left out);
    ``item_features`` are empty (width 0), ``user_id`` is empty and ``user_idx`` ``-1``
    (OBD identifies no user), ``session_id`` is the row and ``step`` 0; signals other than
    ``click`` are false or 0. Raises :class:`~recsys.data.logged.LoggedFeedbackError` for a
    missing or malformed file, a missing field, a position outside ``1..slate_size`` or a
    ``propensity_score`` outside (0, 1].
    """
    path = Path(path)
    if not path.is_file():
        raise LoggedFeedbackError(f"no OBD file at {path}")
    try:
        table = pv.read_csv(str(path))
    except (pa.ArrowInvalid, OSError) as exc:
        raise LoggedFeedbackError(f"{path} is not a readable CSV file: {exc}") from exc
    missing = [c for c in _REQUIRED if c not in table.column_names]
    if missing:
        raise LoggedFeedbackError(
            f"{path} is not an Open Bandit Dataset log: it lacks the fields {missing}"
        )
    n = table.num_rows
    one_based = _numbers(table, "position", path, pa.int64()).astype(np.int64)
    if n and (one_based.min() < 1 or one_based.max() > slate_size):
        raise LoggedFeedbackError(
            f"{path}: OBD positions run from 1 to {slate_size}, found {int(one_based.min())}.."
            f"{int(one_based.max())} (pass slate_size for a wider interface)"
        )
    affinity = sorted(
        (int(m.group(1)), name)
        for name in table.column_names
        if (m := _AFFINITY.match(name)) is not None
    )
    user_features = (
        np.stack(
            [_numbers(table, name, path, pa.float32()) for _, name in affinity], axis=1
        ).astype(np.float32)
        if affinity
        else np.zeros((n, 0), dtype=np.float32)
    )
    name = policy if policy is not None else f"obd:{path.parent.name}/{path.stem}"
    rows = np.arange(n)
    unknown = np.full(n, np.nan, dtype=np.float32)
    no = np.zeros(n, dtype=np.bool_)
    columns: dict[str, Any] = {
        "request_id": np.char.add(f"{name}#", rows.astype(str)),
        "session_id": rows.astype(np.int64),
        "step": np.zeros(n, dtype=np.int32),
        "ts": _seconds(table, path),
        "user_id": np.full(n, ""),
        "user_idx": np.full(n, -1, dtype=np.int64),
        "item_id": _numbers(table, "item_id", path, pa.int64()).astype(np.int64),
        "position": (one_based - 1).astype(np.int16),
        "slate_size": np.full(n, slate_size, dtype=np.int16),
        "propensity": unknown,
        "slate_log_propensity": unknown,
        "position_propensity": _numbers(table, "propensity_score", path, pa.float32()),
        "policy": np.full(n, name),
        "is_ad": no,
        "click": _numbers(table, "click", path, pa.int64()).astype(np.int64) > 0,
        "dwell_s": np.zeros(n, dtype=np.float32),
        "like": no,
        "conversion": no,
        "revenue": np.zeros(n, dtype=np.float32),
        "skip": no,
        "hidden_ltv": unknown,
        "user_features": user_features,
        "item_features": np.zeros((n, 0), dtype=np.float32),
    }
    try:
        return LoggedFeedback(**columns)
    except LoggedFeedbackError as exc:
        raise LoggedFeedbackError(
            f"{path}: {exc} (position_propensity is OBD's propensity_score)"
        ) from exc
