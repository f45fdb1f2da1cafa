"""On-policy evaluation in the simulator, and the baselines every learned policy must beat.

:func:`evaluate_in_simulator` runs every policy on the *same* held-out users from the same
initial states with the same seeds (common random numbers: one environment seed and one
policy seed for all), follows each user through one life until churn (at most ``max_steps``
steps) and reports per user:

- ``return``: the long-term return, the hidden lifetime value (dwell minutes over the life;
  the simulator's ground truth, never seen by a policy),
- ``clicks`` and ``revenue`` over the life, ``steps`` lived,

each as a mean with a 95% t-interval over users. Paired ratios between policies
(:func:`paired_ratio`) bootstrap the users jointly, since every policy saw the same users.

:func:`build_baselines` trains the non-RL baselines from the logging policy's sessions:
``random``, ``popular`` (click counts), ``myopic`` (a learned conditional-logit choice model
and a learned immediate-engagement model, the slate maximising expected immediate dwell:
the SlateQ paper's myopic baseline, as
:class:`~recsys.policy.algorithms.baselines.MyopicGreedyPolicy`),
``myopic_learned`` (the same on the learned reward: SlateQ's objective with ``gamma = 0``)
and ``bandit`` (LinUCB on the per-slot reward). None reads hidden truth.

:func:`evaluate_sim_policies` (what ``recsys evaluate sim`` calls) evaluates named policies,
baselines and trained checkpoints, on the held-out test users (:func:`evaluation_users`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from recsys.artifacts import latest_version
from recsys.config import SimulatorSettings
from recsys.data.synthetic import SyntheticWorld
from recsys.policy._nets import to_tensor
from recsys.policy.algorithms.baselines import (
    LinUCBPolicy,
    MyopicGreedyPolicy,
    PopularityPolicy,
    RandomPolicy,
)
from recsys.policy.algorithms.slateq import SlateQConfig, SlateQPolicy
from recsys.policy.base import BatchSlatePolicy
from recsys.policy.batch import SlateObs, Transition
from recsys.policy.choice_model import ConditionalLogitChoiceModel
from recsys.policy.reward.model import LearnedRewardModel
from recsys.policy.reward.spec import reward_model_from_tensors
from recsys.policy.training.checkpoint import load_policy_checkpoint
from recsys.policy.training.config import (
    ALGOS,
    POPULATION,
    Algo,
    PolicyTrainConfig,
    documented_config,
)
from recsys.policy.training.envs import SimulatorFeatures
from recsys.policy.training.sessions import SessionLog, session_transitions
from recsys.policy.training.trainer import build_simulator_setup, train_policy
from recsys.simulator.env import SlateEnv
from recsys.types import ArtifactError, FloatArray, IntArray

F64 = npt.NDArray[np.float64]

__all__ = [
    "METRICS",
    "SIM_POLICY_NAMES",
    "PolicyEvaluation",
    "build_baselines",
    "evaluate_in_simulator",
    "evaluate_sim_policies",
    "evaluation_users",
    "mean_ci",
    "paired_ratio",
    "run_policy_lives",
    "train_myopic",
    "validation_users",
]

#: Per-user metrics reported for every policy.
METRICS = ("return", "clicks", "revenue", "steps")


def _t_quantile(confidence: float, dof: int) -> float:
    """Student-t quantile via the Cornish-Fisher expansion around the normal quantile.

    Within 0.3% of the exact value for ``dof >= 10`` (evaluation uses hundreds of users),
    which spares a scipy dependency.
    """
    z = float(torch.special.ndtri(torch.tensor(0.5 + confidence / 2, dtype=torch.float64)))
    if dof <= 0:
        return float("nan")
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    return z + g1 / dof + g2 / dof**2


def mean_ci(values: npt.ArrayLike, confidence: float = 0.95) -> dict[str, float]:
    """Mean with a t-interval over independent units: ``mean, ci_low, ci_high, std, n``."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    n = x.shape[0]
    mean = float(x.mean()) if n else float("nan")
    std = float(x.std(ddof=1)) if n > 1 else float("nan")
    half = _t_quantile(confidence, n - 1) * std / math.sqrt(n) if n > 1 else float("nan")
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half, "std": std, "n": n}


