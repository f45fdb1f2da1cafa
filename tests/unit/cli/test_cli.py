"""The ``recsys`` CLI: every command has --help; bad configuration is a message, not a trace."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from recsys.cli import app

runner = CliRunner()


def _command_paths() -> list[list[str]]:
    root = typer.main.get_command(app)
    paths: list[list[str]] = [[]]

    def walk(cmd: Any, prefix: list[str]) -> None:
        # typer vendors its own click, so duck-type groups by their ``commands`` mapping.
        for name, sub in getattr(cmd, "commands", {}).items():
            paths.append([*prefix, name])
            walk(sub, [*prefix, name])

    walk(root, [])
    return paths


@pytest.mark.parametrize("path", _command_paths(), ids=lambda p: " ".join(p) or "recsys")
def test_every_command_has_help(path: list[str]) -> None:
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_expected_commands_exist() -> None:
    names = {" ".join(p) for p in _command_paths()}
    assert {"demo", "serve", "updater", "config", "train", "train candidates"} <= names


def test_bad_environment_setting_is_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSYS_SERVING__PORT", "not-a-port")
    result = runner.invoke(app, ["config"])
    assert result.exit_code == 2
    assert "invalid configuration" in result.output
    assert "serving.port" in result.output
    assert "Traceback" not in result.output


def test_config_prints_effective_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSYS_STORE__URL", "redis://127.0.0.1:1/0")
    result = runner.invoke(app, ["config"])
    assert result.exit_code == 0
    assert "redis://127.0.0.1:1/0" in result.output


def test_serve_without_artifacts_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECSYS_ARTIFACTS__ROOT", str(tmp_path))
    result = runner.invoke(app, ["serve"])
    assert result.exit_code == 1
    assert "recsys train candidates" in " ".join(result.output.split())


def test_updater_without_bootstrap_says_what_to_set() -> None:
    result = runner.invoke(app, ["updater"])
    assert result.exit_code == 1
    assert "RECSYS_STREAM__BOOTSTRAP" in result.output


def test_demo_rejects_negative_exit_after() -> None:
    result = runner.invoke(app, ["demo", "--exit-after", "-1"])
    assert result.exit_code == 2


def test_simulate_writes_logged_feedback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from recsys.data.logged import read_logged_feedback

    monkeypatch.setenv("RECSYS_CATALOG__NUM_ITEMS", "300")
    monkeypatch.setenv("RECSYS_CATALOG__NUM_USERS", "20")
    monkeypatch.setenv("RECSYS_SIMULATOR__NUM_CANDIDATES", "40")
    out = tmp_path / "logs.parquet"
    result = runner.invoke(app, ["simulate", "--out", str(out), "--steps", "3", "--slate", "4"])
    assert result.exit_code == 0, result.output
    logs = read_logged_feedback(out)
    assert len(logs) == 3 * 20 * 4
    assert set(logs.slate_size.tolist()) == {4}


def test_simulate_bad_options_are_clear(tmp_path: Path) -> None:
    out = str(tmp_path / "x.parquet")
    bad_policy = runner.invoke(app, ["simulate", "--out", out, "--policy", "nope"])
    assert bad_policy.exit_code == 1
    assert "policy must be" in bad_policy.output
    too_big = runner.invoke(app, ["simulate", "--out", out, "--slate", "500"])
    assert too_big.exit_code == 2
    assert "exceeds" in too_big.output
    assert not (tmp_path / "x.parquet").exists()


def test_bench_simulator_prints_json_with_throughput(tmp_path: Path) -> None:
    out = tmp_path / "sim.json"
    result = runner.invoke(
        app,
        ["bench", "simulator", "--users", "64", "--candidates", "20", "--slate", "5",
         "--steps", "3", "--repeats", "1", "--json", "--output", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["user_steps_per_s"] > 0
    assert json.loads(out.read_text())["user_steps_per_s"] == data["user_steps_per_s"]


def _simulated_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, steps: int) -> Path:
    """``recsys simulate`` logs of a small world (slates of 3)."""
    monkeypatch.setenv("RECSYS_CATALOG__NUM_ITEMS", "300")
    monkeypatch.setenv("RECSYS_CATALOG__NUM_USERS", "200")
    monkeypatch.setenv("RECSYS_SIMULATOR__NUM_CANDIDATES", "20")
    logs = tmp_path / "logs.parquet"
    args = ["simulate", "--out", str(logs), "--steps", str(steps), "--slate", "3"]
    sim = runner.invoke(app, args)
    assert sim.exit_code == 0, sim.output
    return logs


def test_evaluate_ope_on_a_target_column(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np
    import pyarrow.parquet as pq

    logs = _simulated_log(tmp_path, monkeypatch, steps=5)
    table = pq.read_table(logs)
    # Evaluate the logging policy itself: every estimator must recover the logged mean.
    table = table.append_column("target", table.column("propensity"))
    pq.write_table(table, logs)
    out = runner.invoke(
        app, ["evaluate", "ope", "--logs", str(logs), "--target-column", "target", "--json"]
    )
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    clicks_per_slate = float(np.asarray(table.column("click")).sum()) / (table.num_rows / 3)
    text = json.dumps(data)
    assert "ips" in text
    assert "snips" in text
    ips = data["estimates"]["ips"] if "estimates" in data else data["ips"]
    assert ips["value"] == pytest.approx(clicks_per_slate, rel=1e-4)
    assert ips["ci_low"] <= clicks_per_slate <= ips["ci_high"]


def test_evaluate_ope_refuses_a_target_column_of_zeros(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    logs = _simulated_log(tmp_path, monkeypatch, steps=3)
    table = pq.read_table(logs)
    pq.write_table(table.append_column("target", pa.array([0.0] * table.num_rows)), logs)
    out = runner.invoke(app, ["evaluate", "ope", "--logs", str(logs), "--target-column", "target"])
    assert out.exit_code == 1
    assert "gives probability 0 to every logged slot" in out.output
    assert "Traceback" not in out.output


def test_evaluate_ope_missing_column_is_clear(tmp_path: Path) -> None:
    out = runner.invoke(
        app, ["evaluate", "ope", "--logs", str(tmp_path / "no.parquet"), "--target-column", "t"]
    )
    assert out.exit_code == 1
    assert "error" in out.output


def _tiny_world(monkeypatch: pytest.MonkeyPatch) -> None:
    """The simulator world of the small policy checkpoints (300 items, 6 topics, seed 0)."""
    monkeypatch.setenv("RECSYS_CATALOG__NUM_ITEMS", "300")
    monkeypatch.setenv("RECSYS_CATALOG__NUM_TOPICS", "6")
    monkeypatch.setenv("RECSYS_CATALOG__NUM_USERS", "80")
    monkeypatch.setenv("RECSYS_SIMULATOR__NUM_CANDIDATES", "15")


def _simulate(out: Path, *extra: str) -> None:
    sim = runner.invoke(
        app, ["simulate", "--out", str(out), "--steps", "2", "--slate", "3", *extra]
    )
    assert sim.exit_code == 0, sim.output


def test_evaluate_ope_with_a_policy_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_policies: dict[str, Path]
) -> None:
    checkpoint = small_policies["slateq"]  # reads event features, as `simulate` logs them
    _tiny_world(monkeypatch)
    logs = tmp_path / "logs.parquet"
    _simulate(logs, "--policy", "boltzmann", "--temperature", "0.5")
    args = ["evaluate", "ope", "--logs", str(logs), "--policy", str(checkpoint), "--json"]
    out = runner.invoke(app, [*args, "--bootstrap", "50", "--samples", "20"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["policy"] == str(checkpoint)
    assert data["target"].startswith("slateq checkpoint")
    for name in ("ips", "snips", "dr"):
        est = data["estimates"][name]
        assert est["ci_low"] <= est["value"] <= est["ci_high"]
    learned = runner.invoke(app, [*args, "--bootstrap", "20", "--reward", "learned"])
    assert learned.exit_code == 0, learned.output  # the checkpoint's own learned reward
    assert json.loads(learned.output)["reward"] == "learned"

    monkeypatch.setenv("RECSYS_CATALOG__SEED", "5")  # another catalog than the checkpoint's
    other = tmp_path / "other.parquet"
    _simulate(other)
    bad = runner.invoke(app, ["evaluate", "ope", "--logs", str(other), "--policy", str(checkpoint)])
    assert bad.exit_code == 1
    assert "another catalog" in bad.output
    assert "Traceback" not in bad.output


def test_evaluate_ope_policy_errors_are_clear(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow.parquet as pq

    from recsys.data.logged import VERSION_KEY

    _tiny_world(monkeypatch)
    logs = tmp_path / "logs.parquet"
    _simulate(logs)
    both = runner.invoke(
        app,
        ["evaluate", "ope", "--logs", str(logs), "--policy", "random", "--target-column", "t"],
    )
    assert both.exit_code == 1
    assert "give --policy, or the target's probabilities" in " ".join(both.output.split())
    neither = runner.invoke(app, ["evaluate", "ope", "--logs", str(logs)])
    assert neither.exit_code == 1
    rnd = runner.invoke(
        app, ["evaluate", "ope", "--logs", str(logs), "--policy", "random", "--json"]
    )
    assert rnd.exit_code == 0, rnd.output
    assert json.loads(rnd.output)["estimates"]["ips"]["mean_weight"] == pytest.approx(1.0)
    v1 = tmp_path / "v1.parquet"
    table = pq.read_table(logs).drop_columns(["candidate_ids"])
    pq.write_table(table.replace_schema_metadata({VERSION_KEY: "1"}), v1)
    old = runner.invoke(app, ["evaluate", "ope", "--logs", str(v1), "--policy", "random"])
    assert old.exit_code == 1
    assert "no candidate sets" in old.output
    assert "Traceback" not in old.output
    learned = runner.invoke(
        app, ["evaluate", "ope", "--logs", str(logs), "--policy", "random", "--reward", "learned"]
    )
    assert learned.exit_code == 1
    assert "learned reward model" in learned.output


def _small_simulator(monkeypatch: pytest.MonkeyPatch, artifacts: Path) -> None:
    """The CLI's simulator commands on the small setup of the policy tests: its catalog and
    retriever through the environment, and the documented training settings shrunk to
    :data:`SMALL_SIMULATOR`'s budget (the one thing that cannot be set from outside)."""
    from recsys.policy.training import config as training_config
    from tests.unit.policy.configs import SMALL_SIMULATOR, SMALL_SIMULATOR_ENV

    monkeypatch.setenv("RECSYS_ARTIFACTS__ROOT", str(artifacts))
    for key, value in SMALL_SIMULATOR_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(
        training_config, "documented_config", lambda algo: replace(SMALL_SIMULATOR, algo=algo)
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--algo", "dqn"], "algo must be slateq, reinforce or myopic"),
        (["--reward", "vibes"], "reward"),
        (["--reward-objective", "vibes"], "reward_objective must be regression or"),
        (["--features", "vibes"], "features must be event or latent"),
        (["--eval-users", "100000"], "validation users must lie in"),
        (["--algo", "myopic", "--resume", "ckpt"], "nothing to resume"),
    ],
)
def test_train_policy_bad_options_are_clear(
    args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECSYS_ARTIFACTS__ROOT", str(tmp_path))
    result = runner.invoke(app, ["train", "policy", *args])
    assert result.exit_code == 1
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert not any(tmp_path.iterdir()), "refused before any work"


@pytest.mark.parametrize(
    "args", [["--workers", "65"], ["--eval-users", "1"], ["--iterations", "0"]]
)
def test_train_policy_out_of_range_options_are_usage_errors(args: list[str]) -> None:
    result = runner.invoke(app, ["train", "policy", *args])
    assert result.exit_code == 2


@pytest.mark.usefixtures("one_torch_thread")
def test_train_policy_publishes_a_servable_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_root: Path
) -> None:
    import shutil

    from recsys.artifacts import latest_version
    from recsys.candidates import RETRIEVAL_ARTIFACT
    from recsys.policy.training.checkpoint import load_policy_checkpoint

    shutil.copytree(small_root / RETRIEVAL_ARTIFACT, tmp_path / RETRIEVAL_ARTIFACT)
    _small_simulator(monkeypatch, tmp_path)
    args = ["--algo", "slateq", "--workers", "0", "--iterations", "1", "--eval-users", "4"]
    result = runner.invoke(app, ["train", "policy", *args])
    assert result.exit_code == 0, result.output
    published = latest_version(tmp_path, "policy-slateq")
    assert "published" in result.output
    summary = json.loads(result.output[result.output.index("{") :])
    assert summary["validation_users"] == 4
    assert summary["return"]["ci_low"] <= summary["return"]["mean"] <= summary["return"]["ci_high"]
    ckpt = load_policy_checkpoint(published)
    assert (ckpt.config.workers, ckpt.config.iterations, ckpt.iteration) == (0, 1, 1)
    assert ckpt.features is not None
    assert ckpt.features.kind == "event"
    assert ckpt.artifact.metadata["evaluation"]["config"]["users"] == 4
    assert (tmp_path / "policy-slateq-curves" / "learning_curve.csv").is_file()
    assert len(list((tmp_path / RETRIEVAL_ARTIFACT).iterdir())) == 1  # the setup's, reused


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--policies", "random,oracle"], 1, "unknown policies"),
        (["--policies", " , "], 1, "unknown policies"),
        (["--episodes", "100000"], 1, "test users must lie in"),
        (["--episodes", "1"], 2, ""),
        (["--max-steps", "0"], 2, ""),
    ],
)
def test_evaluate_sim_bad_options_are_clear(
    args: list[str], code: int, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECSYS_ARTIFACTS__ROOT", str(tmp_path))
    result = runner.invoke(app, ["evaluate", "sim", *args])
    assert result.exit_code == code
    assert message in result.output
    assert "Traceback" not in result.output


@pytest.mark.usefixtures("one_torch_thread")
def test_evaluate_sim_loads_published_policies(
    monkeypatch: pytest.MonkeyPatch, small_root: Path, small_policies: dict[str, Path]
) -> None:
    _small_simulator(monkeypatch, small_root)  # only read: the setup's retriever exists
    args = ["--policies", "random,slateq", "--episodes", "4", "--max-steps", "3", "--json"]
    result = runner.invoke(app, ["evaluate", "sim", *args])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert list(data["policies"]) == ["random", "slateq"]
    assert data["sources"]["slateq"].startswith(f"checkpoint {small_policies['slateq']} ")
    assert data["config"] == {**data["config"], "users": 4, "max_steps": 3, "seed": 2024}
    assert "slateq/random" in data["ratios"]


@pytest.mark.usefixtures("one_torch_thread")
def test_train_candidates_on_the_simulator_publishes_then_reuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from recsys.candidates import RETRIEVAL_ARTIFACT, load_retrieval

    _small_simulator(monkeypatch, tmp_path)
    first = runner.invoke(app, ["train", "candidates", "--data", "simulator"])
    assert first.exit_code == 0, first.output
    assert "wrote" in first.output
    assert "val_auc" in json.loads(first.output[first.output.index("{") :])
    (path,) = (tmp_path / RETRIEVAL_ARTIFACT).iterdir()
    assert load_retrieval(path).artifact.metadata["trained_on"].startswith("logged sessions")
    again = runner.invoke(app, ["train", "candidates", "--data", "simulator"])
    assert again.exit_code == 0, again.output
    assert list((tmp_path / RETRIEVAL_ARTIFACT).iterdir()) == [path]  # same setup: reused


def test_train_candidates_bad_data_is_clear(tmp_path: Path) -> None:
    missing = tmp_path / "none.parquet"
    result = runner.invoke(
        app, ["train", "candidates", "--data", str(missing), "--artifacts", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert "error" in result.output
    assert "Traceback" not in result.output
