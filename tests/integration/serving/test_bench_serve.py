"""``recsys bench serve`` end to end on a small catalog: both servers, both load shapes.

It runs in its own process (as a user would run it): it starts and stops its own Redis,
broker, Ray and uvicorn, whatever the test session is serving meanwhile.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def _leftovers(marker: str) -> str:
    out = subprocess.run(["pgrep", "-af", marker], capture_output=True, text=True)
    return out.stdout.strip()


def test_bench_serve_measures_ray_serve_against_plain_uvicorn(tmp_path: Path) -> None:
    out = tmp_path / "serve.json"
    proc = subprocess.run(
        [
            sys.executable, "-m", "recsys.cli", "bench", "serve",
            "--catalog", "400", "--duration", "5", "--clients", "4", "--fixed-rps", "20",
            "--out-dir", str(tmp_path / "reports"), "--json", "--output", str(out),
        ],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert json.loads(proc.stdout) == result
    assert result["catalog"] == 400
    assert result["policy"] == "slateq"
    assert result["box_speed"]["simulator_user_steps_per_s"] > 0
    for server in ("ray_serve", "plain_uvicorn"):
        runs = result["runs"][server]
        sat, fixed = runs["saturation"], runs["fixed"]
        assert sat["clients"] == 4
        assert sat["offered_rps"] is None
        assert fixed["offered_rps"] == 20
        for run in (sat, fixed):
            assert run["requests"] > 0, run
            assert run["errors"] == 0, run
            assert 0 < run["p50_ms"] <= run["p99_ms"]
            assert run["recommend"]["rps"] > 0
            assert Path(run["report"]).is_file()
            box = run["box_cpu"]  # the whole machine: at least the server and Locust worked
            assert 0 < box["busy_cores"] <= (os.cpu_count() or 1) + 1e-9, box
            assert 0 <= box["steal_cores"] <= box["busy_cores"], box
            assert box["cpu_ms_per_request"] > 0, box
            batches = run["server"]  # from the server's own /metrics around the run
            assert batches["batches"] > 0, batches
            assert 1 <= batches["mean_batch_size"] <= 16, batches
            stages = batches["stage_ms_per_batch"]
            assert {"state", "retrieval", "policy", "publish"} <= set(stages), batches
            assert stages["retrieval"] > 0, batches
            assert stages["policy"] > 0, batches
            assert abs(batches["batch_ms"] - sum(stages.values())) < 1e-6, batches
            assert 0 < batches["batch_busy_share"] < 1.5, batches
            # The server's batches hold the slates Locust counted over the 5 s it measured
            # (and those of the ramp before, which Locust's statistics leave out).
            served = batches["batches"] * batches["mean_batch_size"]
            assert served >= 0.9 * run["recommend"]["rps"] * 5, (served, run)
        # closed-loop clients with no think time ask for more than the fixed open-loop rate
        assert sat["rps"] > fixed["rps"]
    ratio = (
        result["runs"]["ray_serve"]["saturation"]["rps"]
        / (result["runs"]["plain_uvicorn"]["saturation"]["rps"])
    )
    assert abs(result["ratio"] - ratio) < 1e-9
    assert set(result["met"]) == {"saturation_rps", "fixed_p99_ms", "ratio"}
    assert _leftovers("recsys.serving.plain") == ""
    assert _leftovers("loadtest_profile.py") == ""
