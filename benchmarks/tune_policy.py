"""REINFORCE's discount and budget as a sweep anyone can rerun: ``python
benchmarks/tune_policy.py`` (``make tune-policy``): estimated 6-7 minutes on the 2-core
machine when it is otherwise idle, about 11 when shared (load average 4-6).

The policy experiments' choices of ``gamma`` and of REINFORCE's budget (iterations, ``lr``)
were scratch runs on the validation users that no JSON recorded. This runs them as a Ray Tune
sweep on the project simulator (:func:`recsys.policy.tuning.tune_policy`): 8 trials drawn
from ``benchmarks/tune_policy_space.yaml`` (the first one the documented values), every
other setting the documented REINFORCE config, each trial in-process on one CPU, two at a
time, scored every 5 iterations on 200 validation users (the population's last) and stopped
early by ASHA when it trails; the winner, chosen on validation alone, is evaluated once on
the docs' 1,000 test users (at most 200 steps a life, seed 2024, as in the experiments'
table). Writes ``benchmarks/results/tune_policy.json``, ``docs/img/tune_policy.png`` and the
results block of docs/policy.md ("Sweeps with Ray Tune"); the winner's checkpoint goes under
``--output``. ``--from-json`` only re-renders the docs block from the JSON.

The same sweep from the command line::

    recsys tune policy --algo reinforce --space benchmarks/tune_policy_space.yaml \\
        --samples 8 --include-base --artifacts .recsys/experiments --output .recsys/tune-reinforce

REINFORCE rather than SlateQ because a trial costs less: on this machine (shared, load
average 4-6) a documented REINFORCE iteration (1,024 users x 10 steps) took about 5 s, a
SlateQ one (2,048 users x 5 steps, 50 updates of 1,024 rows) about 12 s after a 40 s warm
start on the logs. The simulator setup (logs, learned reward, retriever) is that of the
experiments; its retriever is reused from ``--artifacts`` when the experiments published
one there (``python benchmarks/policy_experiments.py --publish .recsys/experiments``),
else trained once.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from recsys.config import CandidateSettings
from recsys.doc_blocks import ci_text, replace_block
from recsys.pipeline import SimulatorSweepTask, build_simulator_setup
from recsys.policy.training.config import documented_config
from recsys.policy.tuning import load_space, parse_space, tune_policy
from recsys.simulator.bench import machine_info

HERE = Path(__file__).resolve().parent
SPACE = HERE / "tune_policy_space.yaml"
RESULTS = HERE / "results" / "tune_policy.json"
FIGURE = HERE.parent / "docs" / "img" / "tune_policy.png"
DOC = HERE.parent / "docs" / "policy.md"
BEGIN, END = "<!-- tune-policy:begin -->", "<!-- tune-policy:end -->"


def _params(params: dict[str, Any]) -> str:
    return ", ".join(
        f"`{k} = {v:.2g}`" if isinstance(v, float) and k == "lr" else f"`{k} = {v}`"
        for k, v in sorted(params.items())
    )


def render_doc_block(result: dict[str, Any]) -> str:
    """The docs' results block: every trial by final validation return, the winner and its
    one test score, how long it took and where."""
    trials = sorted(
        result["trials"],
        key=lambda t: -(t["final_validation_return"] or float("-inf")),
    )
    winner = result["winner"]
    lines = [
        f"Figures from `{RESULTS.relative_to(HERE.parent)}` "
        f"({result['machine']['cpu_count']}-core machine, shared: load average "
        f"{result['machine']['load_average_1m_5m_15m'][0]} when it started). Validation: "
        f"{result['task']['validation']['users'][1] - result['task']['validation']['users'][0]}"
        " users, mean return (LTV minutes) with 95% CI at each trial's last report.",
        "",
        "| trial | sampled | iterations run | validation return | wall s |",
        "|---|---|---|---|---|",
    ]
    for t in trials:
        last = t["validation"][-1] if t["validation"] else None
        score = (
            "—"
            if last is None
            else f"{last['validation_return']:.1f} "
            f"[{last['validation_ci_low']:.1f}, {last['validation_ci_high']:.1f}]"
        )
        ran = f"{t['last_iteration']} of {t['iterations_budget']}"
        ran += " (stopped by ASHA)" if t["stopped_early"] else ""
        ran += " (error)" if t["error"] else ""
        name = t["trial_id"] + (" (documented)" if t.get("base_point") else "")
        name = f"**{name}**" if t["trial_id"] == winner["trial_id"] else name
        wall = "—" if t["wall_s"] is None else f"{t['wall_s']:.0f}"
        lines.append(f"| {name} | {_params(t['params'])} | {ran} | {score} | {wall} |")
    test = result["test"]
    lines += [
        "",
        f"- Winner (on validation alone): {_params(winner['params'])}; evaluated once on "
        f"the {test['users'][1] - test['users'][0]} test users: return "
        f"**{ci_text(test['return'])}** (the experiments' documented REINFORCE: see the "
        "table above).",
        f"- {len(trials)} trials, {sum(t['stopped_early'] for t in trials)} stopped early by "
        f"ASHA; the sweep took {result['timing_s']['search'] / 60:.1f} min, the test "
        f"{result['timing_s']['test']:.0f} s, the setup {result['setup_s']:.0f} s.",
        "",
        "![Validation return per trial](img/tune_policy.png)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the sweep; print the winner and its test score."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--validation-users", type=int, default=200)
    parser.add_argument("--test-users", type=int, default=1000)
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--artifacts", type=Path, default=Path(".recsys/experiments"))
    parser.add_argument("--output", type=Path, default=Path(".recsys/tune-reinforce"))
    parser.add_argument(
        "--from-json", action="store_true", help="only re-render the docs block from the JSON"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="3 tiny trials (smoke test, about 2 minutes); writes nothing under benchmarks/",
    )
    args = parser.parse_args(argv)
    if args.from_json:
        loaded: dict[str, Any] = json.loads(RESULTS.read_text())
        replace_block(DOC, BEGIN, END, render_doc_block(loaded))
        return loaded
    torch.set_num_threads(1)
    started = time.perf_counter()
    base = documented_config("reinforce")
    space = load_space(SPACE)
    options: dict[str, Any] = {
        "num_samples": args.samples,
        "eval_every": args.eval_every,
        "json_path": RESULTS,
        "png_path": FIGURE,
        "output_dir": args.output,
    }
    users = (args.validation_users, args.test_users, args.max_steps)
    quick_dir = None
    if args.quick:
        quick_dir = Path(tempfile.mkdtemp(prefix="tune-policy-quick-"))
        base = replace(base, users=128, steps_per_iteration=5, iterations=4)
        space = {**space, **parse_space({"iterations": {"choice": [2, 4]}})}
        users = (20, 50, 50)
        options.update(
            num_samples=3,
            eval_every=2,
            json_path=quick_dir / "tune_policy.json",
            png_path=quick_dir / "tune_policy.png",
            output_dir=quick_dir,
        )
    setup = build_simulator_setup(base, args.artifacts, candidates=CandidateSettings())
    setup_s = time.perf_counter() - started
    task = SimulatorSweepTask(
        setup, validation_users=users[0], test_users=users[1], max_steps=users[2]
    )
    result = tune_policy(
        task,
        base,
        space,
        concurrency=args.concurrency,
        seed=args.seed,
        include_base=True,
        progress=True,
        extra={
            "command": "python benchmarks/tune_policy.py " + " ".join(argv or sys.argv[1:]),
            "space_file": str(SPACE.relative_to(HERE.parent)),
            "setup_s": setup_s,
            "machine": machine_info(),
        },
        **options,
    )
    if not args.quick:
        replace_block(DOC, BEGIN, END, render_doc_block(result))
    winner, test = result["winner"], result["test"]["return"]
    print(
        json.dumps(
            {
                "winner": winner["params"],
                "validation_return": winner["validation"]["validation_return"],
                "test_return": test,
                "trials": len(result["trials"]),
                "stopped_early": sum(t["stopped_early"] for t in result["trials"]),
                "timing_s": result["timing_s"],
                "json": result["json"],
                "png": result["png"],
            },
            indent=2,
        )
    )
    return result


if __name__ == "__main__":
    main()
