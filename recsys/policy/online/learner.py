"""Incremental learning from joined logs: :class:`OnlineLearner`.

The joiner turns served impressions and their feedback into logged-feedback rows
(:class:`~recsys.data.logged.LoggedFeedback`: one row per slot, the conditional propensity
of the serving policy, every signal, the request-time user features and the candidate set).
:meth:`OnlineLearner.observe` consumes them batch by batch:

1. **Clean** (:func:`~recsys.policy.online.replay.clean_joined_rows`): incomplete slates,
   non-finite signals, unknown items and already-seen requests are dropped and counted.
2. **Split** (:func:`~recsys.policy.online.replay.heldout_mask`): a stable hash of
   (user, session) holds out ``heldout_fraction`` of the sessions, kept in their own bounded
   buffer for the promotion gate (:mod:`recsys.policy.gate`) and never trained on.
3. **Replay**: the rest joins a :class:`~recsys.policy.online.replay.SlateBuffer` bounded
   in transitions (one transition is one logged slate, as in offline training).
4. **Learn**: about ``replay_ratio`` samples per new slate, in minibatches from the buffer,
   with the offline trainer's code (:mod:`recsys.policy.training.offline`): slates grouped and
   chained within sessions by :func:`~recsys.policy.training.offline.logged_slates`, the
   per-slot reward of :func:`~recsys.policy.training.offline.slot_rewards`, its transitions
   and its SARSA (SlateQ) or return-to-go off-policy REINFORCE updates. One difference: the
   item features are rebuilt by the policy's own
   :class:`~recsys.policy.observation.PolicyFeatures` from the logged item ids and user
   features, so the policy learns on exactly the observation it is served with (the logged
   ``item_features`` column may hold another view). The learned reward model takes the same
   number of regression steps first (below). Every step runs under an
   :class:`~recsys.policy.online.guard.UpdateGuard` (non-finite or exploding steps are taken
   back and counted; the policy's guard watches its TD / policy loss at the frozen reward
   scale, the reward model's its loss relative to the targets' mean square, since the
   outcome's scale drifts with traffic), with the policy's gradient-norm clip lowered to
   ``max_grad_norm`` and every learning rate capped at ``max_lr``.
5. **Publish**: every ``publish_every_rows`` observed rows a *candidate* checkpoint is written
   to the staging root (never where serving reads) and its path returned; promotion is the
   gate's decision.

Sessions in the buffer may still be going on. A slate is trained on once what its target
needs has arrived: for SlateQ its next slate (SARSA's ``A'``), or the end of its session;
for REINFORCE and the reward model (which read the rest of the session) the end of the
session. A session counts as ended when none of its slates arrived in the last
``session_timeout_rows`` observed rows; its last slate is then terminal, as the last slate of
a session is in offline training.

**The learned reward online.** The reward model regresses a slate's summed per-slot reward on
an outcome observable in the joined logs, the session's engagement to go (dwell minutes from
this slate to the session's end; or ``hidden_ltv`` where a simulator recorded it), like the
offline fit (:mod:`recsys.policy.reward.fit`) regresses the life's. It keeps the
standardisation frozen at its offline fit, trains a copy with an intercept, and hands the
policy that copy shifted so an ignored slot earns exactly 0 (the offline convention). The
reward scale of the policy's targets is frozen too (the checkpoint's, else fixed on the first
batch): rescaling rewards under a value network mid-flight would shift every target at once.
"""

from __future__ import annotations

