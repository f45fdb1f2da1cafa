"""Policy checkpoints: versioned ``policy-<algo>`` artifacts, and the learning curve.

A checkpoint (:func:`save_policy_checkpoint`, written with
:func:`recsys.artifacts.save_artifact`) holds safetensors, never pickle: the policy's
:meth:`~recsys.policy.base.TrainableSlatePolicy.weights` (``policy/…``), its optimisers'
Adam moments and step counts (``optim/…``), the learned reward (``reward/…``) and how the
policy observes a request (:class:`~recsys.policy.observation.PolicyFeatures`: the feature
spec, the static item table, ``features/…``), which is what makes a checkpoint servable;
metadata with the full config, iteration, feature widths and reward scale;
``learning_curve.csv`` and ``config.json`` beside them. :func:`load_policy_checkpoint`
rebuilds the policy from the config and restores all of it, after the artifact's checksums
have been verified.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recsys.artifacts import Artifact, load_artifact, save_artifact
from recsys.policy.base import Tensors, TrainableSlatePolicy
from recsys.policy.observation import PolicyFeatures
from recsys.policy.training.config import PolicyTrainConfig, build_policy

__all__ = [
    "PolicyCheckpoint",
    "load_optimizer_tensors",
    "load_policy_checkpoint",
    "optimizer_tensors",
    "save_policy_checkpoint",
    "write_learning_curve",
]


def optimizer_tensors(policy: TrainableSlatePolicy) -> Tensors:
    """Optimiser moments and step counts as arrays: ``optim/<optimizer>/<param>/<key>``.

    Hyperparameters (learning rates) are not stored: they come from the config on resume.
    """
    out: Tensors = {}
    for name, opt in policy.optimizers().items():
        for pid, state in opt.state_dict()["state"].items():
            for key, value in state.items():
                arr = (
                    value.detach().cpu().numpy().copy()
                    if isinstance(value, torch.Tensor)
                    else np.asarray(value)
                )
                out[f"optim/{name}/{pid}/{key}"] = arr
    return out


def load_optimizer_tensors(policy: TrainableSlatePolicy, tensors: Mapping[str, Any]) -> None:
    """Restore what :func:`optimizer_tensors` saved (parameter groups come from the policy)."""
    for name, opt in policy.optimizers().items():
        prefix = f"optim/{name}/"
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith(prefix):
                pid, k = key[len(prefix) :].split("/", 1)
                state.setdefault(int(pid), {})[k] = torch.as_tensor(np.asarray(value))
        if state:
            current = opt.state_dict()
            opt.load_state_dict({"state": state, "param_groups": current["param_groups"]})


def write_learning_curve(
    rows: Sequence[Mapping[str, float]],
    csv_path: Path | None = None,
    png_path: Path | None = None,
    title: str = "learning curve",
) -> str:
    """Write the curve as CSV (and a PNG of the reward columns); returns the CSV text.

    The PNG plots the training reward per user-step, the return of the episodes that ended
    (when any did) and, where the env reports one (the project's simulator), the hidden
    reward per user-step: one panel per column the run has, none a flat line of zeros.
    """
    buf = io.StringIO()
    if rows:
        names = list(rows[0])
        for row in rows[1:]:
            names += [k for k in row if k not in names]
        writer = csv.DictWriter(buf, fieldnames=names)
        writer.writeheader()
        writer.writerows(rows)
    text = buf.getvalue()
    if csv_path is not None:
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        csv_path.write_text(text)
    if png_path is not None and rows:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        x = [r["user_steps"] for r in rows]
        panels = [("reward_per_user_step", "training reward per user-step", "#1f77b4")]
        if any(np.isfinite(r.get("episode_return", np.nan)) for r in rows):
            panels.append(("episode_return", "episode return (training reward)", "#ff7f0e"))
        if any("hidden_reward_per_user_step" in r for r in rows):
            hidden = "hidden LTV increment per user-step (min)"
            panels.append(("hidden_reward_per_user_step", hidden, "#2ca02c"))
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
        for ax, (column, label, color) in zip(axes[0], panels, strict=True):
            ax.plot(x, [r.get(column, np.nan) for r in rows], color=color, marker=".")
            ax.set_title(label)
        for ax in axes[0]:
            ax.set_xlabel("user-steps")
            ax.grid(alpha=0.3)
        fig.suptitle(title)
        fig.tight_layout()
        png_path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(png_path, dpi=110)
        plt.close(fig)
    return text


def _read_curve(text: str) -> list[dict[str, float]]:
    """Rows of a curve CSV; a cell a row lacks (a column added later in the run) is NaN."""
    return [
        {k: float(v) if v not in ("", None) else float("nan") for k, v in row.items()}
        for row in csv.DictReader(io.StringIO(text))
    ]


@dataclass(frozen=True)
class PolicyCheckpoint:
    """A loaded ``policy-<algo>`` artifact: the policy and what evaluation needs beside it."""

    policy: TrainableSlatePolicy
    config: PolicyTrainConfig
    iteration: int
    user_dim: int
    item_dim: int
    slate_size: int
    reward_scale: float
    features: PolicyFeatures | None
    reward_tensors: Tensors | None
    curve: list[dict[str, float]]
    artifact: Artifact


def load_policy_checkpoint(path: Path) -> PolicyCheckpoint:
    """Load and verify a checkpoint artifact directory (weights and optimiser restored)."""
    artifact = load_artifact(Path(path))
    meta = artifact.metadata
    try:
        config = PolicyTrainConfig.from_dict(meta["config"])
        dims = (int(meta["user_dim"]), int(meta["item_dim"]), int(meta["slate_size"]))
        iteration, scale = int(meta["iteration"]), float(meta["reward_scale"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path} is not a policy checkpoint: {exc}") from exc
    tensors = artifact.tensors()
    policy = build_policy(config, *dims)
    policy.load_weights({k[7:]: v for k, v in tensors.items() if k.startswith("policy/")})
    load_optimizer_tensors(policy, tensors)
    reward = {k[7:]: v for k, v in tensors.items() if k.startswith("reward/")} or None
    features = (
        PolicyFeatures.from_artifact(tensors, meta["features"]) if "features" in meta else None
    )
    if features is not None and features.items.dim != dims[1]:
        raise ValueError(
            f"{path}: its item features are {features.items.dim} wide, the policy expects {dims[1]}"
        )
    curve = (
        _read_curve(artifact.file("learning_curve.csv").read_text())
        if "learning_curve.csv" in artifact.files
        else []
    )
    return PolicyCheckpoint(
        policy=policy,
        config=config,
        iteration=iteration,
        user_dim=dims[0],
        item_dim=dims[1],
        slate_size=dims[2],
        reward_scale=scale,
        features=features,
        reward_tensors=reward,
        curve=curve,
        artifact=artifact,
    )


def save_policy_checkpoint(
    root: Path,
    policy: TrainableSlatePolicy,
    config: PolicyTrainConfig,
    *,
    iteration: int,
    dims: tuple[int, int, int],
    reward_scale: float,
    features: PolicyFeatures | None,
    reward_tensors: Tensors | None,
    curve: Sequence[Mapping[str, float]],
    reward_report: Mapping[str, Any],
    extra_metadata: Mapping[str, Any] | None = None,
    name: str | None = None,
) -> Artifact:
    """Write ``policy-<algo>/it<iteration>-<ms>`` under ``root`` (see the module docstring).

    ``features`` (how the policy observes) makes the checkpoint servable; ``extra_metadata``
    (e.g. evaluation results) is stored beside the rest; ``name`` overrides the artifact
    name (``policy-<algo>``)."""
    tensors: Tensors = {f"policy/{k}": v for k, v in policy.weights().items()}
    tensors.update(optimizer_tensors(policy))
    if reward_tensors is not None:
        tensors.update({f"reward/{k}": v for k, v in reward_tensors.items()})
    if features is not None:
        tensors.update(features.tensors())
    metadata: dict[str, Any] = {
        **dict(extra_metadata or {}),
        "config": config.to_dict(),
        "algo": config.algo,
        "reward": config.reward,
        "iteration": iteration,
        "user_dim": dims[0],
        "item_dim": dims[1],
        "slate_size": dims[2],
        "reward_scale": reward_scale,
        "reward_report": dict(reward_report),
        "optimizer_state": "stored (Adam moments and step counts; lr from config)",
    }
    if features is not None:
        metadata["features"] = features.metadata()
    csv_text = write_learning_curve(curve)
    return save_artifact(
        root,
        name or f"policy-{config.algo}",
        tensors=tensors,
        metadata=metadata,
        files={
            "learning_curve.csv": csv_text.encode(),
            "config.json": json.dumps(config.to_dict(), indent=2, sort_keys=True).encode(),
        },
        version=f"it{iteration:06d}-{int(time.time() * 1000)}",
    )
