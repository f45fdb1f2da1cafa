"""Off-policy evaluation of a logged-feedback file with the target given as a column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

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