import copy
import logging
import math
from collections import Counter, deque
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from recsys.data.logged import LoggedFeedback
from recsys.policy.algorithms.reinforce import ReinforceTopKPolicy
from recsys.policy.algorithms.slateq import SlateQPolicy
from recsys.policy.base import TrainableSlatePolicy
from recsys.policy.batch import REVENUE_INDEX
from recsys.policy.observation import PolicyFeatures
from recsys.policy.online.guard import (
    GuardStats,
    PolicySnapshot,
    UpdateGuard,
    cap_learning_rates,
    loss_of,
)
from recsys.policy.online.replay import (
    SlateBuffer,
    clean_joined_rows,
    heldout_mask,
)
from recsys.policy.reward.fit import _zero_ignored_slots
from recsys.policy.reward.model import LearnedRewardModel
from recsys.policy.reward.spec import reward_model_from_tensors, reward_model_tensors
from recsys.policy.training.checkpoint import load_policy_checkpoint, save_policy_checkpoint
from recsys.policy.training.config import PolicyTrainConfig, build_policy
from recsys.policy.training.offline import (
    LoggedSlateBatch,
    _returns_to_go,
    _transitions,
    _use_sarsa,
    logged_slates,
    slot_rewards,
)
from recsys.types import FloatArray, IntArray

_log = logging.getLogger(__name__)

BoolArray = npt.NDArray[np.bool_]
RewardTarget = Literal["session_engagement", "hidden_ltv"]
_OFFLINE_REWARDS = ("clicks", "engagement", "learned")

__all__ = ["LearnerStats", "ObserveReport", "OnlineConfig", "OnlineLearner", "RewardTarget"]


