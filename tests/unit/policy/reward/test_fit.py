"""The learned reward fit on the logging policy's sessions, both objectives, against the
hidden truth."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.config import CatalogSettings, SimulatorSettings
from recsys.data.synthetic import make_world
from recsys.pipeline import log_random_sessions, make_fold, world_item_table
from recsys.policy.batch import SIGNAL_NAMES
from recsys.policy.reward.fit import fit_learned_reward
from recsys.policy.training.sessions import SessionLog

SIM = SimulatorSettings(num_candidates=15, slate_size=3)


@pytest.fixture(scope="module")
def log() -> SessionLog:
    world = make_world(CatalogSettings(num_items=300, num_users=600, num_topics=6, seed=0))
    fold = make_fold(world_item_table(world))
    return log_random_sessions(world, SIM, fold, users=np.arange(600), max_steps=40, seed=0)


@pytest.mark.parametrize("objective", ["regression", "bradley_terry"])
def test_both_objectives_rank_lives_by_hidden_value(log: SessionLog, objective: str) -> None:
    """Each learned reward, summed over a held-out life, ranks lives by their hidden LTV at
    least as well as counting clicks; both objectives are reported whichever is returned."""
    fit = fit_learned_reward(log, epochs=150, objective=objective, num_pairs=20_000)  # type: ignore[arg-type]
    report = fit.report
    assert report["objective"] == objective
    for name in ("learned", "bt"):
        assert report[f"spearman_life_{name}_vs_ltv"] > 0.5
        assert report[f"spearman_life_{name}_vs_ltv"] >= report["spearman_life_clicks_vs_ltv"]
        assert (
            report[f"spearman_step_{name}_vs_future_ltv"]
            > report["spearman_step_clicks_vs_future_ltv"]
        )
    assert report["bt_pair_accuracy"] > 0.7
    # An ignored slot earns exactly nothing, whichever model is returned.
    assert fit.model.rewards(np.zeros((1, 6), np.float32))[0] == pytest.approx(0.0, abs=1e-5)
    # Both learn the simulator's story: dwell is worth something, a skip (clickbait) costs.
    for key in ("weights_raw_units", "bt_weights_raw_units"):
        weights = dict(zip(SIGNAL_NAMES, report[key], strict=True))
        assert weights["dwell_s"] > 0
        assert weights["skip"] < 0


def test_unknown_objective_is_refused(log: SessionLog) -> None:
    with pytest.raises(ValueError, match="objective must be"):
        fit_learned_reward(log, objective="vibes")  # type: ignore[arg-type]
