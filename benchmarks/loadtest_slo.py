"""The load-test SLO on this machine: ``python benchmarks/loadtest_slo.py``.

Starts the demo's stack on loopback (a real ``redis-server``, the tansu broker, the online
updater, Ray Serve serving the demo's SlateQ policy, trained on the spot with the default
settings), runs ``recsys loadtest``'s runner against it at each offered rate for
``--duration`` seconds (SLO: p99 <= ``--slo-p99-ms`` over all requests, no unexpected
error), stops everything, and writes ``benchmarks/results/loadtest.json``. Each rate's Locust
CSV files and HTML report stay under ``load_tests/results/<rate>rps/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from rich.console import Console

from recsys.config import Settings
from recsys.loadtest import run_loadtest
from recsys.pipeline import train_skeleton
from recsys.services import StopSignals, embedded_settings, start_loop

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "loadtest.json"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rps", type=float, nargs="+", default=[50.0, 200.0])
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--slo-p99-ms", type=float, default=50.0)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    runs: list[dict[str, Any]] = []
    start = time.perf_counter()
    with (
        StopSignals() as signals,
        ExitStack() as stack,
        tempfile.TemporaryDirectory(prefix="loadtest-") as tmp,
    ):
        settings = embedded_settings(stack, Settings(), artifacts_root=Path(tmp), console=console)
        train_skeleton(settings, progress=False)
        url, _ = start_loop(stack, signals, settings, console)
        for rps in args.rps:
            result = run_loadtest(
                url,
                rps=rps,
                duration_s=args.duration,
                slo_p99_ms=args.slo_p99_ms,
                max_error_rate=0.0,
                out_dir=ROOT / "load_tests" / "results" / f"{rps:g}rps",
                known_users=settings.catalog.num_users,
            )
            runs.append(result.to_dict())
            t = result.total
            console.print(
                f"{rps:g} req/s offered: {t.rps:.1f} achieved, p50 {t.p50_ms:.0f} ms, "
                f"p99 {t.p99_ms:.0f} ms, unexpected errors {t.failures}; SLO "
                f"{'met' if result.passed else 'missed: ' + '; '.join(result.violations)}"
            )
        signals.hold()
    out = {
        "benchmark": "loadtest_slo",
        "machine": f"{os.cpu_count()} cores ({platform.machine()})",
        "service": "recsys demo stack on loopback: redis-server, tansu, updater, Ray Serve "
        "(1 replica), demo SlateQ policy; Locust on the same machine",
        "slo": {"p99_ms": args.slo_p99_ms, "max_error_rate": 0.0},
        "duration_s": args.duration,
        "runs": runs,
        "seconds": time.perf_counter() - start,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({r["target_rps"]: r["passed"] for r in runs}))
    return out


if __name__ == "__main__":
    main()
