"""Simulated sessions recorded in the logged-feedback format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recsys.config import CatalogSettings, SimulatorSettings
from recsys.data.logged import read_logged_feedback
from recsys.data.synthetic import make_world
from recsys.recording import RecordingConfig, record_sessions, reward_to_go, write_sessions
from recsys.simulator import SlateEnv


@pytest.fixture
def env() -> SlateEnv:
    world = make_world(CatalogSettings(num_items=300, num_users=40, num_topics=6, seed=3))
    return SlateEnv(world, seed=5, settings=SimulatorSettings(num_candidates=30, slate_size=5))


def test_reward_to_go_by_hand() -> None:
    # user 0: one life for 3 steps; user 1: life 0 ends after step 0, life 1 runs on.
    life = np.array([[0, 0], [0, 1], [0, 1]])
    value_after = np.array([[1.0, 5.0], [3.0, 2.0], [6.0, 4.0]])
    rtg = reward_to_go(life, value_after)
    np.testing.assert_allclose(rtg[:, 0], [6.0, 5.0, 3.0])
    np.testing.assert_allclose(rtg[:, 1], [5.0, 4.0, 2.0])


def test_random_logger_has_exact_propensities(env: SlateEnv) -> None:
    logs = record_sessions(env, RecordingConfig(steps=4, slate_size=5, policy="random"))
    assert len(logs) == 4 * 40 * 5
    c = 30
    np.testing.assert_allclose(logs.propensity.reshape(-1, 5)[0], 1.0 / (c - np.arange(5)))
    np.testing.assert_allclose(logs.position_propensity, 1.0 / c)
    np.testing.assert_allclose(
        logs.slate_log_propensity.reshape(-1, 5)[:, 0],
        np.log(logs.propensity.reshape(-1, 5)).sum(axis=1),
        rtol=1e-5,
    )
    slates = logs.item_id.reshape(-1, 5)
    assert all(len(set(row)) == 5 for row in slates.tolist())
    assert set(np.unique(logs.request_id.reshape(-1, 5), axis=1).shape) == {4 * 40, 1}


def test_boltzmann_logger_marginals_exact_at_top_slot(env: SlateEnv) -> None:
    logs = record_sessions(
        env, RecordingConfig(steps=2, slate_size=5, policy="boltzmann", temperature=0.3)
    )
    top = logs.position == 0
    np.testing.assert_allclose(logs.position_propensity[top], logs.propensity[top], rtol=1e-4)
    assert np.all((logs.position_propensity > 0) & (logs.position_propensity <= 1))


def test_boltzmann_prefers_relevant_items_over_random(env: SlateEnv) -> None:
    t = env.world.num_topics
    rnd = record_sessions(env, RecordingConfig(steps=3, slate_size=5, policy="random", seed=1))
    bz = record_sessions(
        env, RecordingConfig(steps=3, slate_size=5, policy="boltzmann", temperature=0.05, seed=1)
    )

    def relevance(batch: object) -> float:
        u = batch.user_features[:, :t]  # type: ignore[attr-defined]
        i = batch.item_features[:, :t]  # type: ignore[attr-defined]
        return float(np.mean(np.sum(u * i, axis=1)))

    assert relevance(bz) > relevance(rnd) + 0.05


def test_parquet_round_trip_and_signals(env: SlateEnv, tmp_path: Path) -> None:
    batch = write_sessions(tmp_path / "s.parquet", env, RecordingConfig(steps=3, slate_size=5))
    back = read_logged_feedback(tmp_path / "s.parquet")
    np.testing.assert_array_equal(back.item_id, batch.item_id)
    np.testing.assert_array_equal(back.click, batch.click)
    assert back.user_features.shape[1] == len(env.user_feature_names)
    assert back.item_features.shape[1] == len(env.item_feature_names)
    assert np.all(back.dwell_s[~back.click] == 0)
    assert np.all(back.hidden_ltv >= 0)
    per_slate = back.click.reshape(-1, 5).sum(axis=1)
    assert per_slate.max() <= 1  # at most one click per slate under the choice model


@pytest.mark.parametrize(
    "kwargs",
    [{"steps": 0}, {"slate_size": 0}, {"temperature": float("nan")}, {"policy": "greedy"}],
)
def test_bad_config_fails_fast(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        RecordingConfig(**kwargs)  # type: ignore[arg-type]


def test_slate_larger_than_candidates_is_refused(env: SlateEnv) -> None:
    with pytest.raises(ValueError, match="exceeds"):
        record_sessions(env, RecordingConfig(steps=1, slate_size=31))


def test_candidate_sets_are_recorded_per_request(env: SlateEnv) -> None:
    logs = record_sessions(env, RecordingConfig(steps=2, slate_size=5, policy="boltzmann"))
    cands = logs.candidate_ids
    assert cands is not None
    assert cands.shape == (len(logs), 30)
    assert np.all((cands == logs.item_id[:, None]).any(axis=1))
    per_request = cands.reshape(-1, 5, 30)
    assert np.all(per_request == per_request[:, :1])  # the same list on every slot row
    assert all(len(set(row)) == 30 for row in per_request[:, 0].tolist())


def test_write_sessions_records_how_to_rebuild_the_world(tmp_path: Path) -> None:
    import json

    from recsys.data.logged import read_logged_feedback_metadata
    from recsys.recording import RECORDING_METADATA_KEY
    from recsys.simulator import SIMULATOR_METADATA_KEY, SimulatorSpec

    catalog = CatalogSettings(num_items=300, num_users=40, num_topics=6, seed=3)
    settings = SimulatorSettings(num_candidates=30, slate_size=5)
    spec = SimulatorSpec(catalog, settings)
    env = spec.build_env()
    cfg = RecordingConfig(steps=1, slate_size=5, policy="boltzmann", temperature=0.7)
    write_sessions(tmp_path / "s.parquet", env, cfg, simulator=spec)
    meta = read_logged_feedback_metadata(tmp_path / "s.parquet")
    assert SimulatorSpec.from_json(meta[SIMULATOR_METADATA_KEY]) == spec
    assert json.loads(meta[RECORDING_METADATA_KEY])["temperature"] == 0.7
    other = SimulatorSpec(catalog.model_copy(update={"seed": 4}), settings)
    with pytest.raises(ValueError, match="does not rebuild this env's world"):
        write_sessions(tmp_path / "t.parquet", env, cfg, simulator=other)
    assert not (tmp_path / "t.parquet").exists()
