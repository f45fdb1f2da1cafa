"""The sweep's parts that need no Ray: search-space files and their errors, what a trial
reports (``ray.tune.report`` recorded in place of a Tune session), how the winner is chosen,
and the simulator task shipped to trials. The sweep through Ray Tune itself is
``tests/integration/policy/test_tuning.py``."""

from __future__ import annotations

import json
import pickle
import shutil
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from recsys.policy.algorithms.baselines import RandomPolicy
from recsys.policy.training.checkpoint import load_policy_checkpoint
from recsys.policy.training.config import SETUP_FIELDS, PolicyTrainConfig, documented_config
from recsys.policy.training.custom_env import ImportedEnvFactory
from recsys.policy.tuning import (
    METRIC,
    Distribution,
    EnvSweepTask,
    TrialRecord,
    _trial,
    check_space,
    choose_winner,
    load_space,
    max_iterations,
    parse_space,
    plot_sweep,
    sampled_config,
)

if TYPE_CHECKING:
    from recsys.pipeline import SimulatorSetup

ENV = "tests.unit.policy.custom_envs:make_env"
#: The docs' settings for the two-topic env, a few iterations.
TOY = PolicyTrainConfig(
    algo="slateq",
    reward="env",
    gamma=0.0,
    iterations=3,
    steps_per_iteration=2,
    users=16,
    batch_size=32,
    updates_per_iteration=2,
    lr=0.01,
    hidden=(8,),
)
SPACE = {
    "gamma": {"choice": [0.8, 0.9, 0.95]},
    "lr": {"loguniform": [1e-4, 3e-3]},
    "iterations": {"choice": [10, 20]},
    "users": {"randint": [256, 1025]},
}


# ---- space files ---------------------------------------------------------------------------


def test_a_space_parses_into_tune_samplers() -> None:
    space = parse_space(SPACE)
    assert space["gamma"] == Distribution("choice", (0.8, 0.9, 0.95))
    assert {name: dist.to_json() for name, dist in space.items()} == SPACE
    sampled = space["lr"].sampler().sample()
    assert 1e-4 <= sampled <= 3e-3
    assert space["users"].extremes() == (256, 1024)  # randint excludes its upper bound
    assert max_iterations(space, documented_config("reinforce")) == 20
    assert max_iterations({}, documented_config("reinforce")) == 30


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".yml"])
def test_space_files_are_json_or_yaml(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"space{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(SPACE))
    else:
        import yaml

        path.write_text(yaml.safe_dump(SPACE))
    assert load_space(path) == parse_space(SPACE)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"gama": {"choice": [0.9]}, "lr": {"uniform": [0.1, 0.2]}},
            "unknown policy training settings: gama",
        ),
        ({"gamma": {"gaussian": [0.9, 0.1]}}, "gamma has unknown distribution 'gaussian'"),
        ({"gamma": 0.9}, "gamma must map to one distribution"),
        ({"gamma": {"choice": [0.8], "uniform": [0.1, 0.2]}}, "gamma must map to one distribution"),
        ({"gamma": {"choice": []}}, "gamma: choice needs a non-empty list"),
        ({"lr": {"uniform": [0.2, 0.1]}}, "lr: uniform needs [low, high] numbers with low < high"),
        ({"lr": {"uniform": [0.1]}}, "lr: uniform needs [low, high]"),
        ({"lr": {"loguniform": [0.0, 0.1]}}, "lr: loguniform needs low > 0"),
        ({"users": {"randint": [1.5, 10]}}, "users: randint needs integer bounds"),
        ({"lr": {"loguniform": ["1e-4", 1.0e-3]}}, "'1e-4' is text, not a number"),
        ({}, "non-empty mapping"),
        ([{"gamma": {"choice": [0.9]}}], "non-empty mapping"),
    ],
)
def test_space_mistakes_name_what_is_wrong(data: object, message: str) -> None:
    with pytest.raises(ValueError, match="space") as info:
        parse_space(data)
    assert message in str(info.value)


