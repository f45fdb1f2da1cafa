"""The promotion gate: held-out off-policy estimates decide, a promoted candidate is what the
serving registry hot-loads next, a degraded one never reaches it, and rollback still works."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from recsys.artifacts import load_artifact
from recsys.pipeline import SimulatorSetup
from recsys.policy.evaluation.ope import (
    LoggedSlates,
    RewardPredictions,
    TargetPropensities,
    evaluate_off_policy,
)
from recsys.policy.gate import (
    DECISION_FILE,
    GateConfig,
    PromotionGate,
    _logged_terms,
    _paired_differences,
    _position_terms,
    decision_path,
)
from recsys.policy.online import OnlineLearner
from recsys.serving.policies import PolicyRegistry, load_served_policy, retrieval_fallback
from recsys.serving.routing import PolicyRouter
from tests.artifact_copies import corrupt_copy
from tests.unit.policy.online_world import (
    chunks,
    fresh_learner,
    joined_logs,
    publish_negated,
)

NAME = "slateq"


@pytest.fixture(scope="module")
def trained(
    small_setup: SimulatorSetup, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path, OnlineLearner]:
    """``(untrained candidate, trained candidate, learner)``: a SlateQ learner's first
    candidate, before any data, and its candidate after the joined logs of a
    softmax-exploring logger. Read-only: copy what a test changes."""
    staging = tmp_path_factory.mktemp("staging")
    learner = fresh_learner(small_setup, staging)
    untrained = learner.publish_candidate()
    for batch in chunks(joined_logs(), 10):
        learner.observe(batch)
    return untrained, learner.publish_candidate(), learner


def _stage(path: Path, staging: Path) -> Path:
    """A copy of a candidate in a test's own staging root (decisions are written beside)."""
    dst = staging / path.parent.name / path.name
    shutil.copytree(path, dst)
    return dst


def _registry(root: Path, setup: SimulatorSetup) -> PolicyRegistry:
    """The serving registry of ``policy-slateq`` under ``root``, built as serving builds it."""
    features = setup.features()
    assert features.retrieval_version is not None
    loader = partial(
        load_served_policy,
        name=NAME,
        spec=features.spec,
        num_items=features.num_items,
        retrieval_version=features.retrieval_version,
    )
    return PolicyRegistry(root, NAME, loader, retrieval_fallback(1.0, features.retrieval_version))


def test_a_better_candidate_is_promoted_and_served_a_degraded_one_refused_and_rollback_works(
    trained: tuple[Path, Path, OnlineLearner], small_setup: SimulatorSetup, tmp_path: Path
) -> None:
    untrained, good, learner = trained
    staging, root = tmp_path / "staging", tmp_path / "artifacts"
    # What serves now: the untrained policy (random-ish rankings), published as serving does.
    (root / f"policy-{NAME}").mkdir(parents=True)
    first = root / f"policy-{NAME}" / untrained.name
    shutil.copytree(untrained, first)
    router = PolicyRouter.single(_registry(root, small_setup))
    registry = router.arms[0].registry
    assert router.refresh()
    assert registry.serving_version == first.name

    gate = PromotionGate(root, NAME, GateConfig(margin=0.0), reward_model=small_setup.reward_model)
    heldout = learner.heldout()
    assert heldout is not None
    candidate = _stage(good, staging)
    decision = gate.evaluate(candidate, gate.newest(), heldout)
    assert decision.promote, decision.reasons
    assert decision.serving_version == first.name
    # Item-position SNIPS and DR by default; a genuine gain passes at margin 0.
    assert set(decision.comparisons) == {"sniips", "position_dr"}
    assert decision.logger_marginals == "log"
    for c in decision.comparisons.values():
        assert c.difference == pytest.approx(c.candidate - c.serving, abs=1e-9)
        assert c.passed
        assert 0 < c.ci_low < c.difference < c.ci_high
        assert c.ess >= gate.config.min_ess
    # position_dr is evaluate_off_policy's, term for term.
    dr = decision.comparisons["position_dr"]
    assert dr.candidate == pytest.approx(decision.candidate_estimates["position_dr"]["value"])
    assert dr.serving == pytest.approx(decision.serving_estimates["position_dr"]["value"])
    record = json.loads(decision_path(candidate).read_text())
    assert record["promote"] is True
    assert record["outcome"] == "pending"
    assert "paired percentile bootstrap" in record["rule"]

    published = gate.promote(decision)
    assert published is not None
    assert published.parent == root / f"policy-{NAME}"
    assert published.name > first.name
    assert gate.stats.promoted == 1
    assert json.loads(decision_path(candidate).read_text())["outcome"] == "promoted"
    inside = json.loads(load_artifact(published).file(DECISION_FILE).read_text())
    assert inside["candidate_version"] == candidate.name
    # The registry's next refresh hot-loads the promoted version.
    assert router.refresh()
    assert registry.serving_version == published.name
    assert router.current().version == f"{NAME}@{published.name}"
    assert registry.stats.refused == 0

    # A degraded candidate (value heads negated: it serves what it believes worst) is refused
    # because it is estimated worse, on enough evidence (its ESS passes).
    bad = publish_negated(candidate, staging)
    refusal = gate.evaluate(bad, gate.newest(), heldout)
    assert not refusal.promote
    assert refusal.serving_version == published.name
    for c in refusal.comparisons.values():
        assert not c.passed
        assert c.ci_high < 0
        assert c.ess >= gate.config.min_ess
    assert all(r.startswith(("SNIIPS", "POSITION_DR")) for r in refusal.reasons)
    assert gate.promote(refusal) is None
    assert gate.stats.refused == 1
    assert gate.stats.last_reason.startswith("SNIIPS")
    assert registry.versions() == [first.name, published.name]  # nothing published
    assert json.loads(decision_path(bad).read_text())["outcome"] == "refused"
    assert not router.refresh()
    assert registry.serving_version == published.name

    # The admin rollback pins the version that served before the promotion.
    listing = router.rollback(NAME)
    assert listing["arms"][0]["serving_version"] == first.name
    assert router.current().version == f"{NAME}@{first.name}"


