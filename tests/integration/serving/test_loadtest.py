"""``recsys loadtest`` against the real running service (Ray Serve, Redis, broker)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from typer.testing import CliRunner

from recsys.cli import SLO_MISSED_EXIT, app
from recsys.loadtest import run_loadtest
from tests.conftest import ServingStack

runner = CliRunner()


def _no_locust_left() -> bool:
    out = subprocess.run(["pgrep", "-f", "loadtest_profile.py"], capture_output=True, text=True)
    return out.stdout.strip() == ""


def test_a_short_run_meets_a_loose_slo_with_realistic_clients(
    serving_stack: ServingStack, tmp_path: Path
) -> None:
    result = run_loadtest(
        serving_stack.url,
        rps=20.0,
        duration_s=5.0,
        slo_p99_ms=5000.0,
        max_error_rate=0.0,
        out_dir=tmp_path,
        known_users=serving_stack.settings.catalog.num_users,
        invalid_share=0.1,
    )
    assert result.passed, result.to_dict()
    assert result.clients == 10
    assert result.total.requests >= 40
    names = {e.name: e for e in result.endpoints}
    assert names["/recommend"].requests > 0
    # The malformed requests were sent, got their 4xx naming the field, and are no failures.
    invalid = [e for n, e in names.items() if n.endswith("[invalid]")]
    assert sum(e.requests for e in invalid) > 0
    assert all(e.failures == 0 for e in invalid)
    assert (tmp_path / "report.html").stat().st_size > 0
    assert json.loads((tmp_path / "result.json").read_text())["passed"] is True
    assert _no_locust_left()


def test_an_impossible_slo_exits_non_zero(serving_stack: ServingStack, tmp_path: Path) -> None:
    out = runner.invoke(
        app,
        [
            "loadtest",
            serving_stack.url,
            "--rps",
            "10",
            "--duration",
            "2",
            "--slo-p99-ms",
            "0.001",
            "--out",
            str(tmp_path),
            "--known-users",
            str(serving_stack.settings.catalog.num_users),
        ],
    )
    assert out.exit_code == SLO_MISSED_EXIT, out.output
    assert "SLO missed: p99" in out.output
    assert _no_locust_left()
