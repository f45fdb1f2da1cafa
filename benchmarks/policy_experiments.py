"""Policy experiments: ``python benchmarks/policy_experiments.py [--quick]``.

The experiments behind the served-RL issue's Must-show claims (fixed seeds throughout):

- :func:`run_policy_experiments`: on the project simulator (satiation on, one ad per slate),
  build the setup once (logs of a random policy, the two-tower retriever, item statistics,
  the learned reward); for each kind of user features, ``event`` (folded from the simulated
  events, what the service has) and ``latent`` (the simulator's hidden truth), train SlateQ
  and REINFORCE-top-K from the library's documented settings
  (:func:`recsys.policy.training.config.documented_config`) on retriever candidates, fit the
  baselines from the logs, and evaluate all of them on the same held-out users; report the
  best RL policy on event features (chosen on validation users) against the dwell-greedy
  myopic baseline and against the one-step optimiser of the same learned reward, with paired
  bootstrap CIs; the cost of partial observability (each policy's return on event features
  next to latent ones); and how much of a just-bought topic each policy shows after a
  conversion.
- :func:`ope_known_answer`: off-policy estimates of a target policy from logs of an
  exploring logging policy, next to that target's on-policy value measured by running it.

The script runs both and writes

- ``benchmarks/results/policy_experiments.json`` (everything, including learning curves),
- ``docs/img/policy_learning_curves.png`` (from that JSON),
- the results block between the ``<!-- policy-table -->`` markers of ``docs/policy.md``;

with ``--publish DIR`` it also publishes the event-feature SlateQ, REINFORCE and myopic
policies it trained (servable artifacts, for ``benchmarks/live_eval.py``). ``--quick``
shrinks every budget (a smoke run; its numbers are not the documented ones, and it writes
nothing unless ``--output`` is given). ``--from-json`` regenerates the figure and table from
an existing JSON without training.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from recsys.config import CandidateSettings, CatalogSettings, SimulatorSettings
from recsys.data.synthetic import make_world
from recsys.doc_blocks import replace_block
from recsys.pipeline import (
    SIM_POLICY_NAMES,
    SimulatorSetup,
    build_simulator_setup,
    fit_myopic,
    publish_myopic,
    publish_trained,
    train_simulator_policy,
)
from recsys.policy.base import BatchSlatePolicy
from recsys.policy.evaluation.ope import LoggedSlates, evaluate_off_policy, plackett_luce_target
from recsys.policy.evaluation.simulator import (
    blind_to_satiation,
    build_baselines,
    evaluate_in_simulator,
    evaluation_users,
    mean_ci,
    paired_ratio,
    run_policy_lives,
    shared_state_shares,
    validation_users,
)
from recsys.policy.exploration import plackett_luce_sample_batch
from recsys.policy.observation import FeatureKind
from recsys.policy.training.config import POPULATION, PolicyTrainConfig, documented_config
from recsys.simulator.env import SlateEnv
from recsys.simulator.policies import relevance_scores

F64 = npt.NDArray[np.float64]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "policy_experiments.json"
FIGURE = ROOT / "docs" / "img" / "policy_learning_curves.png"
DOC = ROOT / "docs" / "policy.md"
BEGIN, END = "<!-- policy-table:begin -->", "<!-- policy-table:end -->"
RL_NAMES = ("slateq", "reinforce")


# ---- the experiments -----------------------------------------------------------------------


@dataclass(frozen=True)
class ExperimentConfig:
    """The documented configuration of the policy experiments (fixed seeds throughout).

    ``slateq`` / ``reinforce`` are the training configs (their ``features`` is overridden per
    kind); both default to the library's
    :func:`~recsys.policy.training.config.documented_config`. ``feature_kinds`` lists the
    user-feature kinds every policy is trained and evaluated with; ``headline`` is the one
    the Must-show figures use (``event``: what the service has). Evaluation follows held-out
    users for one life each, at most ``eval_max_steps`` steps: ``validation_users`` (the last
    users of the population; the best RL policy and every setting were chosen on these) and
    ``eval_users`` test users
    (:func:`~recsys.policy.evaluation.simulator.evaluation_users`, never used for any choice),
    on which the Must-show figures are reported. The satiation figures come from
    ``satiation_users`` further held-out users (those after the test users): a life has few
    purchases, so the test users alone give too few for a tight CI.
    """

    slateq: PolicyTrainConfig = field(default_factory=lambda: documented_config("slateq"))
    reinforce: PolicyTrainConfig = field(default_factory=lambda: documented_config("reinforce"))
    feature_kinds: tuple[FeatureKind, ...] = ("event", "latent")
    headline: FeatureKind = "event"
    candidates: CandidateSettings = field(default_factory=CandidateSettings)
    eval_users: int = 1000
    validation_users: int = 1000
    eval_max_steps: int = 200
    eval_seed: int = 2024
    after_conversion_steps: int = 10
    satiation_users: int = 3000

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        out = asdict(self)
        out["slateq"] = self.slateq.to_dict()
        out["reinforce"] = self.reinforce.to_dict()
        out["candidates"] = self.candidates.model_dump(mode="json")
        return out


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


def _versus(a: F64, b: F64, target: float, seed: int) -> dict[str, Any]:
    ratio = paired_ratio(a, b, seed=seed)
    return {
        **ratio,
        "target": target,
        "meets_ratio": ratio["ratio"] >= target,
        "ci_above_one": ratio["ci_low"] > 1.0,
    }


def run_policy_experiments(
    config: ExperimentConfig | None = None,
    *,
    root: Path,
    progress: bool = False,
    publish: Path | None = None,
) -> dict[str, Any]:
    """Train, evaluate and compare (see the module docstring); JSON-ready results.

    ``root`` holds the setup's retrieval artifact (and intermediate checkpoints are not
    written); ``publish`` receives servable artifacts of the headline-kind SlateQ,
    REINFORCE and myopic policies.
    """
    cfg = config or ExperimentConfig()
    start = time.perf_counter()
    torch.manual_seed(cfg.slateq.seed)
    setup = build_simulator_setup(cfg.slateq, root, candidates=cfg.candidates, progress=progress)
    reward_model = setup.reward_model
    test, valid = evaluation_users(cfg.eval_users), validation_users(cfg.validation_users)

    training: dict[str, Any] = {}
    evaluation: dict[str, Any] = {}
    validation: dict[str, Any] = {}
    per_user: dict[str, Any] = {}
    trained: dict[str, Any] = {}
    trained_policies: dict[str, dict[str, BatchSlatePolicy]] = {}
    timing: dict[str, float] = {f"setup_{k}": v for k, v in setup.seconds.items()}
    for kind in cfg.feature_kinds:
        policies: dict[str, BatchSlatePolicy] = {}
        for base in (cfg.slateq, cfg.reinforce):
            run_cfg = replace(base, features=kind)
            result = train_simulator_policy(run_cfg, setup, progress=progress)
            name = run_cfg.algo
            policies[name] = result.policy
            trained[f"{name}/{kind}"] = result
            training[f"{name}/{kind}"] = {
                "algo": run_cfg.algo,
                "features": kind,
                "wall_s": result.wall_s,
                "reward_scale": result.reward_scale,
                "user_steps": result.curve[-1]["user_steps"],
                "curve": _subsample(result.curve),
            }
        t0 = time.perf_counter()
        baselines = build_baselines(
            setup.logged(kind),
            reward_model,
            num_items=setup.world.num_items,
            slate_size=cfg.slateq.slate_size,
            sampler=cfg.slateq.sampler("greedy"),
            seed=cfg.slateq.seed,
        )
        timing[f"baselines_{kind}"] = time.perf_counter() - t0
        policies = {**baselines, **policies}
        trained_policies[kind] = policies
        t0 = time.perf_counter()
        ratios = [(n, b) for n in RL_NAMES for b in ("myopic", "myopic_learned", "random")]
        for users, out in ((test, evaluation), (valid, validation)):
            result_kind = evaluate_in_simulator(
                policies,
                make_users=setup.make_users(users, kind),
                max_steps=cfg.eval_max_steps,
                seed=cfg.eval_seed,
                ratios=ratios,
            )
            pu = result_kind.pop("_per_user")
            out[kind] = result_kind
            if users is test:
                per_user[kind] = pu
        timing[f"evaluation_{kind}"] = time.perf_counter() - t0

    head = cfg.headline
    best = max(RL_NAMES, key=lambda n: validation[head]["policies"][n]["return"]["mean"])
    pu = per_user[head]
    must_show: dict[str, Any] = {
        "best_rl": best,
        "best_rl_chosen_on": "validation users (mean return, event features)",
        "vs_myopic": _versus(pu[best].returns, pu["myopic"].returns, 1.10, cfg.eval_seed),
        "vs_myopic_learned": _versus(
            pu[best].returns, pu["myopic_learned"].returns, 1.03, cfg.eval_seed
        ),
    }
    for other in RL_NAMES:
        must_show[f"{other}_vs_myopic"] = _versus(
            pu[other].returns, pu["myopic"].returns, 1.10, cfg.eval_seed
        )
    t0 = time.perf_counter()
    must_show["satiation"] = _satiation(cfg, setup, trained_policies[head], best)
    timing["satiation"] = time.perf_counter() - t0
    if len(cfg.feature_kinds) > 1:
        other_kind = next(k for k in cfg.feature_kinds if k != head)
        must_show["partial_observability"] = {
            name: {
                head: evaluation[head]["policies"][name]["return"]["mean"],
                other_kind: evaluation[other_kind]["policies"][name]["return"]["mean"],
                "ratio": paired_ratio(
                    per_user[head][name].returns, per_user[other_kind][name].returns
                ),
            }
            for name in evaluation[head]["policies"]
        }

    if publish is not None:
        published: dict[str, str] = {}
        for algo in RL_NAMES:
            art = publish_trained(
                publish,
                algo,
                trained[f"{algo}/{head}"],
                setup,
                evaluation={"test": evaluation[head]["policies"][algo]},
            )
            published[algo] = str(art.path)
        head_config = replace(cfg.slateq, features=head)
        _, model = fit_myopic(head_config, setup)
        art = publish_myopic(
            publish,
            model,
            head_config,
            setup,
            evaluation={"test": evaluation[head]["policies"]["myopic"]},
        )
        published["myopic"] = str(art.path)
        published["retrieval"] = str(setup.retrieval.artifact.path)
        must_show["published"] = published

    timing["total"] = time.perf_counter() - start
    return {
        "config": cfg.to_dict(),
        "simulator": {
            "catalog": CatalogSettings(**cfg.slateq.catalog().model_dump()).model_dump(),
            "settings": SimulatorSettings(
                num_candidates=cfg.slateq.num_candidates, slate_size=cfg.slateq.slate_size
            ).model_dump(),
            "population_layout": {
                "logging_users": [0, cfg.slateq.log_users],
                "training_users_from": cfg.slateq.log_users,
                "test_users": [POPULATION // 2, POPULATION // 2 + cfg.eval_users],
                "validation_users": [POPULATION - cfg.validation_users, POPULATION],
            },
        },
        "retrieval": {
            "version": setup.retrieval.artifact.version,
            "metrics": setup.retrieval.artifact.metadata.get("metrics"),
        },
        "reward_model": setup.reward_report,
        "training": training,
        "evaluation": evaluation,
        "validation": validation,
        "must_show": must_show,
        "timing_s": timing,
    }


def satiation_users(cfg: ExperimentConfig) -> npt.NDArray[np.int64]:
    """The users of the satiation figures: the ``satiation_users`` after the test users."""
    start = POPULATION // 2 + cfg.eval_users
    if start + cfg.satiation_users > POPULATION - cfg.validation_users:
        raise ValueError("satiation users would overlap the validation users")
    return np.arange(start, start + cfg.satiation_users, dtype=np.int64)


def _satiation(
    cfg: ExperimentConfig,
    setup: SimulatorSetup,
    policies: Mapping[str, BatchSlatePolicy],
    best: str,
) -> dict[str, Any]:
    """How much of a just-bought topic each policy shows in the slates after a purchase.

    Both the share among all items shown and among the ads shown: purchases happen on ads,
    and an ad for what the user just bought is the one a sated user is least likely to want
    (its conversion odds fall with the satisfaction satiation takes away). Two measures:

    - *own trajectories*: each policy on its own run. Not paired: which users buy, what and
      when, differs between policies, so a policy whose buyers are keener on the bought topic
      shows more of it for that reason alone;
    - *same states*: each policy's run with the others looking on
      (:func:`run_policy_lives` ``onlookers``): on every observation after a purchase, every
      policy says what it would show; paired differences to myopic with CIs over purchases.
      Myopic and the best RL policy also look on blind to the decayed conversions
      (:func:`blind_to_satiation`): the difference is what the satiation signal changes.

    The claim is that the best RL policy shows fewer bought-topic items (and ads) than myopic
    on the same states, on the post-purchase states of every policy's run, and that its
    return ratio over myopic holds on these users.
    """
    names = ("myopic", "myopic_learned", *RL_NAMES)
    make_users = setup.make_users(satiation_users(cfg), cfg.headline)
    features = setup.features(cfg.headline)
    blind = {
        f"{name}_blind": blind_to_satiation(
            policies[name], setup.fold.spec.user_feature_names, features.items.names
        )
        for name in ("myopic", best)
    }
    lookers: dict[str, BatchSlatePolicy] = {**{n: policies[n] for n in names}, **blind}
    runs = {
        name: run_policy_lives(
            policies[name],
            make_users,
            max_steps=cfg.eval_max_steps,
            seed=cfg.eval_seed,
            after_conversion_steps=cfg.after_conversion_steps,
            onlookers={other: p for other, p in lookers.items() if other != name},
        )
        for name in names
    }
    summary = {name: run.summary() for name, run in runs.items()}
    shared = {
        name: shared_state_shares(run, name, reference="myopic", seed=cfg.eval_seed)
        for name, run in runs.items()
    }

    def fewer(key: str) -> bool:
        rl, my = summary[best][key], summary["myopic"][key]
        return bool(rl.get("ci_high", math.inf) < my.get("ci_low", -math.inf))

    def fewer_on_same_states(kind: str) -> bool:
        return all(s[f"{kind}_minus_myopic"][best]["ci_high"] < 0 for s in shared.values())

    return {
        "users": cfg.satiation_users,
        "population_range": [int(satiation_users(cfg)[0]), int(satiation_users(cfg)[-1]) + 1],
        "after_conversion_steps": cfg.after_conversion_steps,
        "bought_topic_share": {n: summary[n]["bought_topic_share_after_conversion"] for n in names},
        "bought_topic_ad_share": {
            n: summary[n]["bought_topic_ad_share_after_conversion"] for n in names
        },
        "conversions_per_life": {n: summary[n]["conversions"]["mean"] for n in names},
        "return": {n: summary[n]["return"]["mean"] for n in names},
        "best_rl_vs_myopic": paired_ratio(
            runs[best].returns, runs["myopic"].returns, seed=cfg.eval_seed
        ),
        "best_rl_shows_fewer_bought_topic_ads": fewer("bought_topic_ad_share_after_conversion"),
        "best_rl_shows_fewer_bought_topic_items": fewer("bought_topic_share_after_conversion"),
        "same_states": shared,
        "best_rl_shows_fewer_bought_topic_items_on_same_states": fewer_on_same_states("items"),
        "best_rl_shows_fewer_bought_topic_ads_on_same_states": fewer_on_same_states("ads"),
    }


# ---- reporting -----------------------------------------------------------------------------

_ROW_ORDER = SIM_POLICY_NAMES


def _cell(m: Mapping[str, float], digits: int) -> str:
    return f"{m['mean']:.{digits}f} [{m['ci_low']:.{digits}f}, {m['ci_high']:.{digits}f}]"


def markdown_table(results: Mapping[str, Any], kind: str = "event") -> str:
    """The evaluation table of one feature kind (mean [95% CI] per user), fixed row order."""
    policies = results["evaluation"][kind]["policies"]
    names = [n for n in _ROW_ORDER if n in policies] + [n for n in policies if n not in _ROW_ORDER]
    lines = [
        "| policy | long-term return (LTV min) | clicks | revenue | conversions | steps lived |",
        "|---|---|---|---|---|---|",
    ]
    for n in names:
        p = policies[n]
        lines.append(
            f"| {n} | {_cell(p['return'], 1)} | {_cell(p['clicks'], 1)} | "
            f"{_cell(p['revenue'], 2)} | {p['conversions']['mean']:.2f} | "
            f"{p['steps']['mean']:.1f} |"
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
    for name, run in results["training"].items():  # "slateq/event", ...
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


def _fmt_ratio(r: Mapping[str, Any]) -> str:
    return f"{r['ratio']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]"


def _share(v: Mapping[str, Any]) -> str:
    if "ci_low" not in v:
        return f"n={v['n']}"
    return f"{v['mean']:.3f} [{v['ci_low']:.3f}, {v['ci_high']:.3f}]"


def _satiation_lines(sat: Mapping[str, Any], best: str) -> list[str]:
    """The satiation table: bought-topic shares after a purchase, per policy."""
    lines = [
        f"Satiation (on by default): in the {sat['after_conversion_steps']} slates after a "
        f"purchase, the share of the bought item's topic among the items and among the ads "
        f"shown; {sat['users']} further held-out users (mean [95% CI], n = purchases):",
        "",
        "| policy | return | purchases / life | bought-topic share, all items "
        "| bought-topic share, ads | n |",
        "|---|---|---|---|---|---|",
    ]
    for name, v in sat["bought_topic_share"].items():
        lines.append(
            f"| {name} | {sat['return'][name]:.1f} | {sat['conversions_per_life'][name]:.2f} "
            f"| {_share(v)} | {_share(sat['bought_topic_ad_share'][name])} | {v['n']} |"
        )
    lines += [
        "",
        f"- On its own trajectories, {best} shows fewer bought-topic ads than myopic (CIs "
        f"apart): {sat['best_rl_shows_fewer_bought_topic_ads']}; fewer bought-topic items of "
        f"any kind: {sat['best_rl_shows_fewer_bought_topic_items']}; its return over "
        f"myopic on these users: **{_fmt_ratio(sat['best_rl_vs_myopic'])}**.",
    ]
    same = sat.get("same_states")
    if not same:
        return lines
    names = list(sat["bought_topic_share"])
    names += [n for n in next(iter(same.values()))["items"] if n not in names]
    lines += [
        "",
        "On the same states: on every observation in those windows of one policy's run, "
        "every policy says which slate it would show (bought-topic share of its items, "
        "paired difference to myopic with a 95% CI over purchases):",
        "",
        f"| states of | purchases | {' | '.join(names)} | {best} - myopic, items "
        f"| {best} - myopic, ads |",
        f"|---|---|{'---|' * len(names)}---|---|",
    ]
    for driver, v in same.items():
        cells = " | ".join(f"{v['items'][n]['mean']:.3f}" if n in v["items"] else "" for n in names)
        diff = {k: v[f"{k}_minus_myopic"][best] for k in ("items", "ads")}
        lines.append(
            f"| {driver} | {v['windows']} | {cells} | {_share(diff['items'])} "
            f"| {_share(diff['ads'])} |"
        )
    lines += [
        "",
        f"- On the same states, {best} shows fewer bought-topic items than myopic on every "
        f"policy's states (CI of the difference below 0): "
        f"**{sat['best_rl_shows_fewer_bought_topic_items_on_same_states']}**; fewer "
        f"bought-topic ads: **{sat['best_rl_shows_fewer_bought_topic_ads_on_same_states']}**.",
    ]
    v = same.get("myopic", {}).get("items", {})
    if f"{best}_blind" in v and "myopic_blind" in v:
        lines.append(
            f"- What the satiation signal changes (`_blind`: the same policy with the decayed "
            f"conversions zeroed), on myopic's states: {best} "
            f"{v[f'{best}_blind']['mean']:.3f} → {v[best]['mean']:.3f}, myopic "
            f"{v['myopic_blind']['mean']:.3f} → {v['myopic']['mean']:.3f}."
        )
    return lines


def render_doc_block(results: Mapping[str, Any]) -> str:
    """The generated Markdown: tables, must-show lines, partial observability, OPE check."""
    must = results["must_show"]
    kinds = list(results["evaluation"])
    lines = [f"Test users, **{kinds[0]}** user features:", "", markdown_table(results, kinds[0])]
    best = must["best_rl"]
    lines += [
        "",
        f"- Best RL policy on validation users: **{best}** "
        f"(chosen on {must['best_rl_chosen_on']}).",
    ]
    for key, label in (
        ("vs_myopic", "myopic (dwell-greedy)"),
        ("vs_myopic_learned", "the one-step optimiser of the same learned reward"),
    ):
        m = must[key]
        lines.append(
            f"- {best} / {label}: **{_fmt_ratio(m)}** (target >= {m['target']}: "
            f"{m['meets_ratio']}; paired CI above 1: {m['ci_above_one']})"
        )
    for name in RL_NAMES:
        if name != best:
            lines.append(f"- {name} / myopic: {_fmt_ratio(must[f'{name}_vs_myopic'])}")
    lines += ["", *_satiation_lines(must["satiation"], best)]
    po = must.get("partial_observability")
    if po:
        other = next(k for k in next(iter(po.values())) if k not in ("ratio", kinds[0]))
        lines += [
            "",
            f"Cost of partial observability: mean return on {kinds[0]} features next to "
            f"{other} (simulator truth) features, same test users:",
            "",
            f"| policy | {kinds[0]} | {other} | {kinds[0]} / {other} |",
            "|---|---|---|---|",
        ]
        for name, row in po.items():
            lines.append(
                f"| {name} | {row[kinds[0]]:.1f} | {row[other]:.1f} | {_fmt_ratio(row['ratio'])} |"
            )
    validation = results.get("validation", {}).get(kinds[0])
    if validation:
        returns = ", ".join(
            f"{name} {p['return']['mean']:.1f}" for name, p in validation["policies"].items()
        )
        lines.append(
            f"\n- Validation users (where the best policy and settings were chosen), "
            f"{kinds[0]} features, mean return: {returns}"
        )
    rm = results["reward_model"]
    lines.append(
        f"- Learned reward vs hidden LTV, Spearman on held-out logged users: per step "
        f"{rm['spearman_step_learned_vs_future_ltv']:.3f} (clicks-only "
        f"{rm['spearman_step_clicks_vs_future_ltv']:.3f}), per life "
        f"{rm['spearman_life_learned_vs_ltv']:.3f} (clicks-only "
        f"{rm['spearman_life_clicks_vs_ltv']:.3f}); Bradley-Terry: per step "
        f"{rm['spearman_step_bt_vs_future_ltv']:.3f}, per life "
        f"{rm['spearman_life_bt_vs_ltv']:.3f}; training uses the {rm['objective']} fit"
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
    """Figure and docs block from the results (the JSON is the source of truth)."""
    plot_learning_curves(results, FIGURE)
    if DOC.is_file():
        replace_block(DOC, BEGIN, END, render_doc_block(results), required=False)


def quick_config() -> ExperimentConfig:
    """Tiny budgets: every code path in a few minutes (not the documented numbers)."""
    config = ExperimentConfig()
    return replace(
        config,
        slateq=replace(config.slateq, iterations=2, users=256, pretrain_updates=10, log_users=1024),
        reinforce=replace(config.reinforce, iterations=2, users=256, log_users=1024),
        candidates=CandidateSettings(epochs=3),
        eval_users=200,
        validation_users=200,
        eval_max_steps=50,
        satiation_users=300,
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run (or reload) the experiments and write JSON, figure and docs block."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny budgets (smoke test)")
    parser.add_argument("--from-json", action="store_true", help="only re-render outputs")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--skip-ope", action="store_true", help="skip the OPE check")
    parser.add_argument(
        "--output", type=Path, default=None, help=f"JSON path (default {RESULTS}; --quick: none)"
    )
    parser.add_argument(
        "--publish", type=Path, default=None, help="publish the event-feature policies here"
    )
    args = parser.parse_args(argv)
    output: Path | None = args.output or (None if args.quick else RESULTS)
    if args.from_json:
        results: dict[str, Any] = json.loads((output or RESULTS).read_text())
        write_outputs(results)
        return results
    torch.set_num_threads(1)
    config = quick_config() if args.quick else ExperimentConfig()
    with tempfile.TemporaryDirectory(prefix="policy-experiments-") as tmp:
        results = run_policy_experiments(
            config,
            root=args.publish or Path(tmp),
            progress=not args.no_progress,
            publish=args.publish,
        )
    if not args.skip_ope:
        ope_kwargs: dict[str, Any] = {}
        if args.quick:
            ope_kwargs = {"log_users": 2000, "onpolicy_users": 20_000, "n_bootstrap": 200}
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
