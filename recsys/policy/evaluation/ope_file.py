"""Off-policy evaluation of a logged-feedback file (what ``recsys evaluate ope`` calls).

The target policy is either a column of the file (its per-row probabilities) or a policy
re-run on the logged requests (:mod:`recsys.policy.evaluation.ope_policies`); the estimators
are those of :mod:`recsys.policy.evaluation.ope`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from recsys.data.logged import (
    LoggedFeedback,
    LoggedFeedbackError,
    read_logged_feedback,
    read_logged_feedback_metadata,
)
from recsys.policy.batch import SIGNAL_NAMES
from recsys.policy.evaluation.choice_dm import (
    CrossFittedChoiceModel,
    choice_predictions,
)
from recsys.policy.evaluation.ope import evaluate_off_policy, load_target_propensities
from recsys.policy.evaluation.ope_policies import (
    CheckpointTarget,
    CrossFittedRewardModel,
    LoggedRequests,
    load_target_policy,
    target_propensities,
    with_logged_draw,
)
from recsys.policy.reward.model import LearnedRewardModel
from recsys.simulator.spec import SIMULATOR_METADATA_KEY, SimulatorSpec
from recsys.types import FloatArray

__all__ = ["LOGGER_TOLERANCE", "evaluate_ope_file"]

#: Largest relative difference between a logger's re-computed propensity of a logged slot
#: and the logged one (float32 in the file) for the logger to count as the one that logged.
LOGGER_TOLERANCE = 1e-4


def _slot_rewards(
    signals: FloatArray, reward: str, reward_model: LearnedRewardModel | None
) -> FloatArray:
    """Per-row reward: ``click``, ``engagement`` (dwell minutes) or ``learned``."""
    if reward == "click":
        return signals[:, 0]
    if reward == "engagement":
        out: FloatArray = signals[:, 1] / np.float32(60.0)
        return out
    if reward == "learned":
        if reward_model is None:
            raise ValueError(
                "reward='learned' needs a learned reward model: evaluate a policy checkpoint "
                "(it carries the one it was trained with) or pass reward_model"
            )
        return reward_model.rewards(signals)
    raise ValueError(f"reward must be click, engagement or learned, got {reward!r}")


def _unknown_everywhere(values: FloatArray) -> bool:
    return bool(np.isnan(values).all())


def evaluate_ope_file(
    logs_path: Path | str,
    *,
    target_column: str | None = None,
    policy: str | None = None,
    position_column: str | None = None,
    reward: str = "click",
    reward_model: LearnedRewardModel | None = None,
    max_weight: float | None = None,
    n_bootstrap: int = 500,
    seed: int = 0,
    n_samples: int = 200,
    direct_method: bool = False,
    logger: str | None = None,
    logger_epsilon: float | None = None,
    choice_model: bool = False,
    cluster_by_user: bool = False,
) -> dict[str, Any]:
    """IPS, SNIPS, DR and/or IIPS, position DR of a target policy on a logged-feedback file or
    directory (:func:`~recsys.data.logged.read_logged_feedback`), with bootstrap CIs. The
    target is exactly one of:

    - columns of the log: ``target_column``, the target's per-row conditional probabilities
      (for ``ips``, ``snips``, ``dr``), and/or ``position_column``, its marginal position
      probabilities (for ``iips``, ``position_dr``). A log that knows only marginals (null
      ``propensity``, e.g. the Open Bandit Dataset, :mod:`recsys.data.obd`) or holds partial
      slates takes ``position_column`` alone;
    - ``policy``: a spec re-run on the logged requests (``random``, ``boltzmann:T`` or a
      ``recsys train policy`` checkpoint directory;
      :mod:`recsys.policy.evaluation.ope_policies`). Needs
      a log with candidate sets (format v2) and whole slates. Marginals come from
      ``n_samples`` Monte Carlo slates per request; an estimator family whose logging
      propensity the log does not record at all (null ``propensity`` or
      ``position_propensity`` on every row, e.g. a served log without marginals) is left
      out, with a note. ``direct_method`` fits a cross-fitted item-position reward model
      (:class:`~recsys.policy.evaluation.ope_policies.CrossFittedRewardModel`) as DR's
      control variate
      and reports ``dm``; that model ignores the context, so ``dm`` is biased toward the
      logged value under a personalised logger (DR stays unbiased). Without it DR uses the
      per-position baseline.

    ``logger`` (with ``policy`` only): the policy that logged the rows, a spec like
    ``policy``, acting epsilon-greedily with ``logger_epsilon`` when given (the service's
    ``RECSYS_POLICY__EPSILON``), else with its own sampler. A served log records the
    conditional propensities it drew with, not the marginal ones the item-position
    estimators need; the logger re-run on the logged requests gives them (Monte Carlo, the
    logged slate counted as one more draw for both policies, as the promotion gate does:
    :func:`~recsys.policy.evaluation.ope_policies.with_logged_draw`). It must reproduce every
    logged propensity (else ``ValueError``: it is not the policy that logged them), and
    ``iips`` and ``position_dr`` then run on the log. Their weights are one ratio per slot
    rather than a product over the slate, so they stay usable where the slate estimators'
    effective sample size collapses; their assumption is that a slot's reward depends on
    (context, item, position) only.

    ``choice_model`` (with a checkpoint ``policy`` and ``click`` reward): a cross-fitted
    conditional-logit choice model among the slate's items
    (:class:`~recsys.policy.evaluation.choice_dm.CrossFittedChoiceModel`) gives ``dm``, the
    target's expected clicks per slate with the items competing for them, and is the DR
    estimators' control variate (instead of ``direct_method``'s item-position model).

    ``cluster_by_user``: the bootstrap resamples users (all of a user's slates together)
    rather than slates; a user's slates are correlated, so this is the honest interval when
    a log holds many slates per user.

    ``reward`` per logged slot: ``click``, ``engagement`` (dwell minutes) or ``learned``
    (``reward_model`` on the row's signals; a checkpoint's own learned reward by default).
    Returns JSON-ready estimates (``recsys.policy.evaluation.ope.evaluate_off_policy``); raises
    ``ValueError`` (:class:`~recsys.data.logged.LoggedFeedbackError` for the log itself) for a
    missing column, a malformed or empty log, probabilities outside [0, 1], a target with
    probability 0 everywhere, a logging propensity an estimator needs but the log does not
    know, a log without candidate sets, or a checkpoint from another simulator.
    """
    if choice_model and (policy is None or direct_method or reward != "click"):
        raise ValueError(
            "choice_model needs a checkpoint policy and reward 'click', and replaces direct_method"
        )
    if logger is None and logger_epsilon is not None:
        raise ValueError("logger_epsilon needs a logger")
    if logger is not None and policy is None:
        raise ValueError("a logger is re-run on the logged candidate sets: give a policy too")
    columns_given = target_column is not None or position_column is not None
    if columns_given == (policy is not None):
        raise ValueError(
            "give exactly one of a policy and target columns (target_column and/or position_column)"
        )
    path = Path(logs_path)
    logs = read_logged_feedback(path)
    if len(logs) == 0:
        raise LoggedFeedbackError(f"{path} holds no logged rows: there is nothing to evaluate")
    signals = np.stack(
        [np.asarray(getattr(logs, name), dtype=np.float32) for name in SIGNAL_NAMES], axis=1
    )
    out: dict[str, Any] = {"logs": str(path), "rows": len(logs)}
    notes: list[str] = []
    if policy is None:
        if direct_method:
            raise ValueError("direct_method needs a policy (candidate sets), not a target_column")
        target = load_target_propensities(path, target_column, position_column)
        rewards = _slot_rewards(signals, reward, reward_model)
        out.update(target_column=target_column, position_column=position_column)
    else:
        meta = read_logged_feedback_metadata(path)
        simulator = (
            SimulatorSpec.from_json(meta[SIMULATOR_METADATA_KEY])
            if SIMULATOR_METADATA_KEY in meta
            else None
        )
        loaded = load_target_policy(policy, logs, simulator=simulator)
        rewards = _slot_rewards(signals, reward, reward_model or loaded.reward_model)
        requests = LoggedRequests.from_feedback(logs)
        model = (
            CrossFittedRewardModel.fit(requests, logs.item_id, rewards) if direct_method else None
        )
        target = target_propensities(
            requests, loaded.policy, n_samples=n_samples, seed=seed, reward_model=model
        )
        if logger is not None:
            marginals, check = _logger_marginals(
                logger, logger_epsilon, logs, requests, simulator, n_samples, seed
            )
            target = with_logged_draw(target, n_samples, None)
            logs = replace(logs, position_propensity=marginals.astype(np.float32))
            out["logger"] = check
            notes.append(
                "position_propensity (the logger's marginals) recomputed by re-running "
                f"{check['policy']} on the logged requests"
            )
        elif _unknown_everywhere(logs.position_propensity):
            target = replace(target, position_propensity=None, position_propensity_stderr=None)
            notes.append(
                "the log records no position_propensity (marginal logging probabilities): "
                "iips and position_dr are left out"
            )
        elif _unknown_everywhere(logs.propensity):
            target = replace(target, propensity=None)
            notes.append(
                "the log records no propensity (conditional logging probabilities): ips, "
                "snips and dr are left out"
            )
        for given in (target.propensity, target.position_propensity):
            if given is not None and not np.any(given > 0):
                raise ValueError(
                    f"the target (policy {policy!r}) gives probability 0 to every logged slot: "
                    "no logged action is one it would take, so importance weighting has nothing "
                    "to reweight (IPS is 0 and SNIPS undefined by construction); check the policy"
                )
        if choice_model:
            fitted = CrossFittedChoiceModel.fit(
                requests, loaded.policy, requests.slates.per_position(logs.click), seed=seed
            )
            target = replace(
                target,
                reward_predictions=choice_predictions(requests, loaded.policy, fitted, seed=seed),
            )
            out["choice_model"] = {"clicks": fitted.clicks, "nll": list(fitted.nll)}
        stderr = target.position_propensity_stderr
        out.update(
            policy=str(loaded.spec),
            target=loaded.description,
            logging_policies=sorted(set(logs.policy.tolist())),
            slates=requests.n_requests,
            candidates_per_request=requests.num_candidates,
            position_samples=n_samples,
            max_position_propensity_stderr=None if stderr is None else float(stderr.max()),
            direct_method=direct_method,
        )
    results = evaluate_off_policy(
        logs,
        target,
        slot_rewards=rewards.astype(np.float64),
        max_weight=max_weight,
        n_bootstrap=n_bootstrap,
        seed=seed,
        clusters=logs.user_id if cluster_by_user else None,
    )
    out["bootstrap_unit"] = "user" if cluster_by_user else "slate"
    if cluster_by_user:
        out["users"] = int(np.unique(logs.user_id).size)
    out["reward"] = reward
    if notes:
        out["notes"] = notes
    out["estimates"] = {name: r.as_dict() for name, r in results.items()}
    return out


def _logger_marginals(
    spec: str,
    epsilon: float | None,
    logs: LoggedFeedback,
    requests: LoggedRequests,
    simulator: SimulatorSpec | None,
    n_samples: int,
    seed: int,
) -> tuple[npt.NDArray[np.float64], dict[str, Any]]:
    """The logging policy's marginal position propensities of the logged slots, and what
    was checked: it must give every logged slot its logged (conditional) propensity."""
    if _unknown_everywhere(logs.propensity):
        raise ValueError(
            "the log records no propensity (conditional logging probabilities): a logger "
            "cannot be checked against it"
        )
    loaded = load_target_policy(spec, logs, simulator=simulator)
    policy = loaded.policy
    if epsilon is not None:
        if not isinstance(policy, CheckpointTarget):
            raise ValueError(f"logger_epsilon applies to a checkpoint logger, not {spec!r}")
        policy.sampler = replace(policy.sampler, kind="epsilon", epsilon=epsilon)
    tp = target_propensities(requests, policy, n_samples=n_samples, seed=seed)
    assert tp.propensity is not None
    logged = np.asarray(logs.propensity, dtype=np.float64)
    known = np.isfinite(logged)
    gap = np.abs(tp.propensity[known] / logged[known] - 1.0)
    worst = float(gap.max()) if gap.size else 0.0
    if not worst <= LOGGER_TOLERANCE:
        row = int(np.flatnonzero(known)[int(np.argmax(gap))])
        raise ValueError(
            f"the logger {spec!r}"
            + ("" if epsilon is None else f" (epsilon-greedy {epsilon:g})")
            + " does not reproduce the logged propensities: on row "
            f"{row} it gives {tp.propensity[row]:.6g} where the log has {logged[row]:.6g} "
            f"(largest relative difference {worst:.3g}); give the policy and exploration that "
            "logged these rows"
        )
    # No fallback needed: the logger gives every logged slot its (positive) logged propensity.
    drawn = with_logged_draw(tp, n_samples, None)
    assert drawn.position_propensity is not None
    check = {
        "policy": str(loaded.spec),
        "description": loaded.description,
        "epsilon": epsilon,
        "max_relative_propensity_difference": worst,
    }
    return np.asarray(drawn.position_propensity, dtype=np.float64), check
