"""``recsys train policy --env`` and ``recsys evaluate env``: a user's env trained and evaluated
from the command line (in process, ``workers=0``; ``tests/e2e/test_custom_env_cli.py`` runs
the docs' env on two Ray workers), and every user mistake is exit code 2 with a message."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from recsys.cli import app
from recsys.policy.training.checkpoint import load_policy_checkpoint, save_policy_checkpoint
from recsys.policy.training.config import PolicyTrainConfig, build_policy

runner = CliRunner()

ENV = "tests.unit.policy.custom_envs:make_env"
#: The docs' settings for the two-topic env (fewer iterations).
CONFIG = {
    "gamma": 0.0,
    "iterations": 15,
    "steps_per_iteration": 4,
    "batch_size": 64,
    "updates_per_iteration": 5,
    "epsilon": 0.2,
    "lr": 0.01,
    "hidden": [16],
}


def _config_file(tmp_path: Path, values: object = CONFIG) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(values))
    return path


@pytest.mark.usefixtures("one_torch_thread")
def test_a_custom_env_is_trained_then_evaluated_through_the_cli(tmp_path: Path) -> None:
    args = ["train", "policy", "--env", ENV, "--algo", "slateq", "--workers", "0", "--seed", "3"]
    args += ["--config", str(_config_file(tmp_path)), "--artifacts", str(tmp_path)]
    trained = runner.invoke(app, args)
    assert trained.exit_code == 0, trained.output
    summary = json.loads(trained.output.strip().splitlines()[-1])
    ckpt = load_policy_checkpoint(Path(summary["checkpoint"]))
    assert (ckpt.config.reward, ckpt.config.seed, ckpt.config.iterations) == ("env", 3, 15)
    assert ckpt.config.gamma == 0.0  # from --config
    assert 5 <= summary["episode_length"] <= 14
    with Path(summary["curve_csv"]).open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 15
    assert "episode_return" in rows[0]
    assert "hidden_reward_per_user_step" not in rows[0]
    assert not any(all(float(r[k]) == 0 for r in rows) for k in rows[0])

    args = ["evaluate", "env", "--env", ENV, "--episodes", "48", "--json", "--seed", "1"]
    args += ["--policies", f"random,slateq={tmp_path / 'checkpoint-slateq'}"]
    evaluated = runner.invoke(app, args)
    assert evaluated.exit_code == 0, evaluated.output
    data = json.loads(evaluated.output)
    assert list(data["policies"]) == ["random", "slateq"]
    assert data["config"]["mode"] == "greedy"
    assert data["config"]["env"] == ENV
    assert data["seeds"]["disjoint_from_training"] is True
    slateq, random = data["policies"]["slateq"], data["policies"]["random"]
    assert slateq["return"]["n"] == 48
    assert slateq["length"]["mean"] == random["length"]["mean"]  # the same episodes
    assert data["paired"]["slateq - random"]["ci_low"] > 0
    assert data["paired"]["slateq/random"]["ci_low"] > 1
    # Nearly every greedy slate holds the user's topic (return = length when all do).
    assert slateq["return"]["mean"] >= 0.95 * slateq["length"]["mean"]

    explored = runner.invoke(app, [*args, "--explore"])
    assert explored.exit_code == 0, explored.output
    exploring = json.loads(explored.output)
    assert exploring["config"]["mode"] == "explore"
    assert exploring["policies"]["slateq"]["return"]["mean"] < slateq["return"]["mean"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--env", "make_env"], "must be module:factory"),
        (["--env", "no_such_env_module:make_env"], "cannot import 'no_such_env_module'"),
        (["--env", "tests.unit.policy.custom_envs:make_nothing"], "has no attribute"),
        (
            ["--env", "tests.unit.policy.custom_envs:raising_factory"],
            "raising_factory(0) raised RuntimeError: no simulator licence for worker 0",
        ),
        (["--env", "tests.unit.policy.custom_envs:not_an_env"], "not a slate env"),
        (["--env", ENV, "--policies", "random,oracle"], "unknown policy 'oracle'"),
        (["--env", ENV, "--policies", "/no/such/ckpt"], "unknown policy '/no/such/ckpt'"),
        (["--env", ENV, "--reward", "learned"], "--reward must be one of"),
        (["--env", ENV, "--episodes", "1"], ""),
        (["--env", ENV, "--seed", "-1"], ""),
    ],
)
def test_evaluate_env_mistakes_are_usage_errors(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["evaluate", "env", *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_evaluate_env_refuses_a_checkpoint_that_does_not_fit(tmp_path: Path) -> None:
    config = PolicyTrainConfig(algo="slateq", reward="env", slate_size=3, hidden=(4,))
    version = save_policy_checkpoint(
        tmp_path,
        build_policy(config, 2, 2, 3),
        config,
        iteration=1,
        dims=(2, 2, 3),
        reward_scale=1.0,
        features=None,
        reward_tensors=None,
        curve=[],
        reward_report={},
    ).path
    result = runner.invoke(app, ["evaluate", "env", "--env", ENV, "--policies", str(version)])
    assert result.exit_code == 2
    assert "does not fit this env" in " ".join(result.output.split())


@pytest.mark.parametrize(
    ("args", "config", "message"),
    [
        (["--env", ENV, "--algo", "myopic"], "{}", "--env trains slateq or reinforce"),
        (["--env", "make_env"], "{}", "must be module:factory"),
        (["--env", ENV], "[1, 2]", "must hold a JSON object"),
        (["--env", ENV], '{"gama": 0.5}', "unknown policy training settings: gama"),
        (["--env", ENV], '{"gamma": 1.5}', "gamma must lie in [0, 1)"),
        (["--env", ENV], "{not json", "Expecting property name"),
    ],
)
def test_train_policy_env_mistakes_are_usage_errors(
    args: list[str], config: str, message: str, tmp_path: Path
) -> None:
    (tmp_path / "c.json").write_text(config)
    argv = [*args, "--config", str(tmp_path / "c.json"), "--artifacts", str(tmp_path / "a")]
    result = runner.invoke(app, ["train", "policy", *argv])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "a").exists(), "refused before any work"


def test_config_without_env_is_refused(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "policy", "--config", str(_config_file(tmp_path))])
    assert result.exit_code == 2
    assert "--config applies to --env runs" in result.output


@pytest.mark.usefixtures("one_torch_thread")
def test_a_factory_that_fails_while_training_is_a_usage_error(tmp_path: Path) -> None:
    env = "tests.unit.policy.custom_envs:raising_factory"
    args = ["--env", env, "--workers", "0", "--artifacts", str(tmp_path)]
    result = runner.invoke(app, ["train", "policy", *args])
    assert result.exit_code == 2
    assert "raising_factory(0) raised RuntimeError: no simulator licence" in result.output
    assert not any(tmp_path.iterdir())
