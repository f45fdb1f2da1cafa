"""The custom env from docs/policy.md, trained on two Ray workers and evaluated, all through the
CLI as a user runs it: ``my_envs.py`` is taken from the docs page into a fresh directory, and
both commands run there in their own processes (``--env my_envs:make_env`` imports from the
current directory, the Ray workers too)."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
#: The settings docs/policy.md trains the env with (its Python example and ``--config``).
DOCS_CONFIG = {
    "gamma": 0.0,
    "iterations": 25,
    "steps_per_iteration": 4,
    "users": 16,
    "batch_size": 64,
    "lr": 0.01,
}


def docs_env_module() -> str:
    """The ``# my_envs.py`` code block of docs/policy.md."""
    text = (ROOT / "docs" / "policy.md").read_text()
    blocks = re.findall(r"```python\n(# my_envs\.py\n.*?)```", text, flags=re.DOTALL)
    assert len(blocks) == 1, "docs/policy.md should show my_envs.py once"
    return str(blocks[0])


def _recsys(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local Ray
    return subprocess.run(
        [sys.executable, "-m", "recsys.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_docs_custom_env_is_trained_on_two_workers_and_evaluated_through_the_cli(
    tmp_path: Path,
) -> None:
    (tmp_path / "my_envs.py").write_text(docs_env_module())
    (tmp_path / "my_config.json").write_text(json.dumps(DOCS_CONFIG))

    train = _recsys(
        tmp_path,
        "train", "policy", "--env", "my_envs:make_env", "--algo", "slateq", "--workers", "2",
        "--config", "my_config.json", "--artifacts", "artifacts",
    )  # fmt: skip
    assert train.returncode == 0, train.stderr[-3000:]
    summary = json.loads(train.stdout.strip().splitlines()[-1])
    assert summary["workers"] == 2
    assert summary["iterations"] == DOCS_CONFIG["iterations"]
    assert Path(tmp_path, summary["checkpoint"]).parent.name == "checkpoint-slateq"

    with (tmp_path / summary["curve_csv"]).open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == DOCS_CONFIG["iterations"]
    columns = {k: [float(r[k]) for r in rows] for k in rows[0]}
    assert {"episode_return", "episode_length", "episodes"} <= set(columns)
    assert "hidden_reward_per_user_step" not in columns
    assert "life_value_estimate" not in columns
    assert [k for k, v in columns.items() if all(x == 0 for x in v)] == []
    pairs = zip(columns["episode_return"], columns["episode_length"], strict=True)
    ended = [(r, n) for r, n in pairs if not math.isnan(n)]
    assert len(ended) >= DOCS_CONFIG["iterations"] - 1  # two workers x 16 users leave often
    assert all(5 <= n <= 14 and 0 <= r <= n for r, n in ended)
    assert (tmp_path / "artifacts" / "checkpoint-slateq-curves" / "learning_curve.png").is_file()

    evaluate = _recsys(
        tmp_path,
        "evaluate", "env", "--env", "my_envs:make_env", "--episodes", "200", "--json",
        "--policies", "random,slateq=artifacts/checkpoint-slateq",
    )  # fmt: skip
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    data = json.loads(evaluate.stdout)
    assert data["seeds"]["disjoint_from_training"] is True
    assert data["seeds"]["reset_reproducible"] is True
    slateq, random = data["policies"]["slateq"], data["policies"]["random"]
    assert slateq["return"]["n"] == random["return"]["n"] == 200
    assert slateq["length"] == random["length"]  # the same episodes for both
    assert data["paired"]["slateq - random"]["ci_low"] > 0
    assert data["paired"]["slateq/random"]["ci_low"] > 1.1
    assert slateq["return"]["mean"] >= 0.95 * slateq["length"]["mean"]

    wrong = _recsys(tmp_path, "evaluate", "env", "--env", "my_envs:make_envs")
    assert wrong.returncode == 2
    assert "has no attribute 'make_envs'" in wrong.stderr
