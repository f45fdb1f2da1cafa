"""Smoke test of ``recsys demo`` as a user runs it: a subprocess on a small world, exit 0."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def test_demo_serves_real_http_traffic_and_exits_zero(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "RECSYS_CATALOG__NUM_ITEMS": "500",
        "RECSYS_CATALOG__NUM_USERS": "80",
        "RECSYS_CANDIDATES__DEFAULT_K": "100",
        "RECSYS_CANDIDATES__LOG_SESSIONS": "4000",
        "RECSYS_DEMO__CONCURRENCY": "2",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "recsys.cli", "demo", "--exit-after", "12", "--duration", "4",
         "--workdir", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    requests = re.search(r"recommend requests\s*│\s*(\d+)", out)
    errors = re.search(r"errors\s*│\s*(\d+)", out)
    assert requests is not None, out[-4000:]
    assert int(requests.group(1)) > 10, out[-4000:]
    assert errors is not None, out[-4000:]
    assert int(errors.group(1)) == 0, out[-4000:]
    assert "serving at http://127.0.0.1:" in out
    assert any(tmp_path.glob("artifacts/retrieval/*/manifest.json"))
