"""``recsys evaluate live`` as a user runs it: a subprocess that starts the whole stack.

Small published policies (the demo's skeleton on a small world) are served, one at a time, by
a real redis-server, broker, online updater and Ray Serve that the command starts and stops.
Served greedily, every simulated user's life over HTTP must come out exactly as the
in-process run of the same users and seeds; the command must leave no process behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recsys.config import Settings
from recsys.pipeline import train_skeleton
from tests.conftest import small_settings, small_skeleton_config
from tests.processes import HAS_PROC, Proc, descendants, is_alive

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not HAS_PROC, reason="reads /proc")]

WORLD = {
    "RECSYS_CATALOG__NUM_ITEMS": "400",
    "RECSYS_CATALOG__NUM_TOPICS": "8",
    "RECSYS_CATALOG__SEED": "7",
    "RECSYS_CANDIDATES__DIM": "16",
}


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """SlateQ and myopic published on the small world (no service needed to train)."""
    settings = small_settings(tmp_path_factory.mktemp("live-artifacts"))
    train_skeleton(settings, config=small_skeleton_config(settings))
    return settings


def _run(settings: Settings, tmp_path: Path, *args: str) -> tuple[int, str, set[Proc]]:
    """Run ``recsys evaluate live`` to the end; its exit code, stderr and what it started."""
    stderr_path = tmp_path / "stderr.txt"
    started: set[Proc] = set()
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "recsys.cli", "evaluate", "live", "--json", *args,
             "--artifacts", str(settings.artifacts.root)],
            env={**os.environ, **WORLD},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 300
            while proc.poll() is None and time.monotonic() < deadline:
                started |= set(descendants(proc.pid))
                time.sleep(0.2)
            returncode = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return returncode, stderr_path.read_text(errors="replace"), started


def _gone(started: set[Proc], timeout_s: float = 30.0) -> list[Proc]:
    deadline = time.monotonic() + timeout_s
    while (alive := [p for p in started if is_alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    for p in alive:  # clean up after a failing test: only what the command started
        os.kill(p.pid, 9)
    return alive


def test_live_lives_match_in_process_ones_and_nothing_is_left(
    published: Settings, tmp_path: Path
) -> None:
    out = tmp_path / "live.json"
    code, stderr, started = _run(
        published, tmp_path, "--policy", "slateq,myopic", "--users", "12", "--max-steps", "8",
        "--concurrency", "3", "--output", str(out),
    )  # fmt: skip
    alive = _gone(started)
    assert code == 0, stderr[-3000:]
    assert not alive, f"left running: {alive}"
    names = {p.name for p in started}
    assert "redis-server" in names, names
    assert any(n.startswith("tansu") for n in names), names  # comm may carry a suffix
    result = json.loads(out.read_text())
    for name in ("slateq", "myopic"):
        policy = result["policies"][name]
        assert policy["served_versions"] == [result["config"]["artifacts"][name]]
        assert policy["served_versions"][0].startswith(f"{name}@")
        assert policy["failures"] == []
        assert policy["recommend_requests"] == policy["steps"]["mean"] * 12
        # Each user's second and later requests waited for its feedback to be visible.
        assert policy["state_waits"] == policy["recommend_requests"] - 12
        twin = result["in_process"][name]
        assert twin["identical_lives"] == twin["users"] == 12
        assert twin["live_return"] == pytest.approx(twin["in_process_return"]["mean"])
        assert twin["live_inside_in_process_ci"]
    assert set(result["ratios"]) == {"slateq/myopic"}
    assert result["ratios"]["slateq/myopic"]["ratio"] == pytest.approx(
        result["in_process_ratios"]["slateq/myopic"]["ratio"], rel=1e-6
    )


def test_a_policy_that_was_never_published_is_a_clear_error(
    published: Settings, tmp_path: Path
) -> None:
    code, stderr, started = _run(published, tmp_path, "--policy", "reinforce", "--users", "4")
    assert not _gone(started)
    assert code == 1
    assert "policy-reinforce" in stderr
    assert "recsys train policy --algo reinforce" in stderr
    assert not any(p.name == "redis-server" or p.name.startswith("tansu") for p in started)
