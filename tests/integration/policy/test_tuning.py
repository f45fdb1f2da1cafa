"""``recsys tune policy`` end to end through Ray Tune: a tiny sweep of the docs' two-topic env
(3 trials, in-process training, two at a time). The JSON holds every trial with validation
scores only, the winner is evaluated once on test seeds, the plot and the winner's checkpoint
are written, and Ray is shut down afterwards."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from recsys.cli import app
from recsys.policy.training.checkpoint import load_policy_checkpoint

pytestmark = pytest.mark.integration

runner = CliRunner()

#: The docs' two-topic env with a budget of a few iterations.
CONFIG = {
    "gamma": 0.0,
    "steps_per_iteration": 2,
    "batch_size": 32,
    "updates_per_iteration": 2,
    "hidden": [8],
}
SPACE = {"lr": {"loguniform": [1e-3, 3e-2]}, "iterations": {"choice": [2, 4]}}


def test_a_sweep_scores_on_validation_and_tests_only_its_winner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    # A relative --output, as a user types it (Tune's storage wants an absolute path); the
    # env module stays importable for the trial workers from the repository root.
    root = Path(__file__).resolve().parents[3]
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    )
    monkeypatch.chdir(tmp_path)

    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    (tmp_path / "space.json").write_text(json.dumps(SPACE))
    out = tmp_path / "sweep"
    argv = ["tune", "policy", "--env", "tests.unit.policy.custom_envs:make_env", "--json"]
    argv += ["--algo", "slateq", "--samples", "3", "--eval-every", "1", "--max-steps", "30"]
    argv += ["--validation-episodes", "16", "--test-episodes", "32"]
    argv += ["--config", str(tmp_path / "config.json"), "--space", str(tmp_path / "space.json")]
    ray_before = ray.is_initialized()  # e.g. the Ray Serve session fixture's
    result = runner.invoke(app, [*argv, "--output", "sweep"])
    assert result.exit_code == 0, result.output
    # The sweep shuts down the Ray it started, and leaves one it found running.
    assert ray.is_initialized() == ray_before

    written = json.loads((out / "tune_policy.json").read_text())
    assert (out / "tune_policy.png").stat().st_size > 0
    trials = written["trials"]
    assert len(trials) == 3
    for trial in trials:
        assert set(trial["params"]) == set(SPACE)
        assert trial["validation"], "every trial reported validation scores"
        iterations = [int(r["iteration"]) for r in trial["validation"]]
        assert iterations == list(range(1, trial["last_iteration"] + 1))
        assert trial["final_validation_return"] == trial["validation"][-1]["validation_return"]
        assert trial["error"] is None
        assert trial["stopped_early"] == (trial["last_iteration"] < trial["iterations_budget"])
        assert not any("test" in key for key in trial), "no test score for any trial"
    finished = [t for t in trials if not t["stopped_early"]]
    best = max(t["final_validation_return"] for t in finished)
    winner = written["winner"]
    assert winner["validation"]["validation_return"] == best
    # Exactly one test evaluation, the winner's, on seeds validation never used.
    assert written["test"]["trial_id"] == winner["trial_id"]
    assert written["test"]["return"]["n"] == 32
    valid, test = written["task"]["validation"], written["task"]["test"]
    assert valid["reset_seeds"][1] <= test["reset_seeds"][0] or (
        test["reset_seeds"][1] <= valid["reset_seeds"][0]
    )
    ckpt = load_policy_checkpoint(Path(winner["checkpoint"]))
    assert ckpt.config.lr == winner["params"]["lr"]
    assert ckpt.iteration == winner["params"]["iterations"]
    assert not list(out.glob(".ray-tune-*")), "Tune's storage is removed"
    assert json.loads(result.stdout)["winner"]["trial_id"] == winner["trial_id"]
