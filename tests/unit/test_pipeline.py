"""The offline jobs on a small simulator setup: evaluate named policies, train and publish
servable policies, and share one retrieval artifact between setups with the same key."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from recsys.candidates import RETRIEVAL_ARTIFACT
from recsys.config import CandidateSettings
from recsys.pipeline import (
    SETUP_FIELDS,
    SimulatorSetup,
    evaluate_sim_policies,
    publish_policy,
    served_policy,
    setup_config,
    setup_key,
    train_and_publish,
    train_simulator_retrieval,
)
from recsys.policy.algorithms.baselines import MyopicGreedyPolicy
from recsys.policy.batch import gather_slots
from recsys.policy.evaluation.simulator import evaluate_in_simulator, validation_users
from recsys.policy.training.checkpoint import load_policy_checkpoint
from recsys.policy.training.config import PolicyTrainConfig, documented_config
from tests.unit.policy.configs import SMALL_CANDIDATES, SMALL_SIMULATOR

SMALL = SMALL_SIMULATOR
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _root_with_retrieval(small_root: Path, root: Path) -> Path:
    """A fresh artifact root holding only the small setup's retrieval artifact (so building
    the setup there reuses it instead of training another)."""
    shutil.copytree(small_root / RETRIEVAL_ARTIFACT, root / RETRIEVAL_ARTIFACT)
    return root


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _retrieval_versions(root: Path) -> list[str]:
    return sorted(p.name for p in (root / RETRIEVAL_ARTIFACT).iterdir())


# ---- evaluate_sim_policies ----------------------------------------------------------------


def test_named_policies_are_built_or_loaded(
    small_root: Path, small_policies: dict[str, Path]
) -> None:
    before = _retrieval_versions(small_root)
    out = evaluate_sim_policies(
        ["random", "myopic", "slateq", "reinforce"],
        small_root,
        users=8,
        max_steps=10,
        config=SMALL,
        candidates=SMALL_CANDIDATES,
    )
    assert list(out["policies"]) == ["random", "myopic", "slateq", "reinforce"]
    assert out["config"]["users"] == 8
    assert out["sources"]["random"] == "trained from the logging policy's sessions"
    for algo in ("slateq", "reinforce"):  # the newest published ones under the root
        assert out["sources"][algo].startswith(f"checkpoint {small_policies[algo]} ")
    assert set(out["ratios"]) == {
        "random/myopic",
        "slateq/myopic",
        "reinforce/myopic",
        "myopic/random",
        "slateq/random",
        "reinforce/random",
    }
    assert "_per_user" not in out
    assert _retrieval_versions(small_root) == before  # the setup reused its retriever


@pytest.mark.parametrize(
    ("names", "kwargs", "match"),
    [
        (["random", "oracle"], {}, "unknown policies"),
        ([], {}, "unknown policies"),
        (["random"], {"max_steps": 0}, "max_steps must be >= 1"),
        (["random"], {"users": 10**6}, "test users must lie in"),
    ],
)
def test_bad_evaluation_requests_are_refused_before_any_work(
    tmp_path: Path, names: list[str], kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        evaluate_sim_policies(names, tmp_path, config=SMALL, **kwargs)
    assert not any(tmp_path.iterdir())


def test_a_checkpoint_of_another_setup_is_refused(
    small_setup: SimulatorSetup, small_root: Path, small_policies: dict[str, Path], tmp_path: Path
) -> None:
    """A policy whose item features differ from the evaluation setup's (here: other response
    statistics) was trained on another simulator setup and is not evaluated on this one."""
    assert small_setup.statistics is not None
    other = replace(small_setup, statistics=small_setup.statistics + 0.5)
    ckpt = load_policy_checkpoint(small_policies["slateq"])
    art = publish_policy(tmp_path, "slateq", ckpt.policy, ckpt.config, other)
    with pytest.raises(ValueError, match="another simulator setup"):
        evaluate_sim_policies(
            ["slateq"],
            small_root,
            users=4,
            max_steps=2,
            config=SMALL,
            candidates=SMALL_CANDIDATES,
            checkpoints={"slateq": art.path},
        )


def test_missing_policies_are_trained_on_the_evaluation_setup(
    small_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a checkpoint, a policy is trained with its documented algorithm settings on the
    evaluation's simulator (its catalog, candidates and ad load), not the documented one."""

    def tiny_budget(algo: Any) -> PolicyTrainConfig:
        return replace(
            documented_config(algo),
            iterations=1,
            users=16,
            steps_per_iteration=2,
            updates_per_iteration=1,
            pretrain_updates=1,
            batch_size=32,
            hidden=(8,),
        )

    monkeypatch.setattr("recsys.pipeline.documented_config", tiny_budget)
    root = _root_with_retrieval(small_root, tmp_path)
    out = evaluate_sim_policies(
        ["reinforce"], root, users=4, max_steps=5, config=SMALL, candidates=SMALL_CANDIDATES
    )
    assert out["sources"]["reinforce"] == "trained on the fly (1 iterations)"
    assert out["policies"]["reinforce"]["steps"]["n"] == 4


