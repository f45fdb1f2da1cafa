"""The live evaluation's report: the claims it checks and the docs block, from the JSON."""

from __future__ import annotations

from typing import Any

from benchmarks.live_eval import must_show, render_doc_block


def _cell(mean: float) -> dict[str, float]:
    return {"mean": mean, "ci_low": mean - 10.0, "ci_high": mean + 10.0, "std": 1.0, "n": 300}


def _results(slateq_live: float, batched_slateq: float) -> dict[str, Any]:
    live = {"slateq": slateq_live, "myopic": 200.0}
    policies = {
        name: {
            "return": _cell(value),
            "clicks": _cell(50.0),
            "revenue": _cell(1.0),
            "not_visible_on_first_try": 3,
            "not_visible_on_first_try_fraction": 0.001,
            "state_waits": 3000,
            "recommend_p50_ms": 12.0,
            "recommend_p99_ms": 80.0,
        }
        for name, value in live.items()
    }
    ratio = {"ratio": slateq_live / 200.0, "ci_low": 1.12, "ci_high": 1.4, "n": 300}
    return {
        "config": {
            "users": 300,
            "population_range": [32768, 33068],
            "max_steps": 200,
            "seed": 2024,
            "concurrency": 16,
        },
        "machine": "2 cores (x86_64)",
        "policies": policies,
        "ratios": {"slateq/myopic": ratio},
        "in_process": {
            name: {
                "in_process_return": _cell(value),
                "live_inside_in_process_ci": True,
                "identical_lives": 298,
                "users": 300,
            }
            for name, value in live.items()
        },
        "batched_in_process": {
            "slateq": {"return": _cell(batched_slateq)},
            "myopic": {"return": _cell(205.0)},
        },
        "timing_s": {"total": 1500.0},
    }


def test_must_show_checks_the_ratio_and_both_in_process_cis() -> None:
    results = _results(slateq_live=260.0, batched_slateq=255.0)
    claims = must_show(results, "slateq")
    assert claims["live_best_rl_vs_myopic"]["meets_ratio"]  # 1.30 >= 1.10
    assert claims["live_best_rl_vs_myopic"]["ci_above_one"]
    assert claims["live_inside_batched_in_process_ci"] == {"slateq": True, "myopic": True}
    assert claims["identical_lives"]["slateq"] == "298/300"
    far = must_show(_results(slateq_live=260.0, batched_slateq=290.0), "slateq")
    assert not far["live_inside_batched_in_process_ci"]["slateq"]  # 260 outside [280, 300]
    low = must_show(_results(slateq_live=210.0, batched_slateq=210.0), "slateq")
    assert not low["live_best_rl_vs_myopic"]["meets_ratio"]  # 1.05


def test_doc_block_quotes_the_json() -> None:
    results = _results(slateq_live=260.0, batched_slateq=255.0)
    results["must_show"] = must_show(results, "slateq")
    block = render_doc_block(results)
    assert "| slateq | 260.0 [250.0, 270.0] | 1.30 [1.12, 1.40] |" in block
    assert "| 298/300 | 255.0 [245.0, 265.0] |" in block
    assert "| 3/3000 | 12 / 80 |" in block
    assert "**1.30 [1.12, 1.40]** (target >= 1.1: True" in block
    assert "2 cores (x86_64)" in block
    assert "on the same users and seeds: slateq True, myopic True; inside the batched" in block
