"""Simulated sessions recorded in the logged-feedback format, on the one session logger."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from recsys.config import CatalogSettings, SimulatorSettings
from recsys.data.logged import LoggedFeedback, read_logged_feedback, read_logged_feedback_metadata
from recsys.data.synthetic import make_world
from recsys.features import FeatureSpec
from recsys.policy.batch import SlateObs
from recsys.policy.exploration import plackett_luce_log_propensities_batch
from recsys.policy.training.envs import SimulatedUsers
from recsys.policy.training.sessions import LoggerDecision, SessionLogger, record_sessions
from recsys.recording import (
    FEATURES_METADATA_KEY,
    RECORDING_METADATA_KEY,
    RecordingConfig,
    logging_policy,
    record_feedback,
    recording_users,
    session_feedback,
    write_sessions,
)
from recsys.simulator import (
    SIMULATOR_METADATA_KEY,
    PopularityCandidateSampler,
    SimulatorSpec,
    SlateEnv,
    relevance_scores,
)
from recsys.types import IntArray

USERS, ITEMS, TOPICS, C, S = 40, 300, 6, 30, 5
CATALOG = CatalogSettings(num_items=ITEMS, num_users=USERS, num_topics=TOPICS, seed=3)
SETTINGS = SimulatorSettings(num_candidates=C, slate_size=S, seed=5)


@pytest.fixture
def env() -> SlateEnv:
    return SlateEnv(make_world(CATALOG), seed=5, settings=SETTINGS)


def _life(logs: LoggedFeedback) -> np.ndarray:
    """Each row's life (packed into ``session_id`` as ``user << 32 | life << 16 | session``)."""
    return (logs.session_id >> 16) & 0xFFFF


def test_random_logger_has_exact_propensities(env: SlateEnv) -> None:
    logs = record_feedback(env, RecordingConfig(steps=4, slate_size=S, policy="random"))
    assert len(logs) == 4 * USERS * S
    exact = np.broadcast_to(1.0 / (C - np.arange(S)), (4 * USERS, S))
    np.testing.assert_allclose(logs.propensity.reshape(-1, S), exact, rtol=1e-6)
    np.testing.assert_allclose(logs.position_propensity, 1.0 / C)
    np.testing.assert_allclose(
        logs.slate_log_propensity.reshape(-1, S)[:, 0],
        np.log(logs.propensity.reshape(-1, S)).sum(axis=1),
        rtol=1e-5,
    )
    slates = logs.item_id.reshape(-1, S)
    assert all(len(set(row)) == S for row in slates.tolist())
    assert np.unique(logs.request_id).size == 4 * USERS
    assert np.all(logs.request_id.reshape(-1, S) == logs.request_id.reshape(-1, S)[:, :1])
    assert set(logs.policy.tolist()) == {"random-logger"}


def test_boltzmann_propensities_are_plackett_luce_of_the_logged_slates(env: SlateEnv) -> None:
    cfg = RecordingConfig(steps=6, slate_size=S, policy="boltzmann", temperature=0.3)
    logs = record_feedback(env, cfg)
    assert logs.candidate_ids is not None
    cands = logs.candidate_ids[::S]
    users = logs.user_features[::S]
    cols = np.argmax(logs.candidate_ids[:, :, None] == logs.item_id[:, None, None], axis=1)
    slates = cols.reshape(-1, S)
    scores = relevance_scores(env, users, cands)
    assert np.ptp(scores, axis=1).max() > 0.1  # the event interests are informative by now
    exact = np.exp(plackett_luce_log_propensities_batch(scores, slates, cfg.temperature))
    np.testing.assert_allclose(logs.propensity.reshape(-1, S), exact, rtol=1e-5)
    top = logs.position == 0
    np.testing.assert_allclose(logs.position_propensity[top], logs.propensity[top], rtol=1e-4)
    assert np.all((logs.position_propensity >= 1e-6) & (logs.position_propensity <= 1))
    assert set(logs.policy.tolist()) == {"boltzmann-logger"}


def test_boltzmann_prefers_relevant_items_over_random(env: SlateEnv) -> None:
    t = TOPICS

    def relevance(policy: str, temperature: float) -> float:
        fresh = SlateEnv(make_world(CATALOG), seed=5, settings=SETTINGS)
        cfg = RecordingConfig(steps=8, slate_size=S, policy=policy, temperature=temperature)  # type: ignore[arg-type]
        logs = record_feedback(fresh, cfg)
        u, i = logs.user_features[:, :t], logs.item_features[:, :t]
        return float(np.mean(np.sum(u * i, axis=1)))

    assert relevance("boltzmann", 0.05) > relevance("random", 0.5) + 0.1


class _Spy:
    """A logger that records what the service knew about each user when it decided."""

    def __init__(self, logger: SessionLogger) -> None:
        self.logger = logger
        self.name = logger.name
        self.seen: list[np.ndarray] = []

    def decide(
        self, users: SimulatedUsers, rows: IntArray, obs: SlateObs, rng: np.random.Generator
    ) -> LoggerDecision:
        self.seen.append(users.event_features(rows))
        return self.logger.decide(users, rows, obs, rng)


