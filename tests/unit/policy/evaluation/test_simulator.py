"""Simulator evaluation: CIs, common random numbers, baselines trained from logs."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.config import CatalogSettings, SimulatorSettings
from recsys.data import SyntheticWorld, make_world
from recsys.policy import RandomPolicy
from recsys.policy.evaluation.simulator import (
    build_baselines,
    evaluate_in_simulator,
    mean_ci,
    paired_ratio,
)
from recsys.policy.reward.fit import fit_learned_reward
from recsys.policy.training.envs import SimulatorFeatures
from recsys.policy.training.sessions import collect_random_sessions, item_statistics
from recsys.simulator import SlateEnv

SIM = SimulatorSettings(num_candidates=15, slate_size=3)


@pytest.fixture(scope="module")
def world() -> SyntheticWorld:
    return make_world(CatalogSettings(num_items=200, num_users=600, num_topics=6, seed=3))


def test_mean_ci_matches_the_t_interval() -> None:
    x = np.random.default_rng(0).normal(5.0, 2.0, size=400)
    out = mean_ci(x)
    half = (out["ci_high"] - out["ci_low"]) / 2
    assert out["mean"] == pytest.approx(x.mean())
    # t_{0.975, 399} = 1.9659
    assert half == pytest.approx(1.9659 * x.std(ddof=1) / np.sqrt(400), rel=1e-3)


def test_paired_ratio_is_tight_for_identical_policies() -> None:
    x = np.random.default_rng(1).exponential(size=300)
    out = paired_ratio(x, x)
    assert out["ratio"] == 1.0
    assert out["ci_low"] == pytest.approx(1.0)
    assert out["ci_high"] == pytest.approx(1.0)


def test_evaluation_reports_cis_and_is_reproducible(world: SyntheticWorld) -> None:
    log = collect_random_sessions(world.select_users(np.arange(300)), SIM, seed=0, max_steps=30)
    core = SlateEnv(world, settings=SIM)
    features = SimulatorFeatures.build(core, item_statistics(log, world))
    reward = fit_learned_reward(log, epochs=50).model
    policies = build_baselines(log, world, features, reward, slate_size=3, myopic_epochs=1)
    assert set(policies) == {"random", "popular", "myopic", "myopic_learned", "bandit"}
    users = np.arange(300, 600)

    def run() -> dict[str, object]:
        return evaluate_in_simulator(
            policies,
            world=world,
            settings=SIM,
            features=features,
            users=users,
            max_steps=40,
            seed=7,
            ratios=[("myopic", "random")],
        )

    first, second = run(), run()
    first.pop("_per_user")
    second.pop("_per_user")
    for name in policies:
        a = first["policies"][name]  # type: ignore[index]
        b = second["policies"][name]  # type: ignore[index]
        for metric in ("return", "clicks", "revenue", "steps"):
            assert a[metric]["ci_low"] <= a[metric]["mean"] <= a[metric]["ci_high"]
            assert a[metric]["mean"] == b[metric]["mean"]  # same seeds, same numbers
    assert "myopic/random" in first["ratios"]  # type: ignore[operator]


def test_same_users_start_identically_for_every_policy(world: SyntheticWorld) -> None:
    """Common random numbers: the first step's users and candidates do not depend on the
    policy, so two random policies with the same seed give identical results."""
    core = SlateEnv(world, settings=SIM)
    features = SimulatorFeatures.build(core, None)
    out = evaluate_in_simulator(
        {"a": RandomPolicy(), "b": RandomPolicy()},
        world=world,
        settings=SIM,
        features=features,
        users=np.arange(100),
        max_steps=20,
        seed=1,
    )
    assert out["policies"]["a"]["return"]["mean"] == out["policies"]["b"]["return"]["mean"]