def test_a_candidate_equal_to_serving_differs_by_exactly_zero_on_every_resample(
    trained: tuple[Path, Path, OnlineLearner], small_setup: SimulatorSetup, tmp_path: Path
) -> None:
    """The bootstrap is paired: a policy compared with itself differs by 0 on every resample,
    so it passes a margin of 0 and fails a demand for a shown improvement (margin < 0);
    unpaired intervals would straddle 0 by their own width."""
    _, good, learner = trained
    heldout = learner.heldout()
    assert heldout is not None
    root = tmp_path / "artifacts"
    serving = _stage(good, root)
    candidate = _stage(good, tmp_path / "staging")
    model = small_setup.reward_model
    decision = PromotionGate(root, NAME, reward_model=model).evaluate(candidate, serving, heldout)
    for c in decision.comparisons.values():
        assert (c.difference, c.ci_low, c.ci_high) == (0.0, 0.0, 0.0)
    iips = decision.candidate_estimates["iips"]
    assert iips["ci_high"] - iips["ci_low"] > 0.1  # the unpaired interval is wide
    assert decision.promote
    strict = PromotionGate(root, NAME, GateConfig(margin=-0.01), reward_model=model)
    assert not strict.evaluate(candidate, serving, heldout).promote


def test_without_a_serving_version_the_candidate_faces_the_logged_reward(
    trained: tuple[Path, Path, OnlineLearner], small_setup: SimulatorSetup, tmp_path: Path
) -> None:
    untrained, good, learner = trained
    heldout = learner.heldout()
    assert heldout is not None
    gate = PromotionGate(tmp_path / "artifacts", NAME, reward_model=small_setup.reward_model)
    assert gate.newest() is None
    decision = gate.evaluate(_stage(good, tmp_path / "staging"), None, heldout)
    logged = decision.candidate_estimates["logged"]["value"]
    assert decision.serving_version is None
    assert all(c.serving == logged for c in decision.comparisons.values())
    assert decision.promote
    published = gate.promote(decision)
    assert published is not None
    assert gate.versions() == [published.name]
    # An untrained candidate does not beat the logger it would replace.
    weak = gate.evaluate(_stage(untrained, tmp_path / "staging"), None, heldout)
    assert not weak.promote


