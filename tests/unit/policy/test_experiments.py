"""The CLI-facing evaluation of named policies, on a small simulator setup."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from recsys.policy.experiments import (
    ExperimentConfig,
    evaluate_sim_policies,
    evaluation_users,
    validation_users,
)
from recsys.policy.training import POPULATION, PolicyTrainConfig, train_policy

SMALL = PolicyTrainConfig(
    num_items=300,
    num_topics=6,
    num_candidates=15,
    slate_size=3,
    log_users=300,
    log_max_steps=20,
    users=64,
    iterations=2,
    steps_per_iteration=2,
    updates_per_iteration=2,
    pretrain_updates=2,
    batch_size=64,
    hidden=(8,),
)
CONFIG = ExperimentConfig(slateq=SMALL, reinforce=replace(SMALL, algo="reinforce"))


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_named_policies_are_built_trained_or_loaded(tmp_path: Path) -> None:
    trained = train_policy(SMALL, artifacts_root=tmp_path)
    out = evaluate_sim_policies(
        ["random", "myopic", "slateq", "reinforce"],
        users=50,
        max_steps=15,
        config=CONFIG,
        artifacts_root=tmp_path,
    )
    assert list(out["policies"]) == ["random", "myopic", "slateq", "reinforce"]
    assert out["sources"]["slateq"].startswith(f"checkpoint {trained.checkpoint}")
    assert out["sources"]["reinforce"].startswith("trained on the fly")
    assert "slateq/myopic" in out["ratios"]
    assert "slateq/random" in out["ratios"]


def test_unknown_policy_names_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown policies"):
        evaluate_sim_policies(["random", "oracle"], config=CONFIG)


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
