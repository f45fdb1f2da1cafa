"""Offline retraining from the service's own logs: ``python benchmarks/offline_from_logs.py``.

The loop a production team runs, end to end on one machine:

1. **Serve an exploring policy.** A fresh embedded stack (``redis-server``, the Kafka-protocol
   broker, the online updater, Ray Serve) serves the dwell-greedy myopic baseline that
   ``benchmarks/policy_experiments.py --publish`` trained (``policy-myopic``, fit on the
   random-policy logs of the simulator setup), explored epsilon-greedily
   (``RECSYS_POLICY__EXPLORATION=epsilon``, ``RECSYS_POLICY__EPSILON``): every slot's
   propensity is exact.
2. **Log through the real path.** Simulated users (training half of the population, never the
   test users) are HTTP clients: ``/recommend``, the simulator's response, every signal to
   ``/feedback``, one life each (:func:`recsys.served_logs.drive_and_join`). The joiner then
   turns the broker's impressions and feedback into a joined dataset.
3. **Split** the joined rows by user (a stable hash): train logs and held-out logs.
4. **Train** with the command a user runs: ``recsys train policy --logs TRAIN --algo slateq``
   (the base checkpoint is found from the logs' ``policy`` column).
5. **Measure on-policy** in the simulator, on the test users with one seed for all (paired):
   the logger as it served (myopic, epsilon-greedy), the base served greedily, the new policy
   greedily (what an evaluation of it measures) and as it would serve (its own epsilon-greedy
   sampler), and a control: the base with its own sampler (epsilon 0.1).
6. **Estimate off-policy** with the command a user runs: ``recsys evaluate ope --logs HELDOUT
   --policy NEW``, and the same for the control; compare with the on-policy clicks per slate.

Writes ``benchmarks/results/offline_from_logs.json``, ``docs/img/offline_from_logs.png`` and
the block between the ``<!-- offline-logs:begin/end -->`` markers of
``docs/offline_from_logs.md``. ``--from-json`` re-renders plot and docs only. Settings were
chosen on validation users (the last 400 of the population) with an in-process stand-in for
the served logs, never on the test users.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress

from recsys.artifacts import copy_newest, latest_version
from recsys.candidates.persistence import RETRIEVAL_ARTIFACT
from recsys.config import ArtifactSettings, PolicySettings, Settings
from recsys.data.logged import read_logged_feedback, write_logged_feedback
from recsys.doc_blocks import ci_text, ratio_text, replace_block
from recsys.live import LiveEvaluation, run_live
from recsys.pipeline import catalog_config
from recsys.policy.evaluation.ope_file import evaluate_ope_file
from recsys.policy.evaluation.simulator import (
    PolicyEvaluation,
    evaluation_users,
    mean_ci,
    paired_ratio,
    run_policy_lives,
)
from recsys.policy.training.config import POPULATION, documented_config
from recsys.policy.training.from_logs import heldout_users
from recsys.served_logs import ServedLogs, drive_and_join
from recsys.services import StopSignals, embedded_settings, start_loop
from recsys.serving.policies import ServedPolicy, load_served_policy
from recsys.types import ArtifactError

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "offline_from_logs.json"
PNG = ROOT / "docs" / "img" / "offline_from_logs.png"
DOC = ROOT / "docs" / "offline_from_logs.md"
BEGIN, END = "<!-- offline-logs:begin -->", "<!-- offline-logs:end -->"
BASE_NAME = "myopic"
OPE_ESTIMATORS = ("ips", "snips", "dr", "iips", "position_dr", "dm")
ESTIMATOR_COLORS = ("#d62728", "#2ca02c", "#ff7f0e", "#1f77b4", "#8c564b", "#e377c2")
#: An estimate counts only with at least this importance-weight ESS (the promotion gate's
#: default ``min_ess``): an interval resting on a handful of slates holds anything.
MIN_ESS = 50.0


@dataclass(frozen=True)
class ExperimentConfig:
    """What the run depends on (stored in the JSON)."""

    #: The logger's exploration: epsilon-greedy around the myopic slate (chosen on validation
    #: users: with 0.1, 8,000 logged slates taught SlateQ too little to beat it).
    logger_epsilon: float = 0.3
    #: Logging users: population indices from ``log_first_user`` (training half, beyond the
    #: simulator setup's 4,096 logging and 2,048 training users).
    log_users: int = 150
    log_first_user: int = 8192
    log_max_steps: int = 200
    concurrency: int = 16
    heldout_fraction: float = 0.25
    algo: str = "slateq"
    epochs: int = 20
    train_seed: int = 0
    test_users: int = 1000
    eval_max_steps: int = 200
    eval_seed: int = 2024
    ope_bootstrap: int = 500
    #: Monte Carlo slates per request for the marginals of the target and of the logger
    #: (re-run with ``--logger``, since served logs record no marginals): the item-position
    #: estimators' weights are their ratio.
    ope_samples: int = 200

    def __post_init__(self) -> None:
        if not self.log_first_user + self.log_users <= POPULATION // 2:
            raise ValueError("logging users must stay in the training half of the population")


def _print(console: Console, text: str) -> None:
    console.print(f"[bold]{time.strftime('%H:%M:%S')}[/] {text}")


def prepare_root(source: Path, work: Path) -> Path:
    """A fresh artifact root under ``work`` holding only the newest retrieval and
    ``policy-<BASE_NAME>`` of ``source``: what the service serves, and nothing it could
    confuse with the policy trained here."""
    if work.exists():
        shutil.rmtree(work)
    try:
        return copy_newest(source, work / "artifacts", (RETRIEVAL_ARTIFACT, f"policy-{BASE_NAME}"))
    except ArtifactError as exc:
        raise SystemExit(
            f"{exc}: run `python benchmarks/policy_experiments.py --publish {source}` first"
        ) from None


def serve_and_log(
    cfg: ExperimentConfig, settings: Settings, run: LiveEvaluation, dataset: Path, console: Console
) -> ServedLogs:
    """Steps 1-2: the stack serving the exploring logger, users over HTTP, the joiner; every
    process started here is stopped before returning (also on errors and Ctrl-C)."""
    serving = settings.model_copy(
        update={
            "policy": PolicySettings(
                name=BASE_NAME, exploration="epsilon", epsilon=cfg.logger_epsilon
            )
        }
    )
    users = np.arange(cfg.log_first_user, cfg.log_first_user + cfg.log_users)
    with StopSignals() as signals, ExitStack() as stack:
        serving = embedded_settings(stack, serving, artifacts_root=run.root, console=console)
        url, store = start_loop(stack, signals, serving, console)
        try:
            with Progress(console=console) as bar:
                task = bar.add_task("logging users over HTTP", total=cfg.log_users)
                traffic = partial(
                    run_live,
                    url,
                    run.world,
                    run.env,
                    store,
                    run.fold,
                    users=users,
                    max_steps=cfg.log_max_steps,
                    seed=cfg.eval_seed + 1,
                    slate_size=run.sim_settings.slate_size,
                    num_candidates=run.sim_settings.num_candidates,
                    concurrency=cfg.concurrency,
                    label="log",
                    progress=partial(bar.advance, task),
                )
                return drive_and_join(serving, dataset, run.fold, traffic)
        finally:
            signals.hold()


def split_logs(dataset: Path, out: Path, fraction: float) -> dict[str, Any]:
    """Step 3: the joined rows as ``out/train.parquet`` and ``out/heldout.parquet``."""
    logs = read_logged_feedback(dataset)
    held = heldout_users(logs, fraction)
    out.mkdir(parents=True, exist_ok=True)
    write_logged_feedback(out / "train.parquet", logs.take(~held))
    write_logged_feedback(out / "heldout.parquet", logs.take(held))
    slate = int(logs.slate_size.max())
    return {
        "rows": len(logs),
        "slates": len(logs) // slate,
        "users": int(np.unique(logs.user_id).size),
        "train_slates": int((~held).sum()) // slate,
        "heldout_slates": int(held.sum()) // slate,
        "heldout_users": int(np.unique(logs.user_id[held]).size),
        "served_versions": sorted(set(logs.policy.tolist())),
        "clicks_per_slate": float(logs.click.sum() / (len(logs) / slate)),
    }


def recsys_cli(*args: str) -> dict[str, Any]:
    """Run ``recsys ARGS`` as a user would (a subprocess); the JSON it prints last."""
    exe = Path(sys.executable).parent / "recsys"
    done = subprocess.run([str(exe), *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"recsys {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    text = done.stdout.strip()
    try:  # `evaluate ope --json` prints one indented document
        parsed: dict[str, Any] = json.loads(text)
    except json.JSONDecodeError:  # `train policy --logs` ends with one JSON line
        parsed = json.loads(text.splitlines()[-1])
    return parsed


def _served(
    run: LiveEvaluation, path: Path, name: str, exploration: str | None, eps: float = 0.1
) -> ServedPolicy:
    return load_served_policy(
        path,
        name=name,
        spec=run.fold.spec,
        num_items=run.fold.num_items,
        retrieval_version=run.retrieval.artifact.version,
        exploration=exploration,
        epsilon=eps,
    )


def _summary(ev: PolicyEvaluation, seed: int) -> dict[str, Any]:
    return {
        "return": mean_ci(ev.returns),
        "clicks": mean_ci(ev.clicks),
        "steps": mean_ci(ev.steps),
        "revenue": mean_ci(ev.revenue),
        # Clicks per slate over the users' lives: the on-policy value OPE estimates.
        "clicks_per_slate": paired_ratio(ev.clicks, ev.steps, seed=seed),
        "truncated": float(ev.truncated.mean()),
        "seconds": ev.seconds,
    }


def evaluate_on_policy(
    cfg: ExperimentConfig, run: LiveEvaluation, base: Path, new: Path, console: Console
) -> tuple[dict[str, Any], dict[str, PolicyEvaluation]]:
    """Step 5: every policy on the same test users, seeds and random streams."""
    policies: dict[str, tuple[ServedPolicy, bool, str]] = {
        "logger": (
            _served(run, base, BASE_NAME, "epsilon", cfg.logger_epsilon),
            True,
            f"myopic, epsilon-greedy {cfg.logger_epsilon:g} (as it served the logs)",
        ),
        "base_greedy": (_served(run, base, BASE_NAME, "greedy"), False, "myopic, greedy"),
        "new_greedy": (
            _served(run, new, cfg.algo, "greedy"),
            False,
            f"{cfg.algo} from logs, greedy",
        ),
        "new_served": (
            _served(run, new, cfg.algo, None),
            True,
            f"{cfg.algo} from logs, its own sampler (as it would serve)",
        ),
        "control": (
            _served(run, base, BASE_NAME, "epsilon", 0.1),
            True,
            "myopic, epsilon-greedy 0.1 (its checkpoint's own sampler: the OPE control)",
        ),
    }
    population = run.world.select_users(evaluation_users(cfg.test_users))
    out: dict[str, Any] = {}
    evals: dict[str, PolicyEvaluation] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with Progress(console=console) as bar:
            task = bar.add_task("simulator: test users", total=len(policies))
            for name, (served, explore, what) in policies.items():
                ev = run_policy_lives(
                    served.policy,
                    partial(run.simulated_users, served, population),
                    max_steps=cfg.eval_max_steps,
                    seed=cfg.eval_seed,
                    explore=explore,
                )
                evals[name] = ev
                out[name] = {"what": what, "version": served.version, **_summary(ev, cfg.eval_seed)}
                bar.advance(task)
    finally:
        torch.set_num_threads(threads)
    return out, evals


def paired(evals: Mapping[str, PolicyEvaluation], a: str, b: str, seed: int) -> dict[str, Any]:
    """``a`` against ``b`` on the same users: ratio of mean returns (paired bootstrap CI) and
    the mean per-user difference (t-interval)."""
    return {
        "ratio": paired_ratio(evals[a].returns, evals[b].returns, seed=seed),
        "difference": mean_ci(evals[a].returns - evals[b].returns),
    }


def ope_check(ope: Mapping[str, Any], onpolicy: Mapping[str, Any]) -> dict[str, Any]:
    """Per estimator: the estimate, its CI and ESS beside the on-policy clicks per slate, and
    whether each lies inside the other's CI."""
    value = onpolicy["clicks_per_slate"]
    out: dict[str, Any] = {
        "on_policy_clicks_per_slate": value,
        "logged_clicks_per_slate": ope["estimates"]["logged"]["value"],
    }
    for name in OPE_ESTIMATORS:
        est = ope["estimates"][name]
        out[name] = {
            "value": est["value"],
            "ci_low": est["ci_low"],
            "ci_high": est["ci_high"],
            "ess": est["ess"],
            "ess_fraction": est["ess"] / max(est["n_slates"], 1),
            "on_policy_inside_ope_ci": bool(est["ci_low"] <= value["ratio"] <= est["ci_high"]),
            "ope_inside_on_policy_ci": bool(value["ci_low"] <= est["value"] <= value["ci_high"]),
            "usable": bool(est["ess"] >= MIN_ESS),
        }
    return out


