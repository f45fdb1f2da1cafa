"""``recsys demo`` as a user runs it: a subprocess on a small world, in its own session.

It must exit 0 after clean traffic, stop promptly on SIGTERM, and either way leave none of the
processes it started (redis-server, tansu, Ray's) alive. Which processes it started is read from
/proc while it runs; the test's clean-up kills any of those left over, and nothing else.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.processes import HAS_PROC, Proc, descendants, is_alive

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not HAS_PROC, reason="reads /proc")]

SMALL_WORLD = {
    "RECSYS_CATALOG__NUM_ITEMS": "500",
    "RECSYS_CATALOG__NUM_USERS": "80",
    "RECSYS_CANDIDATES__DEFAULT_K": "100",
    "RECSYS_DEMO__CONCURRENCY": "2",
}
SERVING_WITHIN_S = 180.0  # set-up: services, training, Ray Serve (about 20 s on an idle box)
GONE_WITHIN_S = 30.0


@dataclass
class DemoRun:
    """A running ``recsys demo``: its process, its stdout so far, and what it started."""

    proc: subprocess.Popen[str]
    stderr_path: Path
    lines: list[str] = field(default_factory=list)
    started: set[Proc] = field(default_factory=set)
    serving: threading.Event = field(default_factory=threading.Event)

    reader: threading.Thread | None = None

    @property
    def output(self) -> str:
        return "".join(self.lines) + self.stderr_path.read_text(errors="replace")

    def wait(self, timeout_s: float) -> int:
        """The demo's exit code, once it has exited and all its stdout is read."""
        returncode = self.proc.wait(timeout=timeout_s)
        if self.reader is not None:
            self.reader.join(timeout=10)
        return returncode

    def wait_gone(self, timeout_s: float = GONE_WITHIN_S) -> list[Proc]:
        """Wait for every process the demo started to be gone; return those still alive."""
        deadline = time.monotonic() + timeout_s
        while (alive := [p for p in self.started if is_alive(p)]) and time.monotonic() < deadline:
            time.sleep(0.1)
        return alive


@contextmanager
def running_demo(tmp_path: Path, *args: str) -> Iterator[DemoRun]:
    """Start the demo in its own session and record its descendants until it exits."""
    with running_cli(tmp_path, ["demo", "--workdir", str(tmp_path), *args], SMALL_WORLD) as run:
        yield run


@contextmanager
def running_cli(tmp_path: Path, argv: list[str], env: dict[str, str]) -> Iterator[DemoRun]:
    """Start ``recsys ARGV`` in its own session and record its descendants until it exits."""
    stderr_path = tmp_path / "stderr.txt"
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "recsys.cli", *argv],
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            start_new_session=True,
        )
    run = DemoRun(proc, stderr_path)

    def read_stdout() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            run.lines.append(line)
            if "serving at http://" in line:
                run.serving.set()

    def watch() -> None:
        while proc.poll() is None:
            run.started |= descendants(proc.pid)
            time.sleep(0.1)

    threads = [threading.Thread(target=f, daemon=True) for f in (read_stdout, watch)]
    run.reader = threads[0]
    for t in threads:
        t.start()
    try:
        yield run
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        for t in threads:
            t.join(timeout=10)
        for leftover in run.started:  # only what this demo started, and only if still it
            if is_alive(leftover):
                os.kill(leftover.pid, signal.SIGKILL)


def assert_started_services(run: DemoRun) -> None:
    names = {p.name for p in run.started}
    assert "redis-server" in names, names
    assert any(n.startswith("tansu") for n in names), names
    assert {"raylet", "gcs_server"} <= names, names


def test_demo_serves_real_http_traffic_exits_zero_and_leaves_nothing(tmp_path: Path) -> None:
    with running_demo(tmp_path, "--exit-after", "5", "--duration", "4") as run:
        returncode = run.wait(240)
        out = run.output
        assert returncode == 0, out[-4000:]
        requests = re.search(r"recommend requests\s*│\s*(\d+)", out)
        errors = re.search(r"errors\s*│\s*(\d+)", out)
        assert requests is not None, out[-4000:]
        assert int(requests.group(1)) > 10, out[-4000:]
        assert errors is not None, out[-4000:]
        assert int(errors.group(1)) == 0, out[-4000:]
        assert "serving at http://127.0.0.1:" in out
        assert any(tmp_path.glob("artifacts/retrieval/*/manifest.json"))
        assert_started_services(run)
        assert run.wait_gone() == [], out[-4000:]


def test_demo_stops_everything_it_started_on_sigterm(tmp_path: Path) -> None:
    with running_demo(tmp_path, "--exit-after", "300", "--duration", "5") as run:
        assert run.serving.wait(SERVING_WITHIN_S), run.output[-4000:]
        os.kill(run.proc.pid, signal.SIGTERM)  # mid-traffic: clients, updater, Serve all busy
        sent = time.monotonic()
        returncode = run.wait(90)
        took = time.monotonic() - sent
        out = run.output
        assert returncode == 128 + signal.SIGTERM, out[-4000:]
        assert took < 60, f"took {took:.0f}s to stop"
        assert "stopped by SIGTERM" in out, out[-4000:]
        assert_started_services(run)
        assert run.wait_gone() == [], out[-4000:]
