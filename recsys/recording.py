"""Record simulated sessions in the logged-feedback format (``recsys simulate``).

There is one way to simulate logged sessions:
:func:`recsys.policy.training.sessions.record_sessions`, a
:class:`~recsys.policy.training.sessions.SessionLogger` serving
:class:`~recsys.policy.training.envs.SimulatedUsers` step by step. This module runs it on a
given :class:`~recsys.simulator.env.SlateEnv` (possibly a calibrated one) and converts the
slate-level :class:`~recsys.policy.training.sessions.SessionLog` into slot-level
:class:`recsys.data.logged.LoggedFeedback` rows (:func:`session_feedback`): exact per-slot
propensities, every observable signal, the features the logging policy saw and the
simulator's hidden return-to-go (for evaluation only). It sits above the simulator and the
policy package, like :mod:`recsys.pipeline`.

What a row records about its request:

- ``user_features``: the **event-derived** user features
  (:meth:`~recsys.policy.training.envs.SimulatedUsers.event_features`: the
  :class:`~recsys.features.UserFeaturizer` on the state the
  :class:`~recsys.features.EventFold` folded from the user's simulated impressions and
  feedback, default :class:`~recsys.features.FeatureSpec` for the world's topics). That is
  what a production log records, and what a policy checkpoint trained on event features reads
  back when it is evaluated off-policy. The simulator's latent state is never logged.
- ``item_features``: the item's row of the catalog's observable table (topics, log length,
  ad flag, bid, log popularity; ``env.item_feature_table``), without user-item crosses.
- ``candidate_ids``: the request's candidates in the order the logging policy saw them, drawn
  by the env's own candidate sampler.
- ``hidden_ltv``: the slate's within-life return-to-go, minutes of dwell from this step to
  the end of the user's logged life (a churned user who is served again is a new life).

Logging policies (:func:`logging_policy`):

- ``random``: :class:`~recsys.policy.training.sessions.RandomLogger`, uniform over the
  candidates without replacement. Conditional propensity of slot ``k`` is ``1 / (C - k)``;
  the marginal probability of any item at any position is exactly ``1 / C``.
- ``boltzmann``: :class:`BoltzmannLogger`, Plackett-Luce at a temperature over the myopic
  relevance score :func:`recsys.simulator.policies.relevance_scores` of the logged user
  features (the event fold's topic interests · the item's topic mixture). Conditional
  propensities are exact; marginal position propensities are Monte Carlo estimates
  (unbiased, floored at ``1e-6``) from :func:`recsys.policy.evaluation.ope.plackett_luce_target`.

:func:`write_sessions` records the simulator's settings, the recording config and the feature
spec in the file metadata, so a log can later evaluate any policy off-policy
(:mod:`recsys.policy.evaluation.ope_policies`), not only the logging policy's own
probabilities.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
from rich.progress import Progress, TaskID

from recsys.data.logged import LoggedFeedback, LoggedFeedbackWriter
from recsys.features import EventFold, FeatureSpec, ItemFeaturizer
from recsys.policy.batch import SIGNAL_NAMES, SlateObs
from recsys.policy.evaluation.ope import LoggedSlates, plackett_luce_target
from recsys.policy.exploration import plackett_luce_sample_batch
from recsys.policy.training.envs import SimulatedUsers, UniformCandidates
from recsys.policy.training.sessions import (
    LoggerDecision,
    RandomLogger,
    SessionLog,
    SessionLogger,
    record_sessions,
)
from recsys.simulator import SIMULATOR_METADATA_KEY, SimulatorSpec, SlateEnv
from recsys.simulator.policies import relevance_scores
from recsys.types import FloatArray, IntArray

__all__ = [
    "FEATURES_METADATA_KEY",
    "RECORDING_METADATA_KEY",
    "BoltzmannLogger",
    "LoggingPolicyName",
    "RecordingConfig",
    "logging_policy",
    "record_feedback",
    "recording_users",
    "session_feedback",
    "write_sessions",
]

LoggingPolicyName = Literal["random", "boltzmann"]
#: File-metadata key under which :func:`write_sessions` stores the :class:`RecordingConfig`.
RECORDING_METADATA_KEY = "recsys.recording"
#: File-metadata key of the :class:`~recsys.features.FeatureSpec` of the logged user features.
FEATURES_METADATA_KEY = "recsys.features"
_MARGINAL_FLOOR = np.float32(1e-6)


@dataclass(frozen=True)
class RecordingConfig:
    """What to record: how many steps of which users under which logging policy."""

    steps: int = 50
    slate_size: int = 10
    policy: LoggingPolicyName = "random"
    temperature: float = 0.5
    marginal_samples: int = 200
    seed: int = 0
    num_users: int | None = None  # the first ``num_users`` of the population; None = all

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.slate_size < 1:
            raise ValueError(f"slate_size must be >= 1, got {self.slate_size}")
        if self.policy not in ("random", "boltzmann"):
            raise ValueError(f"policy must be 'random' or 'boltzmann', got {self.policy!r}")
        if not np.isfinite(self.temperature) or self.temperature <= 0:
            raise ValueError(f"temperature must be a positive number, got {self.temperature}")
        if self.marginal_samples < 1:
            raise ValueError(f"marginal_samples must be >= 1, got {self.marginal_samples}")
        if self.num_users is not None and self.num_users < 1:
            raise ValueError(f"num_users must be >= 1, got {self.num_users}")


class BoltzmannLogger:
    """Plackett-Luce at ``temperature`` over the relevance of each candidate to the user.

    Scores are :func:`~recsys.simulator.policies.relevance_scores` of the observed user
    features (the ones logged, so a ``boltzmann:T`` target re-scores the log exactly);
    conditional propensities are exact, marginals are Rao-Blackwellised Monte Carlo estimates
    over ``marginal_samples`` rankings per slate, floored at ``1e-6``. The ``k``-th decision
    draws its Monte Carlo rankings from seed ``seed * 1_000_003 + k``.
    """

    name = "boltzmann"

    def __init__(
        self, temperature: float = 0.5, marginal_samples: int = 200, seed: int = 0
    ) -> None:
        if not np.isfinite(temperature) or temperature <= 0:
            raise ValueError(f"temperature must be a positive number, got {temperature}")
        if marginal_samples < 1:
            raise ValueError(f"marginal_samples must be >= 1, got {marginal_samples}")
        self.temperature = float(temperature)
        self.marginal_samples = int(marginal_samples)
        self.seed = int(seed)
        self._decisions = 0

    def decide(
        self, users: SimulatedUsers, rows: IntArray, obs: SlateObs, rng: np.random.Generator
    ) -> LoggerDecision:
        """Sample one ranking per row; its exact conditionals and estimated marginals."""
        b = obs.candidate_ids.shape[0]
        s = users.slate_size
        scores = relevance_scores(users.core, obs.user_features, obs.candidate_ids)
        slates, cond, _ = plackett_luce_sample_batch(scores, s, self.temperature, rng)
        est = plackett_luce_target(
            LoggedSlates.from_arrays(
                np.repeat(np.arange(b), s), np.tile(np.arange(s), b), cond.reshape(-1)
            ),
            scores,
            slates.reshape(-1),
            temperature=self.temperature,
            n_samples=self.marginal_samples,
            seed=self.seed * 1_000_003 + self._decisions,
        )
        self._decisions += 1
        assert est.position_propensity is not None
        marginal = np.maximum(est.position_propensity.reshape(b, s), _MARGINAL_FLOOR)
        return LoggerDecision(slates, cond.astype(np.float32), marginal.astype(np.float32))


def logging_policy(cfg: RecordingConfig) -> SessionLogger:
    """The logger ``cfg.policy`` names, with ``cfg``'s temperature, samples and seed."""
    if cfg.policy == "random":
        return RandomLogger()
    return BoltzmannLogger(cfg.temperature, cfg.marginal_samples, cfg.seed)