def paired_ratio(
    numerator: npt.ArrayLike,
    denominator: npt.ArrayLike,
    *,
    n_bootstrap: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """``mean(numerator) / mean(denominator)`` over the same users, percentile-bootstrap CI.

    Users are resampled jointly for both policies (they saw the same users), so the
    interval reflects the paired design rather than two independent samples.
    """
    a = np.asarray(numerator, dtype=np.float64).reshape(-1)
    b = np.asarray(denominator, dtype=np.float64).reshape(-1)
    if a.shape != b.shape or a.size < 2:
        raise ValueError("paired_ratio needs two equally long per-user arrays (>= 2 users)")
    rng = np.random.default_rng(seed)
    n = a.shape[0]
    idx = rng.integers(0, n, size=(n_bootstrap, n))
    counts = np.zeros((n_bootstrap, n))
    np.add.at(counts, (np.arange(n_bootstrap)[:, None], idx), 1.0)
    boot = (counts @ a) / np.maximum(counts @ b, 1e-300)
    alpha = 1 - confidence
    low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return {
        "ratio": float(a.mean() / b.mean()),
        "ci_low": float(low),
        "ci_high": float(high),
        "n": n,
    }


@dataclass(frozen=True)
class PolicyEvaluation:
    """Per-user outcomes of one policy (arrays ``[users]``) and its run time."""

    returns: F64
    clicks: F64
    revenue: F64
    steps: F64
    truncated: npt.NDArray[np.bool_]
    seconds: float

    def summary(self, confidence: float = 0.95) -> dict[str, Any]:
        """JSON-ready means with CIs, CTR and the truncated share."""
        out: dict[str, Any] = {
            name: mean_ci(getattr(self, attr), confidence)
            for name, attr in zip(METRICS, ("returns", "clicks", "revenue", "steps"), strict=True)
        }
        out["ctr"] = float(self.clicks.sum() / max(self.steps.sum(), 1.0))
        out["truncated_fraction"] = float(self.truncated.mean())
        out["seconds"] = self.seconds
        return out


def run_policy_lives(
    policy: BatchSlatePolicy,
    world: SyntheticWorld,
    settings: SimulatorSettings,
    features: SimulatorFeatures,
    users: IntArray,
    *,
    max_steps: int,
    seed: int,
    explore: bool = False,
) -> PolicyEvaluation:
    """Serve ``users`` with ``policy`` until each churns or ``max_steps``; per-user totals.

    Only users still alive are stepped (each step is batched over them). The env and the
    policy's generator are seeded from ``seed`` alone, so every policy sees the same users
    in the same initial states with the same random streams.
    """
    env = SlateEnv(world, seed=seed, settings=settings)
    rng = np.random.default_rng(seed + 1)
    users = np.asarray(users, dtype=np.int64)
    n, s = users.shape[0], settings.slate_size
    totals = np.zeros((4, n))
    alive = np.ones(n, dtype=np.bool_)
    start = time.perf_counter()
    with torch.no_grad():
        for _ in range(max_steps):  # a loop over time; each step is batched over users
            rows = np.flatnonzero(alive)
            if rows.size == 0:
                break
            batch = users[rows]
            cands = env.sample_candidates(batch)
            obs = features.obs(env.user_features(batch), cands)
            action = policy.act(obs, s, rng, explore=explore)
            items = np.take_along_axis(cands, action.slates, axis=1)
            result = env.step(batch, items, check=False)
            o = result.observable
            totals[0, rows] += o.dwell_s / 60.0
            totals[1, rows] += o.click_position >= 0
            totals[2, rows] += o.revenue
            totals[3, rows] += 1.0
            alive[rows[result.session.terminated]] = False
    return PolicyEvaluation(
        returns=totals[0],
        clicks=totals[1],
        revenue=totals[2],
        steps=totals[3],
        truncated=alive.copy(),
        seconds=time.perf_counter() - start,
    )


def evaluate_in_simulator(
    policies: Mapping[str, BatchSlatePolicy],
    *,
    world: SyntheticWorld,
    settings: SimulatorSettings,
    features: SimulatorFeatures,
    users: IntArray,
    max_steps: int = 200,
    seed: int = 0,
    explore: bool | Mapping[str, bool] = False,
    confidence: float = 0.95,
    ratios: Sequence[tuple[str, str]] = (),
) -> dict[str, Any]:
    """Evaluate every policy on identical users and seeds; JSON-ready summary.

    ``explore`` (per policy or for all) serves the behaviour distribution instead of the
    deterministic slate. ``ratios`` lists ``(a, b)`` pairs for which the paired ratio of
    mean returns ``a / b`` with its bootstrap CI is added under ``"ratios"``. The per-user
    return arrays are kept under ``"_per_user"`` (not JSON; pop it before dumping).
    """
    per_user: dict[str, PolicyEvaluation] = {}
    summary: dict[str, Any] = {}
    for name, policy in policies.items():
        ex = explore.get(name, False) if isinstance(explore, Mapping) else explore
        ev = run_policy_lives(
            policy,
            world,
            settings,
            features,
            users,
            max_steps=max_steps,
            seed=seed,
            explore=ex,
        )
        per_user[name] = ev
        summary[name] = ev.summary(confidence)
    out: dict[str, Any] = {
        "config": {
            "users": int(np.asarray(users).shape[0]),
            "max_steps": max_steps,
            "seed": seed,
            "confidence": confidence,
            "return_definition": "hidden lifetime value: dwell minutes over one life "
            "(until churn or max_steps)",
        },
        "policies": summary,
        "ratios": {
            f"{a}/{b}": paired_ratio(per_user[a].returns, per_user[b].returns, seed=seed)
            for a, b in ratios
        },
        "_per_user": per_user,
    }
    return out


# ---- baselines -----------------------------------------------------------------------------


class _ImmediateValue:
    """``E[r | click i] - E[r | no click]`` ``[B, C]`` from a ``gamma = 0`` SlateQ's nets."""

    def __init__(self, model: SlateQPolicy) -> None:
        self.model = model

    def __call__(self, obs: SlateObs) -> FloatArray:
        with torch.no_grad():
            q, q0 = self.model.item_values(
                to_tensor(obs.user_features), to_tensor(obs.item_features)
            )
            out: FloatArray = (q - q0[:, None]).numpy()
        return out


def _log_batches(
    log: SessionLog,
    features: SimulatorFeatures,
    reward: LearnedRewardModel | None,
    batch_rows: int,
    rng: np.random.Generator,
) -> list[Transition]:
    rows = rng.permutation(log.num_rows)
    out: list[Transition] = []
    for start in range(0, rows.shape[0], batch_rows):
        chunk = rows[start : start + batch_rows]
        signals = log.signals[chunk]
        if reward is None:
            slot_reward = signals[..., 1] / np.float32(60.0)
        else:
            slot_reward = reward.rewards(signals)
        out.append(session_transitions(log, features, chunk, slot_reward))
    return out


def train_myopic(
    log: SessionLog,
    features: SimulatorFeatures,
    reward: LearnedRewardModel | None,
    *,
    slate_size: int,
    epochs: int = 4,
    batch_rows: int = 1024,
    seed: int = 0,
) -> MyopicGreedyPolicy:
    """The myopic baseline from logs: choice model + immediate reward, slate by greedy.

    A ``gamma = 0`` SlateQ fitted on the logged transitions learns exactly those two parts
    (TD with ``gamma = 0`` is regression on the reward of the consumed item); they are then
    served by :class:`MyopicGreedyPolicy`, which maximises the expected immediate reward of
    the slate under the learned choice model. ``reward=None`` uses dwell minutes.
    """
    rng = np.random.default_rng(seed)
    batches = _log_batches(log, features, reward, batch_rows, rng)
    user_dim = int(batches[0].obs.user_features.shape[1])
    item_dim = int(batches[0].obs.item_features.shape[2])
    choice = ConditionalLogitChoiceModel(user_dim, item_dim, slate_size, seed=seed)
    config = SlateQConfig(gamma=0.0, td="sarsa", hidden=(64,), lr=3e-3)
    model = SlateQPolicy(user_dim, item_dim, choice, config, seed=seed)
    for _ in range(epochs):
        for i in rng.permutation(len(batches)):
            model.update([batches[int(i)]])
    policy = MyopicGreedyPolicy(_ImmediateValue(model), choice_model=choice)
    policy.name = "myopic" if reward is None else "myopic_learned"
    return policy


def build_baselines(
    log: SessionLog,
    world: SyntheticWorld,
    features: SimulatorFeatures,
    reward: LearnedRewardModel | None,
    *,
    slate_size: int,
    seed: int = 0,
    myopic_epochs: int = 4,
) -> dict[str, BatchSlatePolicy]:
    """``random``, ``popular``, ``myopic``, ``myopic_learned``, ``bandit`` from the logs.

    ``myopic`` maximises the expected immediate engagement (dwell minutes) of the slate under
    a learned choice model; ``myopic_learned`` the expected immediate ``reward`` (the learned
    reward in the experiments; omitted when ``reward`` is None), i.e. SlateQ's objective with
    ``gamma = 0``. Popularity counts logged clicks per item; LinUCB fits its ridge model on
    every logged slot's ``reward`` (dwell minutes without one) with item features (which
    include the user-item cross features) and serves by its upper confidence bound.
    """
    popular = PopularityPolicy(world.num_items)
    clicked = np.take_along_axis(log.candidate_ids, log.slates, axis=1)[log.signals[..., 0] > 0]
    popular.observe(clicked)
    popular.name = "popular"
    out: dict[str, BatchSlatePolicy] = {"random": RandomPolicy(), "popular": popular}
    out["myopic"] = train_myopic(
        log, features, None, slate_size=slate_size, epochs=myopic_epochs, seed=seed
    )
    if reward is not None:
        learned = train_myopic(
            log, features, reward, slate_size=slate_size, epochs=myopic_epochs, seed=seed
        )
        learned.name = "myopic_learned"
        out["myopic_learned"] = learned
    rng = np.random.default_rng(seed + 1)
    bandit = LinUCBPolicy(1, features.item_dim, alpha=0.5, features="item")
    bandit.update(_log_batches(log, features, reward, 4096, rng))
    bandit.name = "bandit"
    out["bandit"] = bandit
    return out


# ---- held-out users ------------------------------------------------------------------------


def _held_out(first: int, n: int, what: str) -> npt.NDArray[np.int64]:
    """Users ``[first, first + n)``; at most a quarter of the population, so the held-out
    groups (test above the training half, validation at the end) never meet."""
    if not 2 <= n <= POPULATION // 4:
        raise ValueError(f"{what} users must lie in [2, {POPULATION // 4}], got {n}")
    return np.arange(first, first + n, dtype=np.int64)


def evaluation_users(n: int) -> npt.NDArray[np.int64]:
    """The ``n`` test users: the first ones above the training half of the population.

    Training uses users below ``POPULATION // 2`` (enforced by :class:`PolicyTrainConfig`),
    validation the last ones (:func:`validation_users`), so the three never meet.
    """
    return _held_out(POPULATION // 2, n, "test")


def validation_users(n: int) -> npt.NDArray[np.int64]:
    """The last ``n`` users of the population: where budgets and settings were tuned."""
    return _held_out(POPULATION - n, n, "validation")


# ---- evaluation of named policies (what `recsys evaluate sim` calls) -----------------------

SIM_POLICY_NAMES = (
    "random",
    "popular",
    "myopic",
    "myopic_learned",
    "bandit",
    "slateq",
    "reinforce",
)


def evaluate_sim_policies(
    names: Sequence[str],
    *,
    users: int = 1000,
    max_steps: int = 200,
    seed: int = 2024,
    configs: Mapping[Algo, PolicyTrainConfig] | None = None,
    checkpoints: Mapping[str, Path] | None = None,
    artifacts_root: Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate named policies on ``users`` held-out simulator users (one life each).

    ``configs[algo]`` is each algorithm's training config (default: its
    :func:`~recsys.policy.training.config.documented_config`). Baselines are trained from the
    logging policy's sessions of the ``slateq`` config's simulator setup. ``slateq`` /
    ``reinforce`` come from ``checkpoints[name]``, else from the newest ``policy-<name>``
    artifact under ``artifacts_root``, else are trained on the fly with their config's budget
    on the learned reward. A checkpoint trained on another
    simulator setup (other item statistics or feature widths) is refused. JSON-ready; the
    ratios of every policy's return to ``myopic`` and ``random`` (when evaluated) included.
    """
    unknown = [n for n in names if n not in SIM_POLICY_NAMES]
    if unknown or not names:
        raise ValueError(f"unknown policies {unknown}; choose from {', '.join(SIM_POLICY_NAMES)}")
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    eval_users = evaluation_users(users)
    train_cfgs = {algo: (configs or {}).get(algo) or documented_config(algo) for algo in ALGOS}
    base = train_cfgs["slateq"]
    setup = build_simulator_setup(base)
    assert setup.reward_tensors is not None
    assert setup.log is not None
    core = SlateEnv(setup.world, settings=setup.settings)
    features = SimulatorFeatures.build(core, setup.item_extra, base.cross_features)
    policies: dict[str, BatchSlatePolicy] = {}
    sources: dict[str, str] = {}
    if any(n not in ("slateq", "reinforce") for n in names):
        baselines = build_baselines(
            setup.log,
            setup.world,
            features,
            reward_model_from_tensors(setup.reward_tensors),
            slate_size=base.slate_size,
            seed=base.seed,
        )
        policies.update({n: baselines[n] for n in names if n in baselines})
        sources.update({n: "trained from the logging policy's sessions" for n in policies})
    for algo, train_cfg in train_cfgs.items():
        if algo not in names:
            continue
        path = (checkpoints or {}).get(algo)
        if path is None and artifacts_root is not None:
            try:
                path = latest_version(artifacts_root, f"policy-{algo}")
            except ArtifactError:
                path = None
        if path is not None:
            ckpt = load_policy_checkpoint(path)
            same = (
                ckpt.item_dim == features.item_dim
                and ckpt.item_extra is not None
                and setup.item_extra is not None
                and ckpt.item_extra.shape == setup.item_extra.shape
                and np.allclose(ckpt.item_extra, setup.item_extra)
            )
            if not same:
                raise ValueError(
                    f"checkpoint {path} was trained on another simulator setup than "
                    "the evaluation's (item statistics or feature widths differ)"
                )
            policies[algo] = ckpt.policy
            sources[algo] = f"checkpoint {path} (iteration {ckpt.iteration})"
        else:
            learned_cfg = replace(train_cfg, reward="learned")
            result = train_policy(learned_cfg, setup=setup, progress=progress)
            policies[algo] = result.policy
            sources[algo] = f"trained on the fly ({train_cfg.iterations} iterations)"
    ordered = {n: policies[n] for n in names}
    ratios = [(n, b) for b in ("myopic", "random") if b in ordered for n in ordered if n != b]
    out = evaluate_in_simulator(
        ordered,
        world=setup.world,
        settings=setup.settings,
        features=features,
        users=eval_users,
        max_steps=max_steps,
        seed=seed,
        ratios=ratios,
    )
    out.pop("_per_user")
    out["sources"] = sources
    return out
