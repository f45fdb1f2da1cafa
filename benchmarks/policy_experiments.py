"""Policy experiments: ``python benchmarks/policy_experiments.py [--quick]``.

The experiments behind the policy's Must-show claims (fixed seeds throughout):

- :func:`run_policy_experiments`: on the project simulator, train SlateQ with each reward
  (clicks-only, the hidden true reward, the learned reward) and REINFORCE-top-K with the
  learned reward, from the library's documented settings
  (:func:`recsys.policy.training.config.documented_config`); evaluate them with the baselines
  on the same held-out users; report SlateQ/myopic and SlateQ/random return ratios with
  paired bootstrap CIs and the gap closed by the learned reward,
  ``(learned - clicks) / (hidden - clicks)`` of true long-term return.
- :func:`ope_known_answer`: off-policy estimates of a target policy from logs of an
  exploring logging policy, next to that target's on-policy value measured by running it.

The script runs both and writes

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
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from recsys.config import CatalogSettings, SimulatorSettings
from recsys.data.synthetic import make_world
from recsys.policy.base import BatchSlatePolicy
from recsys.policy.evaluation.ope import LoggedSlates, evaluate_off_policy, plackett_luce_target
from recsys.policy.evaluation.simulator import (
    build_baselines,
    evaluate_in_simulator,
    evaluation_users,
    mean_ci,
    validation_users,
)
from recsys.policy.exploration import plackett_luce_sample_batch
from recsys.policy.reward.spec import RewardKind, reward_model_from_tensors
from recsys.policy.training.config import POPULATION, PolicyTrainConfig, documented_config
from recsys.policy.training.envs import SimulatorFeatures
from recsys.policy.training.trainer import build_simulator_setup, train_policy
from recsys.simulator.env import SlateEnv
from recsys.simulator.policies import relevance_scores

F64 = npt.NDArray[np.float64]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "policy_experiments.json"
FIGURE = ROOT / "docs" / "img" / "policy_learning_curves.png"
DOC = ROOT / "docs" / "policy.md"
BEGIN, END = "<!-- policy-table:begin -->", "<!-- policy-table:end -->"


# ---- the experiments -----------------------------------------------------------------------


@dataclass(frozen=True)
class ExperimentConfig:
    """The documented configuration of the policy experiments (fixed seeds throughout).

    ``slateq`` is the SlateQ training config (its ``reward`` is overridden per run);
    ``reinforce`` the REINFORCE one; both default to the library's
    :func:`~recsys.policy.training.config.documented_config`. ``slateq_rewards`` /
    ``reinforce_rewards`` list the rewards each is trained with; ``headline_reward`` names the
    SlateQ run reported as ``slateq`` (the others appear as ``slateq_<reward>``). Evaluation
    follows held-out users for one life each, at most ``eval_max_steps`` steps:
    ``validation_users`` (the last users of the population; budgets and hyperparameters were
    tuned on these) and ``eval_users`` test users
    (:func:`~recsys.policy.evaluation.simulator.evaluation_users`, never used for any choice),
    on which the Must-show figures are reported.
    """

    slateq: PolicyTrainConfig = field(default_factory=lambda: documented_config("slateq"))
    reinforce: PolicyTrainConfig = field(default_factory=lambda: documented_config("reinforce"))
    slateq_rewards: tuple[RewardKind, ...] = ("clicks", "hidden", "learned")
    reinforce_rewards: tuple[RewardKind, ...] = ("learned",)
    headline_reward: RewardKind = "learned"
    eval_users: int = 1000
    validation_users: int = 1000
    eval_max_steps: int = 200
    eval_seed: int = 2024
    bootstrap: int = 2000

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        out = asdict(self)
        out["slateq"] = self.slateq.to_dict()
        out["reinforce"] = self.reinforce.to_dict()
        return out


def _gap_closure(
    clicks: F64, hidden: F64, learned: F64, n_bootstrap: int, seed: int
) -> dict[str, float]:
    """``(L - C) / (H - C)`` of mean returns, with a users-paired percentile bootstrap CI."""
    rng = np.random.default_rng(seed)
    n = clicks.shape[0]
    counts = np.zeros((n_bootstrap, n))
    np.add.at(counts, (np.arange(n_bootstrap)[:, None], rng.integers(0, n, (n_bootstrap, n))), 1)
    c, h, lrn = counts @ clicks / n, counts @ hidden / n, counts @ learned / n
    with np.errstate(divide="ignore", invalid="ignore"):
        boot = (lrn - c) / (h - c)
    low, high = np.nanquantile(boot, [0.025, 0.975])
    value = (learned.mean() - clicks.mean()) / (hidden.mean() - clicks.mean())
    return {
        "closure": float(value),
        "ci_low": float(low),
        "ci_high": float(high),
        "clicks_return": float(clicks.mean()),
        "hidden_return": float(hidden.mean()),
        "learned_return": float(learned.mean()),
    }


def _subsample(rows: Sequence[Mapping[str, float]], keep: int = 60) -> list[dict[str, Any]]:
    """At most ~``keep`` evenly spaced rows (always the last); NaN becomes ``None`` for JSON."""
    step = max(1, math.ceil(len(rows) / keep))
    picked = list(rows[::step])
    if rows and picked[-1] is not rows[-1]:
        picked.append(rows[-1])
    return [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
        for r in picked
    ]


def run_policy_experiments(
    config: ExperimentConfig | None = None, *, progress: bool = False
) -> dict[str, Any]:
    """Train, evaluate and compare (see the module docstring); JSON-ready results."""
    cfg = config or ExperimentConfig()
    start = time.perf_counter()
    torch.manual_seed(cfg.slateq.seed)
    setup = build_simulator_setup(cfg.slateq)
    assert setup.reward_tensors is not None
    assert setup.log is not None
    reward_model = reward_model_from_tensors(setup.reward_tensors)
    core = SlateEnv(setup.world, settings=setup.settings)
    features = SimulatorFeatures.build(core, setup.item_extra, cfg.slateq.cross_features)

    trained: dict[str, BatchSlatePolicy] = {}
    training: dict[str, Any] = {}
    runs: list[tuple[str, PolicyTrainConfig]] = [
        (
            "slateq" if r == cfg.headline_reward else f"slateq_{r}",
            replace(cfg.slateq, reward=r),
        )
        for r in cfg.slateq_rewards
    ] + [
        (
            "reinforce" if r == cfg.headline_reward else f"reinforce_{r}",
            replace(cfg.reinforce, reward=r),
        )
        for r in cfg.reinforce_rewards
    ]
    for name, run_cfg in runs:
        result = train_policy(run_cfg, setup=setup, progress=progress)
        trained[name] = result.policy
        training[name] = {
            "algo": run_cfg.algo,
            "reward": run_cfg.reward,
            "wall_s": result.wall_s,
            "reward_scale": result.reward_scale,
            "user_steps": result.curve[-1]["user_steps"],
            "curve": _subsample(result.curve),
        }

    base_start = time.perf_counter()
    baselines = build_baselines(
        setup.log,
        setup.world,
        features,
        reward_model,
        slate_size=cfg.slateq.slate_size,
        seed=cfg.slateq.seed,
    )
    baselines_s = time.perf_counter() - base_start
    policies: dict[str, BatchSlatePolicy] = {**baselines, **trained}
    ratio_pairs = [
        ("slateq", "myopic"),
        ("slateq", "random"),
        ("slateq", "myopic_learned"),
        ("slateq", "bandit"),
    ]
    ratio_pairs += [(n, "myopic") for n in trained if n != "slateq"]
    evaluation, validation = (
        evaluate_in_simulator(
            policies,
            world=setup.world,
            settings=setup.settings,
            features=features,
            users=users,
            max_steps=cfg.eval_max_steps,
            seed=cfg.eval_seed,
            ratios=ratio_pairs,
        )
        for users in (evaluation_users(cfg.eval_users), validation_users(cfg.validation_users))
    )
    validation.pop("_per_user")
    per_user = evaluation.pop("_per_user")
    summary = evaluation["policies"]

    def non_overlap(a: str, b: str) -> bool:
        return bool(summary[a]["return"]["ci_low"] > summary[b]["return"]["ci_high"])

    must_show: dict[str, Any] = {}
    for base, target in (("myopic", 1.10), ("random", 1.25)):
        ratio = evaluation["ratios"][f"slateq/{base}"]
        must_show[f"slateq_vs_{base}"] = {
            **ratio,
            "target": target,
            "meets_ratio": ratio["ratio"] >= target,
            "cis_do_not_overlap": non_overlap("slateq", base),
        }
    rewards_present = {"clicks", "hidden", cfg.headline_reward} <= set(cfg.slateq_rewards)
    if rewards_present and cfg.headline_reward == "learned":
        gap = _gap_closure(
            per_user["slateq_clicks"].returns,
            per_user["slateq_hidden"].returns,
            per_user["slateq"].returns,
            cfg.bootstrap,
            cfg.eval_seed,
        )
        must_show["gap_closure"] = {**gap, "target": 0.8, "meets_target": gap["closure"] >= 0.8}
    return {
        "config": cfg.to_dict(),
        "simulator": {
            "catalog": CatalogSettings(**cfg.slateq.catalog().model_dump()).model_dump(),
            "settings": "SimulatorSettings defaults except num_candidates and slate_size",
            "num_candidates": cfg.slateq.num_candidates,
            "slate_size": cfg.slateq.slate_size,
            "population_layout": {
                "logging_users": [0, cfg.slateq.log_users],
                "training_users_from": cfg.slateq.log_users,
                "test_users": [POPULATION // 2, POPULATION // 2 + cfg.eval_users],
                "validation_users": [POPULATION - cfg.validation_users, POPULATION],
            },
        },
        "reward_model": setup.reward_report,
        "training": training,
        "evaluation": evaluation,
        "validation": validation,
        "must_show": must_show,
        "timing_s": {
            "total": time.perf_counter() - start,
            "baselines": baselines_s,
        },
    }


# ---- reporting -----------------------------------------------------------------------------

_ROW_ORDER = (
    "random",
    "popular",
    "myopic",
    "myopic_learned",
    "bandit",
    "slateq",
    "slateq_clicks",
    "slateq_hidden",
    "slateq_engagement",
    "reinforce",
    "reinforce_clicks",
    "reinforce_hidden",
)


def markdown_table(results: Mapping[str, Any]) -> str:
    """The evaluation table (mean [95% CI] per user) as Markdown, rows in a fixed order."""
    policies = results["evaluation"]["policies"]
    names = [n for n in _ROW_ORDER if n in policies] + [n for n in policies if n not in _ROW_ORDER]

    def cell(m: Mapping[str, float], digits: int) -> str:
        return f"{m['mean']:.{digits}f} [{m['ci_low']:.{digits}f}, {m['ci_high']:.{digits}f}]"

    lines = [
        "| policy | long-term return (LTV min) | clicks | revenue | steps lived |",
        "|---|---|---|---|---|",
    ]
    for n in names:
        p = policies[n]
        lines.append(
            f"| {n} | {cell(p['return'], 1)} | {cell(p['clicks'], 1)} | "
            f"{cell(p['revenue'], 2)} | {p['steps']['mean']:.1f} |"
        )
    return "\n".join(lines)


def plot_learning_curves(results: Mapping[str, Any], path: Path) -> None:
    """One panel per metric, one line per training run (from the results JSON)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (
        ("hidden_reward_per_user_step", "true LTV increment per user-step (min)"),
        ("life_value_estimate", "life value estimate (min): LTV+/step / churn/step"),
        ("clicks_per_user_step", "clicks per user-step"),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(15, 4))
    for name, run in results["training"].items():
        xs = [r["user_steps"] for r in run["curve"]]
        for ax, (key, _) in zip(axes, panels, strict=True):
            ys = [r.get(key) for r in run["curve"]]
            ax.plot(xs, [np.nan if y is None else y for y in ys], label=name)
    for ax, (_, title) in zip(axes, panels, strict=True):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("user-steps (training)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- OPE with a known answer ---------------------------------------------------------------


def ope_known_answer(
    *,
    num_items: int = 2000,
    num_topics: int = 16,
    world_seed: int = 0,
    num_candidates: int = 20,
    slate_size: int = 3,
    log_users: int = 20_000,
    onpolicy_users: int = 200_000,
    logging_temperature: float = 1.0,
    target_temperature: float = 0.5,
    n_bootstrap: int = 1000,
    position_samples: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """OPE estimates of a target policy vs its on-policy value, on fresh simulator users.

    Scorer: the observable user-topic affinity ``topics . interests`` of each candidate. The
    logging policy is Plackett-Luce over it at ``logging_temperature`` (exact propensities);
    the target is Plackett-Luce at ``target_temperature`` (sharper: a different policy).
    Each fresh user (initial state) sees one slate; the reward is the click. The target's
    on-policy value is measured by serving it to ``onpolicy_users`` other fresh users of the
    same population and averaging their clicks. IPS, SNIPS and slate DR are unbiased here;
    the item-position estimators (``iips``, ``position_dr``) assume a slot's click depends
    only on its own item and position, which the multinomial-logit one-click model violates
    (a slot's click probability depends on the whole slate), so they are reported but biased.
    """
    world = make_world(
        CatalogSettings(
            num_items=num_items,
            num_users=log_users + onpolicy_users,
            num_topics=num_topics,
            seed=world_seed,
        )
    )
    settings = SimulatorSettings(seed=seed, num_candidates=num_candidates, slate_size=slate_size)

    def serve(users: npt.NDArray[np.int64], temperature: float, env_seed: int) -> dict[str, Any]:
        env = SlateEnv(world, seed=env_seed, settings=settings)
        cands = env.sample_candidates(users)
        scores = relevance_scores(env, env.user_features(users), cands).astype(np.float64)
        rng = np.random.default_rng(env_seed + 1)
        slates, props, _ = plackett_luce_sample_batch(scores, slate_size, temperature, rng)
        items = np.take_along_axis(cands, slates, axis=1)
        result = env.step(users, items, check=False)
        return {
            "scores": scores,
            "slates": slates,
            "props": props,
            "items": items,
            "clicks": result.clicks.astype(np.float64),
        }

    t0 = time.perf_counter()
    log_users_idx = np.arange(log_users, dtype=np.int64)
    logged = serve(log_users_idx, logging_temperature, seed + 11)
    onpol = serve(np.arange(log_users, log_users + onpolicy_users), target_temperature, seed + 23)
    on_value = mean_ci(onpol["clicks"].sum(axis=1))

    n, s = log_users, slate_size
    slate_id = np.repeat(np.arange(n), s)
    position = np.tile(np.arange(s), n)
    cand_col = logged["slates"].reshape(-1)
    # Marginal position propensities of the logging policy (Monte Carlo, as for the target).
    base = LoggedSlates.from_arrays(slate_id, position, logged["props"].reshape(-1))
    logging_marg = plackett_luce_target(
        base,
        logged["scores"],
        cand_col,
        temperature=logging_temperature,
        n_samples=position_samples,
        seed=seed + 1,
    )
    slates = LoggedSlates.from_arrays(
        slate_id,
        position,
        logged["props"].reshape(-1),
        position_propensity=np.maximum(logging_marg.position_propensity, 1e-6),  # type: ignore[arg-type]
        item_id=logged["items"].reshape(-1),
    )
    target = plackett_luce_target(
        slates,
        logged["scores"],
        cand_col,
        temperature=target_temperature,
        n_samples=position_samples,
        seed=seed + 2,
    )
    estimates = evaluate_off_policy(
        slates,
        target,
        slot_rewards=logged["clicks"].reshape(-1),
        n_bootstrap=n_bootstrap,
        seed=seed,
    )
    report: dict[str, Any] = {}
    for name, est in estimates.items():
        d = est.as_dict()
        d["on_policy_value_inside_ci"] = bool(est.ci_low <= on_value["mean"] <= est.ci_high)
        report[name] = d
    return {
        "config": {
            "num_items": num_items,
            "num_candidates": num_candidates,
            "slate_size": slate_size,
            "log_users": log_users,
            "onpolicy_users": onpolicy_users,
            "logging": f"Plackett-Luce over topics.interests, T={logging_temperature}",
            "target": f"Plackett-Luce over topics.interests, T={target_temperature}",
            "reward": "clicks per slate",
            "seed": seed,
        },
        "on_policy_value": on_value,
        "estimates": report,
        "unbiased_estimators_cover_truth": all(
            report[e]["on_policy_value_inside_ci"] for e in ("ips", "snips", "dr")
        ),
        "notes": "iips/position_dr assume item-position independence, which the MNL "
        "one-click model violates; they are biased here and shown for reference.",
        "seconds": time.perf_counter() - t0,
    }


# ---- the script ----------------------------------------------------------------------------


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