def _feature_spec(env: SlateEnv) -> FeatureSpec:
    """The event fold's spec of a recording: the defaults for the world's topics, as
    :func:`recsys.pipeline.make_fold` builds it for the policies trained on the simulator."""
    return FeatureSpec(num_topics=env.world.num_topics)


def recording_users(env: SlateEnv, cfg: RecordingConfig) -> SimulatedUsers:
    """The simulated users a recording serves: ``env`` seen through the event fold.

    ``env`` is wrapped as it is (its state, choice model and random streams) when the
    recording covers its whole population with its own slate size. Otherwise the users are
    a fresh simulator over the first ``cfg.num_users`` users of ``env``'s world with its
    choice model, candidate sampler and settings (``slate_size`` from ``cfg``), seeded by
    ``env.settings.seed``, which is how ``recsys simulate`` builds ``env``. Candidates come
    from ``env``'s candidate sampler (its own stream, seeded by ``cfg.seed``), all of them
    organic as far as the slate is concerned (ads wherever they fall).
    """
    env.check_candidates_fit()
    if cfg.slate_size > env.num_candidates:
        raise ValueError(
            f"slate_size ({cfg.slate_size}) exceeds the simulator's candidates per request "
            f"({env.num_candidates})"
        )
    n = env.num_users if cfg.num_users is None else min(cfg.num_users, env.num_users)
    core = env
    if n != env.num_users or cfg.slate_size != env.settings.slate_size:
        settings = env.settings.model_copy(update={"slate_size": cfg.slate_size})
        core = SlateEnv(
            env.world.select_users(np.arange(n, dtype=np.int64)),
            env.choice_model,
            seed=env.settings.seed,
            settings=settings,
            candidate_sampler=env.candidate_sampler,
        )
    world = core.world
    topics = np.asarray(world.item_topics, dtype=np.float32)
    return SimulatedUsers(
        world,
        core.settings,
        seed=core.settings.seed,
        fold=EventFold(_feature_spec(env), topics, world.item_is_ad),
        candidates=UniformCandidates(
            world.item_is_ad, seed=cfg.seed + 1, sampler=core.candidate_sampler
        ),
        items=ItemFeaturizer(core.item_feature_table, topics, core.item_feature_names),
        core=core,
    )


