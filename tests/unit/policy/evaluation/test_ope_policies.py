"""Off-policy evaluation of policies re-run on logged candidate sets (format v2)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from recsys.config import CatalogSettings, SimulatorSettings
from recsys.data.logged import (
    VERSION_KEY,
    LoggedFeedback,
    LoggedFeedbackError,
    LoggedFeedbackWriter,
    read_logged_feedback,
    read_logged_feedback_metadata,
)
from recsys.policy.base import SlateSampler
from recsys.policy.batch import SlateObs
from recsys.policy.evaluation.ope import ItemPositionMeanModel
from recsys.policy.evaluation.ope_file import evaluate_ope_file
from recsys.policy.evaluation.ope_policies import (
    CrossFittedRewardModel,
    LoggedRequests,
    load_target_policy,
    parse_policy_spec,
    target_propensities,
)
from recsys.policy.evaluation.simulator import mean_ci
from recsys.policy.exploration import plackett_luce_sample_batch
from recsys.policy.training.envs import SimulatedUsers
from recsys.policy.training.sessions import LoggerDecision, record_sessions
from recsys.recording import RecordingConfig, recording_users, write_sessions
from recsys.simulator import SimulatorSpec, SlateEnv, relevance_scores
from recsys.types import FloatArray, IntArray

F64 = np.float64


def _feedback(cands: IntArray, slate_cols: IntArray, prefix: str = "r") -> LoggedFeedback:
    """A log of ``m`` requests: candidates ``[m, C]``, logged slates as columns ``[m, S]``.

    User feature 0 holds the request index, so a test target can look its scores up.
    """
    m, s = slate_cols.shape
    n = m * s
    rows = np.repeat(np.arange(m), s)
    items = np.take_along_axis(cands, slate_cols, axis=1).reshape(-1)
    return LoggedFeedback(
        request_id=np.array([f"{prefix}{i:04d}" for i in rows]),
        session_id=rows.astype(np.int64),
        step=np.zeros(n, dtype=np.int32),
        ts=np.zeros(n),
        user_id=np.array([f"u{i}" for i in rows]),
        user_idx=rows.astype(np.int64),
        item_id=items.astype(np.int64),
        position=np.tile(np.arange(s, dtype=np.int16), m),
        slate_size=np.full(n, s, dtype=np.int16),
        propensity=np.full(n, 0.5, dtype=np.float32),
        slate_log_propensity=np.full(n, s * np.log(0.5), dtype=np.float32),
        position_propensity=np.full(n, 0.5, dtype=np.float32),
        policy=np.full(n, "test-logger"),
        is_ad=np.zeros(n, dtype=np.bool_),
        click=np.zeros(n, dtype=np.bool_),
        dwell_s=np.zeros(n, dtype=np.float32),
        like=np.zeros(n, dtype=np.bool_),
        conversion=np.zeros(n, dtype=np.bool_),
        revenue=np.zeros(n, dtype=np.float32),
        skip=np.zeros(n, dtype=np.bool_),
        hidden_ltv=np.full(n, np.nan, dtype=np.float32),
        user_features=rows[:, None].astype(np.float32),
        item_features=np.zeros((n, 1), dtype=np.float32),
        candidate_ids=np.repeat(cands, s, axis=0).astype(np.int64),
    )


class FixedScores:
    """A test target: fixed scores per request (looked up by user feature 0), any sampler."""

    name = "fixed"

    def __init__(
        self, scores: FloatArray, sampler: SlateSampler, is_ad: np.ndarray | None = None
    ) -> None:
        self.scores = np.asarray(scores, dtype=F64)
        self.sampler = sampler
        self.is_ad = is_ad

    def obs(self, rows: IntArray, candidate_ids: IntArray) -> SlateObs:
        b, c = candidate_ids.shape
        return SlateObs(
            user_features=rows[:, None].astype(np.float32),
            item_features=np.zeros((b, c, 0), dtype=np.float32),
            candidate_ids=candidate_ids,
            is_ad=None if self.is_ad is None else self.is_ad[rows],
        )

    def behaviour(
        self, user_features: FloatArray, candidate_ids: IntArray, slate_size: int
    ) -> tuple[np.ndarray, SlateObs]:
        rows = user_features[:, 0].astype(np.int64)
        return self.scores[rows], self.obs(rows, candidate_ids)


# --- grouping -------------------------------------------------------------------------------


def test_requests_hold_candidates_and_logged_columns() -> None:
    cands = np.array([[10, 11, 12, 13], [20, 21, 22, 23]])
    logs = _feedback(cands, np.array([[2, 0], [3, 1]]))
    req = LoggedRequests.from_feedback(logs)
    np.testing.assert_array_equal(req.candidate_ids, cands)
    np.testing.assert_array_equal(req.logged_candidate, [2, 0, 3, 1])
    np.testing.assert_array_equal(req.slate_candidates, [[2, 0], [3, 1]])
    assert (req.n_requests, req.num_candidates, req.max_slate_size) == (2, 4, 2)


def test_short_slates_are_padded_with_unused_candidates() -> None:
    logs = _feedback(np.array([[10, 11, 12, 13]] * 2), np.array([[2, 0], [3, 1]]))
    short = LoggedFeedback.concat(
        [logs, _feedback(np.array([[30, 31, 32, 33]]), np.array([[1]]), prefix="s")]
    )
    req = LoggedRequests.from_feedback(short)
    assert req.max_slate_size == 2
    np.testing.assert_array_equal(req.slate_candidates[2], [1, 0])  # padded with column 0


def test_logs_the_target_cannot_be_rerun_on_are_refused() -> None:
    cands = np.array([[10, 11, 12, 13], [20, 21, 22, 23]])
    logs = _feedback(cands, np.array([[2, 0], [3, 1]]))
    with pytest.raises(ValueError, match="no candidate sets"):
        LoggedRequests.from_feedback(replace(logs, candidate_ids=None))
    with pytest.raises(ValueError, match="no candidate sets"):
        load_target_policy("random", replace(logs, candidate_ids=None))
    assert logs.candidate_ids is not None
    other = logs.candidate_ids.copy()
    other[1] = [13, 12, 11, 10]  # second row of request r0000 sees the list in another order
    with pytest.raises(ValueError, match="candidate_ids differ between the rows of request"):
        LoggedRequests.from_feedback(replace(logs, candidate_ids=other))
    users = logs.user_features.copy()
    users[1] = 7.0
    with pytest.raises(ValueError, match="user_features differ"):
        LoggedRequests.from_feedback(replace(logs, user_features=users))
    dup = _feedback(np.array([[10, 10, 12, 13]]), np.array([[2, 0]]))
    with pytest.raises(ValueError, match="lists a candidate twice"):
        LoggedRequests.from_feedback(dup)


def test_partial_slates_cannot_be_rerun() -> None:
    logs = _feedback(np.array([[10, 11, 12, 13]]), np.array([[2, 0]]))
    partial = replace(logs, slate_size=np.full(2, 3, dtype=np.int16))
    with pytest.raises(LoggedFeedbackError, match="'r0000' has 2 rows but slate_size 3"):
        LoggedRequests.from_feedback(partial)


def test_policy_specs() -> None:
    assert parse_policy_spec("random").kind == "random"
    spec = parse_policy_spec("boltzmann:0.25")
    assert (spec.kind, spec.temperature, str(spec)) == ("boltzmann", 0.25, "boltzmann:0.25")
    for bad in ("boltzmann", "boltzmann:0", "boltzmann:x", "boltzmann:inf", "/no/such/dir"):
        with pytest.raises(ValueError, match="policy"):
            parse_policy_spec(bad)


# --- propensities against the sampler itself ------------------------------------------------

M_REQ, C, S = 4, 6, 3


def _scores() -> np.ndarray:
    scores = np.random.default_rng(3).normal(size=(M_REQ, C))
    scores[0, 1] = scores[0, 2] = scores[0].max() + 0.5  # a tie for the best item
    return scores


def _empirical(
    target: FixedScores, req: LoggedRequests, draws: int, q: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Frequencies of each row's logged item at its slot, and the mean qhat at its slot."""
    rows = np.repeat(np.arange(M_REQ), draws)
    obs = target.obs(rows, req.candidate_ids[rows])
    slates = target.sampler.sample(target.scores[rows], obs, S, np.random.default_rng(7)).slates
    slates = slates.reshape(M_REQ, draws, S)
    sid, pos = req.slates.slate, req.slates.position
    at_k = slates[sid, :, pos]
    freq = (at_k == req.logged_candidate[:, None]).mean(axis=1)
    mean_q = q[sid[:, None], at_k, pos[:, None]].mean(axis=1)
    return freq, mean_q