def test_user_features_are_the_event_features_at_request_time(env: SlateEnv) -> None:
    cfg = RecordingConfig(steps=12, slate_size=S, policy="random")
    users = recording_users(env, cfg)
    assert users.core is env  # the env itself is served (its whole population, its slate)
    spy = _Spy(logging_policy(cfg))
    log = record_sessions(users, spy, max_steps=cfg.steps, seed=cfg.seed, one_life=False)
    logs = session_feedback(log, users, policy=spy.name)
    spec = FeatureSpec(num_topics=TOPICS)
    assert logs.user_features.shape[1] == spec.user_dim
    np.testing.assert_array_equal(logs.user_features[::S], np.concatenate(spy.seen))
    np.testing.assert_array_equal(logs.item_features, env.item_feature_table[logs.item_id])
    # A churned user is served again as a new user: a new life starts with no events.
    cold = logs.user_features[::S, spec.user_feature_names.index("cold")]
    life = _life(logs)[::S].reshape(cfg.steps, USERS)
    first_of_life = np.ones_like(life, dtype=np.bool_)
    first_of_life[1:] = life[1:] != life[:-1]
    assert (life > 0).any()
    np.testing.assert_array_equal(cold.reshape(cfg.steps, USERS), first_of_life)


def test_hidden_ltv_is_the_return_to_go_within_the_life(env: SlateEnv) -> None:
    logs = record_feedback(env, RecordingConfig(steps=12, slate_size=S))
    minutes = logs.dwell_s.reshape(-1, S).sum(axis=1).astype(np.float64) / 60.0
    steps = logs.ts[::S].reshape(12, USERS)
    life = _life(logs)[::S].reshape(12, USERS)
    value = minutes.reshape(12, USERS)
    assert np.all(steps == np.arange(12)[:, None])  # every user served at every step
    expected = np.zeros_like(value)
    for t in range(11, -1, -1):
        later = expected[t + 1] if t < 11 else 0.0
        same = life[t + 1] == life[t] if t < 11 else np.zeros(USERS, dtype=np.bool_)
        expected[t] = value[t] + np.where(same, later, 0.0)
    np.testing.assert_allclose(logs.hidden_ltv[::S].reshape(12, USERS), expected, rtol=1e-5)
    assert np.all(logs.hidden_ltv.reshape(-1, S) == logs.hidden_ltv.reshape(-1, S)[:, :1])


def test_the_envs_candidate_sampler_serves_the_first_users() -> None:
    def skewed() -> SlateEnv:
        weights = np.zeros(ITEMS)
        weights[:60] = 1.0  # candidates only ever come from the first 60 items
        sampler = PopularityCandidateSampler(weights)
        return SlateEnv(make_world(CATALOG), seed=5, settings=SETTINGS, candidate_sampler=sampler)

    cfg = RecordingConfig(steps=3, slate_size=3, num_users=7)
    logs = record_feedback(skewed(), cfg)
    assert logs.candidate_ids is not None
    assert int(logs.candidate_ids.max()) < 60
    assert set(logs.user_idx.tolist()) == set(range(7))
    assert len(logs) == 3 * 7 * 3
    again = record_feedback(skewed(), cfg)
    np.testing.assert_array_equal(again.item_id, logs.item_id)  # deterministic
    np.testing.assert_array_equal(again.click, logs.click)


def test_parquet_round_trip_with_the_simulator_record(tmp_path: Path) -> None:
    spec = SimulatorSpec(CATALOG, SETTINGS)
    cfg = RecordingConfig(steps=3, slate_size=S, policy="boltzmann", temperature=0.7)
    batch = write_sessions(tmp_path / "s.parquet", spec.build_env(), cfg, simulator=spec)
    back = read_logged_feedback(tmp_path / "s.parquet")
    for name in ("request_id", "session_id", "item_id", "click", "dwell_s", "hidden_ltv"):
        np.testing.assert_array_equal(getattr(back, name), getattr(batch, name), err_msg=name)
    np.testing.assert_array_equal(back.user_features, batch.user_features)
    np.testing.assert_array_equal(back.candidate_ids, batch.candidate_ids)
    assert np.all(back.dwell_s[~back.click] == 0)
    assert np.all(back.hidden_ltv >= 0)
    assert back.click.reshape(-1, S).sum(axis=1).max() <= 1  # at most one click per slate
    meta = read_logged_feedback_metadata(tmp_path / "s.parquet")
    assert SimulatorSpec.from_json(meta[SIMULATOR_METADATA_KEY]) == spec
    assert json.loads(meta[RECORDING_METADATA_KEY])["temperature"] == 0.7
    assert FeatureSpec.from_dict(json.loads(meta[FEATURES_METADATA_KEY])) == FeatureSpec(TOPICS)


def test_a_simulator_record_of_another_world_is_refused(tmp_path: Path) -> None:
    env = SimulatorSpec(CATALOG, SETTINGS).build_env()
    other = SimulatorSpec(CATALOG.model_copy(update={"seed": 4}), SETTINGS)
    with pytest.raises(ValueError, match="does not rebuild this env's world"):
        write_sessions(tmp_path / "t.parquet", env, RecordingConfig(steps=1), simulator=other)
    assert not (tmp_path / "t.parquet").exists()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"steps": 0},
        {"slate_size": 0},
        {"temperature": float("nan")},
        {"policy": "greedy"},
        {"marginal_samples": 0},
        {"num_users": 0},
    ],
)
def test_bad_config_fails_fast(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        RecordingConfig(**kwargs)  # type: ignore[arg-type]


def test_slate_larger_than_candidates_is_refused(env: SlateEnv) -> None:
    with pytest.raises(ValueError, match="exceeds"):
        record_feedback(env, RecordingConfig(steps=1, slate_size=C + 1))


def test_candidate_sets_are_recorded_per_request(env: SlateEnv) -> None:
    logs = record_feedback(env, RecordingConfig(steps=2, slate_size=S, policy="boltzmann"))
    cands = logs.candidate_ids
    assert cands is not None
    assert cands.shape == (len(logs), C)
    assert np.all((cands == logs.item_id[:, None]).any(axis=1))
    per_request = cands.reshape(-1, S, C)
    assert np.all(per_request == per_request[:, :1])  # the same list on every slot row
    assert all(len(set(row)) == C for row in per_request[:, 0].tolist())
