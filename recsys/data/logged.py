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
candidate_ids          list<i64>    v2: the request's candidate item ids in the order the
                                    logging policy saw them (same list on every slot row of
                                    a request; null on every row when not recorded)
=====================  ===========  ==========================================================

File-level metadata records ``recsys.logged_feedback.version`` so readers can refuse files
from an incompatible writer. Version 2 added ``candidate_ids``: with the candidate set, a
*policy* (not just a column of its probabilities) can be evaluated off-policy, because its
probabilities of the logged slates depend on the alternatives it could have picked. Readers
accept v1 files (``candidate_ids`` is then ``None``). Writers may add further string metadata
(``recsys simulate`` records how to rebuild its simulator world), read back with
:func:`read_logged_feedback_metadata`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

FORMAT_VERSION = "2"
#: Versions :func:`read_logged_feedback` accepts (v1: no ``candidate_ids``).
READABLE_VERSIONS = ("1", "2")
_META_KEY = b"recsys.logged_feedback.version"
VERSION_KEY = _META_KEY.decode()

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
        # Nullable so producers that do not know the candidate set (e.g. converted rollouts)
        # still write the current version; a file has it on every row or on none.
        pa.field("candidate_ids", pa.list_(pa.int64()), nullable=True),
    ],
    metadata={_META_KEY: FORMAT_VERSION.encode()},
)
_FEATURES = ("user_features", "item_features")


class LoggedFeedbackError(ValueError):
    """A logged-feedback file or batch does not follow the format."""


