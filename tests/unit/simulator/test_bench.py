"""The simulator benchmark function returns JSON-ready numbers (a tiny run, not a timing)."""

from __future__ import annotations

import json

import pytest

from recsys.simulator.bench import run_simulator_benchmark


def test_benchmark_returns_json_ready_figures() -> None:
    result = run_simulator_benchmark(users=64, candidates=20, slate=5, steps=3, repeats=2)
    json.dumps(result)
    assert result["user_steps_per_s"] > 0
    assert len(result["user_steps_per_s_all"]) == 2
    assert result["config"]["users"] == 64
    assert result["machine"]["cpu_count"] >= 1
    assert 0.0 <= result["ctr"] <= 1.0


def test_benchmark_topk_and_checked_variants_run() -> None:
    result = run_simulator_benchmark(
        users=16, candidates=10, slate=3, steps=2, repeats=1, policy="topk_popularity", check=True
    )
    assert result["config"]["policy"] == "topk_popularity"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"slate": 30, "candidates": 10}, "slate_size"),
        ({"users": -1}, "num_users"),
        ({"policy": "oracle"}, "policy"),
        ({"steps": 0}, "steps"),
    ],
)
def test_benchmark_rejects_bad_configuration(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        run_simulator_benchmark(**kwargs)  # type: ignore[arg-type]
