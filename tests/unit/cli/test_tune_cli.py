"""``recsys tune policy``: every mistake in the space file or the options is exit code 2 with a
message naming it, before any setup is built or Ray is started (the unit conftest refuses
``ray.init``). The sweep itself runs in ``tests/integration/policy/test_tuning.py``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from recsys.cli import app

runner = CliRunner()

ENV = "tests.unit.policy.custom_envs:make_env"


@pytest.mark.parametrize(
    ("space", "args", "message"),
    [
        ('{"gama": {"choice": [0.9]}}', [], "unknown policy training settings: gama"),
        ('{"gamma": {"normal": [0.9, 0.1]}}', [], "gamma has unknown distribution 'normal'"),
        ('{"gamma": {"choice": [0.9, 1.2]}}', [], "gamma = 1.2 is not a valid setting"),
        ('{"num_items": {"choice": [500]}}', [], "num_items is fixed for this environment"),
        ('{"users": {"choice": [40000]}}', [], "users = 40000 is not a valid setting"),
        ('{"workers": {"choice": [2]}}', ["--env", ENV], "workers is set by the sweep"),
        ('{"gamma": {"choice": [0.9]', [], "is not valid JSON"),
        ('{"gamma": {"choice": [0.9]}}', ["--algo", "myopic"], "--algo must be slateq or"),
        ('{"gamma": {"choice": [0.9]}}', ["--config", "c.json"], "--config applies to --env"),
        ('{"gamma": {"choice": [0.9]}}', ["--validation-users", "20000"], "validation users"),
        ('{"gamma": {"choice": [0.9]}}', ["--env", "no_such_module:make"], "cannot import"),
    ],
)
def test_sweep_mistakes_are_usage_errors(
    space: str, args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("c.json").write_text("{}")
    Path("space.json").write_text(space)
    argv = ["tune", "policy", "--space", "space.json", "--artifacts", "a", "--output", "out"]
    result = runner.invoke(app, [*argv, *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not Path("a").exists(), "refused before the simulator setup"
    assert not Path("out").exists(), "refused before the sweep"


def test_a_missing_space_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.yaml"
    result = runner.invoke(app, ["tune", "policy", "--space", str(missing), "--env", ENV])
    assert result.exit_code == 2
    assert "cannot read space file" in result.output


def test_an_env_config_must_be_an_object(tmp_path: Path) -> None:
    (tmp_path / "space.json").write_text(json.dumps({"lr": {"loguniform": [1e-3, 1e-2]}}))
    (tmp_path / "c.json").write_text("[1, 2]")
    argv = ["tune", "policy", "--env", ENV, "--space", str(tmp_path / "space.json")]
    result = runner.invoke(app, [*argv, "--config", str(tmp_path / "c.json")])
    assert result.exit_code == 2
    assert "must hold a JSON object" in " ".join(result.output.split())