@dataclass(frozen=True)
class OnlineConfig:
    """How the online learner buffers, splits, learns and publishes (module docstring).

    Sizes are in slates (``*_capacity``) or observed rows (``*_rows``), never in seconds, so
    the learner behaves the same replayed from a file as live.
    """

    #: Transitions (logged slates) the replay buffer holds; the oldest are evicted first.
    replay_capacity: int = 20_000
    #: Share of sessions held out for evaluation, by a stable hash of (user, session).
    heldout_fraction: float = 0.2
    #: Held-out slates kept for the gate (the newest).
    heldout_capacity: int = 20_000
    heldout_salt: str = "recsys-heldout"
    #: Expected samples per new transition: updates per batch = ceil(ratio * new / batch).
    replay_ratio: float = 2.0
    #: Minibatch size in slates (``None``: the policy config's ``batch_size``).
    batch_size: int | None = None
    #: Publish a candidate every this many observed rows (held-out and dropped rows count).
    publish_every_rows: int = 100_000
    #: A session with no new slate for this many observed rows has ended.
    session_timeout_rows: int = 50_000
    #: Upper bound on the policy's gradient-norm clip.
    max_grad_norm: float = 1.0
    #: Upper bound on every learning rate (policy, choice model, reward model): a ceiling
    #: against a configuration tuned for offline epochs, not a tuning knob.
    max_lr: float = 1e-2
    #: A step whose loss exceeds ``explode_factor`` x the median of the last ``loss_window``
    #: accepted losses (and ``explode_floor``) is taken back.
    explode_factor: float = 100.0
    explode_floor: float = 10.0
    loss_window: int = 100
    #: Keep fitting the learned reward model (when the policy's reward is ``learned``).
    update_reward_model: bool = True
    #: The reward model is linear in standardised signals by default: a larger rate than the
    #: policy's is safe, and needed for its intercept to follow the outcome's mean.
    reward_lr: float = 1e-2
    reward_target: RewardTarget = "session_engagement"
    #: REINFORCE: random logged items added to each slate's candidates (``None``: slate size).
    negatives: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("replay_capacity", "heldout_capacity", "publish_every_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.session_timeout_rows < 0:
            raise ValueError("session_timeout_rows must be >= 0")
        if not 0.0 <= self.heldout_fraction <= 1.0:
            raise ValueError(f"heldout_fraction must lie in [0, 1], got {self.heldout_fraction}")
        if self.negatives is not None and self.negatives < 0:
            raise ValueError(f"negatives must be >= 0, got {self.negatives}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        for name in ("replay_ratio", "max_grad_norm", "max_lr", "reward_lr"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be finite and > 0, got {value}")
        if self.reward_target not in ("session_engagement", "hidden_ltv"):
            raise ValueError(f"reward_target must be session_engagement or hidden_ltv, got "
                             f"{self.reward_target!r}")  # fmt: skip


@dataclass
class LearnerStats:
    """Counters over the learner's life (what a metrics endpoint would export)."""

    rows_observed: int = 0
    rows_dropped: Counter[str] = field(default_factory=Counter)
    rows_heldout: int = 0
    rows_replayed: int = 0
    slates_evicted: int = 0
    policy: GuardStats = field(default_factory=GuardStats)
    reward: GuardStats = field(default_factory=GuardStats)
    candidates: list[Path] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        out = asdict(self)
        out["rows_dropped"] = dict(self.rows_dropped)
        out["candidates"] = [str(p) for p in self.candidates]
        return out


@dataclass(frozen=True)
class ObserveReport:
    """What one :meth:`OnlineLearner.observe` call did."""

    rows: int
    dropped: dict[str, int]
    heldout_rows: int
    replayed_rows: int
    policy_updates: int
    policy_refused: int
    reward_updates: int
    reward_refused: int
    metrics: dict[str, float]
    candidate: Path | None


@dataclass(frozen=True, eq=False)
class _Slates:
    """The replay buffer as offline training sees it, plus when each slate may be used."""

    data: LoggedSlateBatch
    arrival: IntArray  # [N] observed-row count when the slate arrived
    session_ended: BoolArray  # [N]
    hidden_ltv: FloatArray  # [N]


class OnlineLearner:
    """Learns a SlateQ or REINFORCE-top-K policy (and its learned reward) from joined logs.

    Build it from the checkpoint that serves now (:meth:`from_checkpoint`: weights, optimiser
    moments, reward model, reward scale and observation carry over) or from scratch
    (:meth:`fresh`). See the module docstring for what :meth:`observe` does.
    """

    def __init__(
        self,
        policy: TrainableSlatePolicy,
        config: PolicyTrainConfig,
        features: PolicyFeatures,
        staging: Path,
        *,
        dims: tuple[int, int, int],
        online: OnlineConfig | None = None,
        reward_model: LearnedRewardModel | None = None,
        reward_scale: float | None = None,
        iteration: int = 0,
        name: str | None = None,
        base_version: str | None = None,
        reward_report: dict[str, Any] | None = None,
    ) -> None:
        if not isinstance(policy, SlateQPolicy | ReinforceTopKPolicy):
            raise ValueError(f"online learning supports SlateQ and REINFORCE, not {policy!r}")
        if features.kind != "event":
            raise ValueError(
                "joined logs carry the service's event features; a policy observing "
                f"{features.kind} features cannot learn from them"
            )
        if config.reward not in _OFFLINE_REWARDS:
            raise ValueError(
                f"reward {config.reward!r} is not observable in joined logs; use one of "
                f"{', '.join(_OFFLINE_REWARDS)}"
            )
        if config.reward == "learned" and reward_model is None:
            raise ValueError("reward='learned' needs the learned reward model")
        self.online = online or OnlineConfig()
        cfg = self.online
        self.policy: SlateQPolicy | ReinforceTopKPolicy = policy
        self.features = features
        self.staging = Path(staging)
        self.dims = dims
        self.name = name or config.algo
        self.base_version = base_version
        self.iteration = iteration
        self.reward_report = dict(reward_report or {})
        self.reward_scale = reward_scale
        self.batch_size = cfg.batch_size or config.batch_size
        negatives = config.slate_size if cfg.negatives is None else cfg.negatives
        self.negatives = 0 if isinstance(policy, SlateQPolicy) else negatives

        # The offline trainer's policy settings, then the online guards on top.
        if isinstance(policy, SlateQPolicy):
            _use_sarsa(policy)
        policy.config = replace(
            policy.config, grad_clip=min(policy.config.grad_clip, cfg.max_grad_norm)
        )
        cap_learning_rates(list(policy.optimizers().values()), cfg.max_lr)
        self.config = replace(config, lr=min(config.learning_rate, cfg.max_lr))

        self.reward_model = reward_model
        self._reward_fit: LearnedRewardModel | None = None
        self._reward_opt: torch.optim.Optimizer | None = None
        if reward_model is not None and config.reward == "learned" and cfg.update_reward_model:
            self._reward_fit = copy.deepcopy(reward_model)
            self._reward_opt = torch.optim.Adam(
                self._reward_fit.net.parameters(), lr=min(cfg.reward_lr, cfg.max_lr)
            )

        self.replay = SlateBuffer(cfg.replay_capacity)
        self.heldout_buffer = SlateBuffer(cfg.heldout_capacity)
        self.stats = LearnerStats()
        self._policy_guard = UpdateGuard(
            "policy", cfg.explode_factor, cfg.explode_floor, cfg.loss_window
        )
        self._reward_guard = UpdateGuard(
            "reward model", cfg.explode_factor, cfg.explode_floor, cfg.loss_window
        )
        self.stats.policy = self._policy_guard.stats
        self.stats.reward = self._reward_guard.stats
        self._rng = np.random.default_rng(cfg.seed)
        self._num_candidates: int | None = None
        self._publish_marks = 0
        self.curve: deque[dict[str, float]] = deque(maxlen=10_000)

    # ---- construction -----------------------------------------------------------------

    @classmethod
    def from_checkpoint(
        cls, path: Path, staging: Path, online: OnlineConfig | None = None
    ) -> OnlineLearner:
        """Continue from a ``policy-<name>`` checkpoint (typically the one serving now)."""
        ckpt = load_policy_checkpoint(Path(path))
        serve_as = ckpt.artifact.metadata.get("serve_as")
        if serve_as is not None:
            raise ValueError(f"{path} serves as {serve_as}, a fixed baseline, not a learner")
        if ckpt.features is None:
            raise ValueError(f"{path} does not say how its policy observes: it cannot learn "
                             "from joined logs")  # fmt: skip
        reward = (
            None if ckpt.reward_tensors is None else reward_model_from_tensors(ckpt.reward_tensors)
        )
        name = ckpt.artifact.name.removeprefix("policy-")
        return cls(
            ckpt.policy,
            ckpt.config,
            ckpt.features,
            staging,
            dims=(ckpt.user_dim, ckpt.item_dim, ckpt.slate_size),
            online=online,
            reward_model=reward,
            reward_scale=ckpt.reward_scale,
            iteration=ckpt.iteration,
            name=name,
            base_version=ckpt.artifact.version,
            reward_report=dict(ckpt.artifact.metadata.get("reward_report", {})),
        )

    @classmethod
    def fresh(
        cls,
        config: PolicyTrainConfig,
        features: PolicyFeatures,
        staging: Path,
        *,
        reward_model: LearnedRewardModel | None = None,
        online: OnlineConfig | None = None,
        name: str | None = None,
    ) -> OnlineLearner:
        """An untrained ``config.algo`` policy observing through ``features``."""
        dims = (features.spec.user_dim, features.items.dim, config.slate_size)
        return cls(
            build_policy(config, *dims),
            config,
            features,
            staging,
            dims=dims,
            online=online,
            reward_model=reward_model,
            name=name,
        )

    # ---- observing --------------------------------------------------------------------

    @property
    def slate_size(self) -> int:
        """Slots per slate the policy learns on (other slate sizes are dropped)."""
        return self.dims[2]

    def heldout(self) -> LoggedFeedback | None:
        """The held-out rows kept for evaluation (newest ``heldout_capacity`` slates)."""
        return self.heldout_buffer.logs

    def observe(self, batch: LoggedFeedback) -> ObserveReport:
        """Consume one batch of joined rows: clean, split, replay, learn, maybe publish."""
        if batch.candidate_ids is None:
            raise ValueError("joined logs must record candidate sets (candidate_ids)")
        cfg = self.online
        self.stats.rows_observed += len(batch)
        now = self.stats.rows_observed
        dropped: Counter[str] = Counter()
        if self._num_candidates is not None and batch.num_candidates != self._num_candidates:
            dropped["candidate_width"] += len(batch)
            clean = batch.take(np.zeros(0, np.int64))
        else:
            known = np.concatenate([self.replay.request_ids(), self.heldout_buffer.request_ids()])
            clean, dropped = clean_joined_rows(
                batch,
                slate_size=self.slate_size,
                num_items=self.features.num_items,
                user_dim=self.dims[0],
                known_requests=known,
            )
        if len(clean):
            self._num_candidates = clean.num_candidates
        self.stats.rows_dropped.update(dropped)
        held = heldout_mask(clean, cfg.heldout_fraction, cfg.heldout_salt)
        train = clean.take(~held)
        self.heldout_buffer.append(clean.take(held), now)
        self.stats.slates_evicted += self.replay.append(train, now)
        self.stats.rows_heldout += int(held.sum())
        self.stats.rows_replayed += len(train)

        new_slates = len(train) // self.slate_size
        updates = math.ceil(cfg.replay_ratio * new_slates / self.batch_size) if new_slates else 0
        before = (GuardStats(**asdict(self.stats.policy)), GuardStats(**asdict(self.stats.reward)))
        metrics = self._learn(updates) if updates else {}
        candidate = None
        marks = now // cfg.publish_every_rows
        if marks > self._publish_marks:
            self._publish_marks = marks
            candidate = self.publish_candidate()
        pol, rew = self.stats.policy, self.stats.reward
        report = ObserveReport(
            rows=len(batch),
            dropped=dict(dropped),
            heldout_rows=int(held.sum()),
            replayed_rows=len(train),
            policy_updates=pol.applied - before[0].applied,
            policy_refused=pol.refused - before[0].refused,
            reward_updates=rew.applied - before[1].applied,
            reward_refused=rew.refused - before[1].refused,
            metrics=metrics,
            candidate=candidate,
        )
        self.curve.append(
            {
                "rows_observed": float(now),
                "policy_updates": float(report.policy_updates),
                "policy_refused": float(report.policy_refused),
                **metrics,
            }
        )
        return report

    # ---- learning ---------------------------------------------------------------------

    def _slates(self) -> _Slates | None:
        """The replay buffer grouped into slates (offline's ``logged_slates``), with item
        features rebuilt by the policy's observation and each slate's arrival."""
        logs, arrival = self.replay.logs, self.replay.arrival
        if logs is None or arrival is None or len(logs) == 0:
            return None
        data = logged_slates(logs)
        # logged_slates orders slates by (session, step) over np.unique's request order;
        # the same lexsort over the same keys gives each slate's arrival in its order.
        uniq, inverse = np.unique(logs.request_id, return_inverse=True)
        inverse = inverse.reshape(-1)
        m = uniq.shape[0]
        session = np.zeros(m, np.int64)
        step = np.zeros(m, np.int64)
        slate_arrival = np.zeros(m, np.int64)
        hidden = np.zeros(m, np.float32)
        session[inverse], step[inverse] = logs.session_id, logs.step
        slate_arrival[inverse], hidden[inverse] = arrival, logs.hidden_ltv
        order = np.lexsort((step, session))
        if not np.array_equal(session[order], data.session):
            raise RuntimeError("replay slates and logged_slates disagree on the slate order")
        slate_arrival, hidden = slate_arrival[order], hidden[order]
        sess, sess_idx = np.unique(data.session, return_inverse=True)
        last = np.zeros(sess.shape[0], np.int64)
        np.maximum.at(last, sess_idx.reshape(-1), slate_arrival)
        ended = self.stats.rows_observed - last[sess_idx.reshape(-1)]
        data = replace(
            data,
            item_features=self.features.items.features(data.user_features, data.item_ids),
            is_ad=self.features.is_ad[data.item_ids],
        )
        return _Slates(data, slate_arrival, ended >= self.online.session_timeout_rows, hidden)

    def _sample(self, pool: IntArray) -> IntArray:
        size = min(self.batch_size, pool.shape[0])
        out: IntArray = self._rng.choice(pool, size=size, replace=False)
        return out

    def _learn(self, updates: int) -> dict[str, float]:
        """``updates`` guarded reward-model steps, then as many policy steps."""
        slates = self._slates()
        if slates is None:
            return {}
        metrics: list[dict[str, float]] = []
        reward_losses = self._learn_reward(slates, updates) if self._reward_fit else []
        data = slates.data
        rewards = self._scaled_rewards(data, slates.session_ended)
        if rewards is None:
            return {}
        if isinstance(self.policy, ReinforceTopKPolicy):
            pool = np.flatnonzero(slates.session_ended)
            step_return = _returns_to_go(data, rewards.sum(axis=1), self.config.gamma)
            rewards = np.zeros_like(rewards)
            rewards[:, 0] = step_return
        else:
            pool = np.flatnonzero((data.next_index >= 0) | slates.session_ended)
        if pool.shape[0]:
            for _ in range(updates):
                metrics.append(self._policy_step(data, self._sample(pool), rewards))
        out: dict[str, float] = {}
        applied = [m for m in metrics if m]
        if applied:
            out = {k: float(np.mean([m[k] for m in applied])) for k in applied[0]}
        if reward_losses:
            out["reward_mse"] = float(np.mean(reward_losses))
        return out

    def _scaled_rewards(self, data: LoggedSlateBatch, ended: BoolArray) -> FloatArray | None:
        """Per-slot rewards ``[N, S]`` (offline ``slot_rewards`` plus the revenue term) at the
        frozen reward scale (fixed now if it is not yet: ``(1 - gamma) / mean |slate
        reward|`` of the usable slates, as offline training picks it)."""
        raw = slot_rewards(data, self.config.reward, self.reward_model)
        if self.config.revenue_weight:
            raw = raw + np.float32(self.config.revenue_weight) * data.signals[..., REVENUE_INDEX]
        if self.reward_scale is None:
            usable = (data.next_index >= 0) | ended
            if not usable.any():
                return None
            mean_abs = float(np.abs(raw[usable].sum(axis=1)).mean()) or 1.0
            self.reward_scale = (1.0 - self.config.gamma) / mean_abs
        out: FloatArray = (raw * np.float32(self.reward_scale)).astype(np.float32)
        return out

    def _policy_step(
        self, data: LoggedSlateBatch, rows: IntArray, rewards: FloatArray
    ) -> dict[str, float]:
        """One guarded policy update on the transitions of ``rows``; its metrics, or ``{}``
        when the guard took it back."""
        policy = self.policy
        tr = _transitions(data, rows, rewards, self.negatives, self._rng)
        out: dict[str, float] = {}

        def step() -> float:
            if isinstance(policy, ReinforceTopKPolicy):
                done = np.ones(rows.shape[0], np.bool_)
                metrics = policy.update([tr._replace(done=done)], True)
            else:
                metrics = policy.update([tr])
            out.update(metrics)
            return loss_of(metrics)

        outcome, _ = self._policy_guard.run(
            step,
            lambda: PolicySnapshot(policy),
            lambda snap: snap.restore(policy),
            lambda: PolicySnapshot.finite(policy),
        )
        return out if outcome == "applied" else {}

    def _reward_targets(self, slates: _Slates) -> FloatArray:
        """Per-slate regression target of the reward model (NaN where unknown)."""
        data = slates.data
        if self.online.reward_target == "hidden_ltv":
            return slates.hidden_ltv
        minutes = data.signals[..., 1].sum(axis=1) / np.float32(60.0)
        return _returns_to_go(data, minutes, 1.0)

    def _learn_reward(self, slates: _Slates, updates: int) -> list[float]:
        """``updates`` guarded regression steps of the reward model on ended sessions; then
        the policy's reward model becomes the fitted copy shifted to pay 0 for an ignored
        slot."""
        model, opt = self._reward_fit, self._reward_opt
        assert model is not None
        assert opt is not None
        target = self._reward_targets(slates)
        pool = np.flatnonzero(slates.session_ended & np.isfinite(target))
        if not pool.shape[0]:
            return []
        signals = torch.as_tensor(slates.data.signals)
        y = torch.as_tensor(target.astype(np.float32))
        params = list(model.net.parameters())
        losses: list[float] = []
        model.train()
        for _ in range(updates):
            rows = torch.as_tensor(self._sample(pool))

            mse: list[float] = []

            def step(rows: torch.Tensor = rows, mse: list[float] = mse) -> float:
                """One Adam step; returns the loss relative to the targets' mean square,
                what the guard watches: the outcome's scale drifts with traffic (longer
                sessions, more engagement), a diverging fit's relative loss jumps."""
                opt.zero_grad()
                loss = torch.mean((model(signals[rows]).sum(dim=1) - y[rows]) ** 2)
                loss.backward()  # type: ignore[no-untyped-call]
                nn.utils.clip_grad_norm_(params, self.online.max_grad_norm)
                opt.step()
                mse.append(float(loss.detach()))
                return mse[-1] / max(float(torch.mean(y[rows] ** 2)), 1e-12)

            def snapshot() -> tuple[dict[str, Any], dict[str, Any]]:
                return copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())

            def restore(snap: tuple[dict[str, Any], dict[str, Any]]) -> None:
                model.load_state_dict(snap[0])
                opt.load_state_dict(snap[1])

            def finite() -> bool:
                return all(bool(torch.isfinite(p).all()) for p in params)

            outcome, _ = self._reward_guard.run(step, snapshot, restore, finite)
            if outcome == "applied":
                losses.append(mse[-1])
        model.eval()
        if losses:
            shifted = copy.deepcopy(model)
            _zero_ignored_slots(shifted)
            self.reward_model = shifted
        return losses

    # ---- publishing -------------------------------------------------------------------

    def publish_candidate(self) -> Path:
        """Write the current policy as a candidate ``policy-<name>`` checkpoint under the
        staging root and return its directory (the gate decides whether it serves).

        The checkpoint is servable (it carries the observation contract it was trained
        with) and records where it came from under the ``online`` metadata key.
        """
        self.iteration += 1
        artifact = save_policy_checkpoint(
            self.staging,
            self.policy,
            self.config,
            iteration=self.iteration,
            dims=self.dims,
            reward_scale=1.0 if self.reward_scale is None else self.reward_scale,
            features=self.features,
            reward_tensors=(
                None if self.reward_model is None else reward_model_tensors(self.reward_model)
            ),
            curve=list(self.curve),
            reward_report=self.reward_report,
            extra_metadata={"online": self.provenance()},
            name=f"policy-{self.name}",
        )
        self.stats.candidates.append(artifact.path)
        _log.info("published candidate %s/%s", artifact.name, artifact.version)
        return artifact.path

    def provenance(self) -> dict[str, Any]:
        """Where the current policy came from: base version, data seen, held-out rule,
        guard counters and settings (stored with every candidate)."""
        cfg = self.online
        return {
            "base_version": self.base_version,
            "stats": self.stats.as_dict(),
            "heldout_rule": (
                f"blake2b('{cfg.heldout_salt}:' + user_id + ':' + session_id) as a fraction "
                f"of 2^64 < {cfg.heldout_fraction}: held out, never trained on"
            ),
            "settings": asdict(cfg),
        }
