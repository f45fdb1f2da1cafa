"""The loop closed over HTTP: ``python benchmarks/live_eval.py --artifacts DIR``.

Serves the policies that ``benchmarks/policy_experiments.py --publish DIR`` trained (SlateQ,
REINFORCE top-K and the dwell-greedy myopic baseline, all on event-derived features) through
the real running service, one at a time: a real ``redis-server``, a Kafka-protocol broker, the
online updater and Ray Serve on loopback (:func:`recsys.live.evaluate_live`). Simulated test
users post ``/recommend`` and every signal to ``/feedback``; each waits until its feedback is
visible in the store before its next request. Each policy is also evaluated in process on the
same users:

- *paired*: the same client slices, simulator seeds and order of steps with the policy called
  directly (:func:`recsys.live.run_in_process`); with greedy serving a user's life should come
  out the same step for step, so the live return must lie inside this run's CI;
- *batched*: the experiments' own protocol (:func:`recsys.policy.evaluation.simulator.
  run_policy_lives`: all users stepped together, other random streams), for reference.

Writes ``benchmarks/results/live_eval.json`` and the table between the ``<!-- live-table -->``
markers of ``docs/policy.md``. ``--from-json`` re-renders the table only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from recsys.config import ArtifactSettings, Settings
from recsys.doc_blocks import ci_text, ratio_text, replace_block
from recsys.live import LIVE_POLICIES, LiveEvaluation, evaluate_live
from recsys.pipeline import catalog_config
from recsys.policy.evaluation.simulator import mean_ci, paired_ratio, run_policy_lives
from recsys.policy.training.config import documented_config

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "live_eval.json"
EXPERIMENTS = ROOT / "benchmarks" / "results" / "policy_experiments.json"
DOC = ROOT / "docs" / "policy.md"
BEGIN, END = "<!-- live-table:begin -->", "<!-- live-table:end -->"
TARGET = 1.10


def batched_in_process(
    settings: Settings, names: Sequence[str], users: int, max_steps: int, seed: int
) -> dict[str, dict[str, Any]]:
    """Each published policy on the same test users with the experiments' batched protocol."""
    config = catalog_config(documented_config("slateq"), settings.catalog)
    run = LiveEvaluation(
        settings,
        config,
        users=users,
        max_steps=max_steps,
        seed=seed,
        concurrency=1,
    )
    population = run.world.select_users(run.users)
    out: dict[str, dict[str, Any]] = {}
    returns: dict[str, npt.NDArray[np.float64]] = {}
    for name in names:
        served = run.load(name)
        ev = run_policy_lives(
            served.policy,
            partial(run.simulated_users, served, population),
            max_steps=max_steps,
            seed=seed,
        )
        out[name] = {"return": mean_ci(ev.returns), "version": served.version}
        returns[name] = ev.returns
    for name in names:
        if name != "myopic":
            out[name]["vs_myopic"] = paired_ratio(returns[name], returns["myopic"], seed=seed)
    return out


def must_show(results: Mapping[str, Any], best: str) -> dict[str, Any]:
    """The issue's live claims, checked on the JSON."""
    ratio = results["ratios"][f"{best}/myopic"]
    paired = results["in_process"]
    batched = results["batched_in_process"]
    live_mean = {n: p["return"]["mean"] for n, p in results["policies"].items()}
    return {
        "best_rl": best,
        "best_rl_from": "benchmarks/results/policy_experiments.json (chosen on validation users)",
        "live_best_rl_vs_myopic": {
            **ratio,
            "target": TARGET,
            "meets_ratio": ratio["ratio"] >= TARGET,
            "ci_above_one": ratio["ci_low"] > 1.0,
        },
        "live_inside_paired_in_process_ci": {
            n: c["live_inside_in_process_ci"] for n, c in paired.items()
        },
        "live_inside_batched_in_process_ci": {
            n: bool(b["return"]["ci_low"] <= live_mean[n] <= b["return"]["ci_high"])
            for n, b in batched.items()
        },
        "identical_lives": {n: f"{c['identical_lives']}/{c['users']}" for n, c in paired.items()},
        "not_visible_on_first_try": {
            n: p["not_visible_on_first_try_fraction"] for n, p in results["policies"].items()
        },
    }


