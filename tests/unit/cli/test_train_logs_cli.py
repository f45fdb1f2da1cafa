"""``recsys train policy --logs``: offline RL from joined logs through the command line (the
checkpoint as one JSON line, written to the staging root by default) and every user mistake is
exit code 2 with a message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from recsys.cli import app
from recsys.policy.training.checkpoint import load_policy_checkpoint
from tests.unit.policy.served_world import artifact_root, served_logs, write_joined

runner = CliRunner()


@pytest.fixture(scope="module")
def joined(small_policies: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A joined dataset of 40 users x 10 slates served by the small SlateQ policy."""
    logs = served_logs(small_policies["slateq"], users=40, steps=10)
    return write_joined(logs, tmp_path_factory.mktemp("joined"))


@pytest.mark.usefixtures("one_torch_thread")
def test_train_policy_from_logs_writes_a_staged_checkpoint(
    joined: Path, small_policies: dict[str, Path], tmp_path: Path
) -> None:
    root = artifact_root(tmp_path, small_policies["slateq"])
    args = ["train", "policy", "--logs", str(joined), "--artifacts", str(root)]
    result = runner.invoke(app, [*args, "--epochs", "2", "--seed", "4"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    checkpoint = Path(summary["checkpoint"])
    assert checkpoint.parent == root / "staging" / "policy-slateq"
    assert summary["base_from"] == "logs"
    assert summary["epochs"] == 2
    assert summary["slates"] == 400
    ckpt = load_policy_checkpoint(checkpoint)
    assert (ckpt.config.algo, ckpt.config.seed, ckpt.config.reward) == ("slateq", 4, "learned")
    # What serving reads is untouched: only the copied base is under policy-slateq.
    assert [p.name for p in (root / "policy-slateq").iterdir()] == [small_policies["slateq"].name]

    out = tmp_path / "elsewhere"
    again = runner.invoke(
        app, [*args, "--epochs", "1", "--output", str(out), "--algo", "reinforce"]
    )
    assert again.exit_code == 0, again.output
    assert Path(json.loads(again.output.strip().splitlines()[-1])["checkpoint"]).parent == (
        out / "policy-reinforce"
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--logs", "MISSING"], "no such file or directory"),
        (["--logs", "JOINED", "--algo", "myopic"], "--algo must be one of"),
        (["--logs", "JOINED", "--reward", "hidden"], "not observable in logs"),
        (["--logs", "JOINED", "--env", "tests.unit.policy.custom_envs:make_env"], "drop --env"),
        (["--logs", "JOINED", "--base", "MISSING"], "not a checkpoint directory"),
        (["--logs", "EMPTY"], "no logged-feedback files"),
        (["--base", "JOINED"], "--base applies to --logs runs"),
        (["--negatives", "3"], "--negatives applies to --logs runs"),
    ],
)
def test_unusable_logs_and_options_exit_2_with_the_reason(
    extra: list[str], message: str, joined: Path, small_policies: dict[str, Path], tmp_path: Path
) -> None:
    root = artifact_root(tmp_path, small_policies["slateq"])
    (tmp_path / "empty").mkdir()
    paths = {"MISSING": tmp_path / "missing", "JOINED": joined, "EMPTY": tmp_path / "empty"}
    args = [str(paths.get(a, a)) for a in extra]
    result = runner.invoke(app, ["train", "policy", "--artifacts", str(root), *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not (root / "staging").exists()
