"""The joiner's output: joined training rows in Parquet segments, committed exactly once.

Layout under ``ROOT`` (a local directory, or any URL :mod:`pyarrow.fs` understands:
``file://``, ``s3://``, ...)::

    rows/date=YYYY-MM-DD/<consumer>-<seq:010d>-<offsets>.parquet      joined rows (logged
                                                                      feedback SCHEMA)
    orphans/date=YYYY-MM-DD/<same stem>.parquet                       feedback that joined
                                                                      no slate, with reason
    late/date=YYYY-MM-DD/<same stem>.parquet                          feedback after its
                                                                      slate closed

``<offsets>`` names the offset range each partition advanced by in the segment (for
``impressions:0`` from 120 to 450: ``impressions.0-120.450``, joined by ``_``), for people and
tools browsing the bucket; the date is the UTC day of the joiner's event-time clock.

Commit protocol. A segment commits atomically by its rows file: side files are written first,
then the rows file (to a hidden temporary name and renamed on a local disk; directly on an
object store, where one PUT is atomic). The rows file's Parquet key-value metadata carries the
writer's checkpoint (opaque text here; the joiner's JSON), so the newest rows segment of a
consumer *is* its committed state. A crash leaves at most a temporary file and side files of a
sequence number above the newest rows segment: :meth:`JoinedDataset.recover` deletes them, and
readers never see them (a side file counts only when its rows segment exists).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from recsys.data.logged import SCHEMA, expand_slate_lists

ROWS = "rows"
ORPHANS = "orphans"
LATE = "late"
SIDE_KINDS = (ORPHANS, LATE)
CHECKPOINT_KEY = b"recsys.joiner.checkpoint"

SIDE_SCHEMA = pa.schema(
    [
        pa.field("reason", pa.string(), nullable=False),
        pa.field("partition", pa.string(), nullable=False),
        pa.field("offset", pa.int64(), nullable=False),
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("event", pa.string(), nullable=False),
        pa.field("value", pa.float64(), nullable=False),
        pa.field("ts", pa.float64(), nullable=False),
        pa.field("server_ts", pa.float64(), nullable=True),
    ]
)
"""Columns of the ``orphans/`` and ``late/`` files: why, where it was read, the feedback."""

_CONSUMER = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]*")
# A consumer name must not look like "<name>-<seq>" of another consumer.
_AMBIGUOUS = re.compile(r"-\d{10}(-|$)")
_FILE = re.compile(r"(?P<consumer>.+?)-(?P<seq>\d{10})-(?P<offsets>[A-Za-z0-9_.-]*)\.parquet")
_TMP_PREFIX, _TMP_SUFFIX = ".", ".tmp"
_MAX_OFFSETS_CHARS = 160


class JoinedDatasetError(RuntimeError):
    """The joined dataset is unusable (bad root, unreadable checkpoint)."""


def check_consumer(name: str) -> str:
    """``name`` if it can name a joiner's segments unambiguously, else ``ValueError``."""
    if not _CONSUMER.fullmatch(name) or _AMBIGUOUS.search(name) or len(name) > 64:
        raise ValueError(
            f"consumer name {name!r} must be 1-64 characters of [A-Za-z0-9_.-], not starting "
            "with '-' and without '-' followed by 10 digits"
        )
    return name


@dataclass(frozen=True, slots=True)
class SegmentFile:
    """One file of the dataset, as found by listing."""

    kind: str
    consumer: str
    seq: int
    path: str
    tmp: bool


@dataclass(frozen=True, slots=True)
class Committed:
    """A consumer's newest committed segment: its sequence number, file and checkpoint."""

    seq: int
    path: str
    checkpoint: str


def offsets_label(start: dict[str, int], end: dict[str, int]) -> str:
    """File-name-safe ``topic.partition-start.end`` per advanced partition, ``_``-joined
    (a short digest instead when that would make the name too long)."""
    parts = [
        f"{_safe(key.replace(':', '.'))}-{start.get(key, 0)}.{end[key]}"
        for key in sorted(end)
        if end[key] != start.get(key)
    ]
    text = "_".join(parts)
    if len(text) > _MAX_OFFSETS_CHARS:
        digest = hashlib.blake2b(text.encode(), digest_size=6).hexdigest()
        text = f"{len(parts)}parts-{digest}"
    return text


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