def session_feedback(
    log: SessionLog,
    users: SimulatedUsers,
    *,
    policy: str,
    request_prefix: str = "sim",
) -> LoggedFeedback:
    """Slot-level logged feedback of a session log recorded on ``users``.

    One row per slot, ordered as the log (step, then user) and then by slot; ``request_id``
    is ``{request_prefix}-t{step}-u{user}``, ``session_id`` packs user, life and session
    (``user << 32 | life << 16 | session``), ``step`` is the slate's index within its
    session and ``ts`` the log's step. User features are the event features the logger saw,
    item features the catalog's observable table (``users.items`` without crosses) and
    ``hidden_ltv`` the slate's within-life return-to-go.
    """
    n, s = log.slates.shape
    items = log.items().reshape(-1)
    signals = log.signals.reshape(n * s, -1)

    def signal(name: str) -> FloatArray:
        column: FloatArray = signals[:, SIGNAL_NAMES.index(name)]
        return column

    def per_slot(values: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
        return np.repeat(values, s, axis=0)

    session_key = (log.user << 32) | (log.life << 16) | log.session
    log_prop = np.log(log.propensities.astype(np.float64)).sum(axis=1).astype(np.float32)
    request = np.char.add(
        np.char.add(f"{request_prefix}-t", log.step.astype(str)),
        np.char.add("-u", log.user.astype(str)),
    )
    return LoggedFeedback(
        request_id=per_slot(request).astype(np.str_),
        session_id=per_slot(session_key).astype(np.int64),
        step=per_slot(log.session_step).astype(np.int32),
        ts=per_slot(log.step).astype(np.float64),
        user_id=per_slot(np.char.add("u", log.user.astype(str))).astype(np.str_),
        user_idx=per_slot(log.user).astype(np.int64),
        item_id=items.astype(np.int64),
        position=np.tile(np.arange(s, dtype=np.int16), n),
        slate_size=np.full(n * s, s, dtype=np.int16),
        propensity=log.propensities.reshape(-1).astype(np.float32),
        slate_log_propensity=per_slot(log_prop).astype(np.float32),
        position_propensity=log.position_propensity.reshape(-1).astype(np.float32),
        policy=np.full(n * s, f"{policy}-logger"),
        is_ad=np.asarray(users.core.world.item_is_ad, dtype=np.bool_)[items],
        click=signal("click") > 0,
        dwell_s=signal("dwell_s").astype(np.float32),
        like=signal("like") > 0,
        conversion=signal("conversion") > 0,
        revenue=signal("revenue").astype(np.float32),
        skip=signal("skip") > 0,
        hidden_ltv=per_slot(log.return_to_go).astype(np.float32),
        user_features=per_slot(log.event_features).astype(np.float32),
        item_features=np.asarray(users.items.table, dtype=np.float32)[items],
        candidate_ids=per_slot(log.candidate_ids).astype(np.int64),
    )


class _Progressing:
    """A logger that advances a progress bar once per decision (one decision per step)."""

    def __init__(self, logger: SessionLogger, bar: Progress, task: TaskID) -> None:
        self.logger = logger
        self.name = logger.name
        self._bar = bar
        self._task = task

    def decide(
        self, users: SimulatedUsers, rows: IntArray, obs: SlateObs, rng: np.random.Generator
    ) -> LoggerDecision:
        """The wrapped logger's decision."""
        decision = self.logger.decide(users, rows, obs, rng)
        self._bar.advance(self._task)
        return decision


def record_feedback(
    env: SlateEnv, cfg: RecordingConfig, *, progress: bool = False
) -> LoggedFeedback:
    """Serve ``cfg.steps`` slates to each of the first ``cfg.num_users`` users and log them.

    :func:`~recsys.policy.training.sessions.record_sessions` with the ``cfg.policy`` logger on
    :func:`recording_users`; users who churn start a new life when next served, so every
    user is served at every step. Rows ordered by step, then user, then slot.
    """
    users = recording_users(env, cfg)
    logger = logging_policy(cfg)
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("simulating sessions", total=cfg.steps)
        log = record_sessions(
            users,
            _Progressing(logger, bar, task),
            max_steps=cfg.steps,
            seed=cfg.seed,
            one_life=False,
        )
    return session_feedback(log, users, policy=logger.name, request_prefix=f"sim{cfg.seed}")


def write_sessions(
    path: Path,
    env: SlateEnv,
    cfg: RecordingConfig,
    *,
    progress: bool = False,
    simulator: SimulatorSpec | None = None,
) -> LoggedFeedback:
    """Record sessions (:func:`record_feedback`) and write them to a logged-feedback Parquet
    file.

    ``simulator`` (the catalog and simulator settings ``env`` was built from) goes into the
    file metadata so the world can be rebuilt for off-policy evaluation of other policies; a
    synthetic one is checked against ``env`` first, so the record can never name another
    world. The recording config and the feature spec of the user features are stored too.
    """
    metadata = {
        RECORDING_METADATA_KEY: json.dumps(asdict(cfg), sort_keys=True),
        FEATURES_METADATA_KEY: json.dumps(_feature_spec(env).to_dict(), sort_keys=True),
    }
    if simulator is not None:
        if simulator.calibration is None and not simulator.matches(env):
            raise ValueError(
                "the simulator record does not rebuild this env's world (catalog settings "
                "differ from the ones the env was built with)"
            )
        metadata[SIMULATOR_METADATA_KEY] = simulator.to_json()
    batch = record_feedback(env, cfg, progress=progress)
    with LoggedFeedbackWriter(path, metadata=metadata) as writer:
        writer.write(batch)
    return batch
