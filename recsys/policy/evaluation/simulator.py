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
from dataclasses import dataclass, field
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
from recsys.policy.batch import SlateAction, SlateObs, Transition
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
    "BlindPolicy",
    "LoggedData",
    "PolicyEvaluation",
    "UsersFactory",
    "blind_to_satiation",
    "build_baselines",
    "evaluate_in_simulator",
    "evaluation_users",
    "mean_ci",
    "myopic_policy",
    "paired_ratio",
    "run_policy_lives",
    "shared_state_shares",
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


def _bootstrap_weights(n: int, n_bootstrap: int, seed: int) -> F64:
    """``[n_bootstrap, n]`` multiplicities of a joint percentile bootstrap over ``n`` units
    (users or conversion windows): every policy's figures are resampled together."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_bootstrap, n))
    counts = np.zeros((n_bootstrap, n))
    np.add.at(counts, (np.arange(n_bootstrap)[:, None], idx), 1.0)
    return counts


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
    counts = _bootstrap_weights(a.shape[0], n_bootstrap, seed)
    boot = (counts @ a) / np.maximum(counts @ b, 1e-300)
    alpha = 1 - confidence
    low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return {
        "ratio": float(a.mean() / b.mean()),
        "ci_low": float(low),
        "ci_high": float(high),
        "n": a.shape[0],
    }


@dataclass(frozen=True)
class PolicyEvaluation:
    """Per-user outcomes of one policy (arrays ``[users]``) and its run time.

    ``windows`` ``[4, W]`` holds, per conversion followed by at least one slate, what this
    policy showed that user in the next ``after_conversion_steps`` slates: items of the bought
    item's main topic, items, bought-topic ads, ads. ``onlooker_windows`` holds, for the same
    windows, what each *other* policy (``run_policy_lives(..., onlookers=)``) would have shown
    on exactly the same observations: a paired comparison on the same post-purchase states,
    free of the selection a policy's own trajectory brings (which users buy, and when).
    """

    returns: F64
    clicks: F64
    revenue: F64
    steps: F64
    conversions: F64
    truncated: npt.NDArray[np.bool_]
    windows: F64
    after_conversion_steps: int
    seconds: float
    onlooker_windows: Mapping[str, F64] = field(default_factory=dict)

    @property
    def after_conversion(self) -> F64:
        """Per window, the share of the items shown whose main topic is the bought item's:
        how much of the just-bought topic the policy keeps showing."""
        shares: F64 = self.windows[0] / self.windows[1]
        return shares

    @property
    def after_conversion_ads(self) -> F64:
        """The same share among the ads shown (windows with no ad left out): purchases happen
        on ads, and a sated buyer is worth least there."""
        with_ads = self.windows[3] > 0
        shares: F64 = self.windows[2, with_ads] / self.windows[3, with_ads]
        return shares

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


def shared_state_shares(
    ev: PolicyEvaluation,
    name: str,
    *,
    reference: str,
    confidence: float = 0.95,
    n_bootstrap: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Bought-topic shares of every policy on the post-purchase states of ``name``'s run.

    ``ev`` is ``name``'s :func:`run_policy_lives` with onlookers. Per policy: the share of
    bought-topic items (and ads) among all it showed or would show in the windows (a ratio
    of sums), and its paired difference to ``reference``'s, with percentile-bootstrap CIs
    over windows resampled jointly for all policies (they answered the same observations).
    """
    counts = {name: ev.windows, **ev.onlooker_windows}
    if reference not in counts:
        raise ValueError(f"{reference!r} neither ran nor looked on: {sorted(counts)}")
    n = ev.windows.shape[1]
    if n < 2:
        raise ValueError(f"{n} conversion windows: too few to compare shares")
    weights = _bootstrap_weights(n, n_bootstrap, seed)
    alpha = 1 - confidence

    def ci(values: F64, point: float) -> dict[str, float]:
        low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
        return {"mean": float(point), "ci_low": float(low), "ci_high": float(high)}

    out: dict[str, Any] = {"states_of": name, "windows": n, "reference": reference}
    for key, (hit, total) in {"items": (0, 1), "ads": (2, 3)}.items():
        share = {p: c[hit].sum() / max(c[total].sum(), 1.0) for p, c in counts.items()}
        boot = {
            p: (weights @ c[hit]) / np.maximum(weights @ c[total], 1.0) for p, c in counts.items()
        }
        out[key] = {p: ci(boot[p], share[p]) for p in counts}
        out[f"{key}_minus_{reference}"] = {
            p: ci(boot[p] - boot[reference], share[p] - share[reference])
            for p in counts
            if p != reference
        }
    return out


