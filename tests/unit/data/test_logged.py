"""Logged-feedback Parquet format: round trip, validation, refusing foreign files."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.data.logged import (
    VERSION_KEY,
    LoggedFeedback,
    LoggedFeedbackError,
    LoggedFeedbackWriter,
    read_logged_feedback,
    read_logged_feedback_metadata,
    write_logged_feedback,
)


def make_batch(n_slates: int = 3, slate: int = 4, seed: int = 0, **override: Any) -> LoggedFeedback:
    rng = np.random.default_rng(seed)
    n = n_slates * slate
    click = rng.random(n) < 0.2
    values: dict[str, Any] = {
        "request_id": np.repeat([f"r{seed}-{i}" for i in range(n_slates)], slate),
        "session_id": np.repeat(np.arange(n_slates, dtype=np.int64), slate),
        "step": np.zeros(n, dtype=np.int32),
        "ts": np.arange(n, dtype=np.float64),
        "user_id": np.repeat([f"u{i}" for i in range(n_slates)], slate),
        "user_idx": np.repeat(np.arange(n_slates, dtype=np.int64), slate),
        "item_id": rng.integers(0, 100, n).astype(np.int64),
        "position": np.tile(np.arange(slate, dtype=np.int16), n_slates),
        "slate_size": np.full(n, slate, dtype=np.int16),
        "propensity": rng.uniform(0.05, 1.0, n).astype(np.float32),
        "slate_log_propensity": np.full(n, -3.0, dtype=np.float32),
        "position_propensity": rng.uniform(0.01, 1.0, n).astype(np.float32),
        "policy": np.full(n, "random-0"),
        "is_ad": rng.random(n) < 0.1,
        "click": click,
        "dwell_s": np.where(click, 30.0, 0.0).astype(np.float32),
        "like": click & (rng.random(n) < 0.5),
        "conversion": np.zeros(n, dtype=bool),
        "revenue": np.zeros(n, dtype=np.float32),
        "skip": ~click,
        "hidden_ltv": np.full(n, np.nan, dtype=np.float32),
        "user_features": rng.normal(size=(n, 3)).astype(np.float32),
        "item_features": rng.normal(size=(n, 5)).astype(np.float32),
    }
    values.update(override)
    return LoggedFeedback(**values)


def with_candidates(batch: LoggedFeedback, width: int = 8, seed: int = 0) -> LoggedFeedback:
    """The batch with a candidate list per request holding its items plus random others."""
    rng = np.random.default_rng(seed)
    n = len(batch)
    cands = rng.integers(100, 1000, size=(n, width)).astype(np.int64)
    slate = batch.slate_size.astype(np.int64)
    first_row = np.arange(n) - batch.position.astype(np.int64)
    # Every row of a request gets the same list: its slate's items in the first columns.
    cols = np.arange(width)[None, :]
    items_of_request = batch.item_id[np.minimum(first_row[:, None] + cols, n - 1)]
    cands = np.where(cols < slate[:, None], items_of_request, cands[first_row])
    return replace(batch, candidate_ids=cands)


def _assert_equal(a: LoggedFeedback, b: LoggedFeedback) -> None:
    for name in LoggedFeedback.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def test_round_trip(tmp_path: Path) -> None:
    batch = make_batch()
    write_logged_feedback(tmp_path / "log.parquet", batch)
    _assert_equal(read_logged_feedback(tmp_path / "log.parquet"), batch)


def test_streaming_writer_appends_row_groups(tmp_path: Path) -> None:
    parts = [make_batch(seed=s) for s in range(3)]
    with LoggedFeedbackWriter(tmp_path / "log.parquet") as writer:
        for p in parts:
            writer.write(p)
    assert writer.rows == sum(len(p) for p in parts)
    assert pq.ParquetFile(tmp_path / "log.parquet").num_row_groups == 3
    _assert_equal(read_logged_feedback(tmp_path / "log.parquet"), LoggedFeedback.concat(parts))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"propensity": np.zeros(12, dtype=np.float32)}, "propensity"),
        ({"position": np.full(12, 9, dtype=np.int16)}, "position"),
        ({"position_propensity": np.full(12, 1.5, dtype=np.float32)}, "position_propensity"),
        ({"click": np.zeros(5, dtype=bool)}, "click"),
        ({"item_features": np.zeros(12, dtype=np.float32)}, "item_features"),
    ],
)
def test_invalid_batches_are_refused(override: dict[str, Any], message: str) -> None:
    with pytest.raises(LoggedFeedbackError, match=message):
        make_batch(**override)


def test_foreign_files_are_refused(tmp_path: Path) -> None:
    pq.write_table(pa.table({"a": [1, 2]}), tmp_path / "other.parquet")
    with pytest.raises(LoggedFeedbackError, match="not logged-feedback"):
        read_logged_feedback(tmp_path / "other.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(LoggedFeedbackError, match="not a Parquet"):
        read_logged_feedback(tmp_path / "junk.parquet")
    with pytest.raises(LoggedFeedbackError, match="no logged-feedback file"):
        read_logged_feedback(tmp_path / "missing.parquet")


# --- format v2: candidate sets -------------------------------------------------------------


def test_v2_round_trip_keeps_candidates_and_metadata(tmp_path: Path) -> None:
    batch = with_candidates(make_batch())
    path = tmp_path / "log.parquet"
    write_logged_feedback(path, batch, metadata={"recsys.simulator": '{"x": 1}'})
    back = read_logged_feedback(path)
    _assert_equal(back, batch)
    assert back.num_candidates == 8
    meta = read_logged_feedback_metadata(path)
    assert meta[VERSION_KEY] == "2"
    assert meta["recsys.simulator"] == '{"x": 1}'


def test_without_candidates_writes_nulls_and_reads_none(tmp_path: Path) -> None:
    write_logged_feedback(tmp_path / "log.parquet", make_batch())
    back = read_logged_feedback(tmp_path / "log.parquet")
    assert back.candidate_ids is None
    assert back.num_candidates is None


def test_v1_files_stay_readable(tmp_path: Path) -> None:
    batch = make_batch()
    v1 = batch.to_table().drop_columns(["candidate_ids"])
    v1 = v1.replace_schema_metadata({VERSION_KEY: "1"})
    pq.write_table(v1, tmp_path / "v1.parquet")
    back = read_logged_feedback(tmp_path / "v1.parquet")
    _assert_equal(back, batch)
    assert back.candidate_ids is None
    assert read_logged_feedback_metadata(tmp_path / "v1.parquet")[VERSION_KEY] == "1"


def test_unknown_versions_are_refused(tmp_path: Path) -> None:
    table = make_batch().to_table().replace_schema_metadata({VERSION_KEY: "3"})
    pq.write_table(table, tmp_path / "v3.parquet")
    with pytest.raises(LoggedFeedbackError, match="found 3"):
        read_logged_feedback(tmp_path / "v3.parquet")


def test_an_item_outside_its_candidate_list_is_refused() -> None:
    batch = with_candidates(make_batch())
    assert batch.candidate_ids is not None
    cands = batch.candidate_ids.copy()
    cands[5] = np.arange(2000, 2008)
    with pytest.raises(LoggedFeedbackError, match=r"candidate_ids: row 5 .* not in its candidate"):
        replace(batch, candidate_ids=cands)
    with pytest.raises(LoggedFeedbackError, match="candidate_ids must have shape"):
        replace(batch, candidate_ids=cands[:3])


def _write_with_candidates(path: Path, batch: LoggedFeedback, column: pa.Array) -> None:
    table = batch.to_table()
    i = table.schema.get_field_index("candidate_ids")
    pq.write_table(table.set_column(i, table.schema.field(i), column), path)


def test_ragged_and_partial_candidate_lists_are_refused_on_read(tmp_path: Path) -> None:
    batch = with_candidates(make_batch())
    assert batch.candidate_ids is not None
    rows = batch.candidate_ids.tolist()
    ragged = [*rows[:-1], rows[-1][:-1]]  # the last row lost a (non-logged) candidate
    _write_with_candidates(tmp_path / "ragged.parquet", batch, pa.array(ragged))
    with pytest.raises(LoggedFeedbackError, match="candidate_ids rows must all have the same"):
        read_logged_feedback(tmp_path / "ragged.parquet")
    partial = [*rows[:-1], None]
    _write_with_candidates(tmp_path / "partial.parquet", batch, pa.array(partial))
    with pytest.raises(LoggedFeedbackError, match="candidate_ids is null on 1 of 12 rows"):
        read_logged_feedback(tmp_path / "partial.parquet")
    outside = [[999_999] * 8, *rows[1:]]
    _write_with_candidates(tmp_path / "outside.parquet", batch, pa.array(outside))
    with pytest.raises(LoggedFeedbackError, match="candidate_ids: row 0"):
        read_logged_feedback(tmp_path / "outside.parquet")


def test_one_file_holds_one_candidate_list_length(tmp_path: Path) -> None:
    with LoggedFeedbackWriter(tmp_path / "log.parquet") as writer:
        writer.write(with_candidates(make_batch(), width=8))
        with pytest.raises(LoggedFeedbackError, match="candidate_ids: this batch has 6"):
            writer.write(with_candidates(make_batch(seed=1), width=6))
        with pytest.raises(LoggedFeedbackError, match="candidate_ids: this batch has None"):
            writer.write(make_batch(seed=2))
    with pytest.raises(LoggedFeedbackError, match="candidate_ids differ between batches"):
        LoggedFeedback.concat([with_candidates(make_batch()), make_batch(seed=1)])
    with pytest.raises(LoggedFeedbackError, match="may not set"):
        LoggedFeedbackWriter(tmp_path / "x.parquet", metadata={VERSION_KEY: "9"})
