"""The CLI-facing evaluation of named policies, on a small simulator setup."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from recsys.policy.evaluation.simulator import (
    evaluate_sim_policies,
    evaluation_users,
    validation_users,
)
from recsys.policy.training.config import POPULATION, PolicyTrainConfig
from recsys.policy.training.trainer import train_policy
from tests.unit.policy.configs import SMALL_SIMULATOR as SMALL

CONFIGS = {"slateq": SMALL, "reinforce": replace(SMALL, algo="reinforce")}


def test_named_policies_are_built_trained_or_loaded(tmp_path: Path) -> None:
    trained = train_policy(SMALL, artifacts_root=tmp_path)
    out = evaluate_sim_policies(
        ["random", "myopic", "slateq", "reinforce"],
        users=50,
        max_steps=15,
        configs=CONFIGS,  # type: ignore[arg-type]
        artifacts_root=tmp_path,
    )
    assert list(out["policies"]) == ["random", "myopic", "slateq", "reinforce"]
    assert out["sources"]["slateq"].startswith(f"checkpoint {trained.checkpoint}")
    assert out["sources"]["reinforce"].startswith("trained on the fly")
    assert "slateq/myopic" in out["ratios"]
    assert "slateq/random" in out["ratios"]


def test_unknown_policy_names_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown policies"):
        evaluate_sim_policies(["random", "oracle"], configs=CONFIGS)  # type: ignore[arg-type]


def test_training_validation_and_test_users_never_meet() -> None:
    """Training stays below POPULATION // 2 (enforced by the config); validation is where
    settings were tuned; the reported figures come from test users that are neither."""
    test, validation = evaluation_users(POPULATION // 4), validation_users(POPULATION // 4)
    assert test.min() >= POPULATION // 2
    assert validation.max() == POPULATION - 1
    assert not set(test.tolist()) & set(validation.tolist())
    with pytest.raises(ValueError, match=r"log_users \+ workers \* users must be"):
        PolicyTrainConfig(log_users=POPULATION // 2, users=1)
    with pytest.raises(ValueError, match="must lie"):
        evaluation_users(POPULATION // 4 + 1)
    with pytest.raises(ValueError, match="must lie"):
        validation_users(1)
