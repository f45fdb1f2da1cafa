"""The promotion gate: a candidate policy serves only if held-out logs say it is not worse.

The online learner (:mod:`recsys.policy.online`) publishes *candidate* checkpoints to a
staging root. :meth:`PromotionGate.evaluate` estimates the candidate and the serving version
off-policy on joined logs the learner held out (never trained on), re-running both policies
on the logged candidate sets (:mod:`recsys.policy.evaluation.ope_policies`), both under the
exploration serving will use, both scored by one reward; :meth:`PromotionGate.promote`
publishes an accepted candidate into the artifact root the serving
:class:`~recsys.serving.policies.PolicyRegistry` watches.

**The estimators.** Both policies are scored per slot: a slate's reward is the sum of its
slots' rewards. Two families can be asked for (``GateConfig.estimators``):

- *item-position* (the default): ``sniips`` and ``position_dr``. Every (request, position)
  row is weighted by ``w_k = pi(a_k @ k | x) / mu(a_k @ k | x)``, the ratio of *marginal*
  position propensities of the logged item at its slot under the policy ``pi`` and the
  logging policy ``mu`` (Li et al. 2018, "Offline Evaluation of Ranking Policies with Click
  Models"; the independent item-position estimator of the Open Bandit Pipeline).
  ``sniips = sum_k (sum_s w_sk r_sk / sum_s w_sk)`` self-normalises each position (SNIPS per
  position: ``E_mu[w_k] = 1``, so the ratio is consistent, and invariant to a reward shift),
  ``position_dr = mean_s sum_k [qhat_pi(x, k) + w_sk (r_sk - qhat(x, a_sk, k))]`` adds the
  cross-fitted item-position reward model as control variate
  (:func:`~recsys.policy.evaluation.ope.evaluate_off_policy`'s ``position_dr``).
- *slate*: ``snips`` and ``dr``, weighting the whole slate by ``prod_k pi_k / mu_k`` of the
  conditional propensities (also :func:`~recsys.policy.evaluation.ope.evaluate_off_policy`).

Why item-position by default: a slate weight is a product over slots, so its variance grows
exponentially with the slate length. With 10-slot epsilon-greedy slates the Kish ESS of any
candidate that ranks differently from serving was ~15 of thousands of requests; only a
candidate nearly identical to serving could pass, which made the gate a veto on learning. An
item-position weight is one ratio of marginals, bounded by ``1 / mu(a_k @ k)``, whatever the
slate length. The price is an assumption: the expected reward of a slot depends only on
(context, item, position), not on the other items shown (IIPS is unbiased under it, e.g.
under the position-based click model; interactions between slots, such as a cascade's
"an earlier click stops the scan", bias it). The gate's reward is per slot anyway (a learned
reward of each slot's signals), and the slate estimators remain an option for short slates.

**The logging policy's marginals.** Joined logs record the conditional propensities the
service drew with, not the marginals. Where every usable row knows its ``position_propensity``
(a simulated logger records it) that is used. Otherwise the marginals are computed the way
the targets' are (:func:`~recsys.policy.evaluation.ope_policies.target_propensities`: exact,
or Monte Carlo over ``n_samples`` slates per request) by re-running the *serving* checkpoint,
under serving's exploration, on the logged candidate sets. That is valid only for rows the
serving version logged: rows whose ``policy`` column names another version
(``<policy>@<arm>@<version>``, as the joiner writes it) are dropped and counted
(``foreign_requests``); rows naming no version are kept. A Monte Carlo frequency can be 0
for a logged item whose true marginal is positive (an infinite weight), so the logged slate
counts as one more draw for both policies: ``m = (M m_hat + c) / (M + 1)`` with ``c`` the
policy's conditional propensity of the logged slot given the logged prefix (that draw's
Rao-Blackwellised share; for serving, the logged propensity). The logger's marginal is then
at least ``c / (M + 1) > 0``, every weight is finite, the relative bias is of order
``1 / (M + 1)``, and a candidate that acts as serving gets weights of exactly 1, as serving
itself does: V(serving) is the logged reward for ``sniips`` and the model-corrected logged
reward for ``position_dr``.

**The rule.** For every estimator in ``estimators`` let ``D = V(candidate) - V(serving)`` on
the held-out requests. Requests are resampled with replacement ``n_bootstrap`` times, the
*same* resample for both policies (a paired bootstrap: what both policies share, e.g. a lucky
draw of users, cancels in ``D``), and ``D`` is recomputed on each resample. The candidate is
promoted iff, for every estimator,

    lower end of the two-sided ``confidence`` percentile interval of ``D``  >=  -margin,

and the Kish effective sample size of the candidate's importance weights under that
estimator (slate weights for the slate family, the mean over positions of the per-position
ESS for the item-position family) is at least ``min_ess`` (an estimate resting on a handful
of requests is not evidence). ``margin`` is the loss in expected slate reward one is willing
to risk for a fresher model (0: the candidate must be shown not worse; a negative margin
demands a shown improvement). Without a serving version (nothing trained serves yet)
``V(serving)`` is the logged reward, the logging policy's on-policy value, for every
estimator (the logged marginals are then required for the item-position family).

**Publishing.** A promoted candidate is copied byte for byte with
:func:`recsys.artifacts.save_artifact` (temp directory, then one rename: a reader sees all of
it or nothing) under a version name that sorts after every version already there, because the
registry serves the newest name and rollback pins the newest name older than the one serving
(:meth:`~recsys.serving.routing.PolicyRouter.rollback`): after a promotion, rollback returns
to the version that served before. The decision (estimates, intervals, rule, outcome) is
written as ``<candidate>.gate.json`` beside the candidate and, for a promotion, inside the
published artifact as ``gate_decision.json`` (checksummed with the rest). An arm pinned by an
operator keeps its pin: the promoted version serves there once it is unpinned.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from recsys.artifacts import MANIFEST, load_artifact, save_artifact
from recsys.data.logged import LoggedFeedback
from recsys.policy.algorithms.reinforce import ReinforceTopKPolicy
from recsys.policy.algorithms.slateq import SlateQPolicy
from recsys.policy.base import ExplorationKind
from recsys.policy.batch import REVENUE_INDEX, SIGNAL_NAMES
from recsys.policy.evaluation.ope import (
    LoggedSlates,
    OPEResult,
    RewardPredictions,
    TargetPropensities,
    evaluate_off_policy,
)
from recsys.policy.evaluation.ope_policies import (
    CheckpointTarget,
    CrossFittedRewardModel,
    LoggedRequests,
    target_propensities,
    with_logged_draw,
)
from recsys.policy.reward.model import LearnedRewardModel
from recsys.policy.reward.spec import reward_model_from_tensors
from recsys.policy.training.checkpoint import PolicyCheckpoint, load_policy_checkpoint
from recsys.types import ArtifactError, FloatArray

_log = logging.getLogger(__name__)

Float64Array = npt.NDArray[np.float64]
GateEstimator = Literal["sniips", "position_dr", "snips", "dr"]
#: The item-position family (marginal weights per slot) and the slate family (a product).
POSITION_ESTIMATORS: tuple[GateEstimator, ...] = ("sniips", "position_dr")
SLATE_ESTIMATORS: tuple[GateEstimator, ...] = ("snips", "dr")
GateReward = Literal["click", "engagement", "learned"]
DECISION_FILE = "gate_decision.json"

__all__ = [
    "DECISION_FILE",
    "POSITION_ESTIMATORS",
    "SLATE_ESTIMATORS",
    "Comparison",
    "GateConfig",
    "GateDecision",
    "GateEstimator",
    "GateStats",
    "PromotionGate",
    "decision_path",
]


@dataclass(frozen=True)
class GateConfig:
    """The promotion rule and how both policies are estimated (module docstring)."""

    margin: float = 0.0
    #: Item-position SNIPS and DR by default: slate weights collapse on long slates (module
    #: docstring); add or pick ``snips`` / ``dr`` for the slate-level estimates.
    estimators: tuple[GateEstimator, ...] = POSITION_ESTIMATORS
    confidence: float = 0.95
    n_bootstrap: int = 1000
    min_ess: float = 50.0
    #: Per-slot reward both policies are scored by: ``learned`` uses the gate's reward model,
    #: else the serving checkpoint's, else the candidate's (one model for both, always).
    reward: GateReward = "learned"
    revenue_weight: float = 0.0
    #: The exploration serving applies (``None``: each checkpoint's own sampler), with its
    #: ``epsilon`` / ``temperature``, as :func:`recsys.serving.policies.load_served_policy`.
    exploration: ExplorationKind | None = None
    epsilon: float = 0.1
    temperature: float = 1.0
    #: Monte Carlo slates per request for the position marginals (the targets' and, when the
    #: log lacks them, the logger's) and for DR's model term.
    n_samples: int = 64
    max_weight: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not math.isfinite(self.margin):
            raise ValueError(f"margin must be finite, got {self.margin}")
        known = POSITION_ESTIMATORS + SLATE_ESTIMATORS
        if not self.estimators or any(e not in known for e in self.estimators):
            raise ValueError(f"estimators must be a non-empty subset of {', '.join(known)}; "
                             f"got {self.estimators}")  # fmt: skip
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must lie in (0, 1), got {self.confidence}")
        if self.n_bootstrap < 100:
            raise ValueError(f"n_bootstrap must be >= 100 for a percentile interval, got "
                             f"{self.n_bootstrap}")  # fmt: skip
        if self.reward not in ("click", "engagement", "learned"):
            raise ValueError(f"reward must be click, engagement or learned, got {self.reward!r}")

    def rule(self) -> str:
        """The rule in words (recorded with every decision)."""
        names = " and ".join(e.upper() for e in self.estimators)
        return (
            f"promote iff for {names} the lower end of the {self.confidence:.0%} paired "
            f"percentile bootstrap interval ({self.n_bootstrap} resamples of held-out "
            f"requests) of V(candidate) - V(serving) is >= {0.0 - self.margin:g}, and the "
            f"candidate's importance-weight ESS under each is >= {self.min_ess:g}"
        )


@dataclass(frozen=True)
class Comparison:
    """One estimator's values of both policies, their paired difference with its interval,
    and the Kish ESS of the candidate's weights under this estimator."""

    estimator: str
    candidate: float
    serving: float
    difference: float
    ci_low: float
    ci_high: float
    passed: bool
    ess: float = math.nan


