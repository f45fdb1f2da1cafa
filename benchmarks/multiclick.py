"""Several clicks per slate: SlateQ and REINFORCE on the multi-click simulator.

``python benchmarks/multiclick.py`` (``make multiclick``) trains SlateQ (``clicks="multi"``:
independent click marginals, each click credited its own slot reward) and REINFORCE (GAE)
with ``reward="env"`` on
:class:`~recsys.simulator.multiclick.MultiClickVectorEnv` (1,000 items offered whole, slates
of 10, several clicks per slate, boredom, 100-step episodes that end together), behind
:class:`~recsys.policy.training.envs.GymSlateEnv`, which reads the env's declared per-slot
signals and rewards. It then evaluates random, the greedy one-step oracle (true attractions
and rewards, no look-ahead), SlateQ and REINFORCE with
:func:`~recsys.policy.evaluation.episodes.evaluate_on_env`: the same held-out episodes (reset
seeds disjoint from training), greedy slates, mean episode return with 95% t-intervals, and
paired ratios with bootstrap CIs: the best learned policy over the oracle and REINFORCE over
random. Last, it times one SlateQ update (batch of 256 transitions collected on the env) on
the 1,000-item catalog and on a 100-item variant of the same env, interleaved, median over
repeats, and reports their ratio.

The goals (GitHub issue 13): the best policy's return >= the greedy oracle's; REINFORCE >= 2x
random; a SlateQ update on the 1,000-item env costs at most 1.5x one on the 100-item env.
The figures are reported whether or not a goal is met. Writes
``benchmarks/results/multiclick.json`` and the table in docs/policy.md ("Several clicks per
slate"). Sized for about 10 minutes on the 2-core development machine; ``--quick`` is a
seconds-long smoke run (tests).
"""

from __future__ import annotations

import os

# One thread for BLAS and torch, set before numpy and torch load: on a small, shared machine
# a multi-threaded [64, 10] x [10, 1000] product costs milliseconds of thread hand-offs.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402 - after the thread settings
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass, field, replace  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from recsys.doc_blocks import ci_text, ratio_text, replace_block  # noqa: E402
from recsys.policy.algorithms.baselines import RandomPolicy  # noqa: E402
from recsys.policy.base import BatchSlatePolicy, TrainableSlatePolicy  # noqa: E402
from recsys.policy.batch import (  # noqa: E402
    SlateAction,
    SlateObs,
    Transition,
    concat_transitions,
    gather_slots,
)
from recsys.policy.evaluation.episodes import evaluate_on_env  # noqa: E402
from recsys.policy.evaluation.simulator import paired_ratio  # noqa: E402
from recsys.policy.training.config import PolicyTrainConfig, build_policy  # noqa: E402
from recsys.policy.training.multiclick import (  # noqa: E402
    GreedyOraclePolicy,
    MultiClickEnvFactory,
    multiclick_env,
)
from recsys.policy.training.trainer import train_policy  # noqa: E402
from recsys.simulator.bench import machine_info  # noqa: E402
from recsys.simulator.multiclick import CLICKBAIT_COLUMN, MultiClickSettings  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "multiclick.json"
DOC = ROOT / "docs" / "policy.md"
BEGIN, END = "<!-- multiclick:begin -->", "<!-- multiclick:end -->"
#: The issue's goals.
GOAL_BEST_OVER_ORACLE = 1.0
GOAL_REINFORCE_OVER_RANDOM = 2.0
GOAL_UPDATE_RATIO = 1.5
LEARNED = ("slateq", "reinforce")


def slateq_config() -> PolicyTrainConfig:
    """SlateQ as trained here: several clicks (``clicks="multi"``), the immediate reward
    regressed per click, and a short discount: at ``gamma=0.9`` the TD continuation's noise
    swamped the per-item differences it should add (0.81x the oracle's return in the
    development runs, against 1.14x at 0.5 and 1.10x at 0)."""
    return PolicyTrainConfig(
        algo="slateq",
        reward="env",
        clicks="multi",
        immediate_head=True,
        gamma=0.5,
        lr=1e-3,
        tau=0.05,
        users=32,
        steps_per_iteration=10,
        iterations=40,
        batch_size=256,
        updates_per_iteration=20,
        replay_size=8192,
        target_candidates=64,
        seed=0,
    )


def reinforce_config() -> PolicyTrainConfig:
    """REINFORCE as trained here: GAE credit, a strong entropy bonus and a small step (its
    1,000-way softmax otherwise collapses onto the same few clickbait items for every user
    within 40-70 iterations), and the slate's advantage for every slot: ``per_slot_credit``
    as implemented now lowered the return (1.89x random against 2.15x), see docs/policy.md."""
    return PolicyTrainConfig(
        algo="reinforce",
        reward="env",
        per_slot_credit=False,
        gamma=0.9,
        lr=1e-3,
        entropy_coef=0.1,
        users=32,
        steps_per_iteration=20,
        iterations=60,
        batch_size=16,
        seed=0,
    )