@pytest.mark.parametrize(
    ("sampler", "ads"),
    [
        (SlateSampler("epsilon", epsilon=0.3), False),
        (SlateSampler("epsilon", epsilon=1.0), False),
        (SlateSampler("boltzmann", temperature=0.7), False),
        (SlateSampler("greedy"), False),
        (SlateSampler("epsilon", epsilon=0.3, max_ads=1), True),
        (SlateSampler("epsilon", epsilon=0.3, max_ads=2, min_ads=1), True),
        (SlateSampler("boltzmann", temperature=0.7, max_ads=1, min_ads=1), True),
    ],
    ids=[
        "epsilon",
        "uniform",
        "plackett_luce",
        "greedy",
        "epsilon_ads_cap",
        "epsilon_ad_load",
        "plackett_luce_ad_load",
    ],
)
def test_propensities_match_the_samplers_distribution(sampler: SlateSampler, ads: bool) -> None:
    rng = np.random.default_rng(0)
    cands = np.arange(M_REQ * C).reshape(M_REQ, C) + 100
    slate_cols = np.argsort(rng.random((M_REQ, C)), axis=1)[:, :S]
    slate_cols[0] = [1, 2, 0]  # the tied best items, lower index first: greedy's order
    is_ad = (np.arange(C) % 2 == 0)[None, :].repeat(M_REQ, axis=0) if ads else None
    target = FixedScores(_scores(), sampler, is_ad)
    req = LoggedRequests.from_feedback(_feedback(cands, slate_cols))

    # A direct-method model: random qhat per (item, position), cross-fitted halves alike.
    items = np.repeat(cands.reshape(-1), S)
    pos = np.tile(np.arange(S), cands.size)
    ipm = ItemPositionMeanModel.fit(items, pos, rng.random(items.size), prior_strength=0.01)
    model = CrossFittedRewardModel(models=(ipm, ipm), fold=np.arange(M_REQ) % 2)
    q = ipm.predict(cands[:, :, None], np.arange(S)[None, None, :])

    n_samples = 4000
    tp = target_propensities(
        req, target, n_samples=n_samples, seed=1, reward_model=model, chunk_elements=2 * C * 4000
    )  # two requests per chunk: chunking must not change anything
    sid, k = req.slates.slate, req.slates.position
    obs = target.obs(np.arange(M_REQ), cands)
    exact = np.exp(sampler.log_propensities(target.scores, obs, req.slate_candidates))
    np.testing.assert_allclose(tp.propensity, exact[sid, k].astype(np.float32), rtol=1e-7)
    freq, mean_q = _empirical(target, req, 50_000, q)
    assert tp.position_propensity is not None
    np.testing.assert_allclose(tp.position_propensity, freq, atol=0.02)
    # Rao-Blackwellised or exact: the top slot's marginal is its conditional, and every
    # logged item (one the sampler can put there) keeps a positive marginal.
    np.testing.assert_allclose(tp.position_propensity[k == 0], tp.propensity[k == 0], 1e-6)
    if sampler.kind != "greedy":
        assert (tp.position_propensity > 0).all()
    assert tp.reward_predictions is not None
    np.testing.assert_allclose(tp.reward_predictions.logged, q[sid, req.logged_candidate, k])
    np.testing.assert_allclose(tp.reward_predictions.target, mean_q, atol=0.02)
    if sampler.kind == "greedy":
        assert set(tp.position_propensity.tolist()) <= {0.0, 1.0}
        assert tp.propensity[0] == 1.0  # the tie goes to the lower candidate index