class BlindPolicy:
    """``policy`` acting on observations with some feature columns zeroed.

    A probe of what a trained policy does with a signal: looking on the same observations
    (:func:`run_policy_lives` ``onlookers``), the difference between a policy and its blind
    twin is what that signal changes in its slates. Zero is what a user without any such
    event looks like in the event features (decayed counts squashed as ``x / (x + c)``).
    """

    def __init__(
        self,
        policy: BatchSlatePolicy,
        *,
        user_columns: Sequence[int],
        item_columns: Sequence[int],
        name: str,
    ) -> None:
        self.policy = policy
        self.user_columns = np.asarray(user_columns, dtype=np.int64)
        self.item_columns = np.asarray(item_columns, dtype=np.int64)
        self.name = name

    def act(
        self, obs: SlateObs, slate_size: int, rng: np.random.Generator, explore: bool = True
    ) -> SlateAction:
        """The wrapped policy's slates on the observation without the hidden columns."""
        user = obs.user_features.copy()
        user[:, self.user_columns] = 0.0
        items = obs.item_features.copy()
        items[:, :, self.item_columns] = 0.0
        blind = obs._replace(user_features=user, item_features=items)
        return self.policy.act(blind, slate_size, rng, explore=explore)


def blind_to_satiation(
    policy: BatchSlatePolicy, user_names: Sequence[str], item_names: Sequence[str]
) -> BlindPolicy:
    """``policy`` without the decayed conversions per topic (``satiation_*`` user features and
    the ``x_satiation`` cross feature), named ``<name>_blind``."""
    user_cols = [i for i, n in enumerate(user_names) if n.startswith("satiation_")]
    item_cols = [i for i, n in enumerate(item_names) if n == "x_satiation"]
    if not user_cols or not item_cols:
        raise ValueError("these features have no satiation block (event features have one)")
    return BlindPolicy(
        policy, user_columns=user_cols, item_columns=item_cols, name=f"{policy.name}_blind"
    )


