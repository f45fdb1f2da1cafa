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


def test_an_unset_learning_rate_is_each_algorithms_own_default() -> None:
    """``lr`` no longer overrides REINFORCE's 3e-3 with SlateQ's documented 1e-3."""
    from recsys.policy.algorithms.reinforce import ReinforceConfig
    from recsys.policy.algorithms.slateq import SlateQConfig
    from recsys.policy.training.config import build_policy

    reinforce = build_policy(PolicyTrainConfig(algo="reinforce"), 3, 2, 2)
    slateq = build_policy(PolicyTrainConfig(algo="slateq"), 3, 2, 2)
    assert reinforce.config.lr == ReinforceConfig().lr  # type: ignore[attr-defined]
    assert slateq.config.lr == SlateQConfig().lr  # type: ignore[attr-defined]
    assert build_policy(PolicyTrainConfig(algo="reinforce", lr=1e-4), 3, 2, 2).config.lr == 1e-4  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="lr must be finite"):
        PolicyTrainConfig(lr=0.0)


def test_saved_configs_from_before_replay_size_and_gae_still_load() -> None:
    old = {**PolicyTrainConfig(algo="reinforce").to_dict(), "replay_iterations": 4}
    del old["returns"], old["replay_size"]
    loaded = PolicyTrainConfig.from_dict(old)
    assert loaded.returns == "rollout"  # what that checkpoint was trained with
    assert loaded.replay_size == PolicyTrainConfig().replay_size
    with pytest.raises(ValueError, match="unknown policy training settings: nope"):
        PolicyTrainConfig.from_dict({**old, "nope": 1})


def test_long_horizon_and_credit_settings_are_checked() -> None:
    assert PolicyTrainConfig(session_budget_s=2400.0).simulator_settings().session_budget_s == 2400
    with pytest.raises(ValueError, match="returns must be rollout or gae"):
        PolicyTrainConfig(returns="td")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="gae_lambda"):
        PolicyTrainConfig(gae_lambda=1.5)
    with pytest.raises(ValueError, match="session_budget_s"):
        PolicyTrainConfig(session_budget_s=-1.0)
    with pytest.raises(ValueError, match="target_candidates"):
        PolicyTrainConfig(target_candidates=3, slate_size=10)
