"""Policy experiments: ``python benchmarks/policy_experiments.py [--quick]``.

Runs :func:`recsys.policy.experiments.run_policy_experiments` (fixed seeds, the documented
:class:`~recsys.policy.experiments.ExperimentConfig`) and the OPE known-answer check
(:func:`recsys.policy.experiments.ope_known_answer`), then writes

- ``benchmarks/results/policy_experiments.json`` (everything, including learning curves),
- ``docs/img/policy_learning_curves.png`` (from that JSON),
- the results table between the ``<!-- policy-table -->`` markers of ``docs/policy.md``.

``--quick`` shrinks every budget (a smoke run; its numbers are not the documented ones, and
it writes nothing unless ``--output`` is given).
``--from-json`` regenerates the figure and table from an existing JSON without training.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from recsys.policy.experiments import (
    ExperimentConfig,
    markdown_table,
    ope_known_answer,
    plot_learning_curves,
    run_policy_experiments,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "policy_experiments.json"
FIGURE = ROOT / "docs" / "img" / "policy_learning_curves.png"
DOC = ROOT / "docs" / "policy.md"
BEGIN, END = "<!-- policy-table:begin -->", "<!-- policy-table:end -->"


def _fmt_ratio(r: dict[str, Any]) -> str:
    return f"{r['ratio']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]"


def render_doc_block(results: dict[str, Any]) -> str:
    """The generated Markdown: evaluation table, must-show lines and the OPE check."""
    must = results["must_show"]
    lines = [markdown_table(results), ""]
    for key, label in (("slateq_vs_myopic", "myopic"), ("slateq_vs_random", "random")):
        m = must[key]
        lines.append(
            f"- SlateQ / {label}: **{_fmt_ratio(m)}** (target >= {m['target']}; "
            f"met: {m['meets_ratio']}; return CIs do not overlap: {m['cis_do_not_overlap']})"
        )
    for name, r in results["evaluation"]["ratios"].items():
        if name not in ("slateq/myopic", "slateq/random"):
            lines.append(f"- {name}: {_fmt_ratio(r)}")
    if "gap_closure" in must:
        g = must["gap_closure"]
        lines.append(
            f"- Gap closed by the learned reward, (learned - clicks) / (hidden - clicks) of "
            f"SlateQ's true return: **{g['closure']:.2f} [{g['ci_low']:.2f}, "
            f"{g['ci_high']:.2f}]** (clicks {g['clicks_return']:.1f}, hidden "
            f"{g['hidden_return']:.1f}, learned {g['learned_return']:.1f} min; target >= 0.8, "
            f"met: {g['meets_target']})"
        )
    validation = results.get("validation")
    if validation:
        returns = ", ".join(
            f"{name} {p['return']['mean']:.1f}" for name, p in validation["policies"].items()
        )
        lines.append(
            f"- Validation users (where settings were chosen; not the table's users), mean "
            f"return: {returns}"
        )
    rm = results["reward_model"]
    lines.append(
        f"- Learned reward vs hidden LTV, Spearman on held-out logged users: per step "
        f"{rm['spearman_step_learned_vs_future_ltv']:.3f} (clicks-only "
        f"{rm['spearman_step_clicks_vs_future_ltv']:.3f}), per life "
        f"{rm['spearman_life_learned_vs_ltv']:.3f} (clicks-only "
        f"{rm['spearman_life_clicks_vs_ltv']:.3f}); Bradley-Terry on pairs of lives ranked by "
        f"LTV: per step {rm['spearman_step_bt_vs_future_ltv']:.3f}, per life "
        f"{rm['spearman_life_bt_vs_ltv']:.3f} (pair accuracy {rm['bt_pair_accuracy']:.3f}); "
        f"training uses the {rm['objective']} fit"
    )
    ope = results.get("ope_known_answer")
    if ope:
        truth = ope["on_policy_value"]
        lines += [
            "",
            f"OPE known-answer check: on-policy value of the target "
            f"{truth['mean']:.4f} [{truth['ci_low']:.4f}, {truth['ci_high']:.4f}] clicks/slate "
            f"({ope['config']['onpolicy_users']:,} users).",
            "",
            "| estimator | estimate [95% bootstrap CI] | ESS | on-policy value inside CI |",
            "|---|---|---|---|",
        ]
        for name, e in ope["estimates"].items():
            lines.append(
                f"| {name} | {e['value']:.4f} [{e['ci_low']:.4f}, {e['ci_high']:.4f}] | "
                f"{e['ess']:.0f} | {e['on_policy_value_inside_ci']} |"
            )
    return "\n".join(lines)


def write_outputs(results: dict[str, Any]) -> None:
    """Figure and docs table from the results (the JSON is the source of truth)."""
    plot_learning_curves(results, FIGURE)
    if DOC.is_file():
        text = DOC.read_text()
        block = f"{BEGIN}\n{render_doc_block(results)}\n{END}"
        pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
        if pattern.search(text):
            DOC.write_text(pattern.sub(lambda _: block, text))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run (or reload) the experiments and write JSON, figure and docs table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny budgets (smoke test)")
    parser.add_argument("--from-json", action="store_true", help="only re-render outputs")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--output", type=Path, default=None, help=f"JSON path (default {RESULTS}; --quick: none)"
    )
    args = parser.parse_args(argv)
    output: Path | None = args.output or (None if args.quick else RESULTS)
    if args.from_json:
        results: dict[str, Any] = json.loads((output or RESULTS).read_text())
        write_outputs(results)
        return results
    torch.set_num_threads(1)
    config = ExperimentConfig()
    ope_kwargs: dict[str, Any] = {}
    if args.quick:
        config = replace(
            config,
            slateq=replace(config.slateq, iterations=2, users=256, pretrain_updates=10),
            reinforce=replace(config.reinforce, iterations=2, users=256),
            eval_users=200,
            eval_max_steps=50,
        )
        ope_kwargs = {"log_users": 2000, "onpolicy_users": 20_000, "n_bootstrap": 200}
    results = run_policy_experiments(config, progress=not args.no_progress)
    results["ope_known_answer"] = ope_known_answer(**ope_kwargs)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(results, indent=2) + "\n")
    if not args.quick:
        write_outputs(results)
    print(json.dumps({"must_show": results["must_show"]}, indent=2))
    return results


if __name__ == "__main__":
    main()
