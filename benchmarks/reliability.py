"""The fault scenarios through real Ray Serve: ``make reliability``.

Starts the demo's stack on loopback (a real ``redis-server``, the tansu broker, the online
updater, Ray Serve with ``--replicas`` replicas of the demo's SlateQ policy, trained on the
spot unless ``--artifacts`` names trained ones), runs each scenario of
:mod:`recsys.reliability` under an open-loop load of ``--rate`` requests a second (Redis
paused, Redis killed and restarted, a replica killed), stops everything, prints a table and
writes ``benchmarks/results/reliability.json``. Exit code 0 when every scenario met its
criteria, 1 when one did not (the table says which check failed), 130/143 when interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from recsys.config import Settings
from recsys.reliability import SCENARIOS, ReliabilityConfig, run_reliability
from recsys.services import Interrupted

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "reliability.json"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def rows(result: dict[str, Any]) -> list[list[str]]:
    """One row per scenario: what the docs table and the console table show."""
    out = []
    for s in result["scenarios"]:
        phases = s["phases"]
        errors = ", ".join(f"{k}: {v}" for k, v in sorted(s["errors"].items())) or "0"
        lost = s["lost_events"]
        failed_checks = [k for k, ok in s["checks"].items() if not ok]
        out.append(
            [
                s["scenario"],
                str(s["requests"]),
                f"{s['ok']} ({s['ok'] / max(s['requests'], 1):.2%})",
                errors,
                str(s["degraded"]),
                f"{_ms(phases['before']['p50_ms'])} / {_ms(phases['before']['p99_ms'])}",
                f"{_ms(phases['fault']['p99_ms'])} / {_ms(phases['fault']['max_ms'])}",
                f"{_ms(phases['after']['p99_ms'])}",
                f"{s['time_to_normal_s']:.2f}",
                str(s["max_in_flight"]),
                f"{lost['impressions_lost']} / {lost['clicks_lost']}",
                "yes" if s["passed"] else "NO: " + ", ".join(failed_checks),
            ]
        )
    return out


HEADER = [
    "scenario",
    "requests",
    "answered 200",
    "errors",
    "degraded",
    "before p50 / p99 ms",
    "fault p99 / max ms",
    "after p99 ms",
    "normal after s",
    "max in flight",
    "lost impressions / clicks",
    "passed",
]


def markdown(result: dict[str, Any]) -> str:
    """The table as Markdown, for docs/reliability.md."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in rows(result)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    defaults = ReliabilityConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help="comma-separated, run in this order"
    )
    parser.add_argument("--rate", type=float, default=defaults.rate_rps, help="requests/s")
    parser.add_argument("--baseline", type=float, default=defaults.baseline_s)
    parser.add_argument("--fault", type=float, default=defaults.fault_s)
    parser.add_argument("--after", type=float, default=defaults.after_s)
    parser.add_argument("--users", type=int, default=defaults.users)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument(
        "--ingress",
        choices=["haproxy", "proxy"],
        default="haproxy",
        help="haproxy: serving.throughput_optimized (the default); proxy: Serve's Python proxy",
    )
    parser.add_argument("--artifacts", type=Path, default=None, help="serve these models")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    args = parser.parse_args(argv)

    console = Console(stderr=True)
    cfg = ReliabilityConfig(
        rate_rps=args.rate,
        baseline_s=args.baseline,
        fault_s=args.fault,
        after_s=args.after,
        users=args.users,
        seed=args.seed,
    )
    base = Settings()
    settings = base.model_copy(
        update={
            "serving": base.serving.model_copy(
                update={
                    "replicas": args.replicas,
                    "throughput_optimized": args.ingress == "haproxy",
                }
            )
        }
    )
    try:
        result = run_reliability(
            settings,
            cfg,
            [s.strip() for s in args.scenarios.split(",") if s.strip()],
            artifacts=args.artifacts,
            console=console,
        )
    except Interrupted as exc:
        console.print(f"interrupted ({exc}); everything started was stopped")
        return 128 + exc.signum
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")

    table = Table(title=f"reliability: {result['setup']}", title_justify="left")
    for name in HEADER:
        table.add_column(name)
    for row in rows(result):
        table.add_row(*row)
    Console().print(table)
    if args.markdown:
        print(markdown(result))
    console.print(f"wrote {args.output} in {result['elapsed_s']:.0f} s")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