# --- known answer: Plackett-Luce logger, Plackett-Luce targets ------------------------------

N_LOG, N_ON, WARMUP = 4000, 20_000, 5
KNOWN = SimulatorSpec(
    CatalogSettings(num_items=500, num_users=N_LOG + N_ON, num_topics=8, seed=1),
    SimulatorSettings(num_candidates=10, slate_size=3),
)
T_LOGGER, T_TARGET = 1.0, 0.1


def _rows(logs: LoggedFeedback, keep: np.ndarray) -> LoggedFeedback:
    return logs.take(keep)


@pytest.fixture(scope="module")
def boltzmann_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The requests of step ``WARMUP`` of N_LOG fresh users served by a PL logger.

    The logged user features are event-derived: a fresh user's are all zero (the logger is
    uniform for them), and the ``WARMUP`` earlier slates of the logger gave the users the
    events that make its step-``WARMUP`` slates personal. Those requests alone are kept, so
    the known answer is one simulation: the logger for ``WARMUP`` steps, then the target.
    """
    root = tmp_path_factory.mktemp("ope")
    cfg = RecordingConfig(
        steps=WARMUP + 1,
        slate_size=3,
        policy="boltzmann",
        temperature=T_LOGGER,
        num_users=N_LOG,
        marginal_samples=50,
    )
    logs = write_sessions(root / "all.parquet", KNOWN.build_env(), cfg, simulator=KNOWN)
    meta = read_logged_feedback_metadata(root / "all.parquet")
    meta.pop(VERSION_KEY)
    path = root / "logs.parquet"
    with LoggedFeedbackWriter(path, metadata=meta) as writer:
        writer.write(_rows(logs, logs.ts == WARMUP))
    return path


class _PlackettLuce:
    """Plackett-Luce over the relevance score at ``temperature`` (``None``: uniform) once
    ``start`` steps have passed, the logger's own rule before."""

    name = "switch"

    def __init__(self, temperature: float | None, start: int) -> None:
        self.temperature = temperature
        self.start = start
        self.steps = 0

    def decide(
        self, users: SimulatedUsers, rows: IntArray, obs: SlateObs, rng: np.random.Generator
    ) -> LoggerDecision:
        on = self.steps >= self.start
        self.steps += 1
        scores = relevance_scores(users.core, obs.user_features, obs.candidate_ids)
        if on and self.temperature is None:
            scores = np.zeros_like(scores)
        temperature = (self.temperature or 1.0) if on else T_LOGGER
        slates, cond, _ = plackett_luce_sample_batch(scores, 3, temperature, rng)
        return LoggerDecision(slates, cond, cond)


