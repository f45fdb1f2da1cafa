"""Long horizons: ``python benchmarks/long_horizon.py [--quick]`` (``make long-horizon``).

Issue 13's claim: on the project simulator with long lives (>= 80 steps), REINFORCE whose
returns bootstrap from a learned value across rollout boundaries (GAE, ``returns="gae"``)
earns >= 1.10x the return of the REINFORCE the project had (returns cut at the end of each
10-step rollout, ``returns="rollout"``), with a paired CI above 1, and stays within 5% of
SlateQ or beats it.

Setup: the policy experiments' simulator (``documented_config``) with a doubled session
budget (``session_budget_s``), so lives last well over 80 steps. Both REINFORCE variants
are trained from the documented REINFORCE settings at each discount of ``gammas``, and the
discount of each is chosen on the validation users (the last users of the population);
SlateQ from its documented settings. The chosen ones are evaluated once, on the same test
users and seeds (paired), for one life each of at most ``eval_max_steps`` steps.

Writes ``benchmarks/results/long_horizon.json``, ``docs/img/long_horizon.png`` (learning
curves and test returns) and the block between the ``<!-- long-horizon -->`` markers of
``docs/policy.md``. ``--quick`` shrinks every budget (a smoke run that writes nothing
unless ``--output`` is given).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recsys.doc_blocks import ci_text, ratio_text, replace_block
from recsys.pipeline import build_simulator_setup, train_simulator_policy
from recsys.policy.base import BatchSlatePolicy
from recsys.policy.evaluation.simulator import (
    evaluate_in_simulator,
    evaluation_users,
    paired_ratio,
    validation_users,
)
from recsys.policy.training.config import PolicyTrainConfig, documented_config

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "long_horizon.json"
FIGURE = ROOT / "docs" / "img" / "long_horizon.png"
DOC = ROOT / "docs" / "policy.md"
BEGIN, END = "<!-- long-horizon:begin -->", "<!-- long-horizon:end -->"
VARIANTS = ("reinforce_rollout", "reinforce_gae")


@dataclass(frozen=True)
class LongHorizonConfig:
    """What the experiment runs (fixed seeds throughout)."""

    session_budget_s: float = 2400.0
    gammas: tuple[float, ...] = (0.9, 0.97)
    reinforce: PolicyTrainConfig = field(default_factory=lambda: documented_config("reinforce"))
    slateq: PolicyTrainConfig = field(default_factory=lambda: documented_config("slateq"))
    eval_users: int = 1000
    validation_users: int = 500
    eval_max_steps: int = 400
    eval_seed: int = 2024

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["reinforce"] = self.reinforce.to_dict()
        out["slateq"] = self.slateq.to_dict()
        return out


def quick_config() -> LongHorizonConfig:
    """A smoke run: tiny budgets, one discount."""
    return LongHorizonConfig(
        gammas=(0.9,),
        reinforce=replace(documented_config("reinforce"), iterations=2, users=64),
        slateq=replace(
            documented_config("slateq"), iterations=2, users=64, updates_per_iteration=5
        ),
        eval_users=50,
        validation_users=50,
        eval_max_steps=100,
    )


def run(cfg: LongHorizonConfig, root: Path, progress: bool = True) -> dict[str, Any]:
    """Train, choose on validation users, evaluate once on test users; JSON-ready."""
    start = time.perf_counter()
    base = replace(cfg.slateq, session_budget_s=cfg.session_budget_s)
    torch.manual_seed(base.seed)
    setup = build_simulator_setup(base, root, progress=progress)
    valid_users = setup.make_users(validation_users(cfg.validation_users), base.features)
    test_users = setup.make_users(evaluation_users(cfg.eval_users), base.features)

    runs: dict[str, Any] = {}
    candidates: dict[str, dict[str, BatchSlatePolicy]] = {v: {} for v in VARIANTS}
    for variant in VARIANTS:
        for gamma in cfg.gammas:
            run_cfg = replace(
                cfg.reinforce,
                session_budget_s=cfg.session_budget_s,
                gamma=gamma,
                returns="gae" if variant == "reinforce_gae" else "rollout",
            )
            result = train_simulator_policy(run_cfg, setup, progress=progress)
            key = f"{variant}@{gamma}"
            candidates[variant][key] = result.policy
            runs[key] = {
                "config": run_cfg.to_dict(),
                "wall_s": result.wall_s,
                "curve": result.curve,
            }
    slateq_cfg = replace(cfg.slateq, session_budget_s=cfg.session_budget_s)
    slateq = train_simulator_policy(slateq_cfg, setup, progress=progress)
    runs["slateq"] = {
        "config": slateq_cfg.to_dict(),
        "wall_s": slateq.wall_s,
        "curve": slateq.curve,
    }

    validation = evaluate_in_simulator(
        {k: p for group in candidates.values() for k, p in group.items()},
        make_users=valid_users,
        max_steps=cfg.eval_max_steps,
        seed=cfg.eval_seed + 1,
    )
    validation.pop("_per_user")
    chosen = {
        variant: max(group, key=lambda k: validation["policies"][k]["return"]["mean"])
        for variant, group in candidates.items()
    }
    policies = {variant: candidates[variant][chosen[variant]] for variant in VARIANTS}
    policies["slateq"] = slateq.policy
    test = evaluate_in_simulator(
        policies,
        make_users=test_users,
        max_steps=cfg.eval_max_steps,
        seed=cfg.eval_seed,
    )
    per_user = test.pop("_per_user")
    gae, cut, sq = (per_user[k].returns for k in ("reinforce_gae", "reinforce_rollout", "slateq"))
    vs_rollout = paired_ratio(gae, cut, seed=cfg.eval_seed)
    vs_slateq = paired_ratio(gae, sq, seed=cfg.eval_seed)
    steps = {k: float(np.mean(v.steps)) for k, v in per_user.items()}
    must_show = {
        "gae_vs_rollout": {
            **vs_rollout,
            "target": 1.10,
            "meets_ratio": vs_rollout["ratio"] >= 1.10,
            "ci_above_one": vs_rollout["ci_low"] > 1.0,
        },
        "gae_vs_slateq": {
            **vs_slateq,
            "within_5_percent_or_better": vs_slateq["ratio"] >= 0.95,
        },
        "mean_steps_lived": steps,
        "long_lives": min(steps.values()) >= 80,
    }
    return {
        "config": cfg.to_dict(),
        "chosen_on_validation": chosen,
        "validation": validation,
        "test": test,
        "must_show": must_show,
        "runs": runs,
        "machine": {"cpus": os.cpu_count()},
        "timing_s": time.perf_counter() - start,
    }


def plot(results: dict[str, Any], path: Path) -> None:
    """Learning curves (reward per user-step) of every run, and the test returns."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    colors = {"reinforce_rollout": "#7f7f7f", "reinforce_gae": "#1f77b4", "slateq": "#2ca02c"}
    chosen = set(results["chosen_on_validation"].values()) | {"slateq"}
    for key, run_ in results["runs"].items():
        xs = [r["user_steps"] / 1e6 for r in run_["curve"]]
        ys = [r["reward_per_user_step"] for r in run_["curve"]]
        style = "-" if key in chosen else ":"
        left.plot(xs, ys, style, color=colors[key.split("@")[0]], label=key)
    left.set_xlabel("user-steps (millions)")
    left.set_ylabel("training reward per user-step")
    left.set_title("Learning curves (exploring; dotted: not chosen)")
    left.legend(fontsize=8)
    pol = results["test"]["policies"]
    names = list(pol)
    means = [pol[n]["return"]["mean"] for n in names]
    err = [
        [pol[n]["return"]["mean"] - pol[n]["return"]["ci_low"] for n in names],
        [pol[n]["return"]["ci_high"] - pol[n]["return"]["mean"] for n in names],
    ]
    right.bar(names, means, yerr=err, capsize=4, color=[colors[n] for n in names])
    right.set_ylabel("test return per life (LTV min), 95% CI")
    right.set_title("Long lives: test users")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def doc_block(results: dict[str, Any]) -> str:
    """The docs table and claims, from the JSON."""
    pol = results["test"]["policies"]
    ms = results["must_show"]
    cfg = results["config"]
    lines = [
        f"Test users ({cfg['eval_users']}), session budget {cfg['session_budget_s']:.0f} s, "
        f"one life each of at most {cfg['eval_max_steps']} steps (2-core machine, "
        f"{results['timing_s'] / 60:.0f} min for the whole run):",
        "",
        "| policy | discount (chosen on validation) | return per life (LTV min) | steps lived |",
        "|---|---|---|---|",
    ]
    for name in pol:
        gamma = (
            results["chosen_on_validation"][name].split("@")[1]
            if name in results["chosen_on_validation"]
            else str(cfg["slateq"]["gamma"])
        )
        lines.append(
            f"| {name} | {gamma} | {ci_text(pol[name]['return'])} | "
            f"{ms['mean_steps_lived'][name]:.1f} |"
        )
    lines += [
        "",
        f"- GAE / rollout-cut REINFORCE: **{ratio_text(ms['gae_vs_rollout'])}** "
        f"(target >= 1.10: {ms['gae_vs_rollout']['meets_ratio']}; paired CI above 1: "
        f"{ms['gae_vs_rollout']['ci_above_one']})",
        f"- GAE REINFORCE / SlateQ: **{ratio_text(ms['gae_vs_slateq'])}** (within 5% or "
        f"better: {ms['gae_vs_slateq']['within_5_percent_or_better']})",
        "- Validation returns: "
        + ", ".join(
            f"{k} {v['return']['mean']:.1f}" for k, v in results["validation"]["policies"].items()
        ),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny budgets (smoke run)")
    parser.add_argument("--output", type=Path, default=None, help="JSON path")
    parser.add_argument("--from-json", type=Path, default=None, help="redraw from a JSON")
    args = parser.parse_args()
    if args.from_json is not None:
        results = json.loads(args.from_json.read_text())
    else:
        cfg = quick_config() if args.quick else LongHorizonConfig()
        with tempfile.TemporaryDirectory() as tmp:
            results = run(cfg, Path(tmp))
    out = args.output or (None if args.quick else RESULTS)
    print(doc_block(results))
    if out is None:
        return
    if args.from_json is None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1, allow_nan=False, default=float))
    if not args.quick:
        plot(results, FIGURE)
        replace_block(DOC, BEGIN, END, doc_block(results))


if __name__ == "__main__":
    main()
