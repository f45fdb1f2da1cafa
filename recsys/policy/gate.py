"""The promotion gate: a candidate policy serves only if held-out logs say it is not worse.

The online learner (:mod:`recsys.policy.online`) publishes *candidate* checkpoints to a
staging root. :meth:`PromotionGate.evaluate` estimates the candidate and the serving version
off-policy on joined logs the learner held out (never trained on), re-running both policies
on the logged candidate sets (:mod:`recsys.policy.evaluation.ope_policies`), both under the
exploration serving will use, both scored by one reward; :meth:`PromotionGate.promote`
publishes an accepted candidate into the artifact root the serving
:class:`~recsys.serving.policies.PolicyRegistry` watches.

**The rule.** For every estimator in ``estimators`` (default SNIPS and DR, as
:func:`~recsys.policy.evaluation.ope.evaluate_off_policy` defines them) let
``D = V(candidate) - V(serving)`` on the held-out requests. Requests are resampled with
replacement ``n_bootstrap`` times, the *same* resample for both policies (a paired
bootstrap: what both policies share, e.g. a lucky draw of users, cancels in ``D``), and ``D``
is recomputed on each resample. The candidate is promoted iff, for every estimator,

    lower end of the two-sided ``confidence`` percentile interval of ``D``  >=  -margin,

and the Kish effective sample size of its slate importance weights is at least ``min_ess``
(an estimate resting on a handful of requests is not evidence). ``margin`` is the loss in
expected slate reward one is willing to risk for a fresher model (0: the candidate must be
shown not worse; a negative margin demands a shown improvement). Without a serving version
(nothing trained serves yet) ``V(serving)`` is the logged reward, the logging policy's
on-policy value, for every estimator.

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
    TargetPropensities,
    evaluate_off_policy,
)
from recsys.policy.evaluation.ope_policies import (
    CheckpointTarget,
    CrossFittedRewardModel,
    LoggedRequests,
    target_propensities,
)
from recsys.policy.reward.model import LearnedRewardModel
from recsys.policy.reward.spec import reward_model_from_tensors
from recsys.policy.training.checkpoint import PolicyCheckpoint, load_policy_checkpoint
from recsys.types import ArtifactError, FloatArray

_log = logging.getLogger(__name__)

Float64Array = npt.NDArray[np.float64]
GateEstimator = Literal["snips", "dr"]
GateReward = Literal["click", "engagement", "learned"]
DECISION_FILE = "gate_decision.json"

__all__ = [
    "DECISION_FILE",
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
    estimators: tuple[GateEstimator, ...] = ("snips", "dr")
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
    #: Monte Carlo slates per request for the target's position marginals (DR's model term).
    n_samples: int = 64
    max_weight: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not math.isfinite(self.margin):
            raise ValueError(f"margin must be finite, got {self.margin}")
        if not self.estimators or any(e not in ("snips", "dr") for e in self.estimators):
            raise ValueError(f"estimators must be a non-empty subset of snips, dr; got "
                             f"{self.estimators}")  # fmt: skip
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
            f"candidate's slate-weight ESS is >= {self.min_ess:g}"
        )


@dataclass(frozen=True)
class Comparison:
    """One estimator's values of both policies and of their paired difference."""

    estimator: str
    candidate: float
    serving: float
    difference: float
    ci_low: float
    ci_high: float
    passed: bool


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
    """Per-request numerator and denominator of each estimator: ``V = sum num / sum den``."""

    num: dict[str, Float64Array]
    den: dict[str, Float64Array]


def _policy_terms(
    slates: LoggedSlates,
    target: TargetPropensities,
    rewards: Float64Array,
    max_weight: float | None,
) -> _Terms:
    """SNIPS and DR of one target as per-request terms, exactly as
    :func:`~recsys.policy.evaluation.ope.evaluate_off_policy` forms them (a test holds the
    totals equal), so that one resample can be applied to both policies."""
    sid, m = slates.slate, slates.n_slates

    def per(x: Float64Array) -> Float64Array:
        out: Float64Array = np.bincount(sid, weights=x, minlength=m).astype(np.float64)
        return out

    reward = per(rewards)
    assert target.propensity is not None
    assert slates.propensity is not None  # the gate keeps rows with known propensities only
    with np.errstate(divide="ignore"):
        log_w = per(np.log(target.propensity)) - per(np.log(slates.propensity))
    if max_weight is not None:
        log_w = np.minimum(log_w, math.log(max_weight) + 1.0)
    w = np.exp(log_w)
    if max_weight is not None:
        w = np.minimum(w, max_weight)
    pred = target.reward_predictions
    assert pred is not None
    ones = np.ones(m)
    return _Terms(
        num={"snips": w * reward, "dr": per(pred.target) + w * (reward - per(pred.logged))},
        den={"snips": w, "dr": ones},
    )