def test_unreadable_space_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read space file"):
        load_space(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{gamma: ")
    with pytest.raises(ValueError, match=r"bad\.json is not valid JSON"):
        load_space(tmp_path / "bad.json")
    (tmp_path / "bad.yaml").write_text("gamma: [unclosed")
    with pytest.raises(ValueError, match=r"bad\.yaml is not valid YAML"):
        load_space(tmp_path / "bad.yaml")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"algo": {"choice": ["slateq"]}}, "algo is set by the sweep"),
        ({"workers": {"choice": [2]}}, "workers is set by the sweep"),
        ({"iterations": {"uniform": [10, 20]}}, "iterations is an integer setting"),
        ({"gamma": {"choice": [0.9, 1.5]}}, "gamma = 1.5 is not a valid setting"),
        ({"returns": {"choice": ["gae", "monte-carlo"]}}, "returns = 'monte-carlo'"),
        ({"lr": {"uniform": [-1.0, 0.1]}}, "lr = -1.0 is not a valid setting"),
        ({"hidden": {"choice": [[64], [0]]}}, "hidden = [0] is not a valid setting"),
    ],
)
def test_values_no_trial_could_run_are_refused_before_the_sweep(
    data: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match="space") as info:
        check_space(parse_space(data), documented_config("reinforce"))
    assert message in str(info.value)


def test_a_task_fixes_its_setup_and_checks_every_value() -> None:
    base = documented_config("reinforce")
    with pytest.raises(ValueError, match="num_items is fixed for this environment"):
        check_space(parse_space({"num_items": {"choice": [500]}}), base, fixed=SETUP_FIELDS)

    def population(config: PolicyTrainConfig) -> None:
        config.check_population()

    too_many = parse_space({"users": {"choice": [1024, 40_000]}})
    with pytest.raises(ValueError, match="users = 40000 is not a valid setting"):
        check_space(too_many, base, fixed=SETUP_FIELDS, check=population)
    check_space(parse_space(SPACE), base, fixed=SETUP_FIELDS, check=population)


def test_a_trial_config_is_the_base_with_the_sampled_values() -> None:
    base = replace(documented_config("reinforce"), workers=4)
    config = sampled_config(base, {"gamma": 0.95, "iterations": 12, "hidden": [32, 32]})
    assert (config.gamma, config.iterations, config.hidden) == (0.95, 12, (32, 32))
    assert config.workers == 0, "in-process rollouts: no nested Ray actors"
    assert config.checkpoint_every == 12, "one checkpoint, at the end"
    assert config.lr == base.lr
    assert config.algo == "reinforce"


# ---- one trial, reports recorded -----------------------------------------------------------


