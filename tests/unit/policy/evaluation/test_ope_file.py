"""Off-policy evaluation of a logged-feedback file with the target given as a column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.data.logged import LoggedFeedbackError, read_logged_feedback
from recsys.policy import RandomPolicy
from recsys.policy.evaluation.ope_file import evaluate_ope_file
from recsys.policy.testing import TinySlateEnv, collect
from recsys.policy.training.offline import transitions_to_logged_feedback


def test_evaluate_ope_file_with_a_target_column(tmp_path: Path) -> None:
    """Target = the logging policy itself: every importance weight is 1, so IPS and SNIPS
    equal the logged value exactly."""
    env = TinySlateEnv(batch_size=64, seed=0)
    transitions, _ = collect(env, RandomPolicy(), env.reset(), 10, np.random.default_rng(0))
    logs = transitions_to_logged_feedback(transitions)
    table = logs.to_table().append_column("target_p", pa.array(logs.propensity))
    path = tmp_path / "logs.parquet"
    pq.write_table(table, path)
    out = evaluate_ope_file(path, target_column="target_p", n_bootstrap=100)
    est = out["estimates"]
    assert est["ips"]["value"] == pytest.approx(est["logged"]["value"])
    assert est["snips"]["value"] == pytest.approx(est["logged"]["value"])
    with pytest.raises(ValueError, match="no column"):
        evaluate_ope_file(path, target_column="missing")
    assert out["bootstrap_unit"] == "slate"
    # Resampling the 64 users (10 slates each) instead of their slates: same estimates.
    users = evaluate_ope_file(path, target_column="target_p", n_bootstrap=100, cluster_by_user=True)
    assert (users["bootstrap_unit"], users["users"]) == ("user", 64)
    for name, e in users["estimates"].items():
        assert e["value"] == pytest.approx(est[name]["value"])
        assert np.isfinite(e["ci_low"])
        assert e["ci_low"] <= e["value"] <= e["ci_high"]


def _logged_table() -> pa.Table:
    env = TinySlateEnv(batch_size=16, seed=0)
    transitions, _ = collect(env, RandomPolicy(), env.reset(), 4, np.random.default_rng(0))
    logs = transitions_to_logged_feedback(transitions)
    return logs.to_table().append_column("target_p", pa.array(logs.propensity))


def test_a_log_without_rows_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.parquet"
    pq.write_table(_logged_table().slice(0, 0), path)
    with pytest.raises(LoggedFeedbackError, match="holds no logged rows"):
        evaluate_ope_file(path, target_column="target_p", n_bootstrap=10)


@pytest.mark.parametrize(("column", "kind"), [("click", pa.bool_()), ("user_id", pa.string())])
def test_a_null_in_a_non_nullable_column_is_a_logged_feedback_error(
    tmp_path: Path, column: str, kind: pa.DataType
) -> None:
    table = _logged_table()
    values = table.column(column).to_pylist()
    values[3] = None
    i = table.schema.get_field_index(column)
    table = table.set_column(i, pa.field(column, kind, nullable=True), pa.array(values, kind))
    path = tmp_path / "nulls.parquet"
    pq.write_table(table, path)
    message = f"column '{column}' is null on 1 of {table.num_rows} rows"
    with pytest.raises(LoggedFeedbackError, match=message):
        read_logged_feedback(path)
    with pytest.raises(LoggedFeedbackError, match="null"):
        evaluate_ope_file(path, target_column="target_p", n_bootstrap=10)


def test_a_target_with_probability_zero_everywhere_is_refused(tmp_path: Path) -> None:
    """IPS would be 0 and SNIPS undefined: a column of zeros is a mistake, not an estimate."""
    table = _logged_table()
    j = table.schema.get_field_index("target_p")
    zeros = table.set_column(j, "target_p", pa.array(np.zeros(table.num_rows, np.float32)))
    path = tmp_path / "zeros.parquet"
    pq.write_table(zeros, path)
    with pytest.raises(ValueError, match="gives probability 0 to every logged slot"):
        evaluate_ope_file(path, target_column="target_p", n_bootstrap=10)
    # Support on part of the log is enough to estimate (weights are 0 elsewhere).
    some = np.zeros(table.num_rows, np.float32)
    half = table.num_rows // 2
    some[:half] = np.asarray(table.column("propensity"))[:half]
    pq.write_table(table.set_column(j, "target_p", pa.array(some)), path)
    out = evaluate_ope_file(path, target_column="target_p", n_bootstrap=10)
    assert out["estimates"]["snips"]["value"] is not None


def test_an_empty_directory_log_is_a_clear_error(tmp_path: Path) -> None:
    root = tmp_path / "joined"
    (root / "rows" / "date=2024-05-01").mkdir(parents=True)
    with pytest.raises(LoggedFeedbackError, match="no logged-feedback files under"):
        evaluate_ope_file(root, target_column="target_p", n_bootstrap=10)
    pq.write_table(_logged_table().slice(0, 0), root / "rows" / "date=2024-05-01" / "p.parquet")
    with pytest.raises(LoggedFeedbackError, match="holds no logged rows"):
        evaluate_ope_file(root, target_column="target_p", n_bootstrap=10)


def test_a_directory_log_evaluates_like_one_file(tmp_path: Path) -> None:
    table = _logged_table()
    pq.write_table(table, tmp_path / "one.parquet")
    half = table.num_rows // 2
    parts = tmp_path / "joined" / "rows"
    for day, rows in (("2024-05-01", table.slice(0, half)), ("2024-05-02", table.slice(half))):
        (parts / f"date={day}").mkdir(parents=True)
        pq.write_table(rows, parts / f"date={day}" / "part-0.parquet")
    (tmp_path / "joined" / "orphans").mkdir()
    pq.write_table(pa.table({"x": [1]}), tmp_path / "joined" / "orphans" / "o.parquet")
    one = evaluate_ope_file(tmp_path / "one.parquet", target_column="target_p", n_bootstrap=20)
    many = evaluate_ope_file(tmp_path / "joined", target_column="target_p", n_bootstrap=20)
    assert many["estimates"] == one["estimates"]


def test_a_position_column_of_zeros_is_refused(tmp_path: Path) -> None:
    table = _logged_table().append_column("zeros", pa.array(np.zeros(_logged_table().num_rows)))
    pq.write_table(table, tmp_path / "log.parquet")
    with pytest.raises(ValueError, match=r"column 'zeros'.* gives probability 0"):
        evaluate_ope_file(tmp_path / "log.parquet", position_column="zeros", n_bootstrap=10)


def test_exactly_one_kind_of_target(tmp_path: Path) -> None:
    pq.write_table(_logged_table(), tmp_path / "log.parquet")
    with pytest.raises(ValueError, match="exactly one of"):
        evaluate_ope_file(tmp_path / "log.parquet")
    with pytest.raises(ValueError, match="exactly one of"):
        evaluate_ope_file(tmp_path / "log.parquet", position_column="target_p", policy="random")