@dataclass(frozen=True)
class MultiClickExperiment:
    """What the experiment trains, evaluates and times (the defaults are the documented run).

    ``small_items``: catalog size of the update-cost comparison's small variant (the same
    env otherwise). ``bench_batch``: transitions per timed update; ``bench_repeats`` timed
    updates per catalog after ``bench_warmup`` untimed ones.
    """

    env: MultiClickSettings = field(default_factory=MultiClickSettings)
    slateq: PolicyTrainConfig = field(default_factory=slateq_config)
    reinforce: PolicyTrainConfig = field(default_factory=reinforce_config)
    eval_users: int = 64
    episodes: int = 256
    eval_seed: int = 0
    small_items: int = 100
    bench_batch: int = 256
    bench_repeats: int = 30
    bench_warmup: int = 3

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        out = asdict(self)
        out["slateq"] = self.slateq.to_dict()
        out["reinforce"] = self.reinforce.to_dict()
        return out


def quick_experiment() -> MultiClickExperiment:
    """A seconds-long run of every step (smoke tests), not a measurement."""
    env = MultiClickSettings(num_items=60, num_topics=4, num_users=40, slate_size=4, horizon=5)

    def tiny(config: PolicyTrainConfig, batch_size: int) -> PolicyTrainConfig:
        return replace(
            config,
            users=4,
            iterations=2,
            steps_per_iteration=3,
            hidden=(8,),
            batch_size=batch_size,
            updates_per_iteration=2,
            replay_size=64,
            target_candidates=16,
        )

    return MultiClickExperiment(
        env=env,
        slateq=tiny(slateq_config(), 16),
        reinforce=tiny(reinforce_config(), 4),
        eval_users=8,
        episodes=8,
        small_items=20,
        bench_batch=16,
        bench_repeats=2,
        bench_warmup=1,
    )


# ---- training and evaluation ---------------------------------------------------------------


