"""Clicks versus long-term value under always-clickbait, random and always-quality policies.

``python benchmarks/plot_simulator_policies.py`` rolls each policy through one whole life of
every user of a fixed-seed world (until churn, at most ``--max-steps`` steps), writes the
numbers to ``benchmarks/results/simulator_policies.json`` and the figure to
``docs/img/simulator_policies.png`` (quoted by docs/simulator.md). The two myopic oracles
(greedy on click appeal, greedy on expected satisfaction) are shown for reference.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from recsys.config import CatalogSettings, SimulatorSettings
from recsys.data import make_world
from recsys.simulator import REFERENCE_POLICIES, SlateEnv, rollout_lifetimes

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "simulator_policies.json"
FIGURE = ROOT / "docs" / "img" / "simulator_policies.png"

LABELS = {
    "clickbait": "always clickbait",
    "random": "random",
    "quality": "always quality",
    "greedy_click": "oracle: max click appeal",
    "greedy_satisfaction": "oracle: max satisfaction",
}
COLORS = {
    "clickbait": "#d62728",
    "random": "#7f7f7f",
    "quality": "#2ca02c",
    "greedy_click": "#ff7f0e",
    "greedy_satisfaction": "#1f77b4",
}


def run(users: int, max_steps: int, seed: int) -> dict[str, Any]:
    """Roll out every policy on the same world and seeds; JSON-ready results."""
    catalog = CatalogSettings(num_items=2000, num_users=users, num_topics=16, seed=seed)
    settings = SimulatorSettings(seed=seed)
    world = make_world(catalog)
    out: dict[str, Any] = {
        "config": {
            "catalog": catalog.model_dump(),
            "simulator": "SimulatorSettings defaults",
            "num_candidates": settings.num_candidates,
            "slate_size": settings.slate_size,
            "max_steps": max_steps,
            "seed": seed,
        },
        "policies": {},
    }
    for name in LABELS:
        env = SlateEnv(world, seed=seed + 1, settings=settings)
        summary = rollout_lifetimes(
            env,
            REFERENCE_POLICIES[name],
            np.arange(world.num_users),
            slate_size=settings.slate_size,
            max_steps=max_steps,
            rng=np.random.default_rng(seed + 2),
        )
        stats = summary.as_dict()
        stats["lifetime_value_min_sem"] = float(
            summary.dwell_s.std(ddof=1) / 60.0 / np.sqrt(summary.dwell_s.shape[0])
        )
        stats["alive_after_steps"] = {
            str(t): float(summary.alive_after[t - 1])
            for t in (1, 5, 10, 20, 50, 100, 200, 500, max_steps)
            if t <= max_steps
        }
        out["policies"][name] = stats
        out.setdefault("_curves", {})[name] = summary.alive_after.tolist()
    return out


def plot(results: dict[str, Any], path: Path) -> None:
    """Left: CTR vs lifetime value per policy. Right: fraction of users still active."""
    fig, (ax_value, ax_alive) = plt.subplots(1, 2, figsize=(11, 4.4))
    for name, stats in results["policies"].items():
        ax_value.errorbar(
            stats["ctr"],
            stats["lifetime_value_min"],
            yerr=1.96 * stats["lifetime_value_min_sem"],
            fmt="o",
            ms=9,
            capsize=4,
            color=COLORS[name],
            label=LABELS[name],
        )
        curve = np.asarray(results["_curves"][name])
        ax_alive.plot(np.arange(1, curve.size + 1), curve, color=COLORS[name], lw=2)
    ax_value.set_yscale("log")
    ax_value.set_xlabel("click-through rate per slate (short-term)")
    ax_value.set_ylabel("lifetime value: engagement minutes per user (log)")
    ax_value.set_title("Clicks are not long-term value")
    ax_value.grid(alpha=0.3, which="both")
    ax_value.legend(loc="lower left", fontsize=8)
    ax_alive.set_xscale("log")
    ax_alive.set_xlabel("steps (slates served)")
    ax_alive.set_ylabel("fraction of users not yet churned")
    ax_alive.set_title("Clickbait drives users away")
    ax_alive.grid(alpha=0.3, which="both")
    cfg = results["config"]
    fig.suptitle(
        f"{cfg['catalog']['num_users']} users, {cfg['catalog']['num_items']} items, "
        f"{cfg['num_candidates']} candidates, slate {cfg['slate_size']}, seed {cfg['seed']}",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run, write the JSON and the PNG, print the headline numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=400)
    parser.add_argument("--max-steps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--figure", type=Path, default=FIGURE)
    args = parser.parse_args(argv)
    results = run(args.users, args.max_steps, args.seed)
    plot(results, args.figure)
    curves = results.pop("_curves")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    results["_curves"] = curves
    for name, stats in results["policies"].items():
        print(
            f"{LABELS[name]:>26}: CTR {stats['ctr']:.3f}  first-step CTR "
            f"{stats['first_step_ctr']:.3f}  LTV {stats['lifetime_value_min']:.1f} min  "
            f"sessions {stats['sessions_per_life']:.2f}  steps {stats['steps_per_life']:.1f}"
        )
    return results


if __name__ == "__main__":
    main()
