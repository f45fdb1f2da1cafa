"""The REINFORCE sweep's docs block, rendered from a sweep's JSON (the sweep itself is
``benchmarks/tune_policy.py``; its space file must parse and fit the documented config)."""

from __future__ import annotations

from typing import Any

from benchmarks.tune_policy import SPACE, render_doc_block
from recsys.policy.training.config import SETUP_FIELDS, documented_config
from recsys.policy.tuning import METRIC, TrialRecord, check_space, load_space


def _trial(trial_id: str, scores: list[float], budget: int) -> dict[str, Any]:
    reports = [
        {
            "iteration": float(5 * (i + 1)),
            METRIC: s,
            "validation_ci_low": s - 10,
            "validation_ci_high": s + 10,
            "wall_s": 10.0 * (i + 1),
        }
        for i, s in enumerate(scores)
    ]
    done = 5 * len(scores) == budget
    record = TrialRecord(
        trial_id,
        {"gamma": 0.9, "lr": 3e-4, "iterations": budget},
        budget,
        reports,
        reports[-1]["wall_s"],
        checkpoint="ckpt" if done else None,
    )
    return {**record.to_json(), "base_point": trial_id == "t0"}


def test_the_block_lists_every_trial_and_only_the_winner_s_test() -> None:
    trials = [_trial("t0", [200.0, 240.0], 10), _trial("t1", [180.0], 20), _trial("t2", [250.0], 5)]
    test = {"mean": 230.0, "ci_low": 210.0, "ci_high": 250.0, "std": 1.0, "n": 1000}
    result = {
        "trials": trials,
        "winner": {"trial_id": "t2", "params": trials[2]["params"]},
        "test": {"trial_id": "t2", "users": [32768, 33768], "return": test},
        "task": {"validation": {"users": [65336, 65536]}},
        "timing_s": {"search": 300.0, "test": 40.0, "total": 340.0},
        "setup_s": 20.0,
        "machine": {"cpu_count": 2, "load_average_1m_5m_15m": [1.0, 1.0, 1.0]},
    }
    block = render_doc_block(result)
    rows = [line for line in block.splitlines() if line.startswith("| ") and "trial" not in line]
    assert len(rows) == 3
    assert rows[0].startswith("| **t2**"), "best validation first, the winner in bold"
    assert "(documented)" in block
    assert "(stopped by ASHA)" in rows[-1]
    assert "200 users" in block
    assert "1000 test users: return **230.0 [210.0, 250.0]**" in block
    assert "1 stopped early" in block


def test_the_sweep_s_space_fits_the_documented_reinforce_config() -> None:
    def population(config: Any) -> None:
        config.check_population()

    space = load_space(SPACE)
    assert {"gamma", "lr", "iterations"} <= set(space)
    check_space(space, documented_config("reinforce"), fixed=SETUP_FIELDS, check=population)