@pytest.fixture
def reports(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> list[tuple[dict[str, float], Path | None]]:
    """``ray.tune.report`` recorded instead of sent to a Tune session; a reported checkpoint
    is copied away at once, as Tune persists it (the trial's own copy is temporary)."""
    from ray import tune

    seen: list[tuple[dict[str, float], Path | None]] = []

    def report(metrics: dict[str, float], checkpoint: Any = None) -> None:
        kept = None
        if checkpoint is not None:
            kept = tmp_path / f"persisted-{len(seen)}"
            shutil.copytree(checkpoint.path, kept)
        seen.append((metrics, kept))

    monkeypatch.setattr(tune, "report", report)
    return seen


def test_a_trial_reports_validation_every_k_iterations_and_its_checkpoint_last(
    reports: list[tuple[dict[str, float], Any]],
) -> None:
    task = EnvSweepTask(ImportedEnvFactory.resolve(ENV), validation_episodes=16, max_steps=20)
    _trial({"iterations": 5, "lr": 0.02}, task=task, base=TOY, eval_every=2)
    assert [int(m["iteration"]) for m, _ in reports] == [2, 4, 5]
    assert all(c is None for _, c in reports[:-1]), "only the final report carries a checkpoint"
    metrics, checkpoint = reports[-1]
    assert {METRIC, "validation_ci_low", "validation_ci_high", "wall_s"} <= set(metrics)
    assert checkpoint is not None
    ckpt = load_policy_checkpoint(checkpoint)
    assert (ckpt.iteration, ckpt.config.iterations, ckpt.config.lr) == (5, 5, 0.02)
    # The final report scores the checkpoint it carries, on the validation seeds.
    assert task.validate(ckpt.policy)["return"]["mean"] == pytest.approx(metrics[METRIC])


def test_validation_and_test_seeds_never_meet() -> None:
    task = EnvSweepTask(ImportedEnvFactory.resolve(ENV), validation_episodes=64, test_episodes=400)
    described = task.describe()
    valid, test = described["validation"]["reset_seeds"], described["test"]["reset_seeds"]
    assert valid[1] <= test[0] or test[1] <= valid[0]
    restored = pickle.loads(pickle.dumps(task))  # what a trial gets: no env, built on demand
    assert restored._env is None
    assert restored.describe() == described


# ---- the choice ----------------------------------------------------------------------------


def _record(trial_id: str, scores: list[float], budget: int, *, every: int = 2) -> TrialRecord:
    reports = [
        {"iteration": float(min((i + 1) * every, budget)), METRIC: s, "wall_s": float(i)}
        for i, s in enumerate(scores)
    ]
    finished = reports and reports[-1]["iteration"] == budget
    return TrialRecord(
        trial_id,
        {"iterations": budget},
        budget,
        reports,
        float(len(scores)),
        checkpoint=f"/ckpt/{trial_id}" if finished else None,
    )


def test_the_winner_is_the_best_trial_that_ran_its_budget() -> None:
    rng = np.random.default_rng(0)
    done = [_record(f"t{i}", list(rng.normal(size=2)), budget=4) for i in range(3)]
    stopped = _record("stopped", [max(r.reports[-1][METRIC] for r in done) + 1.0], budget=4)
    failed = replace(_record("failed", [], budget=4), error="RuntimeError: boom")
    records = [*done, stopped, failed]
    winner = choose_winner(records)
    assert winner.reports[-1][METRIC] == max(r.reports[-1][METRIC] for r in done)
    assert stopped.to_json()["stopped_early"]
    assert not winner.to_json()["stopped_early"]
    assert not failed.to_json()["stopped_early"]
    assert failed.to_json()["error"]
    with pytest.raises(RuntimeError, match="trials failed with: RuntimeError: boom"):
        choose_winner([stopped, failed])


def test_the_plot_draws_every_trial(tmp_path: Path) -> None:
    records = [_record("a", [1.0, 2.0], 4), _record("b", [0.5], 4), _record("c", [1.5, 1.0], 4)]
    result = {
        "algo": "reinforce",
        "trials": [r.to_json() for r in records],
        "winner": {"trial_id": "a"},
        "test": {"return": {"mean": 2.0, "ci_low": 1.0, "ci_high": 3.0}},
    }
    for r in result["trials"]:
        for row in r["validation"]:
            row.update(validation_ci_low=row[METRIC] - 1, validation_ci_high=row[METRIC] + 1)
    plot_sweep(result, tmp_path / "sweep.png")
    assert (tmp_path / "sweep.png").stat().st_size > 0


# ---- the simulator task --------------------------------------------------------------------


def test_the_simulator_task_travels_without_its_faiss_index(small_setup: SimulatorSetup) -> None:
    """Pickled for the trials, the setup leaves its retriever behind and reloads it from the
    artifact; the copy scores a policy exactly as the original does."""
    from recsys.pipeline import SimulatorSweepTask

    task = SimulatorSweepTask(small_setup, validation_users=8, test_users=8, max_steps=10)
    copy = pickle.loads(pickle.dumps(task))
    assert copy.setup.retrieval.artifact.path == small_setup.retrieval.artifact.path
    assert copy.fixed_fields == SETUP_FIELDS
    policy = RandomPolicy()
    assert copy.validate(policy)["return"] == task.validate(policy)["return"]
    described = task.describe()
    assert described["validation"]["users"][0] >= described["test"]["users"][1]
    with pytest.raises(ValueError, match="num_items differ"):
        task.check(replace(small_setup.config, num_items=small_setup.config.num_items + 1))
    with pytest.raises(ValueError, match="validation users must lie"):
        SimulatorSweepTask(small_setup, validation_users=1)
