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


# --- reward, unknown propensities, partial slates -------------------------------------------


def test_reward_round_trips_with_nulls_and_is_none_without_one(tmp_path: Path) -> None:
    reward = np.linspace(0.0, 1.0, 12, dtype=np.float32)
    reward[3] = np.nan  # the writer computed none for this slot
    batch = make_batch(reward=reward)
    write_logged_feedback(tmp_path / "log.parquet", batch)
    table = pq.read_table(tmp_path / "log.parquet")
    assert table.column("reward").null_count == 1
    back = read_logged_feedback(tmp_path / "log.parquet")
    np.testing.assert_array_equal(back.reward, reward)
    assert make_batch(reward=np.full(12, np.nan, np.float32)).reward is None
    # A v2 file from before the column existed reads with reward None.
    old = make_batch().to_table().drop_columns(["reward"])
    pq.write_table(old, tmp_path / "old.parquet")
    assert read_logged_feedback(tmp_path / "old.parquet").reward is None
    with pytest.raises(LoggedFeedbackError, match="reward must be"):
        make_batch(reward=np.zeros(5, np.float32))


def test_unknown_propensities_are_null_in_parquet_and_nan_in_numpy(tmp_path: Path) -> None:
    nan = np.full(12, np.nan, np.float32)
    served = make_batch(position_propensity=nan)  # a served log knows only the conditional
    marginal_only = make_batch(propensity=nan, slate_log_propensity=nan)
    for name, batch in (("served", served), ("marginal", marginal_only)):
        path = tmp_path / f"{name}.parquet"
        write_logged_feedback(path, batch)
        table = pq.read_table(path)
        column = "position_propensity" if name == "served" else "propensity"
        assert table.column(column).null_count == 12
        _assert_equal(read_logged_feedback(path), batch)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            {"propensity": np.full(12, np.nan, np.float32), "position_propensity": None},
            "row 0 knows neither propensity nor position_propensity",
        ),
        ({"propensity": np.full(12, 2.0, np.float32)}, r"propensity must lie in \(0, 1\]"),
        ({"position_propensity": np.full(12, -0.5, np.float32)}, "position_propensity must lie"),
    ],
)
def test_each_row_needs_one_known_propensity_in_range(
    override: dict[str, Any], message: str
) -> None:
    if override.get("position_propensity", 0) is None:
        override["position_propensity"] = np.full(12, np.nan, np.float32)
    with pytest.raises(LoggedFeedbackError, match=message):
        make_batch(**override)


def test_partial_slates_are_valid_logged_feedback() -> None:
    # One impression per request at positions 1 and 2 of 3-slot slates (an OBD-style log).
    batch = make_batch(
        n_slates=2, slate=1, position=np.array([1, 2], np.int16), slate_size=np.full(2, 3, np.int16)
    )
    assert batch.request_id.tolist() == ["r0-0", "r0-1"]
    assert len(batch) == 2
    with pytest.raises(LoggedFeedbackError, match="position must lie"):
        replace(batch, position=np.array([1, 3], np.int16))


def test_take_selects_rows() -> None:
    batch = with_candidates(make_batch(reward=np.arange(12, dtype=np.float32)))
    part = batch.take(batch.position < 2)
    assert len(part) == 6
    assert part.reward is not None
    assert part.candidate_ids is not None
    np.testing.assert_array_equal(part.reward, [0, 1, 4, 5, 8, 9])


# --- bad files -----------------------------------------------------------------------------


@pytest.mark.parametrize("column", ["user_features", "candidate_ids"])
def test_a_null_inside_a_list_column_names_the_column(tmp_path: Path, column: str) -> None:
    batch = with_candidates(make_batch())
    table = batch.to_table()
    rows = table.column(column).to_pylist()
    rows[4][1] = None
    kind = table.schema.field(column).type
    i = table.schema.get_field_index(column)
    pq.write_table(
        table.set_column(i, pa.field(column, kind), pa.array(rows, kind)), tmp_path / "x.parquet"
    )
    with pytest.raises(
        LoggedFeedbackError,
        match=f"column '{column}' holds 1 null values inside its lists \\(first on row 4\\)",
    ):
        read_logged_feedback(tmp_path / "x.parquet")