def test_setup_config_keeps_the_algorithm_and_takes_the_simulator() -> None:
    algo = documented_config("reinforce")
    cfg = setup_config(algo, SMALL)
    for name in SETUP_FIELDS:
        assert getattr(cfg, name) == getattr(SMALL, name), name
    assert (cfg.algo, cfg.lr, cfg.gamma, cfg.iterations) == (
        algo.algo,
        algo.lr,
        algo.gamma,
        algo.iterations,
    )


# ---- publishing ---------------------------------------------------------------------------


def test_published_policies_observe_as_their_setup(
    small_setup: SimulatorSetup, small_policies: dict[str, Path]
) -> None:
    """A published artifact carries how its policy observes: the kind of user features, the
    fold's spec, the item table and the version of the retrieval artifact it learned on. From
    it alone, a server builds exactly the observation the simulator showed in training."""
    want = small_setup.features()
    users = small_setup.make_users(np.arange(5000, 5032))(0)
    obs = users.observe()
    for algo, path in small_policies.items():
        ckpt = load_policy_checkpoint(path)
        assert path.parent.name == f"policy-{algo}"
        got = ckpt.features
        assert got is not None
        assert (got.kind, got.spec, got.num_ads) == ("event", small_setup.fold.spec, SMALL.num_ads)
        assert got.retrieval_version == small_setup.retrieval.artifact.version
        np.testing.assert_array_equal(got.items.table, want.items.table)
        assert got.items.names == want.items.names
        assert (ckpt.user_dim, ckpt.item_dim) == (got.spec.user_dim, got.items.dim)
        assert ckpt.reward_tensors is not None
        served = got.obs(obs.user_features, obs.candidate_ids, obs.candidate_mask)
        np.testing.assert_array_equal(served.item_features, obs.item_features)
        np.testing.assert_array_equal(served.ads(), obs.ads())


