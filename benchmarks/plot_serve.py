"""Plot ``benchmarks/results/serve.json`` (``recsys bench serve``) to ``docs/img/serve.png``.

Left: throughput at saturation, Ray Serve against plain uvicorn, with the 600 req/s goal.
Right: p50 and p99 latency at the fixed offered rate, with the 50 ms p99 goal.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parent.parent


def plot(result: dict[str, Any], out: Path) -> None:
    """Draw the two panels of ``result`` into ``out``."""
    servers = [("ray_serve", "Ray Serve"), ("plain_uvicorn", "plain uvicorn")]
    runs = result["runs"]
    goals = result["goals"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    names = [label for _, label in servers]
    left.bar(names, [runs[k]["saturation"]["rps"] for k, _ in servers], color=["C0", "C7"])
    left.axhline(goals["saturation_rps"], color="C3", linestyle="--", label="goal")
    left.set_ylabel("requests / s")
    left.set_title(f"saturation, {result['saturation_clients']} clients")
    left.legend()
    width = 0.35
    xs = range(len(servers))
    for offset, pct, color in ((-width / 2, "p50_ms", "C2"), (width / 2, "p99_ms", "C1")):
        right.bar(
            [x + offset for x in xs],
            [runs[k]["fixed"][pct] for k, _ in servers],
            width,
            label=pct.removesuffix("_ms"),
            color=color,
        )
    right.axhline(goals["fixed_p99_ms"], color="C3", linestyle="--", label="p99 goal")
    right.set_xticks(list(xs), names)
    right.set_ylabel("latency (ms)")
    right.set_title(f"{result['fixed_rps']:g} req/s offered")
    right.legend()
    fig.suptitle(
        f"recsys bench serve: {result['catalog']:,}-item catalog, {result['policy']}, "
        f"{result['machine']}"
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--result", type=Path, default=ROOT / "benchmarks/results/serve.json")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/img/serve.png")
    args = parser.parse_args(argv)
    plot(json.loads(args.result.read_text()), args.out)


if __name__ == "__main__":
    main()
