"""Off-policy evaluation of a *policy* (not a column of numbers) on logged slates.

:func:`recsys.policy.evaluation.ope.evaluate_off_policy` needs, for every logged row, the
target policy's conditional probability ``pi(a_k | a_<k, x)`` of the logged item at its slot
and (for the item-position estimators) its marginal ``pi(a_k @ k | x)``. Both depend on
everything the target could have shown instead, so they can only be computed when the log
records each request's candidate set (logged-feedback v2, ``candidate_ids``). This module
re-runs a target policy on the logged requests, vectorised over requests (chunks of them;
loops only over chunks, slots and Monte Carlo batches, never over rows):

- :class:`LoggedRequests` groups a log into requests: candidate ids ``[m, C]``, the user
  features the logger saw, and the logged slate as candidate columns.
- A :class:`TargetPolicy` says how the target acts: per-candidate scores and the
  :class:`~recsys.policy.base.SlateSampler` (epsilon-greedy, Plackett-Luce or greedy) that
  turns them into slates. Specs (:func:`parse_policy_spec`, :func:`load_target_policy`):
  ``random`` (uniform without replacement), ``boltzmann:T`` (Plackett-Luce at temperature
  ``T`` over the simulator logger's relevance score
  :func:`recsys.simulator.policies.relevance_scores`; at the logger's own temperature every
  weight is exactly 1) and a ``recsys train policy`` checkpoint directory (its SlateQ or
  REINFORCE policy acting with its exploring sampler, on observations rebuilt by its own
  :class:`~recsys.policy.observation.PolicyFeatures` from the logged user features and
  candidates).
- :func:`target_propensities` computes the conditionals *exactly* with the sampler's own
  :meth:`~recsys.policy.base.SlateSampler.log_propensities` (the same code path that produced
  the propensities when the policy acted) and the marginals by Monte Carlo over ``M`` sampled
  slates per request, Rao-Blackwellised where the rule allows: for Plackett-Luce
  ``P(a_k @ k | sampled prefix)`` is a softmax share (:func:`~recsys.policy.evaluation.ope.
  plackett_luce_target`); for epsilon-greedy, and for either under an ad load (availability
  then depends on the prefix's ads), it is the sampler's own conditional of the logged item
  after each sampled prefix (:meth:`~recsys.policy.base.SlateSampler.slot_log_propensities`:
  ``(1 - eps) [a_k is the best item left] + eps / (items left)`` for epsilon-greedy), never 0
  where the policy can put the item; uniform and greedy marginals are exact. Every estimate
  is unbiased,
  so ``iips`` and ``position_dr`` stay unbiased. With a :class:`CrossFittedRewardModel` it
  also returns direct-method predictions (``dm``, and DR's control variate).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt
import torch

from recsys.data.logged import LoggedFeedback
from recsys.features import FeatureSpec
from recsys.policy.algorithms.reinforce import ReinforceTopKPolicy
from recsys.policy.algorithms.slateq import SlateQPolicy
from recsys.policy.base import SlateSampler
from recsys.policy.batch import SlateObs
from recsys.policy.evaluation.ope import (
    ItemPositionMeanModel,
    LoggedSlates,
    RewardPredictions,
    TargetPropensities,
    plackett_luce_target,
)
from recsys.policy.observation import PolicyFeatures
from recsys.policy.reward.model import LearnedRewardModel
from recsys.policy.reward.spec import reward_model_from_tensors
from recsys.policy.training.checkpoint import load_policy_checkpoint
from recsys.simulator.env import SlateEnv
from recsys.simulator.policies import relevance_scores
from recsys.simulator.spec import SimulatorSpec
from recsys.types import ArtifactError, FloatArray, IntArray

Float64Array = npt.NDArray[np.float64]

__all__ = [
    "CheckpointTarget",
    "CrossFittedRewardModel",
    "LoadedTarget",
    "LoggedRequests",
    "PolicySpec",
    "RelevanceTarget",
    "TargetPolicy",
    "UniformTarget",
    "chunks",
    "load_target_policy",
    "obs_rows",
    "parse_policy_spec",
    "request_folds",
    "target_propensities",
]

# Features rebuilt from the world must match the logged ones to float32 rounding.
_FEATURE_TOL = 1e-5


# ---------------------------------------------------------------------------------------------
# Logged requests


def _require_candidates(logs: LoggedFeedback) -> None:
    if logs.candidate_ids is None:
        raise ValueError(
            "the log records no candidate sets (candidate_ids): it is logged-feedback v1 or "
            "its producer did not record them, so a policy cannot be re-run on it. Re-record "
            "it with `recsys simulate`, or evaluate a --target-column"
        )


@dataclass(frozen=True, eq=False)
class LoggedRequests:
    """A log grouped into requests, with what a target policy needs to act on each again.

    ``slates`` groups the rows (its slate order is the request order here).
    ``candidate_ids [m, C]`` and ``user_features [m, du]`` are per request;
    ``logged_candidate [n]`` is the column of each row's item in its request's candidates and
    ``slate_candidates [m, S_max]`` the logged slate as candidate columns, slot by slot (a
    shorter slate is padded with unused candidates: a slot's probability depends only on the
    slots above it, so padding never changes a real slot's).
    """

    slates: LoggedSlates
    candidate_ids: IntArray
    user_features: FloatArray
    logged_candidate: IntArray
    slate_candidates: IntArray

    @property
    def n_requests(self) -> int:
        """Logged requests (slates)."""
        return self.slates.n_slates

    @property
    def num_candidates(self) -> int:
        """Candidates per request (``C``)."""
        return int(self.candidate_ids.shape[1])

    @property
    def max_slate_size(self) -> int:
        """The longest logged slate (``S_max``)."""
        return int(self.slate_candidates.shape[1])

    @classmethod
    def from_feedback(cls, logs: LoggedFeedback) -> LoggedRequests:
        """Group rows by ``request_id``; refuse logs without candidate sets, with partial
        slates (a slot's probability depends on the slots above it), or whose rows of one
        request disagree on the candidates or the user features (``ValueError`` naming it)."""
        _require_candidates(logs)
        assert logs.candidate_ids is not None
        slates = LoggedSlates.from_feedback(logs)
        slates.require_whole_slates(
            "re-running a policy needs every slot of a slate (a slot's probability depends on "
            "the items above it)"
        )
        sid, n, m = slates.slate, slates.n_rows, slates.n_slates
        rep = np.zeros(m, dtype=np.int64)
        rep[sid] = np.arange(n)  # any one row of each request
        cands = logs.candidate_ids[rep]
        for name, per_row, per_slate in (
            ("candidate_ids", logs.candidate_ids, cands),
            ("user_features", logs.user_features, logs.user_features[rep]),
        ):
            same = (per_row == per_slate[sid]).all(axis=1)
            if not same.all():
                i = int(np.argmin(same))
                raise ValueError(
                    f"{name} differ between the rows of request {str(logs.request_id[i])!r}"
                )
        ordered = np.sort(cands, axis=1)
        dup = (ordered[:, 1:] == ordered[:, :-1]).any(axis=1)
        if dup.any():
            raise ValueError(
                f"request {str(slates.keys[int(np.argmax(dup))])!r} lists a candidate twice"
            )
        col = np.argmax(logs.candidate_ids == logs.item_id[:, None], axis=1).astype(np.int64)
        c = cands.shape[1]
        cell = np.sort(sid * c + col)
        twice = cell[1:] == cell[:-1]
        if twice.any():
            s = int(cell[1:][twice][0] // c)
            raise ValueError(f"request {str(slates.keys[s])!r} shows the same item twice")
        s_max = int(slates.slate_size.max())
        taken = np.zeros((m, c), dtype=np.bool_)
        taken[sid, col] = True
        unused = np.argsort(taken, axis=1, kind="stable")  # untaken columns first
        pad = np.arange(s_max)[None, :] - slates.slate_size[:, None]
        slate_cols = np.take_along_axis(unused, np.maximum(pad, 0), axis=1)
        slate_cols[sid, slates.position] = col
        return cls(
            slates=slates,
            candidate_ids=cands.astype(np.int64),
            user_features=np.asarray(logs.user_features[rep], dtype=np.float32),
            logged_candidate=col,
            slate_candidates=slate_cols.astype(np.int64),
        )


# ---------------------------------------------------------------------------------------------
# Target policies


class TargetPolicy(Protocol):
    """A stochastic slate policy as OPE re-runs it: scores per candidate, and the sampler that
    builds its (exploring) slates from them."""

    name: str
    sampler: SlateSampler

    def behaviour(
        self, user_features: FloatArray, candidate_ids: IntArray, slate_size: int
    ) -> tuple[Float64Array, SlateObs]:
        """Scores ``[b, C]`` the sampler ranks for these requests, and the observation whose
        ``candidate_mask`` / ``is_ad`` the sampler honours."""
        ...


def _bare_obs(user_features: FloatArray, candidate_ids: IntArray) -> SlateObs:
    """An observation with no item features: enough for a sampler (it reads mask and ads)."""
    b, c = candidate_ids.shape
    return SlateObs(
        user_features=np.asarray(user_features, dtype=np.float32),
        item_features=np.zeros((b, c, 0), dtype=np.float32),
        candidate_ids=np.asarray(candidate_ids, dtype=np.int64),
    )


class UniformTarget:
    """Uniformly random slates without replacement (``random``): epsilon-greedy with
    ``epsilon = 1``, so its marginal is exactly ``1 / C`` at every position."""

    name = "random"
    sampler = SlateSampler("epsilon", epsilon=1.0)

    def behaviour(
        self, user_features: FloatArray, candidate_ids: IntArray, slate_size: int
    ) -> tuple[Float64Array, SlateObs]:
        """All-zero scores (uniform choice ignores them)."""
        return np.zeros(candidate_ids.shape), _bare_obs(user_features, candidate_ids)


class RelevanceTarget:
    """Plackett-Luce at ``temperature`` over the simulator logger's relevance score
    (``boltzmann:T``), on the world of ``env`` (only its item table is read)."""

    def __init__(self, env: SlateEnv, temperature: float) -> None:
        self.env = env
        self.sampler = SlateSampler("boltzmann", temperature=temperature)
        self.name = f"boltzmann:{temperature:g}"

    def behaviour(
        self, user_features: FloatArray, candidate_ids: IntArray, slate_size: int
    ) -> tuple[Float64Array, SlateObs]:
        """``topics . interests`` per candidate from the logged user features (the event
        fold's interest block), exactly as ``recsys simulate``'s logger scores them."""
        scores = relevance_scores(self.env, user_features, candidate_ids)
        return scores.astype(np.float64), _bare_obs(user_features, candidate_ids)


class CheckpointTarget:
    """A trained SlateQ or REINFORCE-top-K policy acting with its own exploring sampler.

    REINFORCE samples Plackett-Luce over its logits; SlateQ's sampler input comes from
    :meth:`~recsys.policy.algorithms.slateq.SlateQPolicy.sampler_scores`, the method its
    ``act`` uses. Tests check the propensities against ``act`` itself.
    """

    def __init__(
        self, policy: SlateQPolicy | ReinforceTopKPolicy, features: PolicyFeatures, name: str
    ) -> None:
        self.policy = policy
        self.features = features
        self.sampler = policy.config.sampler
        self.name = name

    def behaviour(
        self, user_features: FloatArray, candidate_ids: IntArray, slate_size: int
    ) -> tuple[Float64Array, SlateObs]:
        """The policy's sampler input on observations rebuilt as it was trained on them."""
        obs = self.features.obs(user_features, candidate_ids)
        if isinstance(self.policy, ReinforceTopKPolicy):
            with torch.no_grad():
                logits, _ = self.policy.logits(obs)
            out: Float64Array = logits.double().numpy()
            return out, obs
        scores, _ = self.policy.sampler_scores(obs, slate_size, explore=True)
        return scores, obs


# ---------------------------------------------------------------------------------------------
# Direct-method model


def request_folds(requests: LoggedRequests) -> IntArray:
    """Each request's cross-fitting half ``[m]`` (0 or 1): alternating over sorted request
    ids, so it does not depend on the order of the log's rows."""
    slates = requests.slates
    rank = np.empty(slates.n_slates, dtype=np.int64)
    rank[np.argsort(slates.keys, kind="stable")] = np.arange(slates.n_slates)
    fold: IntArray = rank % 2
    return fold


@dataclass(frozen=True, eq=False)
class CrossFittedRewardModel:
    """:class:`~recsys.policy.evaluation.ope.ItemPositionMeanModel` fitted on each half of the
    requests and used on the other half, so DR's control variate never saw the slate it
    corrects (no overfitting bias). Halves alternate over sorted request ids, independent of
    row order.
    """

    models: tuple[ItemPositionMeanModel, ItemPositionMeanModel]
    fold: IntArray  # [m] each request's fold; the model fitted on the other fold predicts it

    @classmethod
    def fit(
        cls, requests: LoggedRequests, item_id: npt.ArrayLike, slot_rewards: npt.ArrayLike
    ) -> CrossFittedRewardModel | None:
        """Fit on the log's rows; ``None`` when a half lacks a position (too few requests)."""
        slates = requests.slates
        fold = request_folds(requests)
        row_fold = fold[slates.slate]
        items = np.asarray(item_id, dtype=np.int64)
        rewards = np.asarray(slot_rewards, dtype=np.float64)
        models: list[ItemPositionMeanModel] = []
        for f in (0, 1):
            mine = row_fold == f
            positions = slates.position[mine]
            if not mine.any() or int(positions.max()) + 1 != requests.max_slate_size:
                return None
            models.append(ItemPositionMeanModel.fit(items[mine], positions, rewards[mine]))
        return cls(models=(models[0], models[1]), fold=fold)

    def candidate_rewards(self, span: slice, candidate_ids: IntArray, depth: int) -> Float64Array:
        """``qhat(candidate, k)`` ``[b, C, depth]`` for the requests ``span`` (their candidate
        ids ``[b, C]``), each from the model that did not see it."""
        pos = np.arange(depth)[None, None, :]
        ids = candidate_ids[:, :, None]
        own = self.fold[span][:, None, None]
        out: Float64Array = np.where(
            own == 0, self.models[1].predict(ids, pos), self.models[0].predict(ids, pos)
        )
        return out


# ---------------------------------------------------------------------------------------------
# Propensities


@dataclass(frozen=True)
class _Chunk:
    """One chunk of requests ``[a, b)`` and its rows (sorted by request)."""

    a: int
    b: int
    rows: IntArray
    local: IntArray  # request index within the chunk, per row
    position: IntArray
    column: IntArray  # logged candidate column, per row


def chunks(requests: LoggedRequests, per_chunk: int) -> Iterator[_Chunk]:
    slates = requests.slates
    sid = slates.slate
    by_request = np.argsort(sid, kind="stable")
    starts = np.searchsorted(sid[by_request], np.arange(requests.n_requests + 1))
    for a in range(0, requests.n_requests, per_chunk):
        b = min(requests.n_requests, a + per_chunk)
        rows = by_request[starts[a] : starts[b]]
        yield _Chunk(
            a, b, rows, sid[rows] - a, slates.position[rows], requests.logged_candidate[rows]
        )


def obs_rows(obs: SlateObs, rows: IntArray) -> SlateObs:
    """The requests ``rows`` (repeats allowed), without item features (the sampler does not
    read them)."""
    mask = None if obs.candidate_mask is None else obs.candidate_mask[rows]
    ads = None if obs.is_ad is None else obs.is_ad[rows]
    ids = obs.candidate_ids[rows]
    return SlateObs(
        user_features=np.zeros((ids.shape[0], 0), dtype=np.float32),
        item_features=np.zeros((*ids.shape, 0), dtype=np.float32),
        candidate_ids=ids,
        candidate_mask=mask,
        is_ad=ads,
    )


_MarginalMethod = Literal["exact", "plackett_luce", "prefix"]


def _marginal_method(sampler: SlateSampler) -> _MarginalMethod:
    """How marginals are computed for a sampler: exactly, or which Monte Carlo estimator."""
    if sampler.kind == "greedy":
        return "exact"
    if sampler.max_ads is not None or sampler.min_ads > 0:
        return "prefix"  # an ad cap or floor makes availability depend on the prefix's ads
    if sampler.kind == "boltzmann":
        return "plackett_luce"
    return "exact" if sampler.epsilon in (0.0, 1.0) else "prefix"


def target_propensities(
    requests: LoggedRequests,
    target: TargetPolicy,
    *,
    n_samples: int = 200,
    seed: int = 0,
    reward_model: CrossFittedRewardModel | None = None,
    chunk_elements: int = 1 << 22,
) -> TargetPropensities:
    """The target's probabilities of the logged slates, one per logged row (row order kept).

    ``propensity`` is exact (the sampler's own per-slot rule, cast to float32 as logged
    propensities are, so a target identical to the logger gets weights of exactly 1).
    ``position_propensity`` is exact for uniform and greedy targets and otherwise an unbiased
    Monte Carlo estimate from ``n_samples`` sampled slates per request (its standard error per
    row in ``position_propensity_stderr``); see the module docstring. ``reward_model`` adds
    ``reward_predictions`` (its ``qhat`` of the logged item, and its expectation under the
    target at each position, exact or from the same samples). Memory is bounded by
    processing ``chunk_elements // (n_samples * C)`` requests at a time.
    """
    if n_samples < 2:
        raise ValueError(f"n_samples must be >= 2, got {n_samples}")
    n, c, s_max = requests.slates.n_rows, requests.num_candidates, requests.max_slate_size
    sampler = target.sampler
    method = _marginal_method(sampler)
    rng = np.random.default_rng(seed)
    conditional = np.empty(n)
    marginal = np.empty(n)
    stderr = np.zeros(n)
    logged_q = np.empty(n) if reward_model is not None else None
    target_q = np.empty(n) if reward_model is not None else None
    per_chunk = max(1, chunk_elements // (n_samples * c))
    for ch in chunks(requests, per_chunk):
        cands = requests.candidate_ids[ch.a : ch.b]
        scores, obs = target.behaviour(requests.user_features[ch.a : ch.b], cands, s_max)
        log_p = sampler.log_propensities(
            scores, obs, requests.slate_candidates[ch.a : ch.b], explore=True
        )
        picked = log_p[ch.local, ch.position]
        conditional[ch.rows] = np.exp(picked).astype(np.float32)
        q = (
            None
            if reward_model is None
            else reward_model.candidate_rewards(slice(ch.a, ch.b), cands, s_max)
        )
        if q is not None and logged_q is not None:
            logged_q[ch.rows] = q[ch.local, ch.column, ch.position]
        marg, err, expected_q = _chunk_marginals(
            method, sampler, scores, obs, ch, q, requests, n_samples, rng
        )
        marginal[ch.rows], stderr[ch.rows] = marg, err
        if target_q is not None and expected_q is not None:
            target_q[ch.rows] = expected_q
    predictions = (
        None
        if logged_q is None or target_q is None
        else RewardPredictions(logged=logged_q, target=target_q)
    )
    return TargetPropensities(
        propensity=conditional,
        position_propensity=np.minimum(marginal, 1.0),
        position_propensity_stderr=stderr,
        reward_predictions=predictions,
    )


def with_logged_draw(
    tp: TargetPropensities, n_samples: int, fallback: Float64Array | None
) -> TargetPropensities:
    """``tp`` with its Monte Carlo marginals ``m`` replaced by ``(M m + c) / (M + 1)``, ``c``
    its conditional of the logged slot given the logged prefix: the logged slate counted as
    one more draw, Rao-Blackwellised. A Monte Carlo frequency can be 0 for a logged item
    whose true marginal is positive (an infinite weight when it is the logger's); with the
    draw the logger's marginal is at least ``c / (M + 1) > 0``, at a relative bias of order
    ``1 / (M + 1)``, and a target that acts as the logger gets weights of exactly 1. Where
    ``c`` is 0 (this policy would not have logged that slot) ``fallback``, the logged
    propensity, stands in, so that a logger's marginal of a logged slot is never 0."""
    assert tp.position_propensity is not None
    assert tp.propensity is not None
    draw = (
        tp.propensity if fallback is None else np.where(tp.propensity > 0, tp.propensity, fallback)
    )
    marginal = (n_samples * tp.position_propensity + draw) / (n_samples + 1)
    return replace(tp, position_propensity=marginal)


def _chunk_marginals(
    method: _MarginalMethod,
    sampler: SlateSampler,
    scores: Float64Array,
    obs: SlateObs,
    ch: _Chunk,
    q: Float64Array | None,
    requests: LoggedRequests,
    n_samples: int,
    rng: np.random.Generator,
) -> tuple[Float64Array, Float64Array, Float64Array | None]:
    """``(marginal, stderr, expected qhat)`` per row of one chunk."""
    s_max = requests.max_slate_size
    valid = obs.valid()
    n_valid = valid.sum(axis=1)
    zeros = np.zeros(ch.rows.shape[0])
    if method == "exact" and sampler.kind == "epsilon" and sampler.epsilon == 1.0:
        uniform = valid / n_valid[:, None]
        marg = uniform[ch.local, ch.column]
        eq = None if q is None else np.einsum("bc,bck->bk", uniform, q)[ch.local, ch.position]
        return marg, zeros, eq
    if method == "exact":  # deterministic (greedy, or epsilon 0): one path
        best = sampler.sample(scores, obs, s_max, rng).slates
        on_path = best[ch.local, ch.position]
        marg = (on_path == ch.column).astype(np.float64)
        eq = None if q is None else q[ch.local, on_path, ch.position]
        return marg, zeros, eq
    if method == "plackett_luce":
        # Only the grouping matters here; the logging propensities are not read.
        chunk_slates = LoggedSlates.from_arrays(ch.local, ch.position, None)
        est = plackett_luce_target(
            chunk_slates,
            np.where(valid, scores, -np.inf),
            ch.column,
            temperature=sampler.temperature,
            n_samples=n_samples,
            seed=int(rng.integers(2**63)),
            candidate_rewards=q,
        )
        assert est.position_propensity is not None
        assert est.position_propensity_stderr is not None
        eq = None if est.reward_predictions is None else est.reward_predictions.target
        return est.position_propensity, est.position_propensity_stderr, eq

    b = ch.b - ch.a
    repeated = np.repeat(np.arange(b), n_samples)
    sampled = sampler.sample(scores[repeated], obs_rows(obs, repeated), s_max, rng).slates.reshape(
        b, n_samples, s_max
    )
    at_k = sampled[ch.local, :, ch.position]  # [r, M]: what the target put at each row's slot
    eq = None if q is None else q[ch.local[:, None], at_k, ch.position[:, None]].mean(axis=1)
    vals = _prefix_conditionals(sampler, scores, obs, sampled, ch)
    err = vals.std(axis=1, ddof=1) / math.sqrt(n_samples)
    return vals.mean(axis=1), err, eq


def _prefix_conditionals(
    sampler: SlateSampler,
    scores: Float64Array,
    obs: SlateObs,
    sampled: IntArray,
    ch: _Chunk,
) -> Float64Array:
    """``P(a_k @ k | sampled prefix)`` ``[r, M]``: each row's logged item at its slot, given
    the first ``k`` slots of each of the ``M`` sampled slates of its request
    (:meth:`~recsys.policy.base.SlateSampler.slot_log_propensities`, the sampler's own rule,
    ad load included). Its mean over the samples is the Rao-Blackwellised marginal: never 0
    where the sampler can put the item, unlike the frequency of the item in the samples."""
    n_samples, s_max = sampled.shape[1], sampled.shape[2]
    out = np.empty((ch.rows.shape[0], n_samples))
    for k in range(s_max):
        sel = np.flatnonzero(ch.position == k)
        if sel.size == 0:
            continue
        reqs = np.repeat(ch.local[sel], n_samples)
        log_p = sampler.slot_log_propensities(
            scores[reqs],
            obs_rows(obs, reqs),
            sampled[ch.local[sel], :, :k].reshape(sel.size * n_samples, k),
            np.repeat(ch.column[sel], n_samples),
            s_max,
        )
        out[sel] = np.exp(log_p).reshape(sel.size, n_samples)
    return out


# ---------------------------------------------------------------------------------------------
# Specs


@dataclass(frozen=True)
class PolicySpec:
    """A parsed ``--policy`` value: ``random``, ``boltzmann:T`` or a checkpoint directory."""

    kind: Literal["random", "boltzmann", "checkpoint"]
    temperature: float | None = None
    path: Path | None = None

    def __str__(self) -> str:
        if self.kind == "boltzmann":
            return f"boltzmann:{self.temperature:g}"
        return "random" if self.kind == "random" else str(self.path)


def parse_policy_spec(text: str) -> PolicySpec:
    """Parse ``random``, ``boltzmann:T`` (``T`` finite, > 0) or a checkpoint directory path
    (write ``./random`` for a directory that is literally named like a keyword)."""
    spec = text.strip()
    if spec == "random":
        return PolicySpec("random")
    if spec == "boltzmann" or spec.startswith("boltzmann:"):
        raw = spec.partition(":")[2]
        try:
            temperature = float(raw)
        except ValueError:
            temperature = float("nan")
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(
                f"policy {text!r}: boltzmann needs a positive temperature, e.g. boltzmann:0.5"
            )
        return PolicySpec("boltzmann", temperature=temperature)
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise ValueError(
            f"policy {text!r} is neither random, boltzmann:T nor a checkpoint directory"
        )
    return PolicySpec("checkpoint", path=path)


@dataclass(frozen=True, eq=False)
class LoadedTarget:
    """A target policy resolved against a log, with what came with it.

    ``reward_model`` is a checkpoint's learned reward (for ``--reward learned``);
    ``description`` says in words what is evaluated.
    """

    spec: PolicySpec
    policy: TargetPolicy
    reward_model: LearnedRewardModel | None
    description: str


def _check_world(env: SlateEnv, logs: LoggedFeedback, what: str, user_width: int) -> None:
    """Refuse a world that is not the one the log was simulated on.

    The candidate ids must exist in the world, the logged user features must have the width
    the target reads (``user_width``), and the logged item features of the shown items must
    equal its observable item table. A log without item features (width 0: a joined log of
    the service records item ids, and the target observes them through its own item table)
    is checked by its ids and user features alone.
    """
    assert logs.candidate_ids is not None
    width = user_width
    if logs.user_features.shape[1] != width:
        raise ValueError(
            f"{what} expects user features of width {width}, the log has "
            f"{logs.user_features.shape[1]}: the log comes from another simulator"
        )
    if logs.candidate_ids.size and int(logs.candidate_ids.max()) >= env.num_items:
        raise ValueError(
            f"the log's candidate ids reach {int(logs.candidate_ids.max())} but {what} has "
            f"{env.num_items} items: the log comes from another catalog"
        )
    table = env.item_feature_table
    if logs.item_features.shape[1] == 0:
        return
    if logs.item_features.shape[1] != table.shape[1]:
        raise ValueError(
            f"the log's item features have width {logs.item_features.shape[1]}, {what}'s "
            f"item table {table.shape[1]}"
        )
    if not np.allclose(table[logs.item_id], logs.item_features, rtol=0, atol=_FEATURE_TOL):
        raise ValueError(
            f"the log's item features differ from {what}'s item table: the log was "
            "simulated on another catalog (num_items, num_topics or seed)"
        )


def load_target_policy(
    spec: str | PolicySpec,
    logs: LoggedFeedback,
    *,
    simulator: SimulatorSpec | None = None,
) -> LoadedTarget:
    """Resolve a policy spec against a log (``ValueError`` with the reason when it cannot be).

    ``boltzmann:T`` needs the simulator record of the log (``simulator``, from its file
    metadata) to rebuild the candidates' item features; a checkpoint brings its own world
    (its training config) and item statistics. Either world is checked against the log's
    item features, so a checkpoint or record from another simulator is refused.
    """
    parsed = parse_policy_spec(spec) if isinstance(spec, str) else spec
    _require_candidates(logs)
    if parsed.kind == "random":
        return LoadedTarget(parsed, UniformTarget(), None, "uniformly random slates")
    if parsed.kind == "boltzmann":
        assert parsed.temperature is not None
        if simulator is None:
            raise ValueError(
                "boltzmann:T re-scores every candidate with the simulator's item features, "
                "and this log does not record its simulator (write it with `recsys simulate`)"
            )
        env = simulator.build_env(num_users=1)
        # ``recsys simulate`` logs event-derived user features (default spec).
        width = FeatureSpec(num_topics=env.world.num_topics).user_dim
        _check_world(env, logs, "the recorded simulator", user_width=width)
        return LoadedTarget(
            parsed,
            RelevanceTarget(env, parsed.temperature),
            None,
            f"Plackett-Luce over topics . interests at temperature {parsed.temperature:g}",
        )
    assert parsed.path is not None
    try:
        ckpt = load_policy_checkpoint(parsed.path)
    except (ArtifactError, KeyError, OSError) as exc:
        raise ValueError(f"{parsed.path} is not a policy checkpoint: {exc}") from exc
    cfg = ckpt.config
    env = SimulatorSpec(cfg.catalog(), cfg.simulator_settings()).build_env(num_users=1)
    features = ckpt.features
    if features is None or features.num_items != env.num_items:
        raise ValueError(
            f"checkpoint {parsed.path} does not describe how it observes the project "
            "simulator's catalog (no features, or another catalog size)"
        )
    _check_world(env, logs, f"checkpoint {parsed.path}", user_width=ckpt.user_dim)
    s_max = int(logs.slate_size.max()) if len(logs) else 0
    if s_max > ckpt.slate_size:
        raise ValueError(
            f"the log has slates of {s_max} but checkpoint {parsed.path} was trained for "
            f"slates of at most {ckpt.slate_size}"
        )
    policy = ckpt.policy
    if not isinstance(policy, SlateQPolicy | ReinforceTopKPolicy):
        raise ValueError(f"checkpoint {parsed.path} holds an unsupported policy {policy!r}")
    reward = None if ckpt.reward_tensors is None else reward_model_from_tensors(ckpt.reward_tensors)
    sampler = policy.config.sampler
    rule = (
        f"epsilon-greedy (epsilon={sampler.epsilon:g})"
        if sampler.kind == "epsilon"
        else f"Plackett-Luce (T={sampler.temperature:g})"
        if sampler.kind == "boltzmann"
        else "greedy"
    )
    return LoadedTarget(
        parsed,
        CheckpointTarget(policy, features, name=f"{cfg.algo}@{ckpt.iteration}"),
        reward,
        f"{cfg.algo} checkpoint (iteration {ckpt.iteration}) exploring by {rule}",
    )
