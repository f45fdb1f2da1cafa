"""Logs as the service's joiner writes them, served by a small published policy: what the
``train policy --logs`` tests train on.

The serving checkpoint itself, with its own exploring sampler, picks every slate on the
small simulator world (the world it was trained on), so the rows carry what the joiner
records: the candidate set, exact conditional propensities (no marginals: a served log has
none), the request-time event user features, every signal, no item features (the joiner
writes an empty list) and ``<policy>@<name>@<version>`` in the ``policy`` column.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np

from recsys.config import SimulatorSettings
from recsys.data.logged import LoggedFeedback, write_logged_feedback
from recsys.policy.batch import SlateObs
from recsys.policy.training.checkpoint import PolicyCheckpoint, load_policy_checkpoint
from recsys.policy.training.envs import SimulatedUsers
from recsys.policy.training.sessions import LoggerDecision, record_sessions
from recsys.recording import RecordingConfig, recording_users, session_feedback
from recsys.simulator import SimulatorSpec
from recsys.types import IntArray
from tests.unit.policy.configs import SMALL_SIMULATOR


class ServedLogger:
    """A checkpoint as the simulator's logging policy, on the observation it is served with."""

    name = "served"

    def __init__(self, ckpt: PolicyCheckpoint) -> None:
        assert ckpt.features is not None
        self.policy, self.features = ckpt.policy, ckpt.features

    def decide(
        self, users: SimulatedUsers, rows: IntArray, obs: SlateObs, rng: np.random.Generator
    ) -> LoggerDecision:
        seen = self.features.obs(obs.user_features, obs.candidate_ids)
        action = self.policy.act(seen, users.slate_size, rng, explore=True)
        unknown = np.full_like(action.propensities, np.nan)
        return LoggerDecision(action.slates, action.propensities, unknown)


def served_logs(base: Path, *, users: int = 80, steps: int = 12, seed: int = 3) -> LoggedFeedback:
    """``users`` users of the small world served ``steps`` slates each by checkpoint ``base``
    (a churned user comes back as a new life), as joined rows."""
    ckpt = load_policy_checkpoint(base)
    catalog = SMALL_SIMULATOR.catalog().model_copy(update={"num_users": users})
    simulator = SimulatorSettings(
        num_candidates=ckpt.config.num_candidates, slate_size=ckpt.slate_size
    )
    env = SimulatorSpec(catalog, simulator).build_env(num_users=users)
    cfg = RecordingConfig(steps=steps, slate_size=ckpt.slate_size, seed=seed)
    sim = recording_users(env, cfg)
    log = record_sessions(sim, ServedLogger(ckpt), max_steps=steps, seed=seed, one_life=False)
    rows = session_feedback(log, sim, policy="served", request_prefix=f"req{seed}")
    name = ckpt.artifact.name.removeprefix("policy-")
    version = f"{name}@{name}@{ckpt.artifact.version}"
    return replace(
        rows,
        policy=np.full(len(rows), version),
        item_features=np.zeros((len(rows), 0), np.float32),
        position_propensity=np.full(len(rows), np.nan, np.float32),
        hidden_ltv=np.full(len(rows), np.nan, np.float32),
    )


def artifact_root(tmp: Path, *checkpoints: Path) -> Path:
    """A fresh artifact root holding copies of ``checkpoints`` (``policy-<name>/<version>``)
    and of the retrieval artifact beside the first (tests never write into the session's)."""
    root = tmp / "artifacts"
    for path in checkpoints:
        shutil.copytree(path, root / path.parent.name / path.name)
    retrieval = checkpoints[0].parent.parent / "retrieval"
    if retrieval.is_dir():
        shutil.copytree(retrieval, root / "retrieval")
    return root


def write_joined(logs: LoggedFeedback, root: Path) -> Path:
    """``logs`` as a joined dataset directory (``root/rows/date=.../part.parquet``)."""
    write_logged_feedback(root / "rows" / "date=2026-01-01" / "seg-000001.parquet", logs)
    return root
