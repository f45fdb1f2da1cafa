"""The serving image: the Dockerfile's shape, checked statically, and its installs, replayed.

No Docker engine runs where these tests do, so the image is never built here. The static
checks hold the Dockerfile to what a deploy relies on (slim non-root runtime, health check,
``recsys serve`` on 8000); the install check (``scripts/docker_install_check.py``) runs the
builder stage's own ``pip install`` lines in a temp venv and imports the Serve app from it.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from typer.testing import CliRunner

from recsys.cli import app as cli_app
from recsys.config import Settings

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
SCRIPT = REPO / "scripts" / "docker_install_check.py"
BUILD_TOOLS = ("gcc", "g++", "build-essential", "make", "cmake", "clang", "python3-dev")


def _load_script() -> ModuleType:
    """The install check's own Dockerfile parser, so both read the file the same way."""
    spec = importlib.util.spec_from_file_location("docker_install_check", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


check = _load_script()
STAGES: list[tuple[str, list[Any]]] = check.stages(check.parse_dockerfile(DOCKERFILE.read_text()))


def _args(stage: list[Any], keyword: str) -> list[str]:
    return [ins.args for ins in stage if ins.keyword == keyword]


def _exec_form(args: str) -> list[str]:
    """``["a", "b"]`` (exec form, so signals reach recsys rather than a shell)."""
    value = json.loads(args)
    assert isinstance(value, list), f"not exec form: {args}"
    return [str(v) for v in value]


def _env(stage: list[Any]) -> dict[str, str]:
    return {k: v for args in _args(stage, "ENV") for k, v in check.env_assignments(args)}


@pytest.fixture(scope="module")
def builder() -> list[Any]:
    return dict(STAGES)["builder"]


@pytest.fixture(scope="module")
def final() -> list[Any]:
    return STAGES[-1][1]


def test_multi_stage_on_slim_python() -> None:
    assert len(STAGES) >= 2
    names = [name for name, _ in STAGES]
    assert names[0] == "builder"
    # The venv is copied between stages, so both must be the same Python at the same path.
    for _, stage in STAGES:
        assert stage[0].args.split()[0] == "python:3.11-slim"


def test_builder_installs_cpu_torch_first_then_the_project_without_extras(
    builder: list[Any],
) -> None:
    installs = [a for a in _args(builder, "RUN") if "pip install" in a]
    assert len(installs) == 2, installs
    torch_cmd, project_cmd = installs
    assert "torch==2.13.0" in torch_cmd
    assert "--index-url https://download.pytorch.org/whl/cpu" in torch_cmd
    assert project_cmd.split()[-1] == "."
    assert not any("[" in a for a in installs), "dev/load extras must stay out of the image"
    assert "python -m venv /opt/venv" in _args(builder, "RUN")


def test_final_stage_takes_only_the_venv_from_the_builder(final: list[Any]) -> None:
    from_builder = [a for a in _args(final, "COPY") if "--from=builder" in a]
    assert from_builder == ["--from=builder /opt/venv /opt/venv"]
    assert _env(final)["PATH"].startswith("/opt/venv/bin:")


def test_final_stage_has_no_build_tools(final: list[Any]) -> None:
    for args in _args(final, "RUN"):
        words = set(re.split(r"[\s;&|]+", args))
        assert not words & set(BUILD_TOOLS), args


def test_runs_as_non_root_uid_10001(final: list[Any]) -> None:
    users = _args(final, "USER")
    assert users
    assert users[-1].split(":")[0] == "10001"
    assert any("--uid 10001" in a for a in _args(final, "RUN"))


def test_serves_recsys_on_8000_from_app(final: list[Any]) -> None:
    argv = _exec_form(_args(final, "ENTRYPOINT")[-1]) + _exec_form(_args(final, "CMD")[-1])
    assert argv == ["recsys", "serve", "--host", "0.0.0.0", "--port", "8000"]
    assert _args(final, "EXPOSE") == ["8000"]
    assert _args(final, "WORKDIR") == ["/app"]
    # The CMD's flags must exist on the CLI it calls.
    help_text = CliRunner().invoke(cli_app, ["serve", "--help"]).output
    assert "--host" in help_text
    assert "--port" in help_text


def test_healthcheck_hits_healthz_with_python(final: list[Any]) -> None:
    (health,) = _args(final, "HEALTHCHECK")
    assert "http://127.0.0.1:8000/healthz" in health
    assert "urllib.request" in health
    assert "curl" not in health  # slim has no curl


def test_artifacts_root_is_app_artifacts(final: list[Any]) -> None:
    env = _env(final)
    assert env["RECSYS_ARTIFACTS__ROOT"] == "/app/artifacts"
    assert "ARTIFACTS=" in _args(final, "ARG")
    (copy,) = [a for a in _args(final, "COPY") if "/app/artifacts" in a]
    placeholder = re.search(r"\$\{ARTIFACTS:-([^}]+)\}", copy)
    assert placeholder is not None, copy
    assert (REPO / placeholder.group(1)).is_dir()
    recsys_env = {k: v for k, v in env.items() if k.startswith("RECSYS_")}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in recsys_env.items():
            mp.setenv(key, value)
        assert Settings().artifacts.root == Path("/app/artifacts")


def test_dockerignore_keeps_local_state_out_but_not_the_sources(builder: list[Any]) -> None:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    patterns = {line.strip() for line in lines if line.strip() and not line.startswith("#")}
    assert {".venv", ".git"} <= patterns
    copied = [
        src
        for args in _args(builder, "COPY")
        for src in [w for w in args.split() if not w.startswith("--")][:-1]
    ]
    assert copied
    for src in [*copied, "docker"]:
        assert src not in patterns, f"{src} is copied by the Dockerfile but ignored"


@pytest.mark.timeout(600)
@pytest.mark.skipif(shutil.which("python3.11") is None, reason="needs python3.11 for the venv")
def test_builder_installs_replay_into_a_serving_venv() -> None:
    """~1.5 min on 2 cores with the torch wheel on local disk; downloads it elsewhere."""
    proc = subprocess.run(
        [sys.executable, str(SCRIPT)],
        capture_output=True,
        text=True,
        timeout=580,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "OK in" in proc.stdout