@dataclass(frozen=True)
class LoggedFeedback:
    """A batch of logged slots as numpy arrays (one entry per impressed slot).

    ``user_features`` is ``[n, du]`` and ``item_features`` ``[n, di]`` float32; every other
    field is 1-D of length ``n`` with the dtype implied by :data:`SCHEMA`. ``candidate_ids``
    is ``[n, C]`` int64 (each row: its request's candidate item ids, which must contain the
    row's ``item_id``) or ``None`` when the producer did not record candidate sets (v1 files).
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
    candidate_ids: npt.NDArray[np.int64] | None = None

    def __post_init__(self) -> None:
        n = len(self)
        for f in fields(self):
            if f.name == "candidate_ids":
                continue
            value = getattr(self, f.name)
            if not isinstance(value, np.ndarray):
                raise LoggedFeedbackError(f"{f.name} must be a numpy array")
            want_ndim = 2 if f.name in _FEATURES else 1
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
        if self.candidate_ids is not None:
            object.__setattr__(
                self, "candidate_ids", _checked_candidates(self.candidate_ids, self.item_id)
            )

    def __len__(self) -> int:
        return int(self.item_id.shape[0])

    @property
    def num_candidates(self) -> int | None:
        """Candidates per request (``C``), or ``None`` without recorded candidate sets."""
        return None if self.candidate_ids is None else int(self.candidate_ids.shape[1])

    def to_table(self) -> pa.Table:
        """Arrow table in :data:`SCHEMA` (fixed-width rows become list columns)."""
        columns: dict[str, Any] = {
            name: pa.array(getattr(self, name), type=t) for name, t in _SCALARS.items()
        }
        for name in _FEATURES:
            columns[name] = _list_column(np.asarray(getattr(self, name), dtype=np.float32))
        columns["candidate_ids"] = (
            pa.nulls(len(self), type=pa.list_(pa.int64()))
            if self.candidate_ids is None
            else _list_column(self.candidate_ids)
        )
        return pa.Table.from_pydict(columns, schema=SCHEMA)

    @classmethod
    def from_table(cls, table: pa.Table) -> LoggedFeedback:
        """Inverse of :meth:`to_table`; checks columns and types.

        A table without ``candidate_ids`` (format v1) gives ``candidate_ids=None``.
        """
        names = [n for n in SCHEMA.names if n != "candidate_ids" or n in table.column_names]
        missing = set(names) - set(table.column_names)
        if missing:
            raise LoggedFeedbackError(f"logged feedback is missing columns {sorted(missing)}")
        table = table.select(names)
        for name in names:
            nulls = table.column(name).null_count
            if nulls and not SCHEMA.field(name).nullable:
                raise LoggedFeedbackError(
                    f"column {name!r} is null on {nulls} of {table.num_rows} rows; the format "
                    "does not allow nulls there"
                )
        try:
            table = table.cast(pa.schema([SCHEMA.field(n) for n in names]))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
            raise LoggedFeedbackError(f"logged feedback has wrong column types: {exc}") from exc
        values: dict[str, Any] = {}
        for name, t in _SCALARS.items():
            col = table.column(name).to_numpy(zero_copy_only=False)
            values[name] = col.astype(str) if pa.types.is_string(t) else col
        for name in _FEATURES:
            values[name] = _fixed_width(table.column(name), name, np.float32)
        if "candidate_ids" in names:
            col = table.column("candidate_ids")
            if col.null_count == len(col):
                values["candidate_ids"] = None
            elif col.null_count:
                raise LoggedFeedbackError(
                    f"candidate_ids is null on {col.null_count} of {len(col)} rows; a file "
                    "records candidate sets on every row or on none"
                )
            else:
                values["candidate_ids"] = _fixed_width(col, "candidate_ids", np.int64)
        return cls(**values)

    @classmethod
    def concat(cls, parts: list[LoggedFeedback]) -> LoggedFeedback:
        """Concatenate batches (e.g. from several rollout workers)."""
        if not parts:
            raise LoggedFeedbackError("nothing to concatenate")
        widths = {p.num_candidates for p in parts}
        if len(widths) > 1:
            raise LoggedFeedbackError(
                f"candidate_ids differ between batches (candidates per request: "
                f"{sorted(widths, key=lambda w: -1 if w is None else w)}); one file holds one "
                "candidate-list length"
            )
        values = {
            f.name: np.concatenate([getattr(p, f.name) for p in parts])
            for f in fields(cls)
            if f.name != "candidate_ids"
        }
        cands = [p.candidate_ids for p in parts if p.candidate_ids is not None]
        return cls(**values, candidate_ids=np.concatenate(cands) if cands else None)


def _checked_candidates(value: object, item_id: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """``candidate_ids`` as int64 ``[n, C]`` whose every row contains the row's ``item_id``."""
    n = item_id.shape[0]
    if not isinstance(value, np.ndarray):
        raise LoggedFeedbackError("candidate_ids must be a numpy array or None")
    if value.ndim != 2 or value.shape[0] != n or (n and value.shape[1] == 0):
        raise LoggedFeedbackError(
            f"candidate_ids must have shape ({n}, C) with C >= 1, got {value.shape}"
        )
    if value.size and value.dtype.kind not in "iu":
        raise LoggedFeedbackError(f"candidate_ids must hold integers, got dtype {value.dtype}")
    cands = value.astype(np.int64, copy=False)
    inside = (cands == item_id[:, None]).any(axis=1)
    if not inside.all():
        i = int(np.argmin(inside))
        raise LoggedFeedbackError(
            f"candidate_ids: row {i} logged item_id {int(item_id[i])}, which is not in its "
            "candidate list"
        )
    return cands


def _list_column(mat: npt.NDArray[Any]) -> pa.ListArray:
    """A fixed-width ``[n, d]`` matrix as an Arrow list column (one list per row)."""
    mat = np.ascontiguousarray(mat)
    n, width = mat.shape
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
    return pa.ListArray.from_arrays(offsets, pa.array(mat.reshape(-1)))


