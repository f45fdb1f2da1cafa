"""The policy experiments' driver: library defaults, the gap closure and the docs table."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.policy_experiments import ExperimentConfig, _gap_closure, markdown_table
from recsys.policy.training.config import documented_config


def test_experiments_train_the_librarys_documented_configs() -> None:
    config = ExperimentConfig()
    assert config.slateq == documented_config("slateq")
    assert config.reinforce == documented_config("reinforce")


def test_gap_closure_is_the_share_of_the_gap_closed() -> None:
    clicks, hidden = np.full(50, 10.0), np.full(50, 30.0)
    learned = np.full(50, 25.0)
    gap = _gap_closure(clicks, hidden, learned, n_bootstrap=100, seed=0)
    assert gap["closure"] == pytest.approx(0.75)
    assert gap["ci_low"] == pytest.approx(0.75)
    assert gap["ci_high"] == pytest.approx(0.75)


def test_markdown_table_orders_rows() -> None:
    cell = {"mean": 1.0, "ci_low": 0.5, "ci_high": 1.5}
    row = {"return": cell, "clicks": cell, "revenue": cell, "steps": cell}
    results = {"evaluation": {"policies": {"slateq": row, "extra": row, "random": row}}}
    lines = markdown_table(results).splitlines()
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| random", "| slateq", "| extra"]