def train(
    config: PolicyTrainConfig, env: MultiClickSettings
) -> tuple[TrainableSlatePolicy, dict[str, Any]]:
    """Train one algorithm on the env; the policy and a summary of its run."""
    start = time.perf_counter()
    result = train_policy(config, env_factory=MultiClickEnvFactory(config.users, env))
    curve = result.curve
    tail = curve[-max(1, len(curve) // 5) :]
    return result.policy, {
        "wall_s": time.perf_counter() - start,
        "iterations": len(curve),
        "user_steps": curve[-1]["user_steps"] if curve else 0.0,
        "reward_per_user_step_last_fifth": float(
            np.mean([row["reward_per_user_step"] for row in tail])
        ),
        "clicks_per_user_step_last_fifth": float(
            np.mean([row.get("clicks_per_user_step", 0.0) for row in tail])
        ),
    }


class ServedMix:
    """A policy that counts the clickbait items in the slates it serves (delegating the
    choice): the mechanism behind the returns, what a look-ahead policy should show less of
    than the greedy oracle."""

    def __init__(self, policy: BatchSlatePolicy) -> None:
        self.policy = policy
        self.name = policy.name
        self.clickbait = 0
        self.served = 0

    def act(
        self, obs: SlateObs, slate_size: int, rng: np.random.Generator, explore: bool = True
    ) -> SlateAction:
        action = self.policy.act(obs, slate_size, rng, explore)
        bait = np.asarray(gather_slots(obs.item_features[..., CLICKBAIT_COLUMN], action.slates)) > 0
        self.clickbait += int(bait.sum())
        self.served += int(bait.size)
        return action

    @property
    def share(self) -> float:
        """Clickbait items among those served so far."""
        return self.clickbait / max(self.served, 1)


def evaluate(
    experiment: MultiClickExperiment, learned: dict[str, BatchSlatePolicy]
) -> dict[str, Any]:
    """Random, the greedy oracle and the learned policies on the same held-out episodes."""
    env = multiclick_env(experiment.eval_users, experiment.env)
    plain: dict[str, BatchSlatePolicy] = {
        "random": RandomPolicy(),
        "greedy_oracle": GreedyOraclePolicy(env),
        **learned,
    }
    policies = {name: ServedMix(policy) for name, policy in plain.items()}
    result = evaluate_on_env(
        policies,
        env,
        episodes=experiment.episodes,
        max_steps=experiment.env.horizon,
        seed=experiment.eval_seed,
        reference="random",
    )
    outcomes = result.pop("_episodes")
    returns = {name: outcomes[name].returns for name in policies}
    best = max(learned, key=lambda name: float(returns[name].mean()))
    oracle = returns["greedy_oracle"]
    seed = experiment.eval_seed
    result["best"] = best
    result["versus_oracle"] = {
        name: paired_ratio(returns[name], oracle, seed=seed) for name in learned
    }
    result["versus_random"] = {
        name: paired_ratio(returns[name], returns["random"], seed=seed)
        for name in ("greedy_oracle", *learned)
    }
    result["clickbait_share_served"] = {name: p.share for name, p in policies.items()}
    result["catalog_clickbait_share"] = float(np.mean(env.env.item_table[:, CLICKBAIT_COLUMN] > 0))
    return result


# ---- update cost ---------------------------------------------------------------------------


def transition_batch(settings: MultiClickSettings, rows: int, seed: int) -> Transition:
    """``rows`` real transitions of random slates on the env (per-slot env rewards, the
    slate served next), as a SlateQ minibatch from its replay would hold them."""
    users = 32
    env = multiclick_env(users, settings, seed=seed)
    obs = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    policy = RandomPolicy()
    action = policy.act(obs, env.slate_size, rng)
    parts: list[Transition] = []
    held = 0
    while held < rows:
        step = env.step(action.slates)
        nxt = policy.act(step.next_obs, env.slate_size, rng)
        assert step.env_reward is not None
        tr = Transition(
            obs, action, step.response, step.env_reward, step.next_obs, step.done, nxt, step.valid
        ).valid_rows()
        parts.append(tr)
        held += tr.batch_size
        obs, action = step.next_obs, nxt
    return concat_transitions(parts).take(np.arange(rows))


def update_cost(experiment: MultiClickExperiment) -> dict[str, Any]:
    """Median seconds of one SlateQ update on the env and on its small-catalog variant.

    Each catalog gets its own policy (same config and seed) and batch; the catalogs are
    interleaved update by update, so load on the shared machine hits both alike.
    """
    torch.set_num_threads(1)
    sizes = {"large": experiment.env.num_items, "small": experiment.small_items}
    config = experiment.slateq
    runs = {}
    for name, items in sizes.items():
        settings = replace(experiment.env, num_items=items)
        batch = transition_batch(settings, experiment.bench_batch, seed=config.seed)
        user_dim = int(batch.obs.user_features.shape[1])
        item_dim = int(batch.obs.item_features.shape[2])
        policy = build_policy(config, user_dim, item_dim, settings.slate_size)
        runs[name] = (policy, batch)
    times: dict[str, list[float]] = {name: [] for name in sizes}
    for k in range(experiment.bench_warmup + experiment.bench_repeats):
        for name, (policy, batch) in runs.items():
            start = time.perf_counter()
            policy.update([batch])
            if k >= experiment.bench_warmup:
                times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    ratio = median["large"] / median["small"]
    return {
        "catalog_items": sizes,
        "batch": experiment.bench_batch,
        "repeats": experiment.bench_repeats,
        "median_s": median,
        "min_s": {name: min(t) for name, t in times.items()},
        "ratio_large_over_small": ratio,
        "goal": GOAL_UPDATE_RATIO,
        "meets_goal": ratio <= GOAL_UPDATE_RATIO,
        "torch_threads": torch.get_num_threads(),
    }


# ---- the run -------------------------------------------------------------------------------


def run_experiment(experiment: MultiClickExperiment) -> dict[str, Any]:
    """Train, evaluate and time; JSON-ready, with the goals and whether they are met."""
    start = time.perf_counter()
    machine_before = machine_info()
    torch.set_num_threads(1)
    learned: dict[str, BatchSlatePolicy] = {}
    training: dict[str, Any] = {}
    for name, config in (("slateq", experiment.slateq), ("reinforce", experiment.reinforce)):
        policy, summary = train(config, experiment.env)
        learned[name], training[name] = policy, summary
    evaluation = evaluate(experiment, learned)
    cost = update_cost(experiment)
    best = evaluation["best"]
    best_ratio = evaluation["versus_oracle"][best]
    reinforce_ratio = evaluation["versus_random"]["reinforce"]
    goals = {
        "best_over_oracle": {
            "policy": best,
            **best_ratio,
            "goal": GOAL_BEST_OVER_ORACLE,
            "meets_goal": best_ratio["ratio"] >= GOAL_BEST_OVER_ORACLE,
            "ci_above_goal": best_ratio["ci_low"] >= GOAL_BEST_OVER_ORACLE,
        },
        "reinforce_over_random": {
            **reinforce_ratio,
            "goal": GOAL_REINFORCE_OVER_RANDOM,
            "meets_goal": reinforce_ratio["ratio"] >= GOAL_REINFORCE_OVER_RANDOM,
            "ci_above_goal": reinforce_ratio["ci_low"] >= GOAL_REINFORCE_OVER_RANDOM,
        },
        "slateq_update_ratio": {
            "ratio": cost["ratio_large_over_small"],
            "goal": GOAL_UPDATE_RATIO,
            "meets_goal": cost["meets_goal"],
        },
    }
    return {
        "experiment": experiment.to_dict(),
        "training": training,
        "evaluation": evaluation,
        "update_cost": cost,
        "goals": goals,
        "wall_s": time.perf_counter() - start,
        "machine": {"before": machine_before, "after": machine_info()},
    }


LABELS = {
    "random": "random",
    "greedy_oracle": "greedy one-step oracle",
    "slateq": 'SlateQ (`clicks="multi"`)',
    "reinforce": "REINFORCE",
}


def markdown_table(result: dict[str, Any]) -> str:
    """The docs' table: per policy its return, clicks, paired ratios and clickbait served."""
    ev = result["evaluation"]
    lines = [
        "| policy | episode return | clicks per episode | / random | / greedy oracle | "
        "clickbait served |",
        "|---|---|---|---|---|---|",
    ]
    for name, summary in ev["policies"].items():
        vs_random = ev["versus_random"].get(name)
        vs_oracle = ev["versus_oracle"].get(name)
        lines.append(
            f"| {LABELS.get(name, name)} | {ci_text(summary['return'])} | "
            f"{ci_text(summary['clicks'])} | {ratio_text(vs_random) if vs_random else ''} | "
            f"{ratio_text(vs_oracle) if vs_oracle else ''} | "
            f"{100 * ev['clickbait_share_served'][name]:.0f}% |"
        )
    return "\n".join(lines)


def render_doc_block(result: dict[str, Any]) -> str:
    """The generated part of the docs section: table, goals, cost and where it ran."""
    ev, goals, cost = result["evaluation"], result["goals"], result["update_cost"]
    load = result["machine"]["before"]["load_average_1m_5m_15m"]
    load_after = result["machine"]["after"]["load_average_1m_5m_15m"]
    train = result["training"]
    best = goals["best_over_oracle"]
    rf = goals["reinforce_over_random"]

    def verdict(goal: dict[str, Any]) -> str:
        if goal.get("ci_above_goal"):
            return "met, CI above the goal"
        return "met (point estimate; the CI reaches below)" if goal["meets_goal"] else "missed"

    ms = {k: 1000 * v for k, v in cost["median_s"].items()}
    return "\n".join(
        [
            markdown_table(result),
            "",
            f"{ev['config']['episodes']} held-out episodes of {ev['config']['max_steps']} "
            f"steps ({ev['config']['batch_size']} users per reset, greedy slates, reset seeds "
            f"disjoint from training), 95% t-intervals; ratios are paired, bootstrap CIs. "
            f"Training: SlateQ {train['slateq']['user_steps']:,.0f} user-steps in "
            f"{train['slateq']['wall_s']:.0f} s, REINFORCE "
            f"{train['reinforce']['user_steps']:,.0f} in {train['reinforce']['wall_s']:.0f} s.",
            "",
            f"- Best policy, {LABELS[best['policy']]}, / greedy oracle: "
            f"{ratio_text(best)}; goal >= {best['goal']:g}: {verdict(best)}.",
            f"- REINFORCE / random: {ratio_text(rf)}; goal >= {rf['goal']:g}: {verdict(rf)}.",
            f"- One SlateQ update (batch of {cost['batch']}, one torch thread), median of "
            f"{cost['repeats']}: {ms['large']:.1f} ms with {cost['catalog_items']['large']:,} "
            f"items offered, {ms['small']:.1f} ms with {cost['catalog_items']['small']:,}: "
            f"{cost['ratio_large_over_small']:.2f}x (goal <= {cost['goal']:g}: "
            f"{'met' if cost['meets_goal'] else 'missed'}).",
            "",
            f"Measured on the 2-core development machine, shared with other work (load "
            f"average {load[0]:.1f} before the run, {load_after[0]:.1f} after), in "
            f"{result['wall_s'] / 60:.1f} min; `benchmarks/results/multiclick.json` has "
            "every figure.",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke run")
    parser.add_argument("--output", type=Path, default=None, help=f"JSON (default {RESULTS})")
    parser.add_argument("--no-docs", action="store_true", help="leave docs/policy.md alone")
    args = parser.parse_args(argv)
    experiment = quick_experiment() if args.quick else MultiClickExperiment()
    result = run_experiment(experiment)
    output = args.output or (None if args.quick else RESULTS)
    text = json.dumps(result, indent=2)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text + "\n")
    if not args.no_docs and not args.quick:
        replace_block(DOC, BEGIN, END, render_doc_block(result))
    print(render_doc_block(result))


if __name__ == "__main__":
    main()