def _on_policy_clicks(temperature: float | None) -> dict[str, float]:
    """The target's value measured by running it at step ``WARMUP`` on N_ON other fresh
    users after ``WARMUP`` steps of the logger (``temperature=None``: uniformly random)."""
    world = KNOWN.build_world().select_users(np.arange(N_LOG, N_LOG + N_ON, dtype=np.int64))
    env = SlateEnv(world, seed=99, settings=KNOWN.simulator)
    users = recording_users(env, RecordingConfig(steps=WARMUP + 1, slate_size=3, seed=7))
    log = record_sessions(
        users, _PlackettLuce(temperature, WARMUP), max_steps=WARMUP + 1, seed=5, one_life=False
    )
    return mean_ci(log.signals[log.step == WARMUP][..., 0].sum(axis=1))


def test_the_loggers_own_temperature_gives_weights_of_one(boltzmann_log: Path) -> None:
    """The recomputed propensities are the logged ones (the same sampler code, but scores
    recomputed from the logged features in other batch shapes: equal up to float32 rounding,
    so compared with a tolerance, not bit for bit)."""
    logs = read_logged_feedback(boltzmann_log)
    assert (logs.user_features[:, : KNOWN.catalog.num_topics] > 0).any(axis=1).mean() > 0.5
    loaded = load_target_policy(f"boltzmann:{T_LOGGER}", logs, simulator=KNOWN)
    tp = target_propensities(LoggedRequests.from_feedback(logs), loaded.policy, n_samples=50)
    np.testing.assert_allclose(tp.propensity, logs.propensity.astype(np.float64), rtol=1e-6)
    out = evaluate_ope_file(boltzmann_log, policy=f"boltzmann:{T_LOGGER}", n_bootstrap=50)
    est = out["estimates"]
    assert est["ips"]["value"] == pytest.approx(est["logged"]["value"], rel=1e-5)
    assert est["ips"]["mean_weight"] == pytest.approx(1.0, rel=1e-5)
    assert out["logging_policies"] == ["boltzmann-logger"]