def _flags(flags: Mapping[str, bool]) -> str:
    return ", ".join(f"{name} {flag}" for name, flag in flags.items())


def render_doc_block(results: Mapping[str, Any]) -> str:
    """The Markdown table and claims of ``docs/policy.md`` (from the JSON only)."""
    cfg, must = results["config"], results["must_show"]
    lines = [
        f"`recsys evaluate live` on {cfg['users']} test users (population "
        f"{cfg['population_range'][0]}..{cfg['population_range'][1] - 1}), one life each of at "
        f"most {cfg['max_steps']} steps, seed {cfg['seed']}, {cfg['concurrency']} client "
        f"threads, policies served greedily; {results['machine']}. Return: hidden lifetime "
        "value (dwell minutes), mean [95% CI].",
        "",
        "| policy | live return | live / myopic | in process, paired | identical lives "
        "| in process, batched | clicks | revenue | not visible on 1st try | p50 / p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, p in results["policies"].items():
        paired = results["in_process"][name]
        batched = results["batched_in_process"][name]
        ratio = results["ratios"].get(f"{name}/myopic")
        lines.append(
            f"| {name} | {ci_text(p['return'])} | {ratio_text(ratio) if ratio else '1'} "
            f"| {ci_text(paired['in_process_return'])} "
            f"| {paired['identical_lives']}/{paired['users']} | {ci_text(batched['return'])} "
            f"| {p['clicks']['mean']:.1f} | {p['revenue']['mean']:.2f} "
            f"| {p['not_visible_on_first_try']}/{p['state_waits']} "
            f"| {p['recommend_p50_ms']:.0f} / {p['recommend_p99_ms']:.0f} |"
        )
    r = must["live_best_rl_vs_myopic"]
    lines += [
        "",
        f"- Best RL policy ({must['best_rl']}, chosen on validation users) over myopic, live: "
        f"**{ratio_text(r)}** (target >= {r['target']}: {r['meets_ratio']}; paired CI above 1: "
        f"{r['ci_above_one']}).",
        "- Live return inside the in-process CI of the same checkpoint on the same users and "
        f"seeds: {_flags(must['live_inside_paired_in_process_ci'])}; inside the batched "
        f"in-process CI: {_flags(must['live_inside_batched_in_process_ci'])}.",
        f"- {results['timing_s']['total'] / 60:.0f} minutes in all.",
    ]
    return "\n".join(lines)


def write_doc(results: Mapping[str, Any]) -> None:
    """Replace the block between the markers of docs/policy.md."""
    replace_block(DOC, BEGIN, END, render_doc_block(results))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the live evaluation (or re-render from JSON) and write JSON and docs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=ROOT / ".recsys" / "experiments")
    parser.add_argument(
        "--policies", default=",".join(LIVE_POLICIES), help="comma-separated; must hold myopic"
    )
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--from-json", action="store_true", help="only re-render the docs")
    parser.add_argument("--no-docs", action="store_true", help="do not touch docs/policy.md")
    args = parser.parse_args(argv)
    if args.from_json:
        results: dict[str, Any] = json.loads(args.output.read_text())
        write_doc(results)
        return results
    best = json.loads(EXPERIMENTS.read_text())["must_show"]["best_rl"]
    names = [n for n in args.policies.split(",") if n]
    if "myopic" not in names or best not in names:
        raise SystemExit(f"--policies must include myopic and the best RL policy ({best})")
    torch.set_num_threads(1)
    settings = Settings(artifacts=ArtifactSettings(root=args.artifacts.resolve()))
    start = time.perf_counter()
    results = evaluate_live(
        settings,
        catalog_config(documented_config("slateq"), settings.catalog),
        policies=names,
        users=args.users,
        max_steps=args.max_steps,
        seed=args.seed,
        concurrency=args.concurrency,
        progress=True,
    )
    t0 = time.perf_counter()
    results["batched_in_process"] = batched_in_process(
        settings, names, args.users, args.max_steps, args.seed
    )
    results["timing_s"] = {
        "batched_in_process": time.perf_counter() - t0,
        "total": time.perf_counter() - start,
    }
    results["machine"] = f"{os.cpu_count()} cores ({platform.machine()})"
    results["must_show"] = must_show(results, best)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["must_show"], indent=2))
    if not args.no_docs:
        write_doc(results)
    return results


if __name__ == "__main__":
    main()
