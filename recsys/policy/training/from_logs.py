"""Offline RL from the service's own joined logs: what ``recsys train policy --logs`` does.

The joiner (:mod:`recsys.stream.joiner`) turns what the service served into logged-feedback
rows: per request its candidate set, the slate with the exact propensity of every slot, the
request-time user features the policy saw and every signal the client posted. That is enough
to train a new slate policy without the simulator (:func:`~recsys.policy.training.offline.
train_offline`: SlateQ by SARSA on the logged next slate of each session, REINFORCE-top-K
off-policy on returns-to-go), provided it observes requests exactly as the server will
show them to it. So the observation contract is not learned from the logs but taken from the
checkpoint that served them, the *base*: its :class:`~recsys.policy.observation.PolicyFeatures`
(feature spec, item table with statistics and embedding components, ad flags, the retrieval
version of its candidates), its catalog settings and its learned reward model. Item features
are rebuilt through that contract from the logged item ids and user features, which makes the
result servable wherever the base was (same checks in
:func:`~recsys.serving.policies.load_served_policy`) and evaluable off-policy on the same kind of
log (``recsys evaluate ope --policy``).

**Which base.** In order: the checkpoint given (``base``); else the version the logs name in
their ``policy`` column (``<policy>@<name>@<version>``, the served model version) when it
exists under the artifact root as ``policy-<name>/<version>`` (the most frequent one, when
the logs span several versions with one observation contract); else the newest
``policy-<serving_name>`` under the artifact root, what the service serves by default.

**Where the result goes.** ``policy-<algo>/<version>`` under ``output_root``, by default
``<artifact root>/staging`` (:data:`STAGING`): never where the serving registry looks, so a
policy trained from logs does not start serving by being written. It is a candidate, like
the online learner's; promote it with :class:`recsys.policy.gate.PromotionGate` or publish
it to the artifact root by hand (or write it there with ``output_root``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from recsys.artifacts import Artifact, latest_version, load_artifact
from recsys.data.logged import LoggedFeedback, LoggedFeedbackError, read_logged_feedback
from recsys.policy.online.replay import clean_joined_rows, session_fractions
from recsys.policy.reward.spec import reward_model_from_tensors
from recsys.policy.training.checkpoint import (
    PolicyCheckpoint,
    load_policy_checkpoint,
    save_policy_checkpoint,
)
from recsys.policy.training.config import (
    ALGOS,
    SETUP_FIELDS,
    Algo,
    PolicyTrainConfig,
    documented_config,
)
from recsys.policy.training.offline import OfflineResult, train_offline
from recsys.types import ArtifactError

__all__ = [
    "OFFLINE_REWARDS",
    "STAGING",
    "BaseChoice",
    "FromLogsResult",
    "LogsError",
    "default_output_root",
    "heldout_users",
    "offline_config",
    "resolve_base",
    "served_versions",
    "train_from_logs",
]

#: Folder under the artifact root that receives policies trained from logs by default.
STAGING = "staging"
#: Rewards observable in joined logs (``hidden`` is simulator truth, ``env`` a custom env's).
OFFLINE_REWARDS = ("learned", "clicks", "engagement")
#: Minibatch of offline training, in slates: a joined log of a few thousand slates gives a
#: few dozen updates per epoch at this size (the simulator trainer's 1,024 would give a few).
OFFLINE_BATCH = 256


class LogsError(ValueError):
    """The logs, the base checkpoint or an option cannot be used; the message says why and
    what to do (the CLI prints it and exits with code 2)."""


@dataclass(frozen=True)
class BaseChoice:
    """The checkpoint whose observation contract the new policy adopts, and how it was
    found: ``given``, ``logs`` (named by the logs' ``policy`` column) or ``newest``."""

    path: Path
    how: str


@dataclass(frozen=True)
class FromLogsResult:
    """A policy trained from logs and written as a checkpoint (see the module docstring)."""

    artifact: Artifact
    base: BaseChoice
    config: PolicyTrainConfig
    offline: OfflineResult
    rows: int
    slates: int
    sessions: int
    dropped_rows: dict[str, int]
    seconds: float

    def summary(self) -> dict[str, Any]:
        """JSON-ready: what the CLI prints."""
        last = self.offline.metrics[-1] if self.offline.metrics else {}
        return {
            "checkpoint": str(self.artifact.path),
            "algo": self.config.algo,
            "reward": self.config.reward,
            "base": str(self.base.path),
            "base_from": self.base.how,
            "rows": self.rows,
            "slates": self.slates,
            "sessions": self.sessions,
            "dropped_rows": self.dropped_rows,
            "epochs": len(self.offline.metrics),
            "final_metrics": last,
            "seconds": round(self.seconds, 2),
        }


def default_output_root(artifacts_root: Path) -> Path:
    """Where :func:`train_from_logs` writes by default: a staging root beside the served
    artifacts (module docstring)."""
    return Path(artifacts_root) / STAGING


def heldout_users(
    logs: LoggedFeedback, fraction: float, salt: str = "recsys-heldout-users"
) -> npt.NDArray[np.bool_]:
    """Rows of the users held out for evaluation: ``blake2b(salt:user_id)`` as a fraction of
    ``2^64`` below ``fraction``. Whole users, not sessions: a user's sessions share their
    state (the event fold spans sessions), so a held-out session of a trained-on user would
    leak; stable, so a re-read log splits the same way."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must lie in [0, 1], got {fraction}")
    if len(logs) == 0:
        return np.zeros(0, np.bool_)
    frac = session_fractions(logs.user_id, np.zeros(len(logs), np.int64), salt)
    out: npt.NDArray[np.bool_] = frac < fraction
    return out


def served_versions(logs: LoggedFeedback) -> dict[str, int]:
    """Rows per value of the ``policy`` column (the joiner writes ``<policy>@<version>``)."""
    values, counts = np.unique(logs.policy.astype(str), return_counts=True)
    order = np.argsort(-counts, kind="stable")
    return {str(values[i]): int(counts[i]) for i in order}


def _named_checkpoint(root: Path, value: str) -> Path | None:
    """``root/policy-<name>/<version>`` for a served model version ``...<name>@<version>``,
    if that directory holds an artifact."""
    parts = value.split("@")
    if len(parts) < 2 or not parts[-1] or not parts[-2]:
        return None
    path = Path(root) / f"policy-{parts[-2]}" / parts[-1]
    return path if path.is_dir() and (path / "manifest.json").is_file() else None


def _contract(path: Path) -> Any:
    """What must agree between checkpoints for their logs to train one policy: the
    observation metadata (feature spec, item columns, retrieval version)."""
    return load_artifact(path).metadata.get("features")


def resolve_base(
    logs: LoggedFeedback,
    artifacts_root: Path,
    *,
    base: Path | None = None,
    serving_name: str | None = None,
) -> BaseChoice:
    """The base checkpoint of ``logs`` (module docstring, "Which base"); raises
    :class:`LogsError` when none can be found or the logs' versions disagree on how they
    observe."""
    if base is not None:
        if not Path(base).is_dir():
            raise LogsError(f"--base {base} is not a checkpoint directory")
        return BaseChoice(Path(base), "given")
    named = {
        value: path
        for value in served_versions(logs)
        if (path := _named_checkpoint(artifacts_root, value)) is not None
    }
    if named:
        paths = list(dict.fromkeys(named.values()))  # most frequent first
        first = _contract(paths[0])
        for other in paths[1:]:
            if _contract(other) != first:
                raise LogsError(
                    f"the logs were served by {paths[0]} and {other}, which observe requests "
                    "differently (feature spec, item table or retrieval version): train on "
                    "one of them at a time, or pass --base"
                )
        return BaseChoice(paths[0], "logs")
    if serving_name is not None:
        try:
            return BaseChoice(latest_version(artifacts_root, f"policy-{serving_name}"), "newest")
        except ArtifactError:
            pass
    versions = ", ".join(list(served_versions(logs))[:3])
    raise LogsError(
        f"no base checkpoint: the logs' serving versions ({versions}) are not under "
        f"{artifacts_root}"
        + (f", nor is any policy-{serving_name}" if serving_name else "")
        + "; pass --base with the checkpoint that served the logs"
    )


def _check_options(algo: str, reward: str) -> None:
    """What can be trained from logs: SlateQ or REINFORCE on a reward the logs observe."""
    if algo not in ALGOS:
        raise LogsError(f"--algo must be one of {', '.join(ALGOS)} with --logs, not {algo!r}")
    if reward not in OFFLINE_REWARDS:
        raise LogsError(
            f"--reward {reward!r} is not observable in logs; use one of "
            f"{', '.join(OFFLINE_REWARDS)}"
        )


def offline_config(
    algo: str,
    base: PolicyTrainConfig,
    *,
    reward: str = "learned",
    seed: int = 0,
    batch_size: int = OFFLINE_BATCH,
) -> PolicyTrainConfig:
    """The documented settings of ``algo`` on the base's setup (catalog, candidates, slate
    size, ad load, observation), so the result describes the same world, is served and
    evaluated like the base, and rebuilds the same simulator for off-policy checks."""
    _check_options(algo, reward)
    # ``seed`` is a setup field for the simulator trainer (it seeds the simulated users); here
    # nothing is simulated, and it seeds the initial weights and the minibatch order.
    setup = {name: getattr(base, name) for name in SETUP_FIELDS if name != "seed"}
    return replace(
        documented_config(cast(Algo, algo)),  # checked by _check_options
        **setup,
        reward=reward,  # type: ignore[arg-type]  # checked above
        seed=seed,
        batch_size=batch_size,
    )


def _load_base(choice: BaseChoice) -> PolicyCheckpoint:
    try:
        ckpt = load_policy_checkpoint(choice.path)
    except (ArtifactError, ValueError, KeyError, OSError) as exc:
        raise LogsError(f"base {choice.path} is not a usable policy checkpoint: {exc}") from exc
    features = ckpt.features
    if features is None or features.kind != "event":
        raise LogsError(
            f"base {choice.path} does not observe through the service's event features, so "
            "it cannot have served these logs"
        )
    return ckpt


def train_from_logs(
    logs: Path | str,
    artifacts_root: Path,
    *,
    algo: str = "slateq",
    base: Path | None = None,
    serving_name: str | None = None,
    output_root: Path | None = None,
    reward: str = "learned",
    epochs: int = 20,
    negatives: int | None = None,
    seed: int = 0,
    batch_size: int = OFFLINE_BATCH,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> FromLogsResult:
    """Train ``algo`` offline from a logged-feedback file or joined-dataset directory and
    write it as ``policy-<algo>/<version>`` under ``output_root`` (module docstring).

    Slates that cannot be replayed (partial, another slate size, non-finite signals, items
    outside the base's catalog) are dropped and counted. ``negatives`` (REINFORCE: unshown
    candidates per slate; default the slate size, 0 for SlateQ, which needs none) and
    ``seed`` (initial weights, minibatch order, negatives) go to
    :func:`~recsys.policy.training.offline.train_offline`. Raises :class:`LogsError` for
    unusable options, logs (malformed files included) or base, before any training.
    """
    start = time.perf_counter()
    _check_options(algo, reward)
    if epochs < 1:
        raise LogsError(f"epochs must be >= 1, got {epochs}")
    if negatives is not None and negatives < 0:
        raise LogsError(f"negatives must be >= 0, got {negatives}")
    path = Path(logs)
    if not path.exists():
        raise LogsError(f"--logs {path}: no such file or directory")
    try:
        raw = read_logged_feedback(path)
    except LoggedFeedbackError as exc:
        raise LogsError(f"--logs {path}: {exc}") from exc
    if len(raw) == 0:
        raise LogsError(f"--logs {path} holds no logged rows: there is nothing to train on")
    choice = resolve_base(raw, Path(artifacts_root), base=base, serving_name=serving_name)
    ckpt = _load_base(choice)
    features = ckpt.features
    assert features is not None  # _load_base
    config = offline_config(algo, ckpt.config, reward=reward, seed=seed, batch_size=batch_size)
    clean, dropped = clean_joined_rows(
        raw, slate_size=ckpt.slate_size, num_items=features.num_items, user_dim=ckpt.user_dim
    )
    if len(clean) == 0:
        raise LogsError(
            f"--logs {path}: none of its {len(raw)} rows can be replayed with base "
            f"{choice.path} (slates of {ckpt.slate_size}, {features.num_items} items, user "
            f"features of width {ckpt.user_dim}); dropped rows by reason: {dict(dropped)}"
        )
    reward_model = None
    if reward == "learned":
        if ckpt.reward_tensors is None:
            raise LogsError(
                f"base {choice.path} carries no learned reward model: use --reward clicks or "
                "engagement"
            )
        reward_model = reward_model_from_tensors(ckpt.reward_tensors)
    if negatives is None:
        negatives = 0 if algo == "slateq" else ckpt.slate_size
    result = train_offline(
        clean,
        config,
        epochs=epochs,
        negatives=negatives,
        reward_model=reward_model,
        seed=seed,
        features=features,
        on_epoch=on_epoch,
    )
    sessions = int(
        np.unique(np.char.add(np.char.add(clean.user_id, ":"), clean.session_id.astype(str))).size
    )
    provenance = {
        "logs": str(path.resolve()),
        "rows": len(raw),
        "rows_used": len(clean),
        "slates": result.num_slates,
        "sessions": sessions,
        "dropped_rows": dict(dropped),
        "served_versions": served_versions(raw),
        "base": {
            "path": str(choice.path.resolve()),
            "found_by": choice.how,
            "name": ckpt.artifact.name,
            "version": ckpt.artifact.version,
        },
        "epochs": epochs,
        "negatives": negatives,
        "seed": seed,
        "reward": reward,
    }
    artifact = save_policy_checkpoint(
        Path(output_root) if output_root is not None else default_output_root(artifacts_root),
        result.policy,
        config,
        iteration=epochs,
        dims=(ckpt.user_dim, ckpt.item_dim, ckpt.slate_size),
        reward_scale=result.reward_scale,
        features=features,
        reward_tensors=ckpt.reward_tensors,
        curve=[{"epoch": float(i + 1), **m} for i, m in enumerate(result.metrics)],
        reward_report=dict(ckpt.artifact.metadata.get("reward_report", {})),
        extra_metadata={"offline": provenance},
    )
    return FromLogsResult(
        artifact=artifact,
        base=choice,
        config=config,
        offline=result,
        rows=len(raw),
        slates=result.num_slates,
        sessions=sessions,
        dropped_rows=dict(dropped),
        seconds=time.perf_counter() - start,
    )