def _fixed_width(column: pa.ChunkedArray, name: str, dtype: type[np.generic]) -> npt.NDArray[Any]:
    """A list column whose rows all have one length as an ``[n, d]`` matrix (else an error)."""
    col = column.combine_chunks()
    lengths = col.value_lengths().to_numpy(zero_copy_only=False)
    width = int(lengths[0]) if len(lengths) else 0
    if len(lengths) and np.any(lengths != width):
        i = int(np.argmax(lengths != width))
        raise LoggedFeedbackError(
            f"{name} rows must all have the same length (row 0 has {width}, row {i} has "
            f"{int(lengths[i])})"
        )
    flat = col.flatten().to_numpy(zero_copy_only=False).astype(dtype)
    out: npt.NDArray[Any] = flat.reshape(len(lengths), width)
    return out


class LoggedFeedbackWriter:
    """Streams batches into one Parquet file (a row group per batch), e.g. from a rollout.

    ``metadata`` adds string key/values to the file's metadata (e.g. how to rebuild the
    simulator that produced the log); the format version key cannot be overridden. Every
    batch must agree on the candidate-list length (or all lack candidate sets).
    """

    def __init__(
        self,
        path: Path,
        compression: str = "zstd",
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        extra = dict(metadata or {})
        if VERSION_KEY in extra:
            raise LoggedFeedbackError(f"metadata may not set {VERSION_KEY}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        schema = SCHEMA.with_metadata(
            {**(SCHEMA.metadata or {}), **{k.encode(): v.encode() for k, v in extra.items()}}
        )
        self._writer = pq.ParquetWriter(str(self.path), schema, compression=compression)
        self._width: int | None = None
        self.rows = 0

    def write(self, batch: LoggedFeedback) -> None:
        """Append one batch as a row group."""
        width = batch.num_candidates
        if self.rows and width != self._width:
            raise LoggedFeedbackError(
                f"candidate_ids: this batch has {width} candidates per request but the file "
                f"has {self._width}; one file holds one candidate-list length"
            )
        self._writer.write_table(batch.to_table())
        self._width = width
        self.rows += len(batch)

    def close(self) -> None:
        """Finish the file (footer and metadata)."""
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


def write_logged_feedback(
    path: Path, batch: LoggedFeedback, metadata: Mapping[str, str] | None = None
) -> None:
    """Write one batch as a Parquet file (``metadata``: extra file metadata)."""
    with LoggedFeedbackWriter(path, metadata=metadata) as writer:
        writer.write(batch)


def _checked_schema(path: Path) -> pa.Schema:
    """The file's Parquet schema, refusing missing, foreign and unknown-version files."""
    path = Path(path)
    if not path.is_file():
        raise LoggedFeedbackError(f"no logged-feedback file at {path}")
    try:
        schema = pq.read_schema(str(path))
    except (pa.ArrowInvalid, OSError) as exc:
        raise LoggedFeedbackError(f"{path} is not a Parquet file: {exc}") from exc
    version = (schema.metadata or {}).get(_META_KEY)
    if version is None or version.decode(errors="replace") not in READABLE_VERSIONS:
        raise LoggedFeedbackError(
            f"{path} is not logged-feedback format "
            f"{' or '.join('v' + v for v in READABLE_VERSIONS)} "
            f"(found {version.decode(errors='replace') if version else 'no version'})"
        )
    return schema


def read_logged_feedback(path: Path) -> LoggedFeedback:
    """Read a logged-feedback Parquet file (v1 or v2), refusing other formats with a clear
    error; v1 files come back with ``candidate_ids=None``."""
    _checked_schema(path)
    return LoggedFeedback.from_table(pq.read_table(str(path)))


def read_logged_feedback_metadata(path: Path) -> dict[str, str]:
    """The file's string metadata (format version under ``recsys.logged_feedback.version``,
    plus whatever the writer added), without reading the rows."""
    schema = _checked_schema(path)
    return {
        k.decode(errors="replace"): v.decode(errors="replace")
        for k, v in (schema.metadata or {}).items()
        if k != b"ARROW:schema"
    }
