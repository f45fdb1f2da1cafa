"""Ray rollout scaling: ``python benchmarks/bench_rollout_scaling.py [--users 4096 ...]``.

The same total rollout work (``total_users`` simulated users for ``steps`` steps, SlateQ
inference choosing every slate) is split across 1 and 2 single-threaded Ray rollout actors
and timed from the driver, side by side in one run and interleaved over ``repeats`` so
machine load hits both alike. Throughput = user-steps per wall-clock second, policy
inference included. A benchmark, not a test: :func:`run_rollout_scaling_benchmark` returns
JSON-ready numbers with the machine they were measured on; the script prints them and writes
``benchmarks/results/rollout_scaling.json`` (docs/benchmarks.md quotes that file).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from recsys.config import CandidateSettings
from recsys.pipeline import build_simulator_setup, simulator_env_factory
from recsys.policy.reward.spec import RewardSpec
from recsys.policy.training.config import PolicyFactory, PolicyTrainConfig
from recsys.policy.training.rollout import ensure_ray, make_ray_workers
from recsys.simulator.bench import machine_info

RESULTS = Path(__file__).resolve().parent / "results" / "rollout_scaling.json"


def _timed_round(actors: Sequence[Any], steps: int) -> tuple[float, int, list[float]]:
    import ray

    start = time.perf_counter()
    results: list[tuple[int, float]] = ray.get([a.throughput_probe.remote(steps) for a in actors])
    wall = time.perf_counter() - start
    return wall, sum(r[0] for r in results), [r[1] for r in results]


def run_rollout_scaling_benchmark(
    workers: Sequence[int] = (1, 2),
    *,
    total_users: int = 4096,
    steps: int = 20,
    repeats: int = 5,
    num_candidates: int = 50,
    slate_size: int = 10,
    seed: int = 0,
) -> dict[str, Any]:
    """Rollout throughput with each worker count on the same total work; JSON-ready.

    Each actor owns ``total_users / n`` users and plays ``steps`` steps per call (one call
    per actor per round, so Ray's per-call overhead is amortised over
    ``total_users / n * steps`` user-steps). Reports the median and every round's
    user-steps/s per worker count, the actors' own busy time, and the speedup of each count
    over the smallest.
    """
    if not workers or min(workers) < 1:
        raise ValueError("workers must list counts >= 1")
    if any(total_users % n for n in workers):
        raise ValueError(f"total_users ({total_users}) must divide evenly by every count")
    # Every pool stays alive for the interleaved rounds, so Ray must admit all their actors
    # (num_cpus=1 each); only one pool runs at a time, so this over-subscribes no core.
    base_config = PolicyTrainConfig(
        algo="slateq",
        reward="clicks",
        num_candidates=num_candidates,
        slate_size=slate_size,
        seed=seed,
        log_users=1024,
        log_max_steps=30,
    )
    # The envs serve FAISS candidates and event features, as in training: a small setup
    # (logs, a briefly trained retriever) is built once in a scratch directory.
    scratch = tempfile.TemporaryDirectory(prefix="rollout-scaling-")
    setup = build_simulator_setup(
        base_config, Path(scratch.name), candidates=CandidateSettings(epochs=3)
    )
    started = ensure_ray(num_cpus=sum(workers))
    import ray

    try:
        pools: dict[int, list[Any]] = {}
        for n in workers:
            config = replace(base_config, users=total_users // n, workers=n)
            env_factory = simulator_env_factory(setup, config, seed=seed)
            probe = env_factory(0)
            obs = probe.reset(seed=seed)
            factory = PolicyFactory(
                config, obs.user_features.shape[1], obs.item_features.shape[2], slate_size
            )
            pools[n] = make_ray_workers(n, env_factory, factory, RewardSpec("clicks"), seed=seed)
        # Warm-up: first calls pay for imports, allocations and torch's thread pools.
        for actors in pools.values():
            _timed_round(actors, 2)
        rounds: dict[int, list[dict[str, float]]] = {n: [] for n in workers}
        for _ in range(repeats):
            for n, actors in pools.items():
                wall, user_steps, busy = _timed_round(actors, steps)
                rounds[n].append(
                    {
                        "wall_s": wall,
                        "user_steps": float(user_steps),
                        "user_steps_per_s": user_steps / wall,
                        "actor_busy_s_max": max(busy),
                    }
                )
        for actors in pools.values():
            for actor in actors:
                ray.kill(actor)
    finally:
        if started:
            ray.shutdown()
        scratch.cleanup()
    per_count: dict[str, dict[str, Any]] = {
        str(n): {
            "workers": n,
            "users_per_worker": total_users // n,
            "user_steps_per_s": statistics.median(r["user_steps_per_s"] for r in rs),
            "user_steps_per_s_all": [round(r["user_steps_per_s"], 1) for r in rs],
            "wall_s_median": statistics.median(r["wall_s"] for r in rs),
            "actor_busy_s_max_median": statistics.median(r["actor_busy_s_max"] for r in rs),
        }
        for n, rs in rounds.items()
    }
    base = float(per_count[str(min(workers))]["user_steps_per_s"])
    speedup = {str(n): float(per_count[str(n)]["user_steps_per_s"]) / base for n in workers}
    return {
        "setting": {
            "total_users": total_users,
            "steps_per_round": steps,
            "repeats": repeats,
            "num_candidates": num_candidates,
            "slate_size": slate_size,
            "policy": "SlateQ (untrained weights; inference cost does not depend on them), "
            "epsilon-greedy acting",
            "work": "per step: FAISS candidates from each user's event state, event-derived "
            "user and item features, SlateQ slate optimisation, SlateEnv.step and the event "
            "fold for every user",
            "threads": "one per actor (torch.set_num_threads(1), OMP/MKL/OPENBLAS=1)",
        },
        "results": per_count,
        "speedup_vs_min_workers": speedup,
        "goal": {"workers": 2, "speedup": 1.6},
        "machine": machine_info(),
    }


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