def _logged_terms(slates: LoggedSlates, rewards: Float64Array) -> _Terms:
    """The logging policy's on-policy value (every estimator: the mean logged reward)."""
    reward = np.bincount(slates.slate, weights=rewards, minlength=slates.n_slates).astype(
        np.float64
    )
    ones = np.ones(slates.n_slates)
    return _Terms(num={"snips": reward, "dr": reward}, den={"snips": ones, "dr": ones})


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
) -> dict[str, tuple[float, float, float]]:
    """``{estimator: (D, ci_low, ci_high)}`` of ``D = V(candidate) - V(serving)`` with one
    paired percentile bootstrap over requests (module docstring). A resample on which a
    ratio is undefined (every weight 0) is left out of the quantiles."""
    cols = []
    for e in estimators:
        cols += [candidate.num[e], candidate.den[e], serving.num[e], serving.den[e]]
    columns = np.column_stack(cols)
    boot = _resampled_sums(columns, n_bootstrap, np.random.default_rng(seed))
    totals = columns.sum(axis=0)
    alpha = 1.0 - confidence
    out: dict[str, tuple[float, float, float]] = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        for i, e in enumerate(estimators):
            j = 4 * i
            point = totals[j] / totals[j + 1] - totals[j + 2] / totals[j + 3]
            diff = boot[:, j] / boot[:, j + 1] - boot[:, j + 2] / boot[:, j + 3]
            diff = diff[np.isfinite(diff)]
            if diff.shape[0] < n_bootstrap // 2:
                out[e] = (float(point), math.nan, math.nan)
                continue
            low, high = np.quantile(diff, [alpha / 2, 1 - alpha / 2])
            out[e] = (float(point), float(low), float(high))
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
        slates = requests.slates

        def estimate(target: CheckpointTarget) -> tuple[TargetPropensities, dict[str, OPEResult]]:
            tp = target_propensities(
                requests, target, n_samples=cfg.n_samples, seed=cfg.seed, reward_model=model
            )
            # The gate's estimators weigh whole slates; joined logs do not know the logging
            # side's marginals, so the item-position estimators are not asked for.
            tp = replace(tp, position_propensity=None, position_propensity_stderr=None)
            res = evaluate_off_policy(
                slates,
                tp,
                slot_rewards=rewards,
                max_weight=cfg.max_weight,
                n_bootstrap=cfg.n_bootstrap,
                confidence=cfg.confidence,
                seed=cfg.seed,
            )
            return tp, res

        cand_tp, cand_res = estimate(cand_target)
        cand_terms = _policy_terms(slates, cand_tp, rewards, cfg.max_weight)
        if serv_target is None:
            serv_res: dict[str, OPEResult] = {}
            serv_terms = _logged_terms(slates, rewards)
        else:
            serv_tp, serv_res = estimate(serv_target)
            serv_terms = _policy_terms(slates, serv_tp, rewards, cfg.max_weight)
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
            point, low, high = diffs[e]
            serv_value = cand_res["logged"].value if serv_target is None else serv_res[e].value
            ok = math.isfinite(low) and low >= -cfg.margin
            comparisons[e] = Comparison(e, cand_res[e].value, serv_value, point, low, high, ok)
            if not ok:
                reasons.append(
                    f"{e.upper()}: candidate - serving = {point:.4g}, {cfg.confidence:.0%} "
                    f"interval [{low:.4g}, {high:.4g}], lower end below {0.0 - cfg.margin:g}"
                )
        ess = cand_res["snips"].ess
        if not ess >= cfg.min_ess:
            reasons.append(f"candidate ESS {ess:.1f} < {cfg.min_ess:g}: too few held-out "
                           "requests the candidate would have served alike")  # fmt: skip
        return GateDecision(
            **base,
            promote=not reasons,
            reasons=tuple(reasons) or ("every estimator within the margin",),
            comparisons=comparisons,
            candidate_estimates={k: v.as_dict() for k, v in cand_res.items()},
            serving_estimates={k: v.as_dict() for k, v in serv_res.items()},
            requests=requests.n_requests,
            dropped_requests=dropped,
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


def _next_version(existing: list[str], proposed: str) -> str:
    """``proposed``, or a name extending the newest existing one, so the result sorts after
    every existing version (the registry serves the newest name)."""
    if not existing or proposed > existing[-1]:
        return proposed
    newest = existing[-1]
    if len(newest) > 120:
        raise ArtifactError(f"cannot name a version after {newest!r}: the name is too long")
    return f"{newest}-{proposed}"[:128]
