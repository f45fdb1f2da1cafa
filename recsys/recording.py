"""Record simulated sessions in the logged-feedback format (``recsys simulate``).

A logging policy serves slates to the simulated population step by step; every impressed slot
becomes one row of :class:`recsys.data.logged.LoggedFeedback` with exact per-slot
propensities, every observable signal, the features the policy saw, and the simulator's hidden
reward-to-go (for evaluation only). This module sits above the simulator and the policy
package (it uses the policy's exploration samplers), like :mod:`recsys.pipeline`.

Logging policies:

- ``random``: uniform over the candidates without replacement. Conditional propensity of
  slot ``k`` is ``1 / (C - k)``; the marginal probability of any item at any position is
  exactly ``1 / C``.
- ``boltzmann``: Plackett-Luce over a myopic relevance score (the user's observable topic
  interests · the item's topic mixture) at a temperature. Conditional propensities are exact;
  marginal position propensities are Monte Carlo estimates (unbiased, floored at ``1e-6``)
  from :func:`recsys.policy.evaluation.ope.plackett_luce_target`.

Every row also carries its request's candidate ids (``candidate_ids``, in the order the logging
policy saw them) and :func:`write_sessions` records the simulator's settings in the file
metadata, so a log can later evaluate any policy off-policy
(:mod:`recsys.policy.evaluation.ope_policies`), not only the logging policy's own probabilities.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from rich.progress import Progress

from recsys.data.logged import LoggedFeedback, LoggedFeedbackWriter
from recsys.policy.evaluation.ope import LoggedSlates, plackett_luce_target
from recsys.policy.exploration import plackett_luce_sample_batch
from recsys.simulator import SIMULATOR_METADATA_KEY, SimulatorSpec, SlateEnv
from recsys.simulator.policies import relevance_scores
from recsys.types import FloatArray, IntArray

__all__ = [
    "RECORDING_METADATA_KEY",
    "LoggingPolicyName",
    "RecordingConfig",
    "record_sessions",
    "reward_to_go",
    "write_sessions",
]

LoggingPolicyName = Literal["random", "boltzmann"]
#: File-metadata key under which :func:`write_sessions` stores the :class:`RecordingConfig`.
RECORDING_METADATA_KEY = "recsys.recording"
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


@dataclass(frozen=True)
class _Decision:
    slates: IntArray  # [B, S] indices into the candidate axis
    propensity: FloatArray  # [B, S] conditional
    position_propensity: FloatArray  # [B, S] marginal


def _decide(
    env: SlateEnv,
    cfg: RecordingConfig,
    user_features: FloatArray,
    candidates: IntArray,
    rng: np.random.Generator,
    step: int,
) -> _Decision:
    b, c = candidates.shape
    s = cfg.slate_size
    if cfg.policy == "random":
        slates = np.argsort(rng.random((b, c)), axis=1)[:, :s]
        cond = (1.0 / (c - np.arange(s, dtype=np.float32)))[None, :].repeat(b, axis=0)
        marginal = np.full((b, s), 1.0 / c, dtype=np.float32)
        return _Decision(slates, cond.astype(np.float32), marginal)
    scores = relevance_scores(env, user_features, candidates)
    slates, cond, _ = plackett_luce_sample_batch(scores, s, cfg.temperature, rng)
    rows = np.repeat(np.arange(b), s)
    est = plackett_luce_target(
        LoggedSlates.from_arrays(rows, np.tile(np.arange(s), b), cond.reshape(-1)),
        scores,
        slates.reshape(-1),
        temperature=cfg.temperature,
        n_samples=cfg.marginal_samples,
        seed=cfg.seed * 1_000_003 + step,
    )
    assert est.position_propensity is not None
    marginal = np.maximum(est.position_propensity.reshape(b, s), _MARGINAL_FLOOR)
    return _Decision(slates, cond.astype(np.float32), marginal.astype(np.float32))


def reward_to_go(life: IntArray, value_after: npt.NDArray[np.float64]) -> FloatArray:
    """Hidden value accrued from each step to the end of that user's life: ``[T, B]``.

    ``life[t, b]`` is the life index of user ``b`` at step ``t`` and ``value_after[t, b]`` the
    simulator's cumulative lifetime value after that step. A life ends at the last step before
    the life index changes (or at the end of the recording, which truncates it). One backward
    pass over steps, vectorized over users.
    """
    steps = life.shape[0]
    same_as_prev = np.zeros_like(life, dtype=np.bool_)
    same_as_prev[1:] = life[1:] == life[:-1]
    before = np.where(
        same_as_prev, np.vstack([np.zeros_like(value_after[:1]), value_after[:-1]]), 0.0
    )
    rtg = np.empty_like(value_after)
    final = value_after[-1].copy()
    for t in range(steps - 1, -1, -1):
        if t < steps - 1:
            final = np.where(same_as_prev[t + 1], final, value_after[t])
        rtg[t] = final - before[t]
    out: FloatArray = rtg.astype(np.float32)
    return out


def record_sessions(
    env: SlateEnv, cfg: RecordingConfig, *, progress: bool = False
) -> LoggedFeedback:
    """Serve ``cfg.steps`` slates to each of the first ``cfg.num_users`` users and log them.

    Users who churn start a new life when next served (the simulator's convention), so every
    user is served at every step. Returns one batch ordered by step, then user, then slot.
    """
    env.check_candidates_fit()
    n_users = env.num_users if cfg.num_users is None else min(cfg.num_users, env.num_users)
    if cfg.slate_size > env.num_candidates:
        raise ValueError(
            f"slate_size ({cfg.slate_size}) exceeds the simulator's candidates per request "
            f"({env.num_candidates})"
        )
    users = np.arange(n_users, dtype=np.int64)
    rng = np.random.default_rng(cfg.seed)
    s = cfg.slate_size
    parts: list[dict[str, npt.NDArray[Any]]] = []
    lives: list[IntArray] = []
    values: list[npt.NDArray[np.float64]] = []
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("simulating sessions", total=cfg.steps)
        for t in range(cfg.steps):
            feats = env.user_features(users)
            cands = env.sample_candidates(users)
            decision = _decide(env, cfg, feats, cands, rng, t)
            items = np.take_along_axis(cands, decision.slates, axis=1)
            result = env.step(users, items, check=False)
            slot = result.per_slot()
            lives.append(result.session.life.astype(np.int64))
            values.append(result.hidden.lifetime_value.astype(np.float64))
            log_prop = np.log(decision.propensity).sum(axis=1, dtype=np.float64)
            parts.append(
                {
                    "session_key": np.repeat(
                        (users << 32)
                        | (result.session.life.astype(np.int64) << 16)
                        | result.session.session.astype(np.int64),
                        s,
                    ),
                    "step": np.repeat(result.session.step.astype(np.int32), s),
                    "user_idx": np.repeat(users, s),
                    "item_id": items.reshape(-1),
                    "propensity": decision.propensity.reshape(-1),
                    "slate_log_propensity": np.repeat(log_prop.astype(np.float32), s),
                    "position_propensity": decision.position_propensity.reshape(-1),
                    "click": slot.click.reshape(-1),
                    "dwell_s": slot.dwell_s.reshape(-1),
                    "like": slot.like.reshape(-1),
                    "conversion": slot.conversion.reshape(-1),
                    "revenue": slot.revenue.reshape(-1),
                    "skip": slot.skip.reshape(-1),
                    "user_features": np.repeat(feats, s, axis=0),
                    "item_features": result.item_features.reshape(n_users * s, -1),
                    "candidate_ids": np.repeat(cands, s, axis=0),
                    "t": np.full(n_users * s, t, dtype=np.int64),
                }
            )
            bar.advance(task)
    rtg = reward_to_go(np.stack(lives), np.stack(values))  # [T, B]
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    n = cols["item_id"].shape[0]
    t_col = cols.pop("t")
    user_col = cols["user_idx"]
    request = np.char.add(
        np.char.add(f"sim{cfg.seed}-t", t_col.astype(str)), np.char.add("-u", user_col.astype(str))
    )
    return LoggedFeedback(
        request_id=request,
        session_id=cols.pop("session_key"),
        step=cols["step"],
        ts=t_col.astype(np.float64),
        user_id=np.char.add("u", user_col.astype(str)),
        user_idx=user_col,
        item_id=cols["item_id"],
        position=np.tile(np.arange(s, dtype=np.int16), n // s),
        slate_size=np.full(n, s, dtype=np.int16),
        propensity=cols["propensity"].astype(np.float32),
        slate_log_propensity=cols["slate_log_propensity"],
        position_propensity=cols["position_propensity"].astype(np.float32),
        policy=np.full(n, f"{cfg.policy}-logger"),
        is_ad=env.world.item_is_ad[cols["item_id"]].astype(np.bool_),
        click=cols["click"].astype(np.bool_),
        dwell_s=cols["dwell_s"].astype(np.float32),
        like=cols["like"].astype(np.bool_),
        conversion=cols["conversion"].astype(np.bool_),
        revenue=cols["revenue"].astype(np.float32),
        skip=cols["skip"].astype(np.bool_),
        hidden_ltv=np.repeat(rtg.reshape(-1), s),
        user_features=cols["user_features"].astype(np.float32),
        item_features=cols["item_features"].astype(np.float32),
        candidate_ids=cols["candidate_ids"].astype(np.int64),
    )


def write_sessions(
    path: Path,
    env: SlateEnv,
    cfg: RecordingConfig,
    *,
    progress: bool = False,
    simulator: SimulatorSpec | None = None,
) -> LoggedFeedback:
    """Record sessions and write them to a logged-feedback Parquet file.

    ``simulator`` (the catalog and simulator settings ``env`` was built from) goes into the
    file metadata so the world can be rebuilt for off-policy evaluation of other policies; a
    synthetic one is checked against ``env`` first, so the record can never name another
    world. The recording config is stored too.
    """
    metadata = {RECORDING_METADATA_KEY: json.dumps(asdict(cfg), sort_keys=True)}
    if simulator is not None:
        if simulator.calibration is None and not simulator.matches(env):
            raise ValueError(
                "the simulator record does not rebuild this env's world (catalog settings "
                "differ from the ones the env was built with)"
            )
        metadata[SIMULATOR_METADATA_KEY] = simulator.to_json()
    batch = record_sessions(env, cfg, progress=progress)
    with LoggedFeedbackWriter(path, metadata=metadata) as writer:
        writer.write(batch)
    return batch
