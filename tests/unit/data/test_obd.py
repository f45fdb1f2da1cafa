"""Open Bandit Dataset CSVs as logged feedback, evaluated by the item-position estimators."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.data.logged import LoggedFeedbackError, read_logged_feedback, write_logged_feedback
from recsys.data.obd import OBD_SLATE_SIZE, read_obd_csv
from recsys.policy.evaluation.ope_file import evaluate_ope_file

N_ITEMS = 4
CLICK = np.array([0.5, 0.1, 0.1, 0.1])  # per item
THETA = np.array([1.0, 0.8, 0.6])  # per position
TARGET = np.array([0.7, 0.1, 0.1, 0.1])  # the target's P(item at any position)


def _write_obd_csv(path: Path, impressions: int, seed: int = 0) -> None:
    """OBD's layout: an unnamed index column, then timestamp, item_id, position (1-based),
    click, propensity_score, hashed user features and user-item affinities. The logger is
    uniform: every item at every position with probability 1 / N_ITEMS."""
    rng = np.random.default_rng(seed)
    header = [
        "",
        "timestamp",
        "item_id",
        "position",
        "click",
        "propensity_score",
        "user_feature_0",
        "user_feature_1",
        # Out of index order on purpose: the reader sorts them.
        *[f"user-item_affinity_{j}" for j in (1, 0, 3, 2)],
    ]
    lines = [",".join(header)]
    row = 0
    for t in range(impressions):
        stamp = f"2019-11-24 00:{t // 60 % 60:02d}:{t % 60:02d}.000000+00:00"
        for k in range(OBD_SLATE_SIZE):
            item = int(rng.integers(N_ITEMS))
            click = int(rng.random() < CLICK[item] * THETA[k])
            affinity = rng.integers(0, 3, N_ITEMS)
            fields = [
                str(row),
                stamp,
                str(item),
                str(k + 1),
                str(click),
                f"{1 / N_ITEMS}",
                f"{rng.integers(1 << 30):x}",
                f"{rng.integers(1 << 30):x}",
                *[str(affinity[j]) for j in (1, 0, 3, 2)],
            ]
            lines.append(",".join(fields))
            row += 1
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def test_an_obd_csv_becomes_one_request_per_impression(tmp_path: Path) -> None:
    path = tmp_path / "random" / "all.csv"
    _write_obd_csv(path, impressions=4)
    logs = read_obd_csv(path)
    assert len(logs) == 12
    assert len(set(logs.request_id.tolist())) == 12  # every row its own request
    assert logs.request_id[0] == "obd:random/all#0"
    assert set(logs.policy.tolist()) == {"obd:random/all"}
    assert logs.position.tolist() == [0, 1, 2] * 4
    assert set(logs.slate_size.tolist()) == {OBD_SLATE_SIZE}
    assert np.isnan(logs.propensity).all()
    assert np.isnan(logs.slate_log_propensity).all()
    assert logs.position_propensity == pytest.approx(np.full(12, 0.25))
    assert logs.ts[0] == pytest.approx(1574553600.0)  # 2019-11-24 00:00:00 UTC
    assert logs.user_features.shape == (12, N_ITEMS)
    assert logs.item_features.shape == (12, 0)
    first = path.read_text().splitlines()[1].split(",")
    # Affinities in index order: the file has them as 1, 0, 3, 2 from column 8 on.
    assert logs.user_features[0].tolist() == [float(first[i]) for i in (9, 8, 11, 10)]
    assert logs.reward is None
    assert logs.candidate_ids is None
    # It round-trips through the Parquet format with its nulls.
    write_logged_feedback(tmp_path / "obd.parquet", logs)
    back = read_logged_feedback(tmp_path / "obd.parquet")
    assert np.isnan(back.propensity).all()
    assert back.item_features.shape == (12, 0)


def test_item_position_estimators_recover_a_target_on_obd_rows(tmp_path: Path) -> None:
    _write_obd_csv(tmp_path / "random" / "all.csv", impressions=5_000, seed=0)
    logs = read_obd_csv(tmp_path / "random" / "all.csv")
    table = logs.to_table().append_column(
        "target_marginal", pa.array(TARGET[logs.item_id].astype(np.float32))
    )
    path = tmp_path / "obd.parquet"
    pq.write_table(table, path)
    out = evaluate_ope_file(path, position_column="target_marginal", n_bootstrap=300)
    est = out["estimates"]
    assert list(est) == ["logged", "iips", "position_dr"]
    truth = float(THETA.mean() * TARGET @ CLICK)  # expected clicks per impression: 0.304
    logged = float(THETA.mean() * CLICK.mean())  # the uniform logger's: 0.16
    for name in ("iips", "position_dr"):
        assert est[name]["ci_low"] <= truth <= est[name]["ci_high"], (name, est[name])
        assert est[name]["ci_low"] > logged
    assert est["logged"]["ci_low"] <= logged <= est["logged"]["ci_high"]
    assert est["iips"]["n_slates"] == len(logs)
    # Whole-slate estimators need the conditional propensity OBD does not have.
    table = table.append_column("target_p", pa.array(np.full(len(logs), 0.5, np.float32)))
    pq.write_table(table, path)
    with pytest.raises(LoggedFeedbackError, match=r"log's propensity is unknown \(null\)"):
        evaluate_ope_file(path, target_column="target_p", n_bootstrap=10)


def test_malformed_obd_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(",timestamp,item_id,click\n0,2019-11-24 00:00:00,1,0\n")
    with pytest.raises(LoggedFeedbackError, match=r"lacks the fields \['position'"):
        read_obd_csv(path)
    head = ",timestamp,item_id,position,click,propensity_score\n"
    path.write_text(head + "0,2019-11-24 00:00:00,1,0,0,0.5\n")
    with pytest.raises(LoggedFeedbackError, match=r"positions run from 1 to 3, found 0\.\.0"):
        read_obd_csv(path)
    path.write_text(head + "0,2019-11-24 00:00:00,1,1,0,0\n")
    with pytest.raises(LoggedFeedbackError, match="position_propensity is OBD's propensity_score"):
        read_obd_csv(path)
    path.write_text(head + "0,2019-11-24 00:00:00,1,1,0,\n")
    with pytest.raises(LoggedFeedbackError, match="'propensity_score' is empty on 1 rows"):
        read_obd_csv(path)
    with pytest.raises(LoggedFeedbackError, match="no OBD file"):
        read_obd_csv(tmp_path / "missing.csv")
