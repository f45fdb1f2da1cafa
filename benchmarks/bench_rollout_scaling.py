"""Ray rollout scaling: ``python benchmarks/bench_rollout_scaling.py [--users 4096 ...]``.

Prints the JSON of :func:`recsys.policy.bench.run_rollout_scaling_benchmark` and writes it to
``benchmarks/results/rollout_scaling.json`` (docs/benchmarks.md quotes that file): the same
total rollout work with 1 and 2 single-threaded Ray rollout actors, measured side by side.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from recsys.policy.bench import run_rollout_scaling_benchmark

RESULTS = Path(__file__).resolve().parent / "results" / "rollout_scaling.json"


def main(argv: list[str] | None = None) -> dict[str, object]:
    """Run the benchmark, print its JSON and write it under ``benchmarks/results/``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=4096, help="total users (split)")
    parser.add_argument("--steps", type=int, default=20, help="steps per actor call")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--candidates", type=int, default=50)
    parser.add_argument("--slate", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    result = run_rollout_scaling_benchmark(
        (1, 2),
        total_users=args.users,
        steps=args.steps,
        repeats=args.repeats,
        num_candidates=args.candidates,
        slate_size=args.slate,
        seed=args.seed,
    )
    text = json.dumps(result, indent=2)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