@pytest.mark.parametrize("algo", ["slateq", "myopic"])
def test_train_and_publish_writes_a_servable_evaluated_policy(
    small_setup: SimulatorSetup, small_root: Path, tmp_path: Path, algo: str
) -> None:
    """What ``recsys train policy`` does: the published artifact loads, observes as the setup
    does, carries its evaluation on validation users, and serves the policy evaluated."""
    root = _root_with_retrieval(small_root, tmp_path)
    published = train_and_publish(
        algo, SMALL, root, candidates=SMALL_CANDIDATES, eval_users=6, eval_max_steps=8
    )
    assert published.artifact.path.parent == root / f"policy-{algo}"
    assert _retrieval_versions(root) == _retrieval_versions(small_root)  # reused
    ckpt = load_policy_checkpoint(published.artifact.path)
    assert ckpt.features is not None
    assert ckpt.features.kind == "event"
    assert ckpt.features.retrieval_version == small_setup.retrieval.artifact.version
    np.testing.assert_array_equal(ckpt.features.items.table, small_setup.features().items.table)
    evaluation = ckpt.artifact.metadata["evaluation"]
    assert _json(evaluation) == _json(published.evaluation)  # NaN != NaN: compare the text
    assert evaluation["config"]["users"] == 6
    summary = evaluation["policies"][algo]
    assert summary["return"]["ci_low"] <= summary["return"]["mean"] <= summary["return"]["ci_high"]
    policy = served_policy(ckpt)
    if algo == "myopic":
        assert ckpt.artifact.metadata["serve_as"] == "myopic_greedy"
        assert (ckpt.config.gamma, ckpt.config.immediate_head) == (0.0, False)
        assert published.result is None
        assert isinstance(policy, MyopicGreedyPolicy)
    else:
        assert published.result is not None
        assert (root / "checkpoint-slateq").is_dir()  # intermediate checkpoints, apart
        assert policy is ckpt.policy
    # The published evaluation is reproducible from the artifact alone.
    again = evaluate_in_simulator(
        {algo: policy},
        make_users=small_setup.make_users(validation_users(6)),
        max_steps=8,
        seed=2024,
    )
    for metric in ("return", "clicks", "revenue", "steps"):
        assert again["policies"][algo][metric]["mean"] == pytest.approx(summary[metric]["mean"])
    if isinstance(policy, MyopicGreedyPolicy):
        _acts_greedily_under_the_ad_load(policy, small_setup)


def _acts_greedily_under_the_ad_load(policy: MyopicGreedyPolicy, setup: SimulatorSetup) -> None:
    obs = setup.make_users(np.arange(5000, 5064))(0).observe()
    first = policy.act(obs, SMALL.slate_size, np.random.default_rng(0), explore=True)
    second = policy.act(obs, SMALL.slate_size, np.random.default_rng(1), explore=False)
    np.testing.assert_array_equal(first.slates, second.slates)  # greedy: no randomness
    assert (first.propensities == 1.0).all()
    ads = gather_slots(obs.ads(), first.slates).sum(axis=1)
    assert (ads >= SMALL.min_ads).all()
    assert (ads <= SMALL.max_ads).all()


@pytest.mark.parametrize(
    ("algo", "kwargs", "match"),
    [
        ("dqn", {}, "algo must be slateq, reinforce or myopic"),
        ("myopic", {"resume": Path("x")}, "nothing to resume"),
        ("slateq", {"eval_users": 10**6}, "validation users must lie in"),
    ],
)
def test_bad_training_requests_are_refused_before_any_work(
    tmp_path: Path, algo: str, kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        train_and_publish(algo, SMALL, tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())


# ---- one retrieval artifact per setup -----------------------------------------------------


def test_setups_with_the_same_key_share_one_retrieval_artifact(
    small_setup: SimulatorSetup, small_root: Path
) -> None:
    key = setup_key(SMALL, SMALL_CANDIDATES)
    # What a policy's training does differently does not make another setup...
    trained_differently = replace(SMALL, algo="reinforce", lr=1e-2, iterations=7, users=9)
    assert setup_key(trained_differently, SMALL_CANDIDATES) == key
    # ...but other logs, another catalog or another retriever do.
    assert setup_key(replace(SMALL, log_users=301), SMALL_CANDIDATES) != key
    assert setup_key(replace(SMALL, world_seed=1), SMALL_CANDIDATES) != key
    assert setup_key(SMALL, CandidateSettings(dim=16, epochs=2)) != key
    # The data directory is where datasets are cached, not part of the model.
    assert setup_key(SMALL, SMALL_CANDIDATES.model_copy(update={"data_dir": Path("/x")})) == key
    assert small_setup.retrieval.artifact.metadata["setup_key"] == key
    again = train_simulator_retrieval(trained_differently, small_root, candidates=SMALL_CANDIDATES)
    assert again.artifact.path == small_setup.retrieval.artifact.path
