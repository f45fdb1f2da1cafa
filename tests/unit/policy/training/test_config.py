"""The documented per-algorithm settings that `recsys train policy` starts from."""

from __future__ import annotations

import pytest

from recsys.policy.training.config import ALGOS, PolicyTrainConfig, documented_config


def test_documented_configs_are_the_tuned_settings() -> None:
    slateq = documented_config("slateq")
    assert (slateq.algo, slateq.iterations, slateq.updates_per_iteration) == ("slateq", 20, 50)
    assert (slateq.tau, slateq.gamma, slateq.immediate_head) == (0.05, 0.8, True)
    reinforce = documented_config("reinforce")
    assert reinforce.algo == "reinforce"
    assert (reinforce.iterations, reinforce.users, reinforce.steps_per_iteration) == (30, 1024, 10)
    assert (reinforce.batch_size, reinforce.gamma) == (256, 0.9)
    assert (reinforce.lr, reinforce.entropy_coef) == (3e-4, 0.01)
    # Everything else is a PolicyTrainConfig default.
    assert slateq.workers == PolicyTrainConfig().workers
    assert {documented_config(a).algo for a in ALGOS} == set(ALGOS)


def test_unknown_algorithm_is_refused() -> None:
    with pytest.raises(ValueError, match="algo must be one of"):
        documented_config("dqn")  # type: ignore[arg-type]
