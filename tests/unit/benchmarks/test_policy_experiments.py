"""The policy experiments' driver: library defaults, the comparison and the docs block."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.policy_experiments import (
    ExperimentConfig,
    _versus,
    markdown_table,
    render_doc_block,
)
from recsys.policy.training.config import documented_config


def test_experiments_train_the_librarys_documented_configs() -> None:
    config = ExperimentConfig()
    assert config.slateq == documented_config("slateq")
    assert config.reinforce == documented_config("reinforce")
    assert config.headline == "event"
    assert set(config.feature_kinds) == {"event", "latent"}


def test_versus_reports_target_and_whether_the_paired_ci_clears_one() -> None:
    base = np.linspace(1.0, 2.0, 200)
    better = _versus(base * 1.2, base, 1.10, seed=0)
    assert better["ratio"] == pytest.approx(1.2)
    assert better["meets_ratio"]
    assert better["ci_above_one"]
    noisy = _versus(base[::-1] * 1.01, base, 1.10, seed=0)
    assert not noisy["meets_ratio"]
    assert not noisy["ci_above_one"]


def _row(mean: float) -> dict[str, object]:
    cell = {"mean": mean, "ci_low": mean - 1, "ci_high": mean + 1, "n": 10}
    return {
        "return": cell,
        "clicks": cell,
        "revenue": cell,
        "steps": cell,
        "conversions": cell,
        "bought_topic_share_after_conversion": cell,
    }


def _same_states(driver: str, names: tuple[str, ...]) -> dict[str, object]:
    """A shared-state block: item shares 0.04, 0.05, ... in ``names`` order; the best RL
    policy (reinforce) 0.02 below myopic on items and 0.03 on ads; blind to the satiation
    signal, myopic would show 0.07 and reinforce 0.08."""
    items = {n: {"mean": 0.04 + 0.01 * i} for i, n in enumerate(names)}
    items["reinforce"] = {"mean": 0.02}
    items |= {"myopic_blind": {"mean": 0.07}, "reinforce_blind": {"mean": 0.08}}
    diff = {"mean": -0.02, "ci_low": -0.03, "ci_high": -0.01}
    return {
        "states_of": driver,
        "windows": 150,
        "reference": "myopic",
        "items": items,
        "items_minus_myopic": {"reinforce": diff},
        "ads_minus_myopic": {"reinforce": {"mean": -0.03, "ci_low": -0.05, "ci_high": -0.01}},
    }


def test_markdown_table_orders_rows() -> None:
    results = {
        "evaluation": {"event": {"policies": {"slateq": _row(1), "x": _row(1), "random": _row(1)}}}
    }
    lines = markdown_table(results, "event").splitlines()
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| random", "| slateq", "| x"]


def test_doc_block_quotes_the_results() -> None:
    names = ("random", "myopic", "myopic_learned", "slateq", "reinforce")
    ratio = {"ratio": 1.25, "ci_low": 1.1, "ci_high": 1.4, "target": 1.1,
             "meets_ratio": True, "ci_above_one": True}  # fmt: skip
    results = {
        "evaluation": {"event": {"policies": {n: _row(10.0) for n in names}}},
        "must_show": {
            "best_rl": "reinforce",
            "best_rl_chosen_on": "validation users",
            "vs_myopic": ratio,
            "vs_myopic_learned": {**ratio, "target": 1.03},
            "slateq_vs_myopic": ratio,
            "reinforce_vs_myopic": ratio,
            "satiation": {
                "users": 3000,
                "after_conversion_steps": 10,
                "bought_topic_share": {n: _row(0.2)["return"] for n in names[1:]},
                "bought_topic_ad_share": {n: _row(0.04)["return"] for n in names[1:]},
                "conversions_per_life": {n: 0.5 for n in names[1:]},
                "return": {n: 100.0 for n in names[1:]},
                "best_rl_vs_myopic": {**ratio, "ratio": 1.3},
                "best_rl_shows_fewer_bought_topic_ads": True,
                "best_rl_shows_fewer_bought_topic_items": False,
                "same_states": {
                    driver: _same_states(driver, names[1:]) for driver in ("myopic", "reinforce")
                },
                "best_rl_shows_fewer_bought_topic_items_on_same_states": True,
                "best_rl_shows_fewer_bought_topic_ads_on_same_states": False,
            },
        },
        "reward_model": {
            "spearman_step_learned_vs_future_ltv": 0.3,
            "spearman_step_clicks_vs_future_ltv": 0.1,
            "spearman_life_learned_vs_ltv": 0.9,
            "spearman_life_clicks_vs_ltv": 0.8,
            "spearman_step_bt_vs_future_ltv": 0.2,
            "spearman_life_bt_vs_ltv": 0.95,
            "objective": "regression",
        },
    }
    block = render_doc_block(results)
    assert "**1.25 [1.10, 1.40]**" in block
    assert "reinforce / myopic (dwell-greedy)" in block
    assert "| myopic | 100.0 | 0.50 | 0.200 [-0.800, 1.200] | 0.040 [-0.960, 1.040] | 10 |" in block
    assert "fewer bought-topic ads than myopic (CIs apart): True" in block
    assert (
        "| states of | purchases | myopic | myopic_learned | slateq | reinforce | myopic_blind "
        "| reinforce_blind | reinforce - myopic, items | reinforce - myopic, ads |"
    ) in block
    assert (
        "| reinforce | 150 | 0.040 | 0.050 | 0.060 | 0.020 | 0.070 | 0.080 "
        "| -0.020 [-0.030, -0.010] | -0.030 [-0.050, -0.010] |"
    ) in block
    assert "on myopic's states: reinforce 0.080 → 0.020, myopic 0.070 → 0.040." in block
    assert "on every policy's states (CI of the difference below 0): **True**" in block
    assert "fewer bought-topic ads: **False**" in block
    assert "return over myopic on these users: **1.30 [1.10, 1.40]**" in block