def test_unusable_candidates_and_logs_are_refused_with_the_reason(
    trained: tuple[Path, Path, OnlineLearner], small_setup: SimulatorSetup, tmp_path: Path
) -> None:
    _, good, learner = trained
    heldout = learner.heldout()
    assert heldout is not None
    staging = tmp_path / "staging"
    gate = PromotionGate(tmp_path / "artifacts", NAME, reward_model=small_setup.reward_model)
    corrupt = corrupt_copy(_stage(good, staging), "zz-corrupt")
    decision = gate.evaluate(corrupt, None, heldout)
    assert not decision.promote
    assert "checksum" in decision.reasons[0]
    assert gate.promote(decision) is None
    assert gate.stats.refused == 1
    # Requests without propensities (a joined row may lack one) are dropped, not guessed.
    propensity = heldout.propensity.copy()
    propensity[0] = float("nan")  # one slot of the first request
    unknown = replace(heldout, propensity=propensity)
    candidate = _stage(good, tmp_path / "staging-2")
    partial_known = gate.evaluate(candidate, None, unknown)
    assert partial_known.dropped_requests == 1
    assert partial_known.requests == len(heldout) // 2 - 1
    # Too few requests for the candidate's weights to mean anything: refused on ESS.
    few = gate.evaluate(candidate, None, heldout.take(list(range(40))))
    assert not few.promote
    assert few.requests == 20
    assert any(r.startswith("candidate ESS") and "< 50" in r for r in few.reasons)
    # Item-position estimates need the logger's marginals: without them and without a serving
    # version to recompute them from, nothing can be said.
    blind = replace(heldout, position_propensity=np.full(len(heldout), np.nan, np.float32))
    no_marginals = gate.evaluate(candidate, None, blind)
    assert not no_marginals.promote
    assert "marginal position propensities" in no_marginals.reasons[0]
    assert gate.stats.evaluated == 4


def test_a_promoted_version_sorts_after_every_version_already_there(
    trained: tuple[Path, Path, OnlineLearner], small_setup: SimulatorSetup, tmp_path: Path
) -> None:
    """Serving takes the newest name and rollback the newest older one, so a promoted
    version must sort last even when its own name would not (e.g. after a hand-published
    ``zz-...`` version)."""
    untrained, good, learner = trained
    heldout = learner.heldout()
    assert heldout is not None
    root = tmp_path / "artifacts"
    (root / f"policy-{NAME}").mkdir(parents=True)
    shutil.copytree(untrained, root / f"policy-{NAME}" / "zz-by-hand")
    gate = PromotionGate(root, NAME, reward_model=small_setup.reward_model)
    serving = gate.newest()
    assert serving is not None
    decision = gate.evaluate(_stage(good, tmp_path / "staging"), serving, heldout)
    published = gate.promote(decision)
    assert published is not None
    assert published.name.startswith("zz-by-hand-")
    assert gate.versions()[-1] == published.name
    registry = _registry(root, small_setup)
    assert registry.refresh()
    assert registry.serving_version == published.name


def test_the_slate_estimators_remain_an_option_and_match_evaluate_off_policy(
    trained: tuple[Path, Path, OnlineLearner], small_setup: SimulatorSetup, tmp_path: Path
) -> None:
    untrained, good, learner = trained
    heldout = learner.heldout()
    assert heldout is not None
    root = tmp_path / "artifacts"
    serving = _stage(untrained, root)
    config = GateConfig(estimators=("snips", "dr", "sniips"))
    gate = PromotionGate(root, NAME, config, reward_model=small_setup.reward_model)
    decision = gate.evaluate(_stage(good, tmp_path / "staging"), serving, heldout)
    assert set(decision.comparisons) == {"snips", "dr", "sniips"}
    for e in ("snips", "dr"):
        c = decision.comparisons[e]
        # The gate's paired difference is the difference of evaluate_off_policy's values.
        assert c.candidate == pytest.approx(decision.candidate_estimates[e]["value"])
        assert c.serving == pytest.approx(decision.serving_estimates[e]["value"])
        assert c.ess == decision.candidate_estimates["snips"]["ess"]
    # Two slots of six candidates: slate weights still work here, but the position weights
    # keep more of the sample (the reason they are the default on 10-slot slates).
    assert decision.comparisons["sniips"].ess > decision.comparisons["snips"].ess


def _slates(position_propensity: list[float]) -> LoggedSlates:
    """Two requests of two slots, logging propensities 0.5 (conditional) and as given."""
    return LoggedSlates.from_arrays(
        ["a", "a", "b", "b"], [0, 1, 0, 1], [0.5] * 4, position_propensity, [1, 2, 3, 4]
    )