def test_concat_refuses_different_feature_widths_and_skips_empty_batches() -> None:
    a, b = make_batch(), make_batch(seed=1, user_features=np.zeros((12, 7), np.float32))
    with pytest.raises(LoggedFeedbackError, match="user_features differ between batches"):
        LoggedFeedback.concat([a, b])
    empty = a.take(np.zeros(12, dtype=bool))
    assert len(LoggedFeedback.concat([empty, a, empty])) == len(a)


# --- directories ---------------------------------------------------------------------------


def _write(path: Path, batch: LoggedFeedback, **extra: pa.Array) -> None:
    table = batch.to_table()
    for name, column in extra.items():
        table = table.append_column(name, column)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def test_a_joiner_directory_reads_its_rows_in_path_order(tmp_path: Path) -> None:
    days = [make_batch(seed=s) for s in range(3)]
    root = tmp_path / "joined"
    # Written out of order; a hive "date" column in the file is dropped on read.
    _write(root / "rows" / "date=2024-05-02" / "part-0.parquet", days[1])
    _write(root / "rows" / "date=2024-05-01" / "part-1.parquet", days[0])
    _write(
        root / "rows" / "date=2024-05-03" / "part-0.parquet",
        days[2],
        date=pa.array(["2024-05-03"] * 12),
    )
    # Side data and writers' leftovers that are not logged feedback.
    pq.write_table(pa.table({"x": [1]}), root / "rows" / "date=2024-05-03" / "_tmp.parquet")
    pq.write_table(pa.table({"x": [1]}), root / "rows" / "date=2024-05-03" / ".x.parquet")
    pq.write_table(pa.table({"x": [1]}), root / "rows" / "date=2024-05-03" / "p.tmp.parquet")
    (root / "rows" / "_staging").mkdir()
    pq.write_table(pa.table({"x": [1]}), root / "rows" / "_staging" / "p.parquet")
    for side in ("orphans", "late"):
        (root / side).mkdir()
        pq.write_table(pa.table({"x": [1]}), root / side / "p.parquet")
    _assert_equal(read_logged_feedback(root), LoggedFeedback.concat(days))
    assert read_logged_feedback_metadata(root)[VERSION_KEY] == "2"
    # Without rows/, every Parquet file under the directory is the log.
    _assert_equal(read_logged_feedback(root / "rows"), LoggedFeedback.concat(days))


def test_directory_metadata_keeps_what_every_file_agrees_on(tmp_path: Path) -> None:
    write_logged_feedback(tmp_path / "a.parquet", make_batch(), metadata={"k": "1", "same": "x"})
    write_logged_feedback(
        tmp_path / "b.parquet", make_batch(seed=1), metadata={"k": "2", "same": "x"}
    )
    v1 = make_batch(seed=2).to_table().drop_columns(["candidate_ids", "reward"])
    pq.write_table(
        v1.replace_schema_metadata({VERSION_KEY: "1", "same": "x", "k": "3"}),
        tmp_path / "c.parquet",
    )
    meta = read_logged_feedback_metadata(tmp_path)
    assert meta == {VERSION_KEY: "2", "same": "x"}
    assert len(read_logged_feedback(tmp_path)) == 36


def test_bad_directories_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "empty" / "rows").mkdir(parents=True)
    with pytest.raises(LoggedFeedbackError, match="no logged-feedback files under"):
        read_logged_feedback(tmp_path / "empty")
    with pytest.raises(LoggedFeedbackError, match="no logged-feedback files under"):
        read_logged_feedback_metadata(tmp_path / "empty")
    with pytest.raises(LoggedFeedbackError, match="no logged-feedback file or directory"):
        read_logged_feedback(tmp_path / "missing")
    mixed = tmp_path / "mixed"
    _write(mixed / "a.parquet", with_candidates(make_batch(), width=8))
    _write(mixed / "b.parquet", with_candidates(make_batch(seed=1), width=6))
    with pytest.raises(LoggedFeedbackError, match="do not fit together: candidate_ids differ"):
        read_logged_feedback(mixed)
    pq.write_table(pa.table({"x": [1]}), mixed / "c.parquet")
    with pytest.raises(LoggedFeedbackError, match=r"c\.parquet is not logged-feedback format"):
        read_logged_feedback(mixed)