def must_show(results: Mapping[str, Any]) -> dict[str, Any]:
    """The issue's claims, checked on the JSON."""
    vs_logger = results["paired"]["new_greedy/logger"]
    served_vs_logger = results["paired"]["new_served/logger"]
    new_ope, control = results["ope_check"]["new_served"], results["ope_check"]["control"]
    return {
        "new_beats_logger_on_policy": {
            "ratio": vs_logger["ratio"],
            "ci_above_one": vs_logger["ratio"]["ci_low"] > 1.0,
        },
        "new_as_served_beats_logger_on_policy": {
            "ratio": served_vs_logger["ratio"],
            "ci_above_one": served_vs_logger["ratio"]["ci_low"] > 1.0,
        },
        "new_beats_greedy_base": {
            "ratio": results["paired"]["new_greedy/base_greedy"]["ratio"],
            "ci_above_one": results["paired"]["new_greedy/base_greedy"]["ratio"]["ci_low"] > 1.0,
        },
        # Inside the interval of an estimate with enough evidence (ESS >= MIN_ESS).
        "ope_new_on_policy_inside_ci": {
            name: new_ope[name]["on_policy_inside_ope_ci"] and new_ope[name]["usable"]
            for name in OPE_ESTIMATORS
        },
        "ope_new_ess": {name: new_ope[name]["ess"] for name in OPE_ESTIMATORS},
        # The point estimate inside the on-policy value's own interval.
        "ope_new_inside_on_policy_ci": {
            name: new_ope[name]["ope_inside_on_policy_ci"] for name in OPE_ESTIMATORS
        },
        "ope_control_on_policy_inside_ci": {
            name: control[name]["on_policy_inside_ope_ci"] and control[name]["usable"]
            for name in OPE_ESTIMATORS
        },
        "ope_control_ess": {name: control[name]["ess"] for name in OPE_ESTIMATORS},
        "propensities_reproduced": results["ope_logger_reproduction"]["all_weights_one"],
    }


