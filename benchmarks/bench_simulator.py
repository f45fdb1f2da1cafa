"""Simulator throughput: ``python benchmarks/bench_simulator.py [--users 4096 ...]``.

Prints the JSON of :func:`recsys.simulator.bench.run_simulator_benchmark` and writes it to
``benchmarks/results/simulator.json`` (docs/benchmarks.md quotes that file). The headline is
the issue's setting (4096 users, 100 candidates, slate 10, 200 steps, random policy, trusted
fast path); the same run also records a validated-slates variant and a top-k policy variant.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from recsys.simulator.bench import run_simulator_benchmark

RESULTS = Path(__file__).resolve().parent / "results" / "simulator.json"


def main(argv: list[str] | None = None) -> dict[str, object]:
    """Run the benchmark, print its JSON and write it under ``benchmarks/results/``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=4096)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--slate", type=int, default=10)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    common = {
        "users": args.users,
        "candidates": args.candidates,
        "slate": args.slate,
        "steps": args.steps,
        "seed": args.seed,
        "repeats": args.repeats,
    }
    result: dict[str, object] = run_simulator_benchmark(**common)
    checked = run_simulator_benchmark(**common, check=True)
    topk = run_simulator_benchmark(**common, policy="topk_popularity")
    result["variants"] = {
        name: {
            "user_steps_per_s": variant["user_steps_per_s"],
            "user_steps_per_cpu_s": variant["user_steps_per_cpu_s"],
        }
        for name, variant in (("random_checked", checked), ("topk_popularity", topk))
    }
    text = json.dumps(result, indent=2)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