def test_a_directory_of_empty_files_reads_as_an_empty_log(tmp_path: Path) -> None:
    write_logged_feedback(tmp_path / "rows" / "a.parquet", make_batch().take(slice(0, 0)))
    assert len(read_logged_feedback(tmp_path)) == 0


def _first_row_only(table: pa.Table, starts: list[int]) -> pa.Table:
    """``table`` as a compact writer stores it: the per-request lists on each slate's first
    row (``starts``) only, empty (user features) or null (candidate ids) on the others."""
    from recsys.data.logged import FIRST_ROW, SLATE_LISTS_KEY

    keep = np.zeros(table.num_rows, dtype=bool)
    keep[starts] = True
    out = table
    for name in ("user_features", "candidate_ids"):
        rows = table.column(name).to_pylist()
        empty = None if name == "candidate_ids" else []
        col = pa.array([r if k else empty for r, k in zip(rows, keep, strict=True)],
                       type=table.schema.field(name).type)  # fmt: skip
        out = out.set_column(out.column_names.index(name), table.schema.field(name), col)
    meta = {**(table.schema.metadata or {}), SLATE_LISTS_KEY: FIRST_ROW}
    return out.replace_schema_metadata(meta)


def test_lists_stored_on_each_slates_first_row_read_back_on_every_row(tmp_path: Path) -> None:
    from recsys.data.logged import SLATE_LISTS_KEY, expand_slate_lists

    slate = 4
    ltv = np.arange(5 * slate, dtype=np.float32)  # not NaN: Table.equals says NaN != NaN
    base = with_candidates(make_batch(n_slates=5, slate=slate, hidden_ltv=ltv))
    # One user feature vector per slate, as a real log has (make_batch draws one per row).
    base = replace(base, user_features=np.repeat(base.user_features[::slate], slate, axis=0))
    full = base.to_table()
    compact = _first_row_only(full, list(range(0, len(base), slate)))
    assert compact.column("candidate_ids").null_count == len(base) - 5
    expanded = expand_slate_lists(compact)
    assert SLATE_LISTS_KEY not in (expanded.schema.metadata or {})
    assert expanded.equals(full)
    assert expand_slate_lists(full) is full  # nothing to do without the key
    pq.write_table(compact, tmp_path / "log.parquet")
    _assert_equal(read_logged_feedback(tmp_path / "log.parquet"), base)


def test_a_slate_is_a_run_of_one_request_id_and_time_and_keeps_a_missing_list_missing() -> None:
    from recsys.data.logged import expand_slate_lists

    # Three slates of two rows: a reused request id starting at a slot again is another
    # slate, and a slate logged without candidates stays without them (not its neighbour's).
    table = pa.table(
        {
            "request_id": ["a", "a", "a", "a", "b", "b"],
            "position": [0, 1, 0, 1, 0, 2],
            "user_features": [[1.0], [], [2.0], [], [], []],
            "candidate_ids": [[5, 6], None, None, None, [7, 8, 9], None],
        },
        schema=pa.schema(
            [("request_id", pa.string()), ("position", pa.int16()),
             ("user_features", pa.list_(pa.float32())), ("candidate_ids", pa.list_(pa.int64()))],
            metadata={b"recsys.logged_feedback.slate_lists": b"first_row"},
        ),
    )  # fmt: skip
    out = expand_slate_lists(table)
    assert out.column("user_features").to_pylist() == [[1.0], [1.0], [2.0], [2.0], [], []]
    assert out.column("candidate_ids").to_pylist() == [
        [5, 6], [5, 6], None, None, [7, 8, 9], [7, 8, 9],
    ]  # fmt: skip
