"""The multi-click experiment's driver: its documented setup, a quick run end to end, the
goals it reports and the docs block it writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks.multiclick import (
    BEGIN,
    END,
    LEARNED,
    MultiClickExperiment,
    main,
    markdown_table,
    quick_experiment,
    render_doc_block,
    run_experiment,
)
from recsys.doc_blocks import replace_block


@pytest.fixture(scope="module")
def quick_result() -> dict[str, Any]:
    return run_experiment(quick_experiment())


def test_the_documented_run_is_the_issues_setup() -> None:
    experiment = MultiClickExperiment()
    env = experiment.env
    assert (env.num_items, env.slate_size, env.horizon) == (1000, 10, 100)
    assert experiment.small_items == 100
    assert experiment.slateq.clicks == "multi"
    assert experiment.slateq.reward == experiment.reinforce.reward == "env"
    assert experiment.slateq.immediate_head
    assert experiment.episodes >= 100


def test_a_quick_run_evaluates_every_policy_on_the_same_episodes(
    quick_result: dict[str, Any],
) -> None:
    ev = quick_result["evaluation"]
    assert list(ev["policies"]) == ["random", "greedy_oracle", *LEARNED]
    assert ev["seeds"]["disjoint_from_training"]
    assert ev["seeds"]["reset_reproducible"]
    assert ev["best"] in LEARNED
    best = ev["policies"][ev["best"]]["return"]["mean"]
    assert all(best >= ev["policies"][n]["return"]["mean"] for n in LEARNED)
    for name in LEARNED:
        ratio = ev["versus_oracle"][name]
        assert ratio["ci_low"] <= ratio["ratio"] <= ratio["ci_high"]
    assert quick_result["training"]["slateq"]["iterations"] == 2
    shares = ev["clickbait_share_served"]
    assert set(shares) == set(ev["policies"])
    assert all(0.0 <= share <= 1.0 for share in shares.values())


def test_goals_are_reported_whether_met_or_not(quick_result: dict[str, Any]) -> None:
    goals = quick_result["goals"]
    best = goals["best_over_oracle"]
    assert best["goal"] == 1.0
    assert best["meets_goal"] == (best["ratio"] >= 1.0)
    rf = goals["reinforce_over_random"]
    assert rf["goal"] == 2.0
    assert rf["ratio"] == quick_result["evaluation"]["versus_random"]["reinforce"]["ratio"]
    cost = quick_result["update_cost"]
    assert set(cost["median_s"]) == {"large", "small"}
    assert cost["ratio_large_over_small"] == pytest.approx(
        cost["median_s"]["large"] / cost["median_s"]["small"]
    )
    assert goals["slateq_update_ratio"]["meets_goal"] == (cost["ratio_large_over_small"] <= 1.5)
    json.dumps(quick_result)  # JSON-ready


def test_the_docs_block_has_every_policy_and_the_machine(
    quick_result: dict[str, Any], tmp_path: Path
) -> None:
    table = markdown_table(quick_result)
    assert len(table.splitlines()) == 2 + 4
    assert "greedy one-step oracle" in table
    block = render_doc_block(quick_result)
    assert "2-core" in block
    assert "goal >= 2" in block
    doc = tmp_path / "policy.md"
    doc.write_text(f"before\n{BEGIN}\nold\n{END}\nafter\n")
    replace_block(doc, BEGIN, END, block)
    text = doc.read_text()
    assert "old" not in text
    assert text.startswith("before\n")
    assert text.endswith("after\n")


def test_main_quick_writes_the_json_and_leaves_the_docs_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "multiclick.json"
    main(["--quick", "--output", str(out)])
    data = json.loads(out.read_text())
    assert set(data) >= {"experiment", "training", "evaluation", "update_cost", "goals"}
    assert "| random |" in capsys.readouterr().out