def plot(results: Mapping[str, Any], path: Path) -> None:
    """Left: long-term return on the test users; right: clicks per slate on-policy next to
    the off-policy estimates from the held-out logs (95% CIs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    names = ["logger", "base_greedy", "new_greedy", "new_served", "control"]
    labels = [
        "logger\n(myopic, eps)",
        "myopic\ngreedy",
        "new\ngreedy",
        "new\nas served",
        "myopic\neps 0.1",
    ]
    pol = results["on_policy"]
    means = [pol[n]["return"]["mean"] for n in names]
    errs = [
        [pol[n]["return"]["mean"] - pol[n]["return"]["ci_low"] for n in names],
        [pol[n]["return"]["ci_high"] - pol[n]["return"]["mean"] for n in names],
    ]
    colors = ["#7f7f7f", "#bcbd22", "#1f77b4", "#17becf", "#9467bd"]
    left.bar(range(len(names)), means, yerr=errs, color=colors, capsize=4)
    left.set_xticks(range(len(names)), labels, fontsize=8)
    left.set_ylabel("long-term return (LTV minutes)")
    cfg = results["config"]
    left.set_title(f"on-policy, {cfg['test_users']} test users (simulator)")
    x = 0
    ticks, tick_labels = [], []
    for target, label in (("new_served", "new, as served"), ("control", "myopic eps 0.1")):
        check = results["ope_check"][target]
        value = check["on_policy_clicks_per_slate"]
        right.errorbar(
            x, value["ratio"],
            yerr=[[value["ratio"] - value["ci_low"]], [value["ci_high"] - value["ratio"]]],
            fmt="o", color="black", capsize=4, label="on-policy" if x == 0 else None,
        )  # fmt: skip
        for j, name in enumerate(OPE_ESTIMATORS):
            est = check[name]
            right.errorbar(
                x + 0.16 * (j + 1), est["value"],
                yerr=[[est["value"] - est["ci_low"]], [est["ci_high"] - est["value"]]],
                fmt="s", color=ESTIMATOR_COLORS[j],
                capsize=4,
                label=f"{name} (held-out logs)" if x == 0 else None,
            )  # fmt: skip
            right.annotate(f"ESS {est['ess']:.0f}", (x + 0.16 * (j + 1), est["ci_low"]),
                           fontsize=7, ha="center", va="top")  # fmt: skip
        ticks.append(x + 0.5)
        tick_labels.append(label)
        x += 1.6
    right.axhline(
        results["ope_check"]["control"]["logged_clicks_per_slate"],
        color="#7f7f7f", ls="--", lw=1, label="logged (logger)",
    )  # fmt: skip
    # Estimates resting on a few slates can be far off (tens of clicks per slate): keep the
    # axis on the range of clicks per slate; their ESS label still shows.
    right.set_ylim(0.5, 1.2)
    right.set_xticks(ticks, tick_labels)
    right.set_ylabel("clicks per slate")
    right.set_title("on-policy vs `recsys evaluate ope` (95% CIs)")
    right.legend(fontsize=7, loc="lower right", ncol=2)
    fig.suptitle(
        f"SlateQ trained only on the service's joined logs ({results['logs']['train_slates']:,} "
        f"slates of an epsilon-{cfg['logger_epsilon']:g} myopic logger)"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render_doc_block(results: Mapping[str, Any]) -> str:
    """The Markdown figures of ``docs/offline_from_logs.md`` (from the JSON only)."""
    cfg, logs, pol = results["config"], results["logs"], results["on_policy"]
    train, timing = results["training"], results["timing_s"]
    lines = [
        f"Machine: {results['machine']}; {timing['total'] / 60:.1f} minutes in all "
        f"(serving and logging {timing['serve_and_log'] / 60:.1f}, training "
        f"{timing['train']:.0f} s, simulator {timing['on_policy']:.0f} s, OPE "
        f"{timing['ope']:.0f} s).",
        "",
        f"- **Logs.** {cfg['log_users']} users (population {cfg['log_first_user']}.."
        f"{cfg['log_first_user'] + cfg['log_users'] - 1}) served over HTTP by "
        f"`{', '.join(logs['served_versions'])}` (epsilon-greedy {cfg['logger_epsilon']:g}): "
        f"{logs['slates']:,} slates, {logs['rows']:,} joined rows, "
        f"{logs['clicks_per_slate']:.3f} clicks per slate; joiner: "
        f"{results['join']['impressions']:,} impressions, "
        f"{results['join']['joined_feedback']:,} feedback events joined, "
        f"{sum(results['join']['orphans'].values())} orphans, {results['join']['late']} late. "
        f"Split by user: {logs['train_slates']:,} training slates, "
        f"{logs['heldout_slates']:,} held-out slates ({logs['heldout_users']} users).",
        f"- **Training** (`recsys train policy --logs TRAIN --algo {cfg['algo']} --epochs "
        f"{cfg['epochs']}`): base `{train['base_from']}`-resolved to "
        f"`{Path(train['base']).parent.name}/{Path(train['base']).name}`, "
        f"{train['slates']:,} slates, {train['seconds']:.0f} s.",
        "",
        f"On-policy in the simulator: {cfg['test_users']} test users (population "
        f"{POPULATION // 2}..{POPULATION // 2 + cfg['test_users'] - 1}), one life each of at most "
        f"{cfg['eval_max_steps']} slates, seed {cfg['eval_seed']} for every policy (paired). "
        "Return: hidden lifetime value (dwell minutes), mean [95% CI].",
        "",
        "| policy | return | / logger (paired) | clicks per slate | clicks | steps lived |",
        "|---|---|---|---|---|---|",
    ]
    for name, p in pol.items():
        ratio = results["paired"].get(f"{name}/logger")
        lines.append(
            f"| {p['what']} | {ci_text(p['return'])} "
            f"| {ratio_text(ratio['ratio']) if ratio else '1'} "
            f"| {ratio_text(p['clicks_per_slate'], 3)} | {p['clicks']['mean']:.1f} "
            f"| {p['steps']['mean']:.1f} |"
        )
    d = results["paired"]["new_greedy/logger"]["difference"]
    b = results["paired"]["new_greedy/base_greedy"]
    lines += [
        "",
        f"- New policy (greedy) minus logger, per user: **{ci_text(d)}** LTV minutes; over the "
        f"greedy myopic base: {ratio_text(b['ratio'])}.",
        "",
        "Off-policy, `recsys evaluate ope --logs HELDOUT --policy CHECKPOINT --logger BASE "
        "--logger-epsilon 0.3 --choice-model` on the held-out "
        f"logs ({logs['heldout_slates']:,} slates), clicks per slate, against the on-policy "
        "clicks per slate of the same policy acting with the same sampler (`dm` and the "
        "control variate of `dr` and `position_dr`: the cross-fitted choice model among the "
        "slate's items; `dm`'s interval is sampling error only; with `--cluster-by-user` "
        "the bootstrap resamples the held-out users, not their slates):",
        "",
        f"| target | on-policy | estimator | estimate [95% CI] | ESS | ESS >= {MIN_ESS:g} "
        "| on-policy inside CI | estimate inside on-policy CI |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for target, label in (
        ("new_served", "new policy, its own sampler (epsilon 0.1)"),
        ("control", "myopic base, its own sampler (epsilon 0.1)"),
    ):
        check = results["ope_check"][target]
        v = check["on_policy_clicks_per_slate"]
        for name in OPE_ESTIMATORS:
            e = check[name]
            lines.append(
                f"| {label} | {ratio_text(v, 3)} | {name} | {e['value']:.3f} [{e['ci_low']:.3f}, "
                f"{e['ci_high']:.3f}] | {e['ess']:.1f} of {logs['heldout_slates']:,} "
                f"| {e['usable']} | {e['on_policy_inside_ope_ci']} "
                f"| {e['ope_inside_on_policy_ci']} |"
            )
    rep = results["ope_logger_reproduction"]
    must = results["must_show"]
    lines += [
        "",
        f"- The logger re-run from its checkpoint at epsilon {cfg['logger_epsilon']:g} on the "
        f"held-out requests gives every logged slot its logged propensity: "
        f"{rep['all_weights_one']} (largest |weight - 1| {rep['max_abs_weight_minus_one']:.2g}).",
        f"- Must show: new (greedy) beats the logger on-policy, paired CI above 1: "
        f"**{must['new_beats_logger_on_policy']['ci_above_one']}**; as it would serve: "
        f"{must['new_as_served_beats_logger_on_policy']['ci_above_one']}; the off-policy "
        f"estimate's CI holds the on-policy value, with ESS >= {MIN_ESS:g}: "
        + ", ".join(f"{k} {v}" for k, v in must["ope_new_on_policy_inside_ci"].items())
        + " (control: "
        + ", ".join(f"{k} {v}" for k, v in must["ope_control_on_policy_inside_ci"].items())
        + "); the estimate inside the on-policy value's CI: "
        + ", ".join(f"{k} {v}" for k, v in must["ope_new_inside_on_policy_ci"].items())
        + ".",
    ]
    return "\n".join(lines)


def write_doc(results: Mapping[str, Any]) -> None:
    """Replace the block between the markers of docs/offline_from_logs.md."""
    replace_block(DOC, BEGIN, END, render_doc_block(results))


def reproduce_logger(heldout: Path, base: Path, epsilon: float) -> dict[str, Any]:
    """The logger's own propensities re-computed from its checkpoint on the held-out requests
    (its sampler set to the served epsilon): each should equal the logged one, since the
    joined rows carry the candidates and user features it chose with."""
    from dataclasses import replace

    from recsys.policy.evaluation.ope_policies import (
        LoggedRequests,
        load_target_policy,
        target_propensities,
    )

    logs = read_logged_feedback(heldout)
    loaded = load_target_policy(str(base), logs)
    target = loaded.policy
    target.sampler = replace(target.sampler, epsilon=epsilon)
    props = target_propensities(LoggedRequests.from_feedback(logs), target, n_samples=2)
    assert props.propensity is not None
    weights = props.propensity / logs.propensity.astype(np.float64)
    return {
        "epsilon": epsilon,
        "rows": len(logs),
        "max_abs_weight_minus_one": float(np.abs(weights - 1.0).max()),
        "all_weights_one": bool(np.allclose(weights, 1.0, rtol=0, atol=1e-6)),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the experiment (or re-render from JSON) and write JSON, plot and docs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source",
        type=Path,
        default=ROOT / ".recsys" / "experiments",
        help="artifact root of benchmarks/policy_experiments.py --publish",
    )
    parser.add_argument("--work", type=Path, default=ROOT / ".recsys" / "offline_from_logs")
    parser.add_argument("--log-users", type=int, default=ExperimentConfig.log_users)
    parser.add_argument("--test-users", type=int, default=ExperimentConfig.test_users)
    parser.add_argument("--epochs", type=int, default=ExperimentConfig.epochs)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--png", type=Path, default=PNG)
    parser.add_argument("--from-json", action="store_true", help="only re-render plot and docs")
    parser.add_argument("--no-docs", action="store_true", help="do not touch docs/")
    args = parser.parse_args(argv)
    if args.from_json:
        results: dict[str, Any] = json.loads(args.output.read_text())
        # The checks are functions of the stored estimates: recomputed, so a changed rule
        # (e.g. MIN_ESS) applies to a stored run.
        results["ope_check"] = {
            t: ope_check(results["ope"][t], results["on_policy"][t]) for t in results["ope"]
        }
        results["must_show"] = must_show(results)
        args.output.write_text(json.dumps(results, indent=2, default=float) + "\n")
        plot(results, args.png)
        write_doc(results)
        return results
    cfg = ExperimentConfig(log_users=args.log_users, test_users=args.test_users, epochs=args.epochs)
    console = Console(stderr=True)
    torch.set_num_threads(1)
    start = time.perf_counter()
    timing: dict[str, float] = {}
    root = prepare_root(args.source.resolve(), args.work.resolve())
    base = latest_version(root, f"policy-{BASE_NAME}")
    settings = Settings(artifacts=ArtifactSettings(root=root))
    config = catalog_config(documented_config("slateq"), settings.catalog)
    run = LiveEvaluation(
        settings,
        config,
        users=2,
        max_steps=cfg.eval_max_steps,
        seed=cfg.eval_seed,
        concurrency=cfg.concurrency,
        console=console,
    )
    work = args.work.resolve()

    _print(
        console, f"serving {BASE_NAME} (epsilon {cfg.logger_epsilon:g}) to {cfg.log_users} users"
    )
    t0 = time.perf_counter()
    served = serve_and_log(cfg, settings, run, work / "joined", console)
    timing["serve_and_log"] = time.perf_counter() - t0
    logs = split_logs(work / "joined", work / "split", cfg.heldout_fraction)
    _print(console, f"joined {logs['rows']:,} rows; {logs['train_slates']:,} training slates")

    t0 = time.perf_counter()
    training = recsys_cli(
        "train", "policy", "--logs", str(work / "split" / "train.parquet"),
        "--algo", cfg.algo, "--epochs", str(cfg.epochs), "--seed", str(cfg.train_seed),
        "--artifacts", str(root), "--output", str(work / "staging"),
    )  # fmt: skip
    timing["train"] = time.perf_counter() - t0
    new = Path(training["checkpoint"])
    _print(console, f"trained {new} (base from {training['base_from']})")

    t0 = time.perf_counter()
    on_policy, evals = evaluate_on_policy(cfg, run, base, new, console)
    timing["on_policy"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    heldout = work / "split" / "heldout.parquet"
    # The logger (its checkpoint, epsilon as served) re-run for the marginal propensities the
    # item-position estimators need; the command checks it reproduces every logged one. The
    # choice model among the slate's items is DM and DR's control variate. The bootstrap
    # resamples the 41 held-out users, not their slates.
    common = [
        "--bootstrap", str(cfg.ope_bootstrap), "--samples", str(cfg.ope_samples),
        "--logger", str(base), "--logger-epsilon", str(cfg.logger_epsilon), "--choice-model",
        "--cluster-by-user", "--json",
    ]  # fmt: skip
    ope_new = recsys_cli("evaluate", "ope", "--logs", str(heldout), "--policy", str(new), *common)
    ope_control = evaluate_ope_file(
        heldout,
        policy=str(base),
        n_bootstrap=cfg.ope_bootstrap,
        n_samples=cfg.ope_samples,
        logger=str(base),
        logger_epsilon=cfg.logger_epsilon,
        choice_model=True,
        cluster_by_user=True,
    )
    reproduction = reproduce_logger(heldout, base, cfg.logger_epsilon)
    timing["ope"] = time.perf_counter() - t0
    timing["total"] = time.perf_counter() - start

    results = {
        "config": asdict(cfg),
        "machine": f"{os.cpu_count()} cores ({platform.machine()})",
        "logs": logs,
        "join": {
            "impressions": served.join.impressions,
            "feedback": served.join.feedback,
            "joined_feedback": served.join.joined_feedback,
            "joined_rows": served.join.joined_rows,
            "orphans": served.join.orphans,
            "late": served.join.late,
            "duplicates": served.join.duplicates,
        },
        "logging_live": {
            "return": mean_ci(served.evaluation.returns),
            "clicks_per_slate": paired_ratio(served.evaluation.clicks, served.evaluation.steps),
            "recommend_requests": len(served.clients.recommend_latencies_s),
            "recommend_p50_ms": float(
                np.percentile(served.clients.recommend_latencies_s, 50) * 1e3
            ),
            "feedback_posts": served.clients.feedback_posts,
            "not_visible_on_first_try": served.clients.not_visible_first_try,
        },
        "training": training,
        "on_policy": on_policy,
        "paired": {
            f"{a}/{b}": paired(evals, a, b, cfg.eval_seed)
            for a, b in (
                ("new_greedy", "logger"),
                ("new_served", "logger"),
                ("base_greedy", "logger"),
                ("control", "logger"),
                ("new_greedy", "base_greedy"),
            )
        },
        "ope": {"new_served": ope_new, "control": ope_control},
        "ope_check": {
            "new_served": ope_check(ope_new, on_policy["new_served"]),
            "control": ope_check(ope_control, on_policy["control"]),
        },
        "ope_logger_reproduction": reproduction,
        "timing_s": timing,
    }
    results["must_show"] = must_show(results)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2, default=float) + "\n")
    print(json.dumps(results["must_show"], indent=2, default=float))
    if not args.no_docs:
        plot(results, args.png)
        write_doc(results)
    return results


if __name__ == "__main__":
    main()