class _ConversionWindows:
    """The ``steps`` slates after each conversion, counted for a policy and its onlookers.

    Per open window and policy: bought-topic items, items, bought-topic ads, ads. A window
    opens on a conversion (closing the user's open one) and closes after ``steps`` slates or
    when the user churns; only windows with at least one slate are kept.
    """

    def __init__(
        self,
        num_users: int,
        steps: int,
        names: Sequence[str],
        main_topic: npt.NDArray[np.int64],
        is_ad: Callable[[npt.NDArray[np.int64]], npt.NDArray[np.bool_]],
    ) -> None:
        self.steps = steps
        self.main_topic = main_topic
        self.is_ad = is_ad
        self.topic = np.full(num_users, -1, dtype=np.int64)
        self.left = np.zeros(num_users, dtype=np.int64)
        self.open = {p: np.zeros((4, num_users)) for p in names}
        self.closed: dict[str, list[F64]] = {p: [] for p in names}

    def in_window(self, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        """Which of ``rows`` have a window open (their next slate counts)."""
        flags: npt.NDArray[np.bool_] = self.left[rows] > 0
        return flags

    def count(self, name: str, rows: npt.NDArray[np.int64], items: npt.NDArray[np.int64]) -> None:
        """``name`` shows (or would show) ``items`` ``[len(rows), S]`` to users in a window."""
        hit = self.main_topic[items] == self.topic[rows][:, None]
        ads = self.is_ad(items)
        acc = self.open[name]
        acc[0, rows] += hit.sum(axis=1)
        acc[1, rows] += items.shape[1]
        acc[2, rows] += (hit & ads).sum(axis=1)
        acc[3, rows] += ads.sum(axis=1)

    def advance(
        self,
        rows: npt.NDArray[np.int64],
        shown: npt.NDArray[np.bool_],
        converted: npt.NDArray[np.int64],
        bought: npt.NDArray[np.int64],
    ) -> None:
        """After a step of ``rows`` (``shown``: which were in a window): windows that are full
        close, users in ``converted`` open one on the main topic of the ``bought`` items."""
        self.left[rows[shown]] -= 1
        done = np.zeros(self.left.shape[0], dtype=np.bool_)
        done[rows] = self.left[rows] == 0
        done[converted] = True
        self.close(done)
        self.topic[converted] = self.main_topic[bought]
        self.left[converted] = self.steps

    def close(self, done: npt.NDArray[np.bool_]) -> None:
        """Close the windows of users flagged in ``done`` (those with a slate are kept)."""
        first = next(iter(self.open.values()))
        keep = done & (first[1] > 0)
        for name, acc in self.open.items():
            if keep.any():
                self.closed[name].append(acc[:, keep].copy())
            acc[:, done] = 0.0
        self.left[done] = 0

    def result(self, name: str) -> F64:
        """``[4, W]`` counts of every kept window, in the order they closed."""
        parts = self.closed[name]
        return np.concatenate(parts, axis=1) if parts else np.zeros((4, 0))


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
    onlookers: Mapping[str, BatchSlatePolicy] | None = None,
) -> PolicyEvaluation:
    """Serve every user of ``make_users(seed)`` with ``policy`` until each churns or
    ``max_steps``; per-user totals.

    Only users still alive are stepped (each step is batched over them). The simulator and
    the policy's generator are seeded from ``seed`` alone, so every policy sees the same users
    in the same initial states with the same random streams. Candidates and features are the
    simulated users' (the retriever and the event fold, or latent features).

    ``onlookers`` are asked, greedily and with a generator of their own (so ``policy``'s run
    is unchanged), for the slate they would show on every observation inside a conversion
    window; what they would show is counted in ``onlooker_windows``.
    """
    users = make_users(seed)
    rng = np.random.default_rng(seed + 1)
    onlookers = dict(onlookers or {})
    look_rng = np.random.default_rng(seed + 2)
    n, s = users.num_users, users.slate_size
    main_topic = np.argmax(users.fold.item_topics(np.arange(users.fold.num_items)), axis=1)
    totals = np.zeros((5, n))
    alive = np.ones(n, dtype=np.bool_)
    windows = _ConversionWindows(
        n, after_conversion_steps, ["", *onlookers], main_topic, users.fold.item_is_ad
    )

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
            open_ = windows.in_window(rows)
            if open_.any():
                windows.count("", rows[open_], items[open_])
                if onlookers:
                    sub = obs.take(np.flatnonzero(open_))
                    for name, other in onlookers.items():
                        slates = other.act(sub, s, look_rng, explore=False).slates
                        windows.count(
                            name, rows[open_], np.take_along_axis(sub.candidate_ids, slates, 1)
                        )
            result = users.step(rows, items)
            o = result.observable
            totals[0, rows] += o.dwell_s / 60.0
            totals[1, rows] += o.click_position >= 0
            totals[2, rows] += o.revenue
            totals[3, rows] += 1.0
            totals[4, rows] += o.conversion
            windows.advance(rows, open_, rows[o.conversion], o.clicked_item[o.conversion])
            alive[rows[result.session.terminated]] = False
    windows.close(np.ones(n, dtype=np.bool_))
    return PolicyEvaluation(
        returns=totals[0],
        clicks=totals[1],
        revenue=totals[2],
        steps=totals[3],
        conversions=totals[4],
        truncated=alive.copy(),
        windows=windows.result(""),
        after_conversion_steps=after_conversion_steps,
        seconds=time.perf_counter() - start,
        onlooker_windows={name: windows.result(name) for name in onlookers},
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
