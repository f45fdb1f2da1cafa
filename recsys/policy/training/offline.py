"""Offline training from logged feedback (the Parquet format of :mod:`recsys.data.logged`).

A log holds, per served slate, the user features the policy saw, the features of the slotted
items, their exact logging propensities and every observable response; rows of one slate share
a ``request_id`` and slates of one session are ordered by ``step``. From that:

- **SlateQ, off-policy SARSA**: the logged next slate of the same session is the ``A'`` of the
  target ``r + gamma * sum_j P(j | s', A') Qbar(s', j)``; the last slate of a session is
  terminal. No slate optimisation is needed in the target, so a log without candidate sets is
  enough; the item-wise ``Qbar`` generalises to unseen candidates through the features.
- **REINFORCE-top-K, off-policy**: each logged item gets the discounted return-to-go of its
  session, weighted by the capped ``pi / beta`` with the learned behaviour head (Chen et al.
  2019), since the logging policy's probabilities over the *unlogged* candidates are unknown.

The candidates of a logged slate are its own items plus ``negatives`` other items, so that
REINFORCE's softmax has something to prefer the logged items over (SlateQ only needs the slate
itself). Where the log records candidate sets (format v2, e.g. a joined log of the service)
and the policy's observation is given (``features``: the
:class:`~recsys.policy.observation.PolicyFeatures` of the checkpoint that served the log), the
negatives are items of the request's own candidate set that were not shown, and every item's
features are rebuilt by that observation from the logged user features and item ids, exactly
as the server builds them (a joined log's ``item_features`` column may be empty). Otherwise
the negatives are items drawn from other logged slates, with the features they were logged
with (exact for user-independent item features, approximate otherwise).

:func:`transitions_to_logged_feedback` writes any trainer rollout (``Transition`` lists from a
:class:`~recsys.policy.training.envs.BatchSlateEnv`) in the logged format, so tests and examples can
produce a Parquet log from any environment.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from recsys.data.logged import LoggedFeedback, LoggedFeedbackError, read_logged_feedback
from recsys.policy.algorithms.reinforce import ReinforceTopKPolicy
from recsys.policy.base import TrainableSlatePolicy
from recsys.policy.batch import (
    NUM_SIGNALS,
    SIGNAL_NAMES,
    SlateAction,
    SlateObs,
    SlateResponse,
    Transition,
    gather_slots,
)
from recsys.policy.observation import PolicyFeatures
from recsys.policy.reward.model import LearnedRewardModel
from recsys.policy.training.config import PolicyTrainConfig, build_policy
from recsys.types import FloatArray, IntArray

BoolArray = npt.NDArray[np.bool_]
SlotRewardFn = Callable[[SlateResponse], FloatArray]
#: ``(user_features [B, du], item_ids [B, K]) -> item_features [B, K, di]``: how a policy
#: observes items (:meth:`recsys.features.ItemFeaturizer.features`).
ItemView = Callable[[FloatArray, IntArray], FloatArray]

__all__ = [
    "LoggedSlateBatch",
    "OfflineResult",
    "logged_slates",
    "observed_slates",
    "train_offline",
    "transitions_to_logged_feedback",
]


@dataclass(frozen=True, eq=False)
class LoggedSlateBatch:
    """Logged slates as arrays, one row per slate, sorted by (session, step).

    ``user_features`` ``[N, du]``, ``item_features`` ``[N, S, di]``, ``item_ids`` and
    ``propensities`` ``[N, S]``, ``signals`` ``[N, S, 6]``, ``is_ad`` ``[N, S]``,
    ``session`` ``[N]``; ``next_index`` ``[N]`` is the next slate of the same session
    (``-1`` at the session's end); ``candidate_ids`` ``[N, C]`` the request's logged
    candidate set, or ``None`` when the log has none.
    """

    user_features: FloatArray
    item_features: FloatArray
    item_ids: IntArray
    propensities: FloatArray
    signals: FloatArray
    is_ad: BoolArray
    session: IntArray
    next_index: IntArray
    candidate_ids: IntArray | None = None

    @property
    def num_slates(self) -> int:
        """Logged slates."""
        return int(self.session.shape[0])

    @property
    def slate_size(self) -> int:
        """Slots per slate."""
        return int(self.item_ids.shape[1])


def logged_slates(logs: LoggedFeedback) -> LoggedSlateBatch:
    """Group rows into slates and order them within sessions (vectorised, no Python loops).

    Every slate must be complete and all slates the same size (the trainer's batches are
    rectangular); violations raise ``ValueError`` naming the slate (a log without rows:
    :class:`~recsys.data.logged.LoggedFeedbackError`). Propensities unknown in the log stay
    NaN: the trainers do not read logging propensities.
    """
    n = len(logs)
    if n == 0:
        raise LoggedFeedbackError("the log has no rows: there is nothing to train on")
    sizes = np.unique(logs.slate_size)
    if sizes.shape[0] != 1:
        raise ValueError(f"offline training needs one slate size, found {sizes.tolist()}")
    s = int(sizes[0])
    uniq, inverse = np.unique(logs.request_id, return_inverse=True)
    inverse = inverse.reshape(-1)
    counts = np.bincount(inverse, minlength=uniq.shape[0])
    if (counts != s).any():
        bad = int(np.argmax(counts != s))
        raise ValueError(
            f"slate {uniq[bad]!r} has {counts[bad]} rows, expected {s}: offline training needs "
            "whole slates (a partial slate, e.g. a one-impression-per-row bandit log, cannot "
            "be replayed)"
        )
    m = uniq.shape[0]
    # Slate-level keys from any of its rows (all rows of a slate share them).
    session = np.zeros(m, dtype=np.int64)
    step = np.zeros(m, dtype=np.int64)
    session[inverse] = logs.session_id
    step[inverse] = logs.step
    order = np.lexsort((step, session))
    rank = np.empty(m, dtype=np.int64)
    rank[order] = np.arange(m)
    slate = rank[inverse]
    pos = logs.position.astype(np.int64)
    du, di = logs.user_features.shape[1], logs.item_features.shape[1]
    user = np.zeros((m, du), dtype=np.float32)
    user[slate] = logs.user_features
    items = np.zeros((m, s, di), dtype=np.float32)
    items[slate, pos] = logs.item_features
    ids = np.zeros((m, s), dtype=np.int64)
    ids[slate, pos] = logs.item_id
    props = np.ones((m, s), dtype=np.float32)
    props[slate, pos] = logs.propensity
    ads = np.zeros((m, s), dtype=np.bool_)
    ads[slate, pos] = logs.is_ad
    signals = np.zeros((m, s, NUM_SIGNALS), dtype=np.float32)
    for k, name in enumerate(SIGNAL_NAMES):
        signals[slate, pos, k] = getattr(logs, name)
    candidates = None
    if logs.candidate_ids is not None:
        candidates = np.zeros((m, logs.candidate_ids.shape[1]), dtype=np.int64)
        candidates[slate] = logs.candidate_ids
    sess_sorted = session[order]
    next_index = np.full(m, -1, dtype=np.int64)
    same = sess_sorted[1:] == sess_sorted[:-1]
    next_index[:-1][same] = np.arange(1, m)[same]
    return LoggedSlateBatch(
        user, items, ids, props, signals, ads, sess_sorted, next_index, candidates
    )


def observed_slates(data: LoggedSlateBatch, features: PolicyFeatures) -> LoggedSlateBatch:
    """``data`` with every slot's item features and ad flag rebuilt by the policy's
    observation ``features`` from the logged user features and item ids (what the server
    computes at request time; exact cross features)."""
    from dataclasses import replace

    if data.candidate_ids is not None and int(data.candidate_ids.max(initial=0)) >= len(
        features.is_ad
    ):
        raise ValueError(
            f"the log's candidate ids reach {int(data.candidate_ids.max())}, the policy's "
            f"item table has {len(features.is_ad)} items"
        )
    if int(data.item_ids.max(initial=0)) >= len(features.is_ad):
        raise ValueError(
            f"the log's item ids reach {int(data.item_ids.max())}, the policy's item table "
            f"has {len(features.is_ad)} items"
        )
    return replace(
        data,
        item_features=features.items.features(data.user_features, data.item_ids),
        is_ad=features.is_ad[data.item_ids],
    )


def _unshown_candidates(
    data: LoggedSlateBatch, rows: IntArray, negatives: int, rng: np.random.Generator
) -> IntArray:
    """``[B, K]`` item ids drawn without replacement from each request's logged candidate
    set, never one of its slate's items (``K = min(negatives, C - S)``; a request whose
    candidate list repeats an item can yield it once more)."""
    assert data.candidate_ids is not None
    cands = data.candidate_ids[rows]
    shown = (cands[:, :, None] == data.item_ids[rows][:, None, :]).any(axis=2)
    keys = np.where(shown, np.inf, rng.random(cands.shape))
    k = min(negatives, cands.shape[1] - data.slate_size)
    pick = np.argsort(keys, axis=1)[:, :k]
    out: IntArray = np.take_along_axis(cands, pick, axis=1)
    return out


def _with_negatives(
    data: LoggedSlateBatch,
    rows: IntArray,
    negatives: int,
    rng: np.random.Generator,
    item_view: ItemView | None = None,
    is_ad: BoolArray | None = None,
) -> SlateObs:
    """Candidates of ``rows``: the slate's own items first, then ``negatives`` other items:
    unshown items of the request's logged candidate set observed through ``item_view`` (when
    both exist; ``is_ad`` their ad flags), else random items drawn from other logged slates
    (their logged features)."""
    items = data.item_features[rows]
    ids = data.item_ids[rows]
    ads = data.is_ad[rows]
    if negatives and data.candidate_ids is not None and item_view is not None:
        assert is_ad is not None
        extra = _unshown_candidates(data, rows, negatives, rng)
        items = np.concatenate([items, item_view(data.user_features[rows], extra)], axis=1)
        ids = np.concatenate([ids, extra], axis=1)
        ads = np.concatenate([ads, is_ad[extra]], axis=1)
    elif negatives:
        b, s = ids.shape
        src = rng.integers(0, data.num_slates, size=(b, negatives))
        slot = rng.integers(0, s, size=(b, negatives))
        items = np.concatenate([items, data.item_features[src, slot]], axis=1)
        ids = np.concatenate([ids, data.item_ids[src, slot]], axis=1)
        ads = np.concatenate([ads, data.is_ad[src, slot]], axis=1)
    return SlateObs(data.user_features[rows], items, ids, None, ads)


def _transitions(
    data: LoggedSlateBatch,
    rows: IntArray,
    reward: FloatArray,
    negatives: int,
    rng: np.random.Generator,
    features: PolicyFeatures | None = None,
) -> Transition:
    b, s = rows.shape[0], data.slate_size
    nxt = data.next_index[rows]
    has_next = nxt >= 0
    src = np.where(has_next, nxt, rows)
    slates = np.broadcast_to(np.arange(s, dtype=np.int64), (b, s)).copy()
    props = data.propensities[rows]
    log_prob = np.log(props.astype(np.float64)).sum(axis=1).astype(np.float32)
    action = SlateAction(slates, props, log_prob)
    next_props = data.propensities[src]
    next_action = SlateAction(
        slates, next_props, np.log(next_props.astype(np.float64)).sum(1).astype(np.float32)
    )
    view = None if features is None else features.items.features
    ads = None if features is None else features.is_ad
    return Transition(
        obs=_with_negatives(data, rows, negatives, rng, view, ads),
        action=action,
        response=SlateResponse.from_signals(data.signals[rows]),
        reward=reward[rows],
        next_obs=_with_negatives(data, src, negatives, rng, view, ads),
        done=~has_next,
        next_action=next_action,
    )


def _returns_to_go(data: LoggedSlateBatch, step_reward: FloatArray, gamma: float) -> FloatArray:
    """Discounted return of every slate within its session (slates sorted by session, step).

    A loop over the longest session's length, each pass vectorised over slates.
    """
    out = step_reward.astype(np.float64).copy()
    nxt = data.next_index
    for _ in range(int(np.bincount(np.unique(data.session, return_inverse=True)[1]).max())):
        follow = np.where(nxt >= 0, out[np.maximum(nxt, 0)], 0.0)
        updated = step_reward + gamma * follow
        if np.allclose(updated, out):
            break
        out = updated
    result: FloatArray = out.astype(np.float32)
    return result


def slot_rewards(
    data: LoggedSlateBatch, reward: str, reward_model: LearnedRewardModel | None = None
) -> FloatArray:
    """Per-slot rewards ``[N, S]``: ``clicks``, ``engagement`` (dwell minutes) or ``learned``."""
    response = SlateResponse.from_signals(data.signals)
    if reward == "clicks":
        return np.asarray(response.click, dtype=np.float32)
    if reward == "engagement":
        return np.asarray(response.dwell_s, dtype=np.float32) / np.float32(60.0)
    if reward == "learned":
        if reward_model is None:
            raise ValueError("reward='learned' needs a reward_model")
        return reward_model.slate_rewards(response)
    raise ValueError(f"offline reward must be clicks, engagement or learned, got {reward!r}")


@dataclass
class OfflineResult:
    """An offline-trained policy with its per-epoch mean training metrics and the reward
    scale its targets were trained at (``(1 - gamma) / mean |slate reward|`` of the log)."""

    policy: TrainableSlatePolicy
    config: PolicyTrainConfig
    metrics: list[dict[str, float]]
    num_slates: int
    reward_scale: float = 1.0


def train_offline(
    logs: LoggedFeedback | Path | str,
    config: PolicyTrainConfig,
    *,
    epochs: int = 10,
    negatives: int = 0,
    reward_model: LearnedRewardModel | None = None,
    seed: int = 0,
    features: PolicyFeatures | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> OfflineResult:
    """Train ``config.algo`` from a logged-feedback file, directory or batch (see the module
    docstring).

    ``config`` supplies the algorithm, ``reward`` (``clicks | engagement | learned``),
    ``gamma``, ``lr``, ``hidden``, ``batch_size``. SlateQ runs SARSA on the logged next
    slates; REINFORCE runs off-policy with capped importance weights against its learned
    behaviour head (``negatives`` other items join each slate's candidates; at least
    the slate size is a sensible choice). ``features``, the observation of the policy that
    will serve the result, rebuilds the item features and draws negatives from the logged
    candidate sets (module docstring). ``on_epoch(epoch, metrics)`` is called after each
    epoch (progress reporting).
    """
    data = logged_slates(
        logs if isinstance(logs, LoggedFeedback) else read_logged_feedback(Path(logs))
    )
    if features is not None:
        data = observed_slates(data, features)
    if config.reward not in ("clicks", "engagement", "learned"):
        raise ValueError("offline training supports reward clicks, engagement or learned")
    rewards = slot_rewards(data, config.reward, reward_model)
    mean_abs = float(np.abs(rewards.sum(axis=1)).mean()) or 1.0
    scale = (1.0 - config.gamma) / mean_abs
    rewards = rewards * np.float32(scale)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    s = data.slate_size
    dims = (data.user_features.shape[1], data.item_features.shape[2], s)
    algo_config = config
    if config.algo == "slateq":
        from dataclasses import replace

        algo_config = replace(config, epsilon=0.0)
    policy = build_policy(algo_config, *dims)
    if isinstance(policy, ReinforceTopKPolicy):
        step_return = _returns_to_go(data, rewards.sum(axis=1), config.gamma)
        rewards = np.zeros_like(rewards)
        rewards[:, 0] = step_return
    else:
        _use_sarsa(policy)
    metrics: list[dict[str, float]] = []
    for _ in range(epochs):
        perm = rng.permutation(data.num_slates)
        epoch: list[dict[str, float]] = []
        for start in range(0, perm.shape[0], config.batch_size):
            rows = perm[start : start + config.batch_size]
            tr = _transitions(data, rows, rewards, negatives, rng, features)
            if isinstance(policy, ReinforceTopKPolicy):
                out = policy.update([tr._replace(done=np.ones(rows.shape[0], np.bool_))], True)
            else:
                out = policy.update([tr])
            epoch.append(dict(out))
        metrics.append({k: float(np.mean([m[k] for m in epoch])) for k in epoch[0]})
        if on_epoch is not None:
            on_epoch(len(metrics), metrics[-1])
    return OfflineResult(policy, config, metrics, data.num_slates, scale)


def _use_sarsa(policy: TrainableSlatePolicy) -> None:
    """Switch a SlateQ policy to SARSA targets (the logged next slate; no candidate sets)."""
    from dataclasses import replace

    from recsys.policy.algorithms.slateq import SlateQPolicy

    if isinstance(policy, SlateQPolicy):
        policy.config = replace(policy.config, td="sarsa")


def transitions_to_logged_feedback(
    rollout: Sequence[Transition],
    *,
    policy_name: str = "logging",
    first_session: int = 0,
    hidden_ltv: FloatArray | None = None,
) -> LoggedFeedback:
    """A time-ordered rollout of ``B`` parallel users as logged feedback rows.

    Each row of ``rollout[t]`` becomes a slate (``S`` rows); a user's session id advances
    after every ``done``, so each episode is a session, and ``step`` counts slates within it.
    ``hidden_ltv`` (``[B]``, optional) fills the simulator-only column (NaN otherwise).
    """
    if not rollout:
        raise ValueError("empty rollout")
    b = rollout[0].batch_size
    session = np.arange(b, dtype=np.int64) * 1_000_000 + first_session
    step = np.zeros(b, dtype=np.int64)
    parts: list[dict[str, Any]] = []
    for t, tr in enumerate(rollout):
        if tr.batch_size != b:
            raise ValueError("every step of the rollout must have the same batch size")
        s = tr.action.slate_size
        slates = tr.action.slates
        ids = gather_slots(tr.obs.candidate_ids, slates).astype(np.int64)
        feats = gather_slots(tr.obs.item_features, slates).astype(np.float32)
        ads = gather_slots(tr.obs.ads(), slates).astype(np.bool_)
        rows = b * s
        signals = tr.response.signals().reshape(rows, NUM_SIGNALS)
        req = np.char.add(np.char.add(f"t{t}-", np.arange(b).astype(str)), "")
        sess = session.copy()
        parts.append(
            {
                "request_id": np.repeat(req, s),
                "session_id": np.repeat(sess, s),
                "step": np.repeat(step, s).astype(np.int32),
                "ts": np.full(rows, float(t)),
                "user_id": np.repeat(np.arange(b).astype(str), s),
                "user_idx": np.repeat(np.arange(b, dtype=np.int64), s),
                "item_id": ids.reshape(-1),
                "position": np.tile(np.arange(s, dtype=np.int16), b),
                "slate_size": np.full(rows, s, dtype=np.int16),
                "propensity": tr.action.propensities.reshape(-1).astype(np.float32),
                "slate_log_propensity": np.repeat(tr.action.log_prob, s).astype(np.float32),
                "position_propensity": tr.action.propensities.reshape(-1).astype(np.float32),
                "policy": np.full(rows, policy_name),
                "is_ad": ads.reshape(-1),
                "click": signals[:, 0] > 0,
                "dwell_s": signals[:, 1],
                "like": signals[:, 2] > 0,
                "conversion": signals[:, 3] > 0,
                "revenue": signals[:, 4],
                "skip": signals[:, 5] > 0,
                "hidden_ltv": np.full(rows, np.nan, np.float32)
                if hidden_ltv is None
                else np.repeat(np.asarray(hidden_ltv, np.float32), s),
                "user_features": np.repeat(tr.obs.user_features, s, axis=0).astype(np.float32),
                "item_features": feats.reshape(rows, -1),
            }
        )
        step = np.where(tr.done, 0, step + 1)
        session = np.where(tr.done, session + 1, session)
    keys = parts[0].keys()
    return LoggedFeedback(**{k: np.concatenate([p[k] for p in parts]) for k in keys})