@dataclass(frozen=True)
class GateDecision:
    """What the gate concluded about one candidate (JSON-ready via :meth:`as_dict`)."""

    name: str
    candidate: Path
    candidate_version: str
    serving: Path | None
    serving_version: str | None
    promote: bool
    reasons: tuple[str, ...]
    rule: str
    comparisons: dict[str, Comparison] = field(default_factory=dict)
    candidate_estimates: dict[str, dict[str, Any]] = field(default_factory=dict)
    serving_estimates: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: int = 0
    dropped_requests: int = 0
    #: Requests another policy version logged (item-position family with the logger's
    #: marginals recomputed from serving: only serving's own rows are valid), left out.
    foreign_requests: int = 0
    #: Where the logging policy's marginals came from (``log``, ``serving`` or ``""``).
    logger_marginals: str = ""
    reward: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    created_ts: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON values (NaN becomes ``None``)."""
        out = asdict(self)
        out["candidate"] = str(self.candidate)
        out["serving"] = None if self.serving is None else str(self.serving)
        out["reasons"] = list(self.reasons)
        safe: dict[str, Any] = _json_safe(out)
        return safe


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def decision_path(candidate: Path) -> Path:
    """Where the decision about ``candidate`` is written: ``<candidate>.gate.json`` beside
    its directory (the staging root's registry listing ignores plain files)."""
    candidate = Path(candidate)
    return candidate.with_name(candidate.name + ".gate.json")


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
    os.replace(tmp, path)


@dataclass
class GateStats:
    """Decisions taken and their outcomes (what a metrics endpoint would export)."""

    evaluated: int = 0
    promoted: int = 0
    refused: int = 0
    last_reason: str = ""


@dataclass(frozen=True, eq=False)
class _Terms:
    """Per-request numerators and denominators of each estimator, ``[m, P]`` each:
    ``V = sum_p (sum_s num[s, p] / sum_s den[s, p])``. The slate estimators and
    ``position_dr`` are one ratio (``P = 1``); ``sniips`` self-normalises each position."""

    num: dict[str, Float64Array]
    den: dict[str, Float64Array]


def _slate_terms(
    slates: LoggedSlates,
    target: TargetPropensities,
    rewards: Float64Array,
    max_weight: float | None,
) -> _Terms:
    """SNIPS and DR of one target as per-request terms, exactly as
    :func:`~recsys.policy.evaluation.ope.evaluate_off_policy` forms them (a test holds the
    totals equal), so that one resample can be applied to both policies."""
    reward = slates.per_slate(rewards)
    assert target.propensity is not None
    assert slates.propensity is not None  # the gate keeps rows with known propensities only
    with np.errstate(divide="ignore"):
        log_w = slates.per_slate(np.log(target.propensity)) - slates.per_slate(
            np.log(slates.propensity)
        )
    if max_weight is not None:
        log_w = np.minimum(log_w, math.log(max_weight) + 1.0)
    w = np.exp(log_w)
    if max_weight is not None:
        w = np.minimum(w, max_weight)
    pred = target.reward_predictions
    assert pred is not None
    dr = slates.per_slate(pred.target) + w * (reward - slates.per_slate(pred.logged))
    ones = np.ones((slates.n_slates, 1))
    return _Terms(
        num={"snips": (w * reward)[:, None], "dr": dr[:, None]},
        den={"snips": w[:, None], "dr": ones},
    )


def _position_terms(
    slates: LoggedSlates,
    weights: Float64Array,
    rewards: Float64Array,
    predictions: RewardPredictions,
) -> _Terms:
    """Item-position SNIPS and DR of one target as per-request terms from its per-row weights
    ``pi(a_k @ k) / mu(a_k @ k)`` (already clipped): ``sniips`` one ratio per position,
    ``position_dr`` exactly :func:`~recsys.policy.evaluation.ope.evaluate_off_policy`'s."""
    dr = predictions.target + weights * (rewards - predictions.logged)
    return _Terms(
        num={
            "sniips": slates.per_position(weights * rewards),
            "position_dr": slates.per_slate(dr)[:, None],
        },
        den={
            "sniips": slates.per_position(weights),
            "position_dr": np.ones((slates.n_slates, 1)),
        },
    )


def _merge(*terms: _Terms) -> _Terms:
    num: dict[str, Float64Array] = {}
    den: dict[str, Float64Array] = {}
    for t in terms:
        num.update(t.num)
        den.update(t.den)
    return _Terms(num, den)


def _logged_terms(slates: LoggedSlates, rewards: Float64Array) -> _Terms:
    """The logging policy's on-policy value (every estimator: the mean logged reward)."""
    reward = slates.per_slate(rewards)[:, None]
    ones = np.ones((slates.n_slates, 1))
    names = POSITION_ESTIMATORS + SLATE_ESTIMATORS
    return _Terms(num=dict.fromkeys(names, reward), den=dict.fromkeys(names, ones))


def _ratio_value(num: Float64Array, den: Float64Array) -> Float64Array:
    """``sum_p num[..., p] / den[..., p]`` over the last axis (NaN where a ratio is 0/0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out: Float64Array = (num / den).sum(axis=-1)
    return out


def _resampled_sums(
    columns: Float64Array, n_bootstrap: int, rng: np.random.Generator
) -> Float64Array:
    """Column sums ``[B, k]`` over ``B`` with-replacement resamples of the rows (requests):
    each resample as a vector of multiplicities, chunked to bound memory."""
    m = columns.shape[0]
    out = np.empty((n_bootstrap, columns.shape[1]))
    per_chunk = max(1, (1 << 22) // m)
    for a in range(0, n_bootstrap, per_chunk):
        b = min(n_bootstrap, a + per_chunk)
        idx = rng.integers(0, m, size=(b - a, m)) + (np.arange(b - a) * m)[:, None]
        counts = np.bincount(idx.ravel(), minlength=(b - a) * m).reshape(b - a, m)
        out[a:b] = counts.astype(np.float64) @ columns
    return out


def _paired_differences(
    candidate: _Terms,
    serving: _Terms,
    estimators: tuple[str, ...],
    *,
    n_bootstrap: int,
    confidence: float,
    seed: int,
) -> dict[str, tuple[float, float, float, float, float]]:
    """``{estimator: (V(candidate), V(serving), D, ci_low, ci_high)}`` with
    ``D = V(candidate) - V(serving)`` and one paired percentile bootstrap over requests
    (module docstring). A resample on which a ratio is undefined (every weight 0) is left out
    of the quantiles; with more than half of them left out the interval is NaN."""
    blocks: list[Float64Array] = []
    spans: dict[str, list[slice]] = {}
    at = 0
    for e in estimators:
        spans[e] = []
        for arr in (candidate.num[e], candidate.den[e], serving.num[e], serving.den[e]):
            blocks.append(arr)
            spans[e].append(slice(at, at + arr.shape[1]))
            at += arr.shape[1]
    columns = np.concatenate(blocks, axis=1)
    boot = _resampled_sums(columns, n_bootstrap, np.random.default_rng(seed))
    totals = columns.sum(axis=0)
    alpha = 1.0 - confidence
    out: dict[str, tuple[float, float, float, float, float]] = {}
    for e in estimators:
        cn, cd, sn, sd = spans[e]
        cand, serv = _ratio_value(totals[cn], totals[cd]), _ratio_value(totals[sn], totals[sd])
        diff = _ratio_value(boot[:, cn], boot[:, cd]) - _ratio_value(boot[:, sn], boot[:, sd])
        diff = diff[np.isfinite(diff)]
        if diff.shape[0] < n_bootstrap // 2:
            out[e] = (float(cand), float(serv), float(cand - serv), math.nan, math.nan)
            continue
        low, high = np.quantile(diff, [alpha / 2, 1 - alpha / 2])
        out[e] = (float(cand), float(serv), float(cand - serv), float(low), float(high))
    return out


class PromotionGate:
    """Decides whether a candidate replaces the serving ``policy-<name>`` under ``root`` and
    publishes it there (module docstring). ``reward_model`` fixes the reward of
    ``reward="learned"`` (else the serving checkpoint's, else the candidate's)."""

    def __init__(
        self,
        root: Path,
        name: str,
        config: GateConfig | None = None,
        *,
        reward_model: LearnedRewardModel | None = None,
    ) -> None:
        self.root = Path(root)
        self.name = name
        self.config = config or GateConfig()
        self.reward_model = reward_model
        self.stats = GateStats()

    @property
    def _base(self) -> Path:
        return self.root / f"policy-{self.name}"

    def versions(self) -> list[str]:
        """Complete versions under the root, oldest first (the registry's listing)."""
        if not self._base.is_dir():
            return []
        return sorted(
            p.name
            for p in self._base.iterdir()
            if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).is_file()
        )

    def newest(self) -> Path | None:
        """The newest version under the root: what an unpinned registry serves."""
        versions = self.versions()
        return self._base / versions[-1] if versions else None

    # ---- deciding ---------------------------------------------------------------------

    def evaluate(
        self, candidate: Path, serving: Path | None, heldout: LoggedFeedback
    ) -> GateDecision:
        """Estimate both policies on ``heldout`` and decide (module docstring); the decision
        is written beside the candidate. ``serving=None`` compares with the logged reward.

        A candidate or serving checkpoint that cannot be loaded or cannot act on these logs,
        and a log too small to estimate on, give a refusing decision saying why.
        """
        cfg = self.config
        candidate = Path(candidate)
        self.stats.evaluated += 1
        base: dict[str, Any] = {
            "name": self.name,
            "candidate": candidate,
            "candidate_version": candidate.name,
            "serving": None if serving is None else Path(serving),
            "serving_version": None if serving is None else Path(serving).name,
            "rule": cfg.rule(),
            "settings": asdict(cfg),
        }
        try:
            decision = self._decide(candidate, serving, heldout, base)
        except (ArtifactError, ValueError, KeyError, OSError) as exc:
            decision = GateDecision(**base, promote=False, reasons=(f"cannot evaluate: {exc}",))
        _write_json(decision_path(candidate), {**decision.as_dict(), "outcome": "pending"})
        return decision

    def _target(self, ckpt: PolicyCheckpoint, what: str, logs: LoggedFeedback) -> CheckpointTarget:
        """A checkpoint's policy as OPE re-runs it, under serving's exploration."""
        features = ckpt.features
        policy = ckpt.policy
        if features is None:
            raise ValueError(f"the {what} checkpoint does not say how its policy observes")
        if ckpt.artifact.metadata.get("serve_as") is not None:
            raise ValueError(f"the {what} checkpoint serves as {ckpt.artifact.metadata['serve_as']}"
                             ", which off-policy evaluation does not re-run")  # fmt: skip
        if not isinstance(policy, SlateQPolicy | ReinforceTopKPolicy):
            raise ValueError(f"the {what} checkpoint holds an unsupported policy {policy!r}")
        if logs.user_features.shape[1] != ckpt.user_dim:
            raise ValueError(
                f"the {what} policy reads user features of width {ckpt.user_dim}, the "
                f"held-out log has {logs.user_features.shape[1]}"
            )
        assert logs.candidate_ids is not None
        if int(logs.candidate_ids.max()) >= features.num_items:
            raise ValueError(f"the held-out log names items outside the {what}'s catalog")
        if int(logs.slate_size.max()) > ckpt.slate_size:
            raise ValueError(
                f"the held-out log has slates of {int(logs.slate_size.max())}, the {what} "
                f"policy was trained for {ckpt.slate_size}"
            )
        if self.config.exploration is not None:
            policy.set_sampler(
                ckpt.config.sampler(
                    self.config.exploration,
                    epsilon=self.config.epsilon,
                    temperature=self.config.temperature,
                )
            )
        return CheckpointTarget(policy, features, name=f"{what}@{ckpt.artifact.version}")

    def _rewards(
        self, logs: LoggedFeedback, serving: PolicyCheckpoint | None, cand: PolicyCheckpoint
    ) -> tuple[Float64Array, str]:
        """Per-row reward both policies are scored by, and where it came from."""
        cfg = self.config
        signals = np.stack([np.asarray(getattr(logs, s), np.float32) for s in SIGNAL_NAMES], 1)
        if cfg.reward == "click":
            r: FloatArray = signals[:, 0]
            source = "click"
        elif cfg.reward == "engagement":
            r = signals[:, 1] / np.float32(60.0)
            source = "engagement (dwell minutes)"
        else:
            model, source = self.reward_model, "the gate's learned reward model"
            for ckpt, what in ((serving, "serving"), (cand, "candidate")):
                if model is None and ckpt is not None and ckpt.reward_tensors is not None:
                    model = reward_model_from_tensors(ckpt.reward_tensors)
                    source = f"the {what} checkpoint's learned reward ({ckpt.artifact.version})"
            if model is None:
                raise ValueError("reward='learned' but no reward model: give the gate one")
            r = model.rewards(signals)
        out = r.astype(np.float64) + cfg.revenue_weight * signals[:, REVENUE_INDEX]
        if cfg.revenue_weight:
            source += f" + {cfg.revenue_weight:g} x revenue"
        return out, source

    def _decide(
        self,
        candidate: Path,
        serving: Path | None,
        heldout: LoggedFeedback,
        base: dict[str, Any],
    ) -> GateDecision:
        cfg = self.config
        logs, dropped = _usable(heldout)
        if len(logs) == 0:
            raise ValueError("no usable held-out requests (none, or none with propensities)")
        if logs.candidate_ids is None:
            raise ValueError("the held-out log records no candidate sets")
        positional = any(e in POSITION_ESTIMATORS for e in cfg.estimators)
        logged_marginals = bool(np.isfinite(logs.position_propensity).all())
        foreign = 0
        if positional and not logged_marginals:
            if serving is None:
                raise ValueError(
                    "the item-position estimators need the logging policy's marginal position "
                    "propensities: the log lacks them and no serving version can recompute them"
                )
            logs, foreign = _logged_by(logs, Path(serving).name)
            if len(logs) == 0:
                raise ValueError(
                    f"every usable held-out request was logged by a version other than the "
                    f"serving {Path(serving).name} ({foreign} requests)"
                )
        cand_ckpt = load_policy_checkpoint(candidate)
        serv_ckpt = None if serving is None else load_policy_checkpoint(Path(serving))
        if serv_ckpt is not None:
            _check_servable_alike(cand_ckpt, serv_ckpt)
        cand_target = self._target(cand_ckpt, "candidate", logs)
        serv_target = None if serv_ckpt is None else self._target(serv_ckpt, "serving", logs)
        rewards, source = self._rewards(logs, serv_ckpt, cand_ckpt)
        requests = LoggedRequests.from_feedback(logs)
        model = CrossFittedRewardModel.fit(requests, logs.item_id, rewards)
        if model is None:
            raise ValueError("too few held-out requests to cross-fit DR's reward model")

        def propensities(target: CheckpointTarget) -> TargetPropensities:
            return target_propensities(
                requests, target, n_samples=cfg.n_samples, seed=cfg.seed, reward_model=model
            )

        cand_tp = propensities(cand_target)
        serv_tp = None if serv_target is None else propensities(serv_target)
        slates = requests.slates
        if not positional:
            source_of_mu = ""
        elif logged_marginals:
            source_of_mu = "log"
        else:
            assert serv_tp is not None
            assert slates.propensity is not None
            # The logged slate as one more Monte Carlo draw for both policies (module
            # docstring): no weight is infinite, and a candidate that is serving gets weights
            # of exactly 1, as serving itself does.
            cand_tp = with_logged_draw(cand_tp, cfg.n_samples, None)
            serv_tp = with_logged_draw(serv_tp, cfg.n_samples, slates.propensity)
            slates = replace(slates, position_propensity=serv_tp.position_propensity)
            source_of_mu = "serving"
        if not positional:
            # Slate estimators only: evaluate_off_policy is not asked for the position family.
            cand_tp = replace(cand_tp, position_propensity=None, position_propensity_stderr=None)
            if serv_tp is not None:
                serv_tp = replace(
                    serv_tp, position_propensity=None, position_propensity_stderr=None
                )

        def estimate(tp: TargetPropensities) -> tuple[_Terms, dict[str, OPEResult]]:
            res = evaluate_off_policy(
                slates,
                tp,
                slot_rewards=rewards,
                max_weight=cfg.max_weight,
                n_bootstrap=cfg.n_bootstrap,
                confidence=cfg.confidence,
                seed=cfg.seed,
            )
            terms = _slate_terms(slates, tp, rewards, cfg.max_weight)
            if positional:
                assert tp.position_propensity is not None
                assert slates.position_propensity is not None
                assert tp.reward_predictions is not None
                w = tp.position_propensity / slates.position_propensity
                if cfg.max_weight is not None:
                    w = np.minimum(w, cfg.max_weight)
                terms = _merge(terms, _position_terms(slates, w, rewards, tp.reward_predictions))
            return terms, res

        cand_terms, cand_res = estimate(cand_tp)
        if serv_tp is None:
            serv_res: dict[str, OPEResult] = {}
            serv_terms = _logged_terms(slates, rewards)
        else:
            serv_terms, serv_res = estimate(serv_tp)
        diffs = _paired_differences(
            cand_terms,
            serv_terms,
            cfg.estimators,
            n_bootstrap=cfg.n_bootstrap,
            confidence=cfg.confidence,
            seed=cfg.seed,
        )
        reasons: list[str] = []
        comparisons: dict[str, Comparison] = {}
        for e in cfg.estimators:
            cand_v, serv_v, point, low, high = diffs[e]
            ess = cand_res["iips" if e in POSITION_ESTIMATORS else "snips"].ess
            ok = math.isfinite(low) and low >= -cfg.margin
            comparisons[e] = Comparison(e, cand_v, serv_v, point, low, high, ok, ess)
            if not ok:
                reasons.append(
                    f"{e.upper()}: candidate - serving = {point:.4g}, {cfg.confidence:.0%} "
                    f"interval [{low:.4g}, {high:.4g}], lower end below {0.0 - cfg.margin:g}"
                )
            if not ess >= cfg.min_ess:
                reasons.append(f"candidate ESS {ess:.1f} < {cfg.min_ess:g} under {e.upper()}: "
                               "too few held-out requests the candidate would have served "
                               "alike")  # fmt: skip
        return GateDecision(
            **base,
            promote=not reasons,
            reasons=tuple(reasons) or ("every estimator within the margin",),
            comparisons=comparisons,
            candidate_estimates={k: v.as_dict() for k, v in cand_res.items()},
            serving_estimates={k: v.as_dict() for k, v in serv_res.items()},
            requests=requests.n_requests,
            dropped_requests=dropped,
            foreign_requests=foreign,
            logger_marginals=source_of_mu,
            reward=source,
        )

    # ---- acting on a decision ---------------------------------------------------------

    def promote(self, decision: GateDecision) -> Path | None:
        """Publish a promoted candidate where serving reads it; the published directory, or
        ``None`` when the decision refuses it (logged and counted). Either way the outcome is
        written beside the candidate."""
        record = decision_path(decision.candidate)
        if not decision.promote:
            self._refuse(decision, "; ".join(decision.reasons))
            return None
        try:
            art = load_artifact(decision.candidate)
        except ArtifactError as exc:
            self._refuse(decision, f"candidate artifact is unusable: {exc}")
            return None
        version = _next_version(self.versions(), art.version)
        files = {name: art.file(name).read_bytes() for name in art.files}
        payload = {**decision.as_dict(), "outcome": "promoted", "published_version": version}
        files[DECISION_FILE] = json.dumps(payload, indent=2, sort_keys=True).encode()
        metadata = {
            **art.metadata,
            "promotion": {
                "candidate": str(decision.candidate),
                "candidate_version": art.version,
                "replaces": decision.serving_version,
                "rule": decision.rule,
                "comparisons": _json_safe({k: asdict(c) for k, c in decision.comparisons.items()}),
            },
        }
        published = save_artifact(
            self.root, f"policy-{self.name}", files=files, metadata=metadata, version=version
        )
        self.stats.promoted += 1
        _write_json(record, {**payload, "published": str(published.path)})
        _log.info(
            "promoted %s as policy-%s/%s (was %s)",
            decision.candidate,
            self.name,
            version,
            decision.serving_version,
        )
        return published.path

    def _refuse(self, decision: GateDecision, reason: str) -> None:
        self.stats.refused += 1
        self.stats.last_reason = reason
        _write_json(
            decision_path(decision.candidate),
            {**decision.as_dict(), "outcome": "refused", "refusal": reason},
        )
        _log.warning("refused candidate %s for policy-%s: %s", decision.candidate, self.name,
                     reason)  # fmt: skip


def _check_servable_alike(candidate: PolicyCheckpoint, serving: PolicyCheckpoint) -> None:
    """Refuse a candidate the serving registry would refuse where the serving version loads:
    another observation contract (feature spec, catalog, retrieval artifact)."""
    mine, theirs = candidate.features, serving.features
    if mine is None or theirs is None:
        return  # each side's own check says why it cannot be evaluated
    problem = theirs.spec.incompatibility(mine.spec)
    if problem is None and mine.num_items != theirs.num_items:
        problem = f"it knows {mine.num_items} items, serving {theirs.num_items}"
    if problem is None and mine.retrieval_version != theirs.retrieval_version:
        problem = (
            f"it was trained on candidates of retrieval {mine.retrieval_version}, serving "
            f"retrieves with {theirs.retrieval_version}"
        )
    if problem is not None:
        raise ValueError(f"the candidate would not load where serving runs: {problem}")


def _usable(logs: LoggedFeedback) -> tuple[LoggedFeedback, int]:
    """The requests the slate estimators can use: whole slates (every slot joined) whose
    every row knows its logging propensity (null in joined rows that lack one) and has
    finite signals. Returns those rows and the number of requests dropped."""
    if len(logs) == 0:
        return logs, 0
    prop = np.asarray(logs.propensity, np.float64)
    signals = np.stack([np.asarray(getattr(logs, s), np.float64) for s in SIGNAL_NAMES], 1)
    ok_row = np.isfinite(prop) & (prop > 0) & (prop <= 1) & np.isfinite(signals).all(axis=1)
    uniq, inverse = np.unique(logs.request_id, return_inverse=True)
    inverse = inverse.reshape(-1)
    m = uniq.shape[0]
    bad = np.bincount(inverse, weights=~ok_row, minlength=m) > 0
    rows = np.bincount(inverse, minlength=m)
    declared = np.zeros(m, np.int64)
    declared[inverse] = logs.slate_size
    bad |= rows != declared
    return logs.take(~bad[inverse]), int(bad.sum())


def _logged_by(logs: LoggedFeedback, version: str) -> tuple[LoggedFeedback, int]:
    """The requests ``version`` logged, or whose ``policy`` names no version, and the number
    of requests another version logged (left out). The joiner writes
    ``<policy>@<model_version>`` (``model_version`` itself ``<arm>@<version>``), so the
    version is the text after the last ``@``."""
    names, inverse = np.unique(np.asarray(logs.policy, dtype=np.str_), return_inverse=True)
    parts = np.char.rpartition(names, "@")
    other = (parts[:, 1] == "@") & (parts[:, 2] != version)
    bad_row = other[inverse.reshape(-1)]
    if not bad_row.any():
        return logs, 0
    uniq, req = np.unique(logs.request_id, return_inverse=True)
    bad = np.bincount(req.reshape(-1), weights=bad_row, minlength=uniq.shape[0]) > 0
    return logs.take(~bad[req.reshape(-1)]), int(bad.sum())


def _next_version(existing: list[str], proposed: str) -> str:
    """``proposed``, or a name extending the newest existing one, so the result sorts after
    every existing version (the registry serves the newest name)."""
    if not existing or proposed > existing[-1]:
        return proposed
    newest = existing[-1]
    if len(newest) > 120:
        raise ArtifactError(f"cannot name a version after {newest!r}: the name is too long")
    return f"{newest}-{proposed}"[:128]