def date_dir(clock: float) -> str:
    """``date=YYYY-MM-DD`` of an event time in UTC (1970-01-01 before any event)."""
    if not math.isfinite(clock) or not 0 <= clock < 2**33:
        clock = 0.0
    return f"date={datetime.fromtimestamp(clock, UTC):%Y-%m-%d}"


class JoinedDataset:
    """Joined rows plus orphan and late feedback, in exactly-once Parquet segments.

    ``root`` is a local directory or a URL for :meth:`pyarrow.fs.FileSystem.from_uri`; with
    ``filesystem`` it is a path inside that filesystem instead.

    Writers (one :class:`~recsys.stream.joiner.Joiner` per consumer name) call
    :meth:`recover` once and then :meth:`commit` per segment; readers call :meth:`read_rows`
    and :meth:`read_side`, which only ever see committed segments.
    """

    def __init__(
        self, root: str | os.PathLike[str], filesystem: pafs.FileSystem | None = None
    ) -> None:
        text = os.fspath(root)
        if filesystem is not None:  # e.g. an S3FileSystem with its own endpoint/credentials
            path = text
        elif "://" in text:
            filesystem, path = pafs.FileSystem.from_uri(text)
        else:
            filesystem, path = pafs.LocalFileSystem(), os.path.abspath(text)
        if isinstance(filesystem, pafs.LocalFileSystem):
            path = os.path.abspath(path)
        self.root = text
        self.fs: pafs.FileSystem = filesystem
        self._base = path.rstrip("/")
        # On a local disk we write with fsync + rename; object stores have atomic PUTs.
        self._local = isinstance(filesystem, pafs.LocalFileSystem)

    def __repr__(self) -> str:
        return f"JoinedDataset({self.root!r})"

    # --- listing -------------------------------------------------------------------------

    def files(self, kind: str, consumer: str | None = None) -> list[SegmentFile]:
        """Every file of ``kind`` (``rows``, ``orphans``, ``late``), committed or not, in
        (consumer, seq) order."""
        selector = pafs.FileSelector(f"{self._base}/{kind}", recursive=True, allow_not_found=True)
        out: list[SegmentFile] = []
        for info in self.fs.get_file_info(selector):
            if info.type != pafs.FileType.File:
                continue
            name, tmp = info.base_name, False
            if name.startswith(_TMP_PREFIX) and name.endswith(_TMP_SUFFIX):
                name, tmp = name[len(_TMP_PREFIX) : -len(_TMP_SUFFIX)], True
            match = _FILE.fullmatch(name)
            if match is None or (consumer is not None and match["consumer"] != consumer):
                continue
            out.append(SegmentFile(kind, match["consumer"], int(match["seq"]), info.path, tmp))
        out.sort(key=lambda f: (f.consumer, f.seq, f.tmp, f.path))
        return out

    def segments(self, consumer: str | None = None) -> list[SegmentFile]:
        """Committed rows segments in (consumer, seq) order."""
        return [f for f in self.files(ROWS, consumer) if not f.tmp]

    # --- writing -------------------------------------------------------------------------

    def recover(self, consumer: str) -> Committed | None:
        """``consumer``'s newest committed segment, after deleting what a crashed writer left
        behind (temporary files, side files of an uncommitted sequence number)."""
        check_consumer(consumer)
        rows = self.files(ROWS, consumer)
        committed = [f for f in rows if not f.tmp]
        newest = committed[-1] if committed else None
        top = newest.seq if newest is not None else 0
        leftovers = [f for f in rows if f.tmp]
        for kind in SIDE_KINDS:
            leftovers += [f for f in self.files(kind, consumer) if f.tmp or f.seq > top]
        for f in leftovers:
            with contextlib.suppress(FileNotFoundError):
                self.fs.delete_file(f.path)
        if newest is None:
            return None
        return Committed(newest.seq, newest.path, self.read_checkpoint(newest.path))

    def read_checkpoint(self, path: str) -> str:
        """The checkpoint text stored in a rows segment's metadata."""
        with self.fs.open_input_file(path) as f:
            metadata = pq.ParquetFile(f).schema_arrow.metadata or {}
        value = metadata.get(CHECKPOINT_KEY)
        if value is None:
            raise JoinedDatasetError(f"{path} holds no joiner checkpoint")
        return bytes(value).decode("utf-8")

    def commit(
        self,
        consumer: str,
        seq: int,
        label: str,
        date: str,
        rows: pa.Table,
        side: dict[str, pa.Table],
        checkpoint: str,
    ) -> str:
        """Write one segment (side files, then the rows file as the commit point) and return
        the rows file's path. ``label`` is the offsets part of the name (:func:`offsets_label`),
        ``date`` the ``date=`` directory; empty side tables write no file."""
        check_consumer(consumer)
        stem = f"{consumer}-{seq:010d}-{label}"
        if not _FILE.fullmatch(f"{stem}.parquet"):
            raise ValueError(f"bad segment label {label!r}")
        for kind, table in side.items():
            if kind not in SIDE_KINDS:
                raise ValueError(f"unknown side dataset {kind!r}")
            if table.num_rows:
                # Not the commit point: a crash here leaves a file recover() removes.
                self._put(f"{self._base}/{kind}/{date}/{stem}.parquet", _parquet(table), False)
        metadata = dict(rows.schema.metadata or {})
        metadata[CHECKPOINT_KEY] = checkpoint.encode("utf-8")
        path = f"{self._base}/{ROWS}/{date}/{stem}.parquet"
        self._put(path, _parquet(rows.replace_schema_metadata(metadata)), True)
        return path

    def _put(self, path: str, data: bytes, atomic: bool) -> None:
        if not self._local:
            self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
            with self.fs.open_output_stream(path) as out:  # one PUT: all or nothing
                out.write(data)
            return
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{_TMP_PREFIX}{target.name}{_TMP_SUFFIX}") if atomic else target
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        if atomic:
            self._rename(tmp, target)

    def _rename(self, tmp: Path, target: Path) -> None:
        """The commit point on a local disk (a separate method so tests can fail it)."""
        os.replace(tmp, target)
        fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(fd)  # make the rename itself durable
        finally:
            os.close(fd)

    # --- reading -------------------------------------------------------------------------

    def read_rows(self, consumer: str | None = None) -> pa.Table:
        """Every committed joined row (of ``consumer``, or all), segment by segment in
        (consumer, seq) order; an empty table in :data:`recsys.data.logged.SCHEMA` if none."""
        return self._read([f.path for f in self.segments(consumer)], SCHEMA)

    def read_side(self, kind: str, consumer: str | None = None) -> pa.Table:
        """Committed ``orphans`` or ``late`` feedback rows, in (consumer, seq) order."""
        if kind not in SIDE_KINDS:
            raise ValueError(f"kind must be one of {SIDE_KINDS}, got {kind!r}")
        committed = {(f.consumer, f.seq) for f in self.segments(consumer)}
        paths = [
            f.path
            for f in self.files(kind, consumer)
            if not f.tmp and (f.consumer, f.seq) in committed
        ]
        return self._read(paths, SIDE_SCHEMA)

    def _read(self, paths: list[str], schema: pa.Schema) -> pa.Table:
        if not paths:
            return schema.empty_table()
        tables = [expand_slate_lists(pq.read_table(p, filesystem=self.fs)) for p in paths]
        table = pa.concat_tables(tables, promote_options="default")
        return table.replace_schema_metadata(schema.metadata)


def _parquet(table: pa.Table) -> bytes:
    """The table as Parquet bytes: zstd, and dictionary encoding only for string columns.

    Dictionary-encoding the numeric columns (Arrow's default) hashed every value of the list
    columns (a slate's candidate ids and user features, repeated on each of its slots): it
    cost a third of the write for files no smaller, since zstd already folds the repeats.
    """
    strings = [f.name for f in table.schema if pa.types.is_string(f.type)]
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", use_dictionary=strings)
    return bytes(sink.getvalue().to_pybytes())
