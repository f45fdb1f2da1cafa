"""The logged-feedback format: one Parquet row per impressed slot, for training and OPE.

Every served (or simulated) slate becomes ``slate_size`` rows that share a ``request_id``. The
row carries the slot's exact logging propensity, every observable signal, and the features
the policy saw, so a log can train the candidate model (clicks as positives), train slate
policies offline, and be evaluated off-policy (IPS, SNIPS, DR, per-position estimators)
without going back to the system that produced it.

Columns (``SCHEMA`` is the source of truth; ``docs/logged_feedback.md`` explains them):

=====================  ===========  ==========================================================
column                 type         meaning
=====================  ===========  ==========================================================
request_id             string       one served slate (all its slots share it)
session_id             int64        user session the slate belongs to (simulator: episode)
step                   int32        index of the slate within the session
ts                     float64      seconds since the epoch (simulator: step count)
user_id                string       opaque user id
user_idx               int64        dense user index (``-1`` when unknown)
item_id                int64        dense catalog item id
position               int16        slot, 0 = top
slate_size             int16        slots in this slate
propensity             float32      P(item at this slot | items above), logging policy
slate_log_propensity   float32      log P(whole ordered slate), same for every slot
position_propensity    float32      marginal P(this item at this position), logging policy
                                    (for item-position estimators; exact or Monte Carlo)
policy                 string       logging policy name and version
is_ad                  bool         the item is an ad
click                  bool         clicked
dwell_s                float32      seconds spent on the item (0 without a click)
like                   bool         liked
conversion             bool         converted (ads) / completed (organic)
revenue                float32      ad revenue from this slot
skip                   bool         explicitly skipped / scrolled past
user_features          list<f32>    what the policy saw about the user (fixed length)
item_features          list<f32>    what the policy saw about the item (fixed length)
hidden_ltv             float32      simulator only: ground-truth long-term value of the
                                    user's trajectory (NaN in real logs; never a feature)
=====================  ===========  ==========================================================

File-level metadata records ``recsys.logged_feedback.version`` so readers can refuse files
from an incompatible writer.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

FORMAT_VERSION = "1"
_META_KEY = b"recsys.logged_feedback.version"

_SCALARS: dict[str, pa.DataType] = {
    "request_id": pa.string(),
    "session_id": pa.int64(),
    "step": pa.int32(),
    "ts": pa.float64(),
    "user_id": pa.string(),
    "user_idx": pa.int64(),
    "item_id": pa.int64(),
    "position": pa.int16(),
    "slate_size": pa.int16(),
    "propensity": pa.float32(),
    "slate_log_propensity": pa.float32(),
    "position_propensity": pa.float32(),
    "policy": pa.string(),
    "is_ad": pa.bool_(),
    "click": pa.bool_(),
    "dwell_s": pa.float32(),
    "like": pa.bool_(),
    "conversion": pa.bool_(),
    "revenue": pa.float32(),
    "skip": pa.bool_(),
    "hidden_ltv": pa.float32(),
}
SCHEMA = pa.schema(
    [pa.field(n, t, nullable=False) for n, t in _SCALARS.items()]
    + [
        pa.field("user_features", pa.list_(pa.float32()), nullable=False),
        pa.field("item_features", pa.list_(pa.float32()), nullable=False),
    ],
    metadata={_META_KEY: FORMAT_VERSION.encode()},
)


class LoggedFeedbackError(ValueError):
    """A logged-feedback file or batch does not follow the format."""


@dataclass(frozen=True)
class LoggedFeedback:
    """A batch of logged slots as numpy arrays (one entry per impressed slot).

    ``user_features`` is ``[n, du]`` and ``item_features`` ``[n, di]`` float32; every other
    field is 1-D of length ``n`` with the dtype implied by :data:`SCHEMA`.
    """

    request_id: npt.NDArray[np.str_]
    session_id: npt.NDArray[np.int64]
    step: npt.NDArray[np.int32]
    ts: npt.NDArray[np.float64]
    user_id: npt.NDArray[np.str_]
    user_idx: npt.NDArray[np.int64]
    item_id: npt.NDArray[np.int64]
    position: npt.NDArray[np.int16]
    slate_size: npt.NDArray[np.int16]
    propensity: npt.NDArray[np.float32]
    slate_log_propensity: npt.NDArray[np.float32]
    position_propensity: npt.NDArray[np.float32]
    policy: npt.NDArray[np.str_]
    is_ad: npt.NDArray[np.bool_]
    click: npt.NDArray[np.bool_]
    dwell_s: npt.NDArray[np.float32]
    like: npt.NDArray[np.bool_]
    conversion: npt.NDArray[np.bool_]
    revenue: npt.NDArray[np.float32]
    skip: npt.NDArray[np.bool_]
    hidden_ltv: npt.NDArray[np.float32]
    user_features: npt.NDArray[np.float32]
    item_features: npt.NDArray[np.float32]

    def __post_init__(self) -> None:
        n = len(self)
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, np.ndarray):
                raise LoggedFeedbackError(f"{f.name} must be a numpy array")
            want_ndim = 2 if f.name.endswith("_features") else 1
            if value.ndim != want_ndim or value.shape[0] != n:
                raise LoggedFeedbackError(
                    f"{f.name} must have shape ({n}{', d' if want_ndim == 2 else ''}), "
                    f"got {value.shape}"
                )
        for name in ("propensity", "position_propensity"):
            p = getattr(self, name)
            if n and not np.all((p > 0) & (p <= 1)):
                raise LoggedFeedbackError(f"{name} must lie in (0, 1] for every logged slot")
        if n and (self.position.min() < 0 or np.any(self.position >= self.slate_size)):
            raise LoggedFeedbackError("position must lie in [0, slate_size)")

    def __len__(self) -> int:
        return int(self.item_id.shape[0])

    def to_table(self) -> pa.Table:
        """Arrow table in :data:`SCHEMA` (fixed-width feature rows become list columns)."""
        columns: dict[str, Any] = {
            name: pa.array(getattr(self, name), type=t) for name, t in _SCALARS.items()
        }
        for name in ("user_features", "item_features"):
            mat = np.ascontiguousarray(getattr(self, name), dtype=np.float32)
            width = mat.shape[1]
            offsets = np.arange(0, (len(self) + 1) * width, width, dtype=np.int32)
            columns[name] = pa.ListArray.from_arrays(offsets, pa.array(mat.reshape(-1)))
        return pa.Table.from_pydict(columns, schema=SCHEMA)

    @classmethod
    def from_table(cls, table: pa.Table) -> LoggedFeedback:
        """Inverse of :meth:`to_table`; checks columns and types."""
        missing = set(SCHEMA.names) - set(table.column_names)
        if missing:
            raise LoggedFeedbackError(f"logged feedback is missing columns {sorted(missing)}")
        table = table.select(SCHEMA.names)
        try:
            table = table.cast(SCHEMA)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise LoggedFeedbackError(f"logged feedback has wrong column types: {exc}") from exc
        values: dict[str, Any] = {}
        for name, t in _SCALARS.items():
            col = table.column(name).to_numpy(zero_copy_only=False)
            values[name] = col.astype(str) if pa.types.is_string(t) else col
        for name in ("user_features", "item_features"):
            col = table.column(name).combine_chunks()
            lengths = col.value_lengths().to_numpy(zero_copy_only=False)
            width = int(lengths[0]) if len(lengths) else 0
            if len(lengths) and np.any(lengths != width):
                raise LoggedFeedbackError(f"{name} rows must all have the same length")
            flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
            values[name] = flat.reshape(len(lengths), width)
        return cls(**values)

    @classmethod
    def concat(cls, parts: list[LoggedFeedback]) -> LoggedFeedback:
        """Concatenate batches (e.g. from several rollout workers)."""
        if not parts:
            raise LoggedFeedbackError("nothing to concatenate")
        return cls(
            **{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)}
        )


class LoggedFeedbackWriter:
    """Streams batches into one Parquet file (a row group per batch), e.g. from a rollout."""

    def __init__(self, path: Path, compression: str = "zstd") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = pq.ParquetWriter(str(self.path), SCHEMA, compression=compression)
        self.rows = 0

    def write(self, batch: LoggedFeedback) -> None:
        self._writer.write_table(batch.to_table())
        self.rows += len(batch)

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def write_logged_feedback(path: Path, batch: LoggedFeedback) -> None:
    """Write one batch as a Parquet file."""
    with LoggedFeedbackWriter(path) as writer:
        writer.write(batch)


def read_logged_feedback(path: Path) -> LoggedFeedback:
    """Read a logged-feedback Parquet file, refusing other formats with a clear error."""
    path = Path(path)
    if not path.is_file():
        raise LoggedFeedbackError(f"no logged-feedback file at {path}")
    try:
        schema = pq.read_schema(str(path))
    except (pa.ArrowInvalid, OSError) as exc:
        raise LoggedFeedbackError(f"{path} is not a Parquet file: {exc}") from exc
    version = (schema.metadata or {}).get(_META_KEY)
    if version != FORMAT_VERSION.encode():
        raise LoggedFeedbackError(
            f"{path} is not logged-feedback format v{FORMAT_VERSION} "
            f"(found {version.decode() if version else 'no version'})"
        )
    return LoggedFeedback.from_table(pq.read_table(str(path)))
