"""The logged-feedback format: one Parquet row per impressed slot, for training and OPE.

Every served (or simulated) slate becomes ``slate_size`` rows that share a ``request_id``. The
row carries the slot's logging propensities, every observable signal, and the features the
policy saw, so a log can train the candidate model (clicks as positives), train slate
policies offline, and be evaluated off-policy (IPS, SNIPS, DR, per-position estimators)
without going back to the system that produced it. A request may log fewer rows than its
``slate_size`` (a *partial* slate): a join that lost slots, or a public bandit log such as
the Open Bandit Dataset that records one impression per row (:mod:`recsys.data.obd`).

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
propensity             float32?     P(item at this slot | items above), logging policy
                                    (null: unknown, e.g. a log that only has a marginal)
slate_log_propensity   float32?     log P(whole ordered slate), same for every slot (null:
                                    unknown)
position_propensity    float32?     marginal P(this item at this position), logging policy
                                    (for item-position estimators; exact or Monte Carlo;
                                    null: unknown, e.g. a served log)
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
reward                 float32?     the learned reward of the slot's signals as the writer
                                    computed it (null when it computed none)
=====================  ===========  ==========================================================

``?`` marks nullable columns; in :class:`LoggedFeedback` a null float is NaN. Every row knows
at least one of ``propensity`` and ``position_propensity``; an estimator that needs the other
refuses the log naming the column.

File-level metadata records ``recsys.logged_feedback.version`` so readers can refuse files
from an incompatible writer. Version 2 added ``candidate_ids``: with the candidate set, a
*policy* (not just a column of its probabilities) can be evaluated off-policy, because its
probabilities of the logged slates depend on the alternatives it could have picked. Readers
accept v1 files (``candidate_ids`` is then ``None``) and v1/v2 files written before
``reward`` existed (``reward`` is then ``None``). Writers may add further string metadata
(``recsys simulate`` records how to rebuild its simulator world), read back with
:func:`read_logged_feedback_metadata`.

A log is one Parquet file or a directory of them (:func:`logged_feedback_files`), e.g. the
stream joiner's ``ROOT/rows/date=YYYY-MM-DD/*.parquet``.
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
import pyarrow.compute as pc
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
#: Float columns where null means "unknown" (NaN in :class:`LoggedFeedback`).
_UNKNOWABLE = ("propensity", "slate_log_propensity", "position_propensity")
SCHEMA = pa.schema(
    [pa.field(n, t, nullable=n in _UNKNOWABLE) for n, t in _SCALARS.items()]
    + [
        pa.field("user_features", pa.list_(pa.float32()), nullable=False),
        pa.field("item_features", pa.list_(pa.float32()), nullable=False),
        # Nullable so producers that do not know the candidate set (e.g. converted rollouts)
        # still write the current version; a file has it on every row or on none.
        pa.field("candidate_ids", pa.list_(pa.int64()), nullable=True),
        # Added within v2: files written before it lack the column (read as None).
        pa.field("reward", pa.float32(), nullable=True),
    ],
    metadata={_META_KEY: FORMAT_VERSION.encode()},
)
#: Schema metadata key a writer sets to :data:`FIRST_ROW` when it stores each slate's
#: per-request lists (``user_features``, ``candidate_ids``) once, on the slate's first row.
SLATE_LISTS_KEY = b"recsys.logged_feedback.slate_lists"
FIRST_ROW = b"first_row"
#: The per-request columns: the same on every row of a slate.
SLATE_LISTS = ("user_features", "candidate_ids")
_FEATURES = ("user_features", "item_features")
#: Columns a file may lack (older writers): ``candidate_ids`` (v1) and ``reward``.
_OPTIONAL = ("candidate_ids", "reward")


class LoggedFeedbackError(ValueError):
    """A logged-feedback file or batch does not follow the format."""


@dataclass(frozen=True)
class LoggedFeedback:
    """A batch of logged slots as numpy arrays (one entry per impressed slot).

    ``user_features`` is ``[n, du]`` and ``item_features`` ``[n, di]`` float32; every other
    field is 1-D of length ``n`` with the dtype implied by :data:`SCHEMA`. ``candidate_ids``
    is ``[n, C]`` int64 (each row: its request's candidate item ids, which must contain the
    row's ``item_id``) or ``None`` when the producer did not record candidate sets (v1 files).
    ``propensity``, ``slate_log_propensity`` and ``position_propensity`` are NaN where unknown
    (null in Parquet); every row must know ``propensity`` or ``position_propensity``, and a
    known one lies in (0, 1]. ``reward`` is float32 ``[n]`` (NaN where the writer computed
    none) or ``None`` when no row has one. A request may log fewer rows than its
    ``slate_size`` (a partial slate; positions stay distinct and below ``slate_size``).
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
    reward: npt.NDArray[np.float32] | None = None

    def __post_init__(self) -> None:
        n = len(self)
        for f in fields(self):
            if f.name in _OPTIONAL:
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
        _check_propensities(self.propensity, self.position_propensity)
        if n and (self.position.min() < 0 or np.any(self.position >= self.slate_size)):
            raise LoggedFeedbackError("position must lie in [0, slate_size)")
        if self.candidate_ids is not None:
            object.__setattr__(
                self, "candidate_ids", _checked_candidates(self.candidate_ids, self.item_id)
            )
        object.__setattr__(self, "reward", _checked_reward(self.reward, n))

    def __len__(self) -> int:
        return int(self.item_id.shape[0])

    def take(self, rows: npt.ArrayLike) -> LoggedFeedback:
        """The rows ``rows`` selects (a boolean mask or indices) as a new, validated batch."""
        values: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            values[f.name] = None if value is None else value[rows]
        return type(self)(**values)

    @property
    def num_candidates(self) -> int | None:
        """Candidates per request (``C``), or ``None`` without recorded candidate sets."""
        return None if self.candidate_ids is None else int(self.candidate_ids.shape[1])

    def to_table(self) -> pa.Table:
        """Arrow table in :data:`SCHEMA` (fixed-width rows become list columns; NaN in a
        nullable float column becomes null)."""
        columns: dict[str, Any] = {
            name: pa.array(getattr(self, name), type=t, from_pandas=name in _UNKNOWABLE)
            for name, t in _SCALARS.items()
        }
        for name in _FEATURES:
            columns[name] = _list_column(np.asarray(getattr(self, name), dtype=np.float32))
        columns["candidate_ids"] = (
            pa.nulls(len(self), type=pa.list_(pa.int64()))
            if self.candidate_ids is None
            else _list_column(self.candidate_ids)
        )
        columns["reward"] = (
            pa.nulls(len(self), type=pa.float32())
            if self.reward is None
            else pa.array(self.reward, type=pa.float32(), from_pandas=True)
        )
        return pa.Table.from_pydict(columns, schema=SCHEMA)

    @classmethod
    def from_table(cls, table: pa.Table) -> LoggedFeedback:
        """Inverse of :meth:`to_table`; checks columns and types.

        A table without ``candidate_ids`` (format v1) gives ``candidate_ids=None``, one
        without ``reward`` (older writers) ``reward=None``; columns outside :data:`SCHEMA`
        (extra target columns, hive partition keys such as ``date``) are ignored.
        """
        table = expand_slate_lists(table)
        names = [n for n in SCHEMA.names if n not in _OPTIONAL or n in table.column_names]
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
        if "reward" in names:
            col = table.column("reward")
            values["reward"] = (
                None
                if col.null_count == len(col)
                else col.to_numpy(zero_copy_only=False).astype(np.float32)
            )
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
        """Concatenate batches (e.g. from several rollout workers or files).

        Batches without rows are skipped (their feature widths are unknown); the others must
        agree on the feature widths and the candidate-list length. ``reward`` is NaN for the
        rows of batches without one.
        """
        if not parts:
            raise LoggedFeedbackError("nothing to concatenate")
        full = [p for p in parts if len(p)] or parts[:1]
        for name in (*_FEATURES, "candidate_ids"):
            widths = {
                None if getattr(p, name) is None else int(getattr(p, name).shape[1]) for p in full
            }
            if len(widths) > 1:
                what = "candidates per request" if name == "candidate_ids" else "widths"
                raise LoggedFeedbackError(
                    f"{name} differ between batches ({what}: "
                    f"{sorted(widths, key=lambda w: -1 if w is None else w)}); one log holds one "
                    f"{'candidate-list length' if name == 'candidate_ids' else 'feature width'}"
                )
        values = {
            f.name: np.concatenate([getattr(p, f.name) for p in full])
            for f in fields(cls)
            if f.name not in _OPTIONAL
        }
        cands = [p.candidate_ids for p in full if p.candidate_ids is not None]
        rewards = None
        if any(p.reward is not None for p in full):
            rewards = np.concatenate(
                [
                    np.full(len(p), np.nan, np.float32) if p.reward is None else p.reward
                    for p in full
                ]
            )
        return cls(**values, candidate_ids=np.concatenate(cands) if cands else None, reward=rewards)


def _check_propensities(
    propensity: npt.NDArray[np.float32], position_propensity: npt.NDArray[np.float32]
) -> None:
    """Known (non-NaN) propensities lie in (0, 1]; every row knows at least one of them."""
    known = {}
    for name, p in (("propensity", propensity), ("position_propensity", position_propensity)):
        if p.dtype.kind not in "fiu":
            raise LoggedFeedbackError(f"{name} must be numeric, got dtype {p.dtype}")
        known[name] = ~np.isnan(p)
        bad = known[name] & ~((p > 0) & (p <= 1))
        if bad.any():
            i = int(np.argmax(bad))
            raise LoggedFeedbackError(
                f"{name} must lie in (0, 1] for every logged slot where it is known (null "
                f"means unknown); row {i} has {float(p[i])!r}"
            )
    neither = ~known["propensity"] & ~known["position_propensity"]
    if neither.any():
        raise LoggedFeedbackError(
            f"row {int(np.argmax(neither))} knows neither propensity nor position_propensity "
            f"({int(neither.sum())} rows like it): every logged slot needs at least one"
        )


def _checked_reward(value: object, n: int) -> npt.NDArray[np.float32] | None:
    """``reward`` as float32 ``[n]``, or ``None`` when absent or null on every row."""
    if value is None:
        return None
    if not isinstance(value, np.ndarray) or value.shape != (n,) or value.dtype.kind not in "fiu":
        shape = value.shape if isinstance(value, np.ndarray) else type(value).__name__
        raise LoggedFeedbackError(
            f"reward must be a numeric array of shape ({n},) or None, got {shape}"
        )
    out = value.astype(np.float32, copy=False)
    return None if np.isnan(out).all() else out


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
    offsets = np.arange(n + 1, dtype=np.int32) * np.int32(width)
    return pa.ListArray.from_arrays(offsets, pa.array(mat.reshape(-1)))


def _fixed_width(column: pa.ChunkedArray, name: str, dtype: type[np.generic]) -> npt.NDArray[Any]:
    """A list column whose rows all have one length as an ``[n, d]`` matrix (else an error)."""
    col = column.combine_chunks()
    inner = col.flatten()
    if inner.null_count:
        nulls = inner.is_null().to_numpy(zero_copy_only=False)
        row = pc.list_parent_indices(col).to_numpy(zero_copy_only=False)[int(np.argmax(nulls))]
        raise LoggedFeedbackError(
            f"column {name!r} holds {inner.null_count} null values inside its lists (first on "
            f"row {int(row)}); the format does not allow nulls there"
        )
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


def logged_feedback_files(path: Path | str) -> list[Path]:
    """The Parquet files a logged-feedback path stands for, in the order they are read.

    A file is itself. A directory stands for every ``*.parquet`` under its ``rows/``
    subdirectory when it has one (the stream joiner's layout: ``ROOT/rows/date=YYYY-MM-DD/``,
    next to side data in ``ROOT/orphans/`` and ``ROOT/late/`` that is not logged feedback),
    else every ``*.parquet`` under the directory itself; recursively, in sorted path order,
    skipping files and folders whose names start with ``_`` or ``.`` and ``.tmp`` files
    (writers' work in progress). Raises :class:`LoggedFeedbackError` for a missing path or a
    directory without such files.
    """
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise LoggedFeedbackError(f"no logged-feedback file or directory at {path}")
    root = path / "rows" if (path / "rows").is_dir() else path
    files = sorted(
        f
        for f in root.rglob("*.parquet")
        if f.is_file()
        and not any(part.startswith(("_", ".")) for part in f.relative_to(root).parts)
        and ".tmp" not in f.suffixes
    )
    if not files:
        raise LoggedFeedbackError(f"no logged-feedback files under {path}")
    return files


def expand_slate_lists(table: pa.Table) -> pa.Table:
    """``table`` with every row holding its slate's per-request lists (no-op on tables that
    already do).

    A writer may store a slate's ``user_features`` and ``candidate_ids`` once, on the slate's
    first row (an empty list or null on the others), and say so with :data:`SLATE_LISTS_KEY`
    = :data:`FIRST_ROW` in the schema metadata: the stream joiner does, since those lists
    repeated on each of ten slots were nine tenths of a segment's values and of the cost of
    writing it. A slate is a run of consecutive rows with the same ``request_id`` and rising
    ``position`` (the joiner writes each slate's rows together, in slot order). Readers of
    this module expand on read, so a :class:`LoggedFeedback` never sees the compact form; the
    result drops the key.
    """
    meta = dict(table.schema.metadata or {})
    if meta.pop(SLATE_LISTS_KEY, None) != FIRST_ROW:
        return table
    n = table.num_rows
    if n:
        rid = table.column("request_id").to_numpy(zero_copy_only=False)
        pos = table.column("position").to_numpy(zero_copy_only=False)
        start = np.ones(n, dtype=np.bool_)
        start[1:] = (rid[1:] != rid[:-1]) | (pos[1:] <= pos[:-1])
        owner = np.flatnonzero(start)[np.cumsum(start) - 1]  # each row's slate's first row
        for name in SLATE_LISTS:
            if name in table.column_names:
                at = table.column_names.index(name)
                column = _spread_lists(table.column(name).combine_chunks(), owner)
                table = table.set_column(at, table.schema.field(name), column)
    return table.replace_schema_metadata(meta)


def _spread_lists(column: pa.ListArray, owner: npt.NDArray[np.intp]) -> pa.ListArray:
    """Row ``r`` of the result is row ``owner[r]`` of ``column`` (a numpy gather of the
    values: Arrow's ``take`` on list arrays is several times slower)."""
    offsets = column.offsets.to_numpy()
    lengths = (offsets[1:] - offsets[:-1])[owner]
    out = np.zeros(len(owner) + 1, dtype=np.int64)
    np.cumsum(lengths, out=out[1:])
    index = np.arange(int(out[-1]), dtype=np.int64)
    index += np.repeat(offsets[:-1][owner] - out[:-1], lengths)
    values = column.values.take(pa.array(index))
    mask = None
    if column.null_count:
        mask = pa.array(~column.is_valid().to_numpy(zero_copy_only=False)[owner])
    return pa.ListArray.from_arrays(pa.array(out.astype(np.int32)), values, mask=mask)


def _checked_schema(path: Path) -> pa.Schema:
    """One file's Parquet schema, refusing missing, foreign and unknown-version files."""
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


def _read_file(path: Path) -> LoggedFeedback:
    _checked_schema(path)
    try:
        # The file alone: no hive partition columns are inferred from its directory names.
        table = pq.ParquetFile(str(path)).read()
    except (pa.ArrowInvalid, OSError) as exc:
        raise LoggedFeedbackError(f"{path} cannot be read: {exc}") from exc
    try:
        return LoggedFeedback.from_table(table)
    except LoggedFeedbackError as exc:
        raise LoggedFeedbackError(f"{path}: {exc}") from exc


def read_logged_feedback(path: Path | str) -> LoggedFeedback:
    """Read a logged-feedback Parquet file or directory (v1 or v2), refusing other formats
    with a clear error (:class:`LoggedFeedbackError`).

    A directory is read as the concatenation of :func:`logged_feedback_files`; columns outside
    the format (hive partition keys such as ``date``, extra target columns) are dropped. v1
    files come back with ``candidate_ids=None``, files without ``reward`` with
    ``reward=None``.
    """
    files = logged_feedback_files(path)
    parts = [_read_file(f) for f in files]
    if len(parts) == 1:
        return parts[0]
    try:
        return LoggedFeedback.concat(parts)
    except LoggedFeedbackError as exc:
        raise LoggedFeedbackError(f"the files under {path} do not fit together: {exc}") from exc


def read_logged_feedback_metadata(path: Path | str) -> dict[str, str]:
    """The log's string metadata (format version under ``recsys.logged_feedback.version``,
    plus whatever the writer added), without reading the rows.

    For a directory, every file's version is checked; a key comes back when every file
    holds it with one value, and the version is the newest among the files.
    """
    shared: dict[str, str] | None = None
    versions: list[str] = []
    for f in logged_feedback_files(path):
        meta = {
            k.decode(errors="replace"): v.decode(errors="replace")
            for k, v in (_checked_schema(f).metadata or {}).items()
            if k != b"ARROW:schema"
        }
        versions.append(meta[VERSION_KEY])
        shared = meta if shared is None else {k: v for k, v in shared.items() if meta.get(k) == v}
    assert shared is not None
    return {**shared, VERSION_KEY: max(versions, key=int)}
