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

Held-out users: :func:`evaluation_users` (test) and :func:`validation_users`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from recsys.features import ItemFeaturizer
from recsys.policy._nets import to_tensor
from recsys.policy.algorithms.baselines import (
    LinUCBPolicy,
    MyopicGreedyPolicy,
    PopularityPolicy,
    RandomPolicy,
)
from recsys.policy.algorithms.slateq import SlateQConfig, SlateQPolicy
from recsys.policy.base import BatchSlatePolicy, SlateSampler
from recsys.policy.batch import SlateObs, Transition
from recsys.policy.choice_model import ConditionalLogitChoiceModel
from recsys.policy.observation import FeatureKind
from recsys.policy.reward.model import LearnedRewardModel
from recsys.policy.training.config import POPULATION
from recsys.policy.training.envs import SimulatedUsers
from recsys.policy.training.sessions import SessionLog, session_transitions
from recsys.types import FloatArray

F64 = npt.NDArray[np.float64]

__all__ = [
    "METRICS",
    "MYOPIC_CONFIG",
    "LoggedData",
    "PolicyEvaluation",
    "UsersFactory",
    "build_baselines",
    "evaluate_in_simulator",
    "evaluation_users",
    "mean_ci",
    "myopic_policy",
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
    """Per-user outcomes of one policy (arrays ``[users]``) and its run time.

    ``after_conversion`` holds, per conversion, the share of the items shown to that user in
    the next ``after_conversion_steps`` slates whose main topic is the bought item's: how
    much of the just-bought topic a policy keeps showing (a satiated user does not want it).
    ``after_conversion_ads`` is the same share among the ads shown in that window (windows
    with no ad left out): purchases happen on ads, and a sated buyer is worth least there.
    """

    returns: F64
    clicks: F64
    revenue: F64
    steps: F64
    conversions: F64
    truncated: npt.NDArray[np.bool_]
    after_conversion: F64
    after_conversion_ads: F64
    after_conversion_steps: int
    seconds: float

    def summary(self, confidence: float = 0.95) -> dict[str, Any]:
        """JSON-ready means with CIs, CTR, conversions, the after-conversion topic share and
        the truncated share."""
        out: dict[str, Any] = {
            name: mean_ci(getattr(self, attr), confidence)
            for name, attr in zip(METRICS, ("returns", "clicks", "revenue", "steps"), strict=True)
        }
        out["conversions"] = mean_ci(self.conversions, confidence)
        out["ctr"] = float(self.clicks.sum() / max(self.steps.sum(), 1.0))
        out["truncated_fraction"] = float(self.truncated.mean())
        out["bought_topic_share_after_conversion"] = _share_summary(
            self.after_conversion, confidence
        )
        out["bought_topic_ad_share_after_conversion"] = _share_summary(
            self.after_conversion_ads, confidence
        )
        out["after_conversion_steps"] = self.after_conversion_steps
        out["seconds"] = self.seconds
        return out


def _share_summary(shares: F64, confidence: float) -> dict[str, Any]:
    """Mean with CI of per-conversion shares; JSON has no NaN, so an undefined one is null."""
    if shares.size > 1:
        return mean_ci(shares, confidence)
    return {"mean": float(shares[0]) if shares.size else None, "n": int(shares.size)}


UsersFactory = Callable[[int], SimulatedUsers]
"""``seed -> SimulatedUsers`` of the evaluation population (fresh initial states)."""


def run_policy_lives(
    policy: BatchSlatePolicy,
    make_users: UsersFactory,
    *,
    max_steps: int,
    seed: int,
    explore: bool = False,
    after_conversion_steps: int = 10,
) -> PolicyEvaluation:
    """Serve every user of ``make_users(seed)`` with ``policy`` until each churns or
    ``max_steps``; per-user totals.

    Only users still alive are stepped (each step is batched over them). The simulator and
    the policy's generator are seeded from ``seed`` alone, so every policy sees the same users
    in the same initial states with the same random streams. Candidates and features are the
    simulated users' (the retriever and the event fold, or latent features).
    """
    users = make_users(seed)
    rng = np.random.default_rng(seed + 1)
    n, s = users.num_users, users.slate_size
    main_topic = np.argmax(users.fold.item_topics(np.arange(users.fold.num_items)), axis=1)
    totals = np.zeros((5, n))
    alive = np.ones(n, dtype=np.bool_)
    window_topic = np.full(n, -1, dtype=np.int64)
    window_left = np.zeros(n, dtype=np.int64)
    # Per open window: bought-topic items, items, bought-topic ads, ads shown so far.
    window = np.zeros((4, n))
    shares: list[F64] = []
    ad_shares: list[F64] = []

    def close_windows(done: npt.NDArray[np.bool_]) -> None:
        ended = done & (window[1] > 0)
        if ended.any():
            shares.append(window[0, ended] / window[1, ended])
        with_ads = done & (window[3] > 0)
        if with_ads.any():
            ad_shares.append(window[2, with_ads] / window[3, with_ads])
        window[:, done] = 0.0
        window_left[done] = 0

    start = time.perf_counter()
    with torch.no_grad():
        for _ in range(max_steps):  # a loop over time; each step is batched over users
            rows = np.flatnonzero(alive)
            if rows.size == 0:
                break
            obs = users.observe(rows)
            action = policy.act(obs, s, rng, explore=explore)
            items = np.take_along_axis(obs.candidate_ids, action.slates, axis=1)
            # Slates shown while a conversion's window is open count towards its share.
            open_ = window_left[rows] > 0
            if open_.any():
                r = rows[open_]
                shown = items[open_]
                hit = main_topic[shown] == window_topic[r][:, None]
                ads = users.fold.item_is_ad(shown)
                window[0, r] += hit.sum(axis=1)
                window[1, r] += shown.shape[1]
                window[2, r] += (hit & ads).sum(axis=1)
                window[3, r] += ads.sum(axis=1)
                window_left[r] -= 1
            result = users.step(rows, items)
            o = result.observable
            totals[0, rows] += o.dwell_s / 60.0
            totals[1, rows] += o.click_position >= 0
            totals[2, rows] += o.revenue
            totals[3, rows] += 1.0
            totals[4, rows] += o.conversion
            finished = np.zeros(n, dtype=np.bool_)
            finished[rows] = window_left[rows] == 0
            converted = np.zeros(n, dtype=np.bool_)
            converted[rows[o.conversion]] = True
            close_windows(finished | converted)
            if converted.any():
                window_topic[converted] = main_topic[o.clicked_item[o.conversion]]
                window_left[converted] = after_conversion_steps
            alive[rows[result.session.terminated]] = False
    close_windows(window[1] > 0)
    return PolicyEvaluation(
        returns=totals[0],
        clicks=totals[1],
        revenue=totals[2],
        steps=totals[3],
        conversions=totals[4],
        truncated=alive.copy(),
        after_conversion=np.concatenate(shares) if shares else np.zeros(0),
        after_conversion_ads=np.concatenate(ad_shares) if ad_shares else np.zeros(0),
        after_conversion_steps=after_conversion_steps,
        seconds=time.perf_counter() - start,
    )


def evaluate_in_simulator(
    policies: Mapping[str, BatchSlatePolicy],
    *,
    make_users: UsersFactory,
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
    n_users = 0
    for name, policy in policies.items():
        ex = explore.get(name, False) if isinstance(explore, Mapping) else explore
        ev = run_policy_lives(policy, make_users, max_steps=max_steps, seed=seed, explore=ex)
        per_user[name] = ev
        summary[name] = ev.summary(confidence)
        n_users = int(ev.returns.shape[0])
    out: dict[str, Any] = {
        "config": {
            "users": n_users,
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


@dataclass(frozen=True, eq=False)
class LoggedData:
    """Logged sessions with what it takes to turn them into a policy's observations: the item
    featuriser, which user features (``kind``), and the catalog's ad flags."""

    log: SessionLog
    items: ItemFeaturizer
    kind: FeatureKind
    is_ad: npt.NDArray[np.bool_]

    def batches(
        self,
        reward: LearnedRewardModel | None,
        batch_rows: int,
        rng: np.random.Generator,
    ) -> list[Transition]:
        """The log as shuffled transition batches with the per-slot reward (dwell minutes
        when ``reward`` is None)."""
        rows = rng.permutation(self.log.num_rows)
        out: list[Transition] = []
        for start in range(0, rows.shape[0], batch_rows):
            chunk = rows[start : start + batch_rows]
            signals = self.log.signals[chunk]
            if reward is None:
                slot_reward = signals[..., 1] / np.float32(60.0)
            else:
                slot_reward = reward.rewards(signals)
            out.append(
                session_transitions(self.log, self.items, chunk, slot_reward, self.kind, self.is_ad)
            )
        return out


MYOPIC_CONFIG = SlateQConfig(gamma=0.0, td="sarsa", hidden=(64,), lr=3e-3)
"""The ``gamma = 0`` SlateQ the myopic baselines are fitted as (see :func:`train_myopic`)."""


def myopic_policy(
    model: SlateQPolicy, sampler: SlateSampler, name: str = "myopic"
) -> MyopicGreedyPolicy:
    """Serve a ``gamma = 0`` SlateQ's immediate values through the greedy slate optimiser."""
    policy = MyopicGreedyPolicy(
        _ImmediateValue(model), choice_model=model.choice_model, sampler=sampler
    )
    policy.name = name
    return policy


def train_myopic(
    data: LoggedData,
    reward: LearnedRewardModel | None,
    *,
    slate_size: int,
    sampler: SlateSampler | None = None,
    epochs: int = 4,
    batch_rows: int = 1024,
    seed: int = 0,
) -> tuple[MyopicGreedyPolicy, SlateQPolicy]:
    """The myopic baseline from logs: choice model + immediate reward, slate by greedy.

    A ``gamma = 0`` SlateQ fitted on the logged transitions learns exactly those two parts
    (TD with ``gamma = 0`` is regression on the reward of the consumed item); they are then
    served by :class:`MyopicGreedyPolicy`, which maximises the expected immediate reward of
    the slate under the learned choice model. ``reward=None`` uses dwell minutes. Returns the
    policy and the fitted model (what a policy artifact stores).
    """
    rng = np.random.default_rng(seed)
    batches = data.batches(reward, batch_rows, rng)
    user_dim = int(batches[0].obs.user_features.shape[1])
    item_dim = int(batches[0].obs.item_features.shape[2])
    choice = ConditionalLogitChoiceModel(user_dim, item_dim, slate_size, seed=seed)
    model = SlateQPolicy(user_dim, item_dim, choice, MYOPIC_CONFIG, seed=seed)
    for _ in range(epochs):
        for i in rng.permutation(len(batches)):
            model.update([batches[int(i)]])
    name = "myopic" if reward is None else "myopic_learned"
    return myopic_policy(model, sampler or SlateSampler("greedy"), name), model


def build_baselines(
    data: LoggedData,
    reward: LearnedRewardModel | None,
    *,
    num_items: int,
    slate_size: int,
    sampler: SlateSampler | None = None,
    seed: int = 0,
    myopic_epochs: int = 4,
) -> dict[str, BatchSlatePolicy]:
    """``random``, ``popular``, ``myopic``, ``myopic_learned``, ``bandit`` from the logs.

    ``myopic`` maximises the expected immediate engagement (dwell minutes) of the slate under
    a learned choice model; ``myopic_learned`` the expected immediate ``reward`` (the learned
    reward in the experiments; omitted when ``reward`` is None), i.e. SlateQ's objective with
    ``gamma = 0``. Popularity counts logged clicks per item; LinUCB fits its ridge model on
    every logged slot's ``reward`` (dwell minutes without one) with item features (which
    include the user-item cross features) and serves by its upper confidence bound. Every
    baseline builds its slates under ``sampler``'s ads constraints (its exploration is not
    used: baselines are evaluated greedily).
    """
    base = sampler or SlateSampler("greedy")
    greedy = SlateSampler("greedy", max_ads=base.max_ads, min_ads=getattr(base, "min_ads", 0))
    log = data.log
    popular = PopularityPolicy(num_items, sampler=greedy)
    popular.observe(log.items()[log.signals[..., 0] > 0])
    popular.name = "popular"
    random = RandomPolicy(max_ads=base.max_ads, min_ads=base.min_ads)
    out: dict[str, BatchSlatePolicy] = {"random": random, "popular": popular}
    out["myopic"], _ = train_myopic(
        data, None, slate_size=slate_size, sampler=greedy, epochs=myopic_epochs, seed=seed
    )
    if reward is not None:
        out["myopic_learned"], _ = train_myopic(
            data, reward, slate_size=slate_size, sampler=greedy, epochs=myopic_epochs, seed=seed
        )
    rng = np.random.default_rng(seed + 1)
    bandit = LinUCBPolicy(1, data.items.dim, alpha=0.5, features="item", sampler=greedy)
    bandit.update(data.batches(reward, 4096, rng))
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