@pytest.mark.parametrize(
    ("policy", "temperature"), [(f"boltzmann:{T_TARGET}", T_TARGET), ("random", None)]
)
def test_another_policy_is_estimated_within_its_ci(
    boltzmann_log: Path, policy: str, temperature: float | None
) -> None:
    truth = _on_policy_clicks(temperature)
    out = evaluate_ope_file(boltzmann_log, policy=policy, n_bootstrap=300)
    est = out["estimates"]
    for name in ("ips", "snips", "dr"):
        assert est[name]["ci_low"] <= truth["mean"] <= est[name]["ci_high"], (name, truth, est)
    if temperature is not None:
        # The sharper target differs from the logger: the logged value is not the answer.
        assert not est["logged"]["ci_low"] <= truth["mean"] <= est["logged"]["ci_high"]


def test_boltzmann_needs_the_simulator_record(boltzmann_log: Path) -> None:
    logs = read_logged_feedback(boltzmann_log)
    with pytest.raises(ValueError, match="does not record its simulator"):
        load_target_policy("boltzmann:1", logs)
    other = SimulatorSpec(KNOWN.catalog.model_copy(update={"seed": 2}), KNOWN.simulator)
    with pytest.raises(ValueError, match="another catalog"):
        load_target_policy("boltzmann:1", logs, simulator=other)


# --- trained checkpoints --------------------------------------------------------------------


def _simulated(path: Path, *, seed: int = 0, num_topics: int = 6) -> LoggedFeedback:
    """Random slates over the small policies' world (unless ``seed`` / ``num_topics``
    differ), user features from the event fold, as the checkpoints read them."""
    spec = SimulatorSpec(
        CatalogSettings(num_items=300, num_users=60, num_topics=num_topics, seed=seed),
        SimulatorSettings(num_candidates=15, slate_size=3),
    )
    cfg = RecordingConfig(steps=4, slate_size=3, policy="random")
    return write_sessions(path, spec.build_env(), cfg, simulator=spec)


@pytest.mark.parametrize("algo", ["slateq", "reinforce"])
def test_checkpoint_propensities_are_those_of_its_act(
    algo: str, small_policies: dict[str, Path], tmp_path: Path
) -> None:
    logs = _simulated(tmp_path / "logs.parquet")
    loaded = load_target_policy(str(small_policies[algo]), logs)
    assert loaded.reward_model is not None  # trained on the learned reward
    req = LoggedRequests.from_feedback(logs)
    target = loaded.policy
    features = target.features  # type: ignore[attr-defined]
    assert features.kind == "event"
    policy = target.policy  # type: ignore[attr-defined]
    obs = features.obs(req.user_features, req.candidate_ids)
    action = policy.act(obs, 3, np.random.default_rng(4), explore=True)
    # Log exactly the slates the policy chose: the recomputed propensities must be its own.
    chosen = np.take_along_axis(req.candidate_ids, action.slates, axis=1).reshape(-1)
    acted = LoggedRequests.from_feedback(replace(logs, item_id=chosen))
    tp = target_propensities(acted, target, n_samples=20, chunk_elements=20 * 15 * 16)
    np.testing.assert_allclose(tp.propensity, action.propensities.reshape(-1), rtol=1e-5)
    assert tp.position_propensity is not None
    assert np.all((tp.position_propensity >= 0) & (tp.position_propensity <= 1))


