"""Logged-feedback Parquet format: round trip, validation, refusing foreign files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.data.logged import (
    LoggedFeedback,
    LoggedFeedbackError,
    LoggedFeedbackWriter,
    read_logged_feedback,
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
