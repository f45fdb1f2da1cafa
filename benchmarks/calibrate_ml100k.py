"""How close a simulator calibrated to MovieLens-100K comes to the real interaction log.

``python benchmarks/calibrate_ml100k.py`` fits the simulator to ML-100K
(:func:`recsys.simulator.calibration.fit_calibration`), logs as many simulated clicks as the
real log has interactions from the calibrated world and from a default (uncalibrated) world of
the same size, and compares item popularity, user activity and genre shares
(:func:`recsys.simulator.calibration.run_calibration_report`). Writes
``benchmarks/results/calibration_ml100k.json`` and ``docs/img/calibration_ml100k.png``
(quoted by docs/simulator.md). The dataset is fetched into ``~/.cache/recsys`` on first use.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from recsys.simulator.calibration import LORENZ_POINTS, run_calibration_report

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "calibration_ml100k.json"
FIGURE = ROOT / "docs" / "img" / "calibration_ml100k.png"

STYLES: dict[str, dict[str, Any]] = {
    "real": {"color": "black", "lw": 2.6, "label": "MovieLens-100K (real)"},
    "calibrated": {"color": "#1f77b4", "lw": 1.8, "ls": "--", "label": "calibrated simulator"},
    "uncalibrated": {"color": "#d62728", "lw": 1.6, "label": "default world (uncalibrated)"},
    "calibrated_uniform_logging": {
        "color": "#7f7f7f",
        "lw": 1.2,
        "ls": ":",
        "label": "calibrated world, uniform logging",
    },
}


def plot(report: dict[str, Any], path: Path) -> None:
    """Lorenz curves of item popularity and user activity, and genre shares, real vs simulated."""
    fig, (ax_item, ax_user, ax_genre) = plt.subplots(
        1, 3, figsize=(16, 4.8), gridspec_kw={"width_ratios": [1, 1, 1.7]}
    )
    grid = np.linspace(0.0, 1.0, LORENZ_POINTS)
    comparison = report["comparison"]
    for ax, key, stat, unit in (
        (ax_item, "item_lorenz", "item_popularity", "items, least to most popular"),
        (ax_user, "user_lorenz", "user_activity", "users, least to most active"),
    ):
        for label, style in STYLES.items():
            curve = report["curves"][key].get(label)
            if curve is None:
                continue
            text = style["label"]
            if label == "real":
                gini = comparison["calibrated"][stat]["real"]["gini"]
                text += f", Gini {gini:.3f}"
            else:
                gini = comparison[label][stat]["simulated"]["gini"]
                text += f", Gini {gini:.3f}, Lorenz gap {comparison[label][stat]['lorenz_ks']:.3f}"
            kwargs = {k: v for k, v in style.items() if k != "label"}
            ax.plot(grid, curve, label=text, **kwargs)
        ax.plot([0, 1], [0, 1], color="#bbbbbb", lw=0.8)
        ax.set_xlabel(f"fraction of {unit}")
        ax.set_ylabel("cumulative share of interactions")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=7.5)
    ax_item.set_title("Item popularity (Lorenz curve)")
    ax_user.set_title("User activity (Lorenz curve)")

    genres = comparison["calibrated"]["genre_shares"]["per_genre"]
    names = sorted(genres, key=lambda g: -genres[g]["real"])
    x = np.arange(len(names))
    width = 0.27
    bars = (
        ("real", [genres[g]["real"] for g in names]),
        ("calibrated", [genres[g]["simulated"] for g in names]),
        (
            "uncalibrated",
            [
                comparison["uncalibrated"]["genre_shares"]["per_genre"][g]["simulated"]
                for g in names
            ],
        ),
    )
    for offset, (label, values) in zip((-width, 0.0, width), bars, strict=True):
        text = STYLES[label]["label"]
        if label != "real":
            text += f", TV {comparison[label]['genre_shares']['tv_distance']:.3f}"
        ax_genre.bar(x + offset, values, width, color=STYLES[label]["color"], label=text)
    ax_genre.set_xticks(x)
    ax_genre.set_xticklabels(names, rotation=55, ha="right", fontsize=8)
    ax_genre.set_ylabel("share of interactions (multi-genre split evenly)")
    ax_genre.set_title("Genre shares")
    ax_genre.grid(alpha=0.3, axis="y")
    ax_genre.legend(fontsize=8)

    cfg = report["config"]
    prof = report["profile"]
    fig.suptitle(
        f"{prof['num_users']} users, {prof['num_items']} items, {prof['num_topics']} genres; "
        f"{cfg['num_clicks']:,} simulated clicks per variant; slates of {cfg['slate_size']} "
        f"drawn by exposure weight, users arriving by activity; seed {cfg['seed']}",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the report, write the JSON (without the curves) and the PNG, print the headline."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=None, help="cache root for ML-100K")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-clicks", type=int, default=None, help="default: the real log's size")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--figure", type=Path, default=FIGURE)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    report = run_calibration_report(args.data_dir, args.seed, num_clicks=args.num_clicks)
    report["config"]["wall_s"] = round(time.perf_counter() - start, 2)
    plot(report, args.figure)
    curves = report.pop("curves")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    report["curves"] = curves
    for label, cmp in report["comparison"].items():
        item, user, genre = cmp["item_popularity"], cmp["user_activity"], cmp["genre_shares"]
        print(
            f"{label:>32}: item Gini {item['simulated']['gini']:.3f} "
            f"(real {item['real']['gini']:.3f}, Lorenz KS {item['lorenz_ks']:.3f})  "
            f"user Gini {user['simulated']['gini']:.3f} (real {user['real']['gini']:.3f}, "
            f"KS {user['ks']:.3f})  genre TV {genre['tv_distance']:.3f}"
        )
    return report


if __name__ == "__main__":
    main()