def test_a_checkpoint_from_another_world_is_refused(
    small_policies: dict[str, Path], tmp_path: Path
) -> None:
    path = str(small_policies["slateq"])
    with pytest.raises(ValueError, match="another catalog"):
        load_target_policy(path, _simulated(tmp_path / "a.parquet", seed=5))
    with pytest.raises(ValueError, match="user features of width"):
        load_target_policy(path, _simulated(tmp_path / "b.parquet", num_topics=4))
    with pytest.raises(ValueError, match="not a policy checkpoint"):
        load_target_policy(str(tmp_path), _simulated(tmp_path / "c.parquet"))


def test_direct_method_is_cross_fitted_and_opt_in(boltzmann_log: Path) -> None:
    logs = read_logged_feedback(boltzmann_log)
    req = LoggedRequests.from_feedback(logs)
    model = CrossFittedRewardModel.fit(req, logs.item_id, logs.click)
    assert model is not None
    assert set(np.bincount(model.fold).tolist()) == {N_LOG // 2}
    one = LoggedRequests.from_feedback(_feedback(np.array([[1, 2, 3]]), np.array([[0, 1]])))
    assert CrossFittedRewardModel.fit(one, [1, 2], [0.0, 1.0]) is None  # one half is empty
    plain = evaluate_ope_file(boltzmann_log, policy="boltzmann:0.4", n_bootstrap=20)
    assert "dm" not in plain["estimates"]
    with_dm = evaluate_ope_file(
        boltzmann_log, policy="boltzmann:0.4", n_bootstrap=20, direct_method=True
    )
    assert "dm" in with_dm["estimates"]
    # The control variate does not touch IPS; the two runs reach it by different code paths
    # (BLAS, summation order), so floats agree to rounding, everything else exactly.
    ips, plain_ips = with_dm["estimates"]["ips"], plain["estimates"]["ips"]
    assert ips.keys() == plain_ips.keys()
    for key, value in plain_ips.items():
        if isinstance(value, float):
            assert ips[key] == pytest.approx(value, rel=1e-9), key
        else:
            assert ips[key] == value, key
    with pytest.raises(ValueError, match="direct_method needs a policy"):
        evaluate_ope_file(boltzmann_log, target_column="propensity", direct_method=True)
    with pytest.raises(ValueError, match="exactly one of"):
        evaluate_ope_file(boltzmann_log)


def test_a_served_directory_without_marginals_leaves_item_position_estimators_out(
    boltzmann_log: Path, tmp_path: Path
) -> None:
    """A joined production log knows the slot propensities but not the marginals: the
    policy path runs the slate estimators and says what it left out."""
    logs = read_logged_feedback(boltzmann_log)
    served = replace(logs, position_propensity=np.full(len(logs), np.nan, np.float32))
    meta = read_logged_feedback_metadata(boltzmann_log)
    meta.pop(VERSION_KEY)
    half = len(served) // 2
    for day, rows in (("2024-05-01", slice(0, half)), ("2024-05-02", slice(half, None))):
        part = tmp_path / "rows" / f"date={day}" / "part-0.parquet"
        with LoggedFeedbackWriter(part, metadata=meta) as writer:
            writer.write(served.take(rows))
    out = evaluate_ope_file(tmp_path, policy="random", n_bootstrap=20)
    assert out["rows"] == len(logs)
    assert list(out["estimates"]) == ["logged", "ips", "snips", "dr"]
    assert "position_propensity" in out["notes"][0]
    whole = evaluate_ope_file(boltzmann_log, policy="random", n_bootstrap=20)
    assert out["estimates"]["ips"] == whole["estimates"]["ips"]