def test_item_position_estimators_on_a_case_computed_by_hand() -> None:
    slates = _slates([0.5, 0.25, 0.5, 0.5])
    rewards = np.array([1.0, 0.0, 0.0, 2.0])
    q = RewardPredictions(logged=np.array([0.5, 0.5, 0.5, 0.5]), target=np.array([1.0] * 4))
    # The target's marginals of the logged items: weights 2, 4, 0 and 1.
    pi = np.array([1.0, 1.0, 0.0, 0.5])
    assert slates.position_propensity is not None
    terms = _position_terms(slates, pi / slates.position_propensity, rewards, q)
    logged = _logged_terms(slates, rewards)
    out = _paired_differences(
        terms, logged, ("sniips", "position_dr"), n_bootstrap=200, confidence=0.9, seed=0
    )
    # SNIIPS: position 0 (2*1 + 0*0) / (2 + 0) = 1; position 1 (4*0 + 1*2) / (4 + 1) = 0.4.
    cand, serv, diff, low, high = out["sniips"]
    assert cand == pytest.approx(1.4, abs=1e-12)
    assert serv == pytest.approx(1.5, abs=1e-12)  # logged: (1 + 0 + 0 + 2) / 2 slates
    assert diff == pytest.approx(-0.1, abs=1e-12)
    assert low <= diff <= high
    # Position DR: per slot qhat_pi + w (r - qhat); slate a: (1 + 2*0.5) + (1 + 4*(-0.5)) = 1,
    # slate b: (1 + 0) + (1 + 1*1.5) = 3.5; mean over slates 2.25.
    assert out["position_dr"][0] == pytest.approx(2.25, abs=1e-12)
    # It is evaluate_off_policy's position_dr, which also has the unnormalised IIPS:
    # (2*1 + 4*0 + 0*0 + 1*2) / 2 slates = 2.
    target = TargetPropensities(propensity=None, position_propensity=pi, reward_predictions=q)
    res = evaluate_off_policy(slates, target, slot_rewards=rewards, n_bootstrap=0)
    assert res["position_dr"].value == pytest.approx(2.25, abs=1e-12)
    assert res["iips"].value == pytest.approx(2.0, abs=1e-12)


def test_a_target_equal_to_the_logger_gets_the_logged_mean_on_every_resample() -> None:
    rng = np.random.default_rng(0)
    n = 300
    marginal = rng.uniform(0.05, 1.0, size=2 * n)
    slates = LoggedSlates.from_arrays(
        np.repeat(np.arange(n), 2), np.tile([0, 1], n), marginal, marginal
    )
    rewards = rng.binomial(1, 0.3, size=2 * n).astype(np.float64)
    q = RewardPredictions(logged=rng.uniform(size=2 * n), target=rng.uniform(size=2 * n))
    terms = _position_terms(slates, marginal / marginal, rewards, q)
    out = _paired_differences(
        terms,
        _logged_terms(slates, rewards),
        ("sniips",),
        n_bootstrap=200,
        confidence=0.95,
        seed=1,
    )
    cand, _serv, diff, low, high = out["sniips"]
    assert cand == pytest.approx(rewards.sum() / n, abs=1e-12)
    assert (diff, low, high) == pytest.approx((0.0, 0.0, 0.0), abs=1e-12)


def test_without_logged_marginals_the_logger_is_recomputed_from_serving_on_its_own_rows(
    trained: tuple[Path, Path, OnlineLearner], small_setup: SimulatorSetup, tmp_path: Path
) -> None:
    """Joined logs carry no marginals: the gate re-runs serving (the logger) for them, on the
    rows serving logged, so serving's weights are 1 and its SNIIPS is the logged mean."""
    _, good, learner = trained
    heldout = learner.heldout()
    assert heldout is not None
    root = tmp_path / "artifacts"
    serving = _stage(good, root)
    requests = np.unique(heldout.request_id, return_inverse=True)[1].reshape(-1)
    # A third of the requests another version served, a third the serving one, the rest say
    # nothing of their version (a simulated logger's name).
    policy = np.where(
        requests % 3 == 0,
        "slateq@slateq@some-older-version",
        np.where(requests % 3 == 1, f"slateq@slateq@{serving.name}", "boltzmann-logger"),
    )
    joined = replace(
        heldout,
        policy=policy,
        position_propensity=np.full(len(heldout), np.nan, np.float32),
    )
    gate = PromotionGate(root, NAME, reward_model=small_setup.reward_model)
    decision = gate.evaluate(_stage(good, tmp_path / "staging"), serving, joined)
    assert decision.logger_marginals == "serving"
    assert decision.foreign_requests == int((np.unique(requests) % 3 == 0).sum())
    assert decision.requests == len(np.unique(requests)) - decision.foreign_requests
    logged = decision.candidate_estimates["logged"]["value"]
    sniips = decision.comparisons["sniips"]
    assert sniips.serving == pytest.approx(logged, abs=1e-9)
    # The candidate is serving: weights 1, differences 0, promoted at margin 0.
    assert (sniips.difference, sniips.ci_low, sniips.ci_high) == (0.0, 0.0, 0.0)
    assert decision.promote, decision.reasons
