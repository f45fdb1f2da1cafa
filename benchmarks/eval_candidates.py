"""Offline candidate evaluation: ``python benchmarks/eval_candidates.py [--seed 2020]``.

Prints the JSON of :func:`recsys.candidates.evaluate.evaluate_candidates` on MovieLens-100K
(fetched into the cache on first use; what the lead's ``recsys evaluate candidates
--dataset ml-100k --json`` calls) and writes it to ``benchmarks/results/candidates_eval.json``;
docs/candidates.md quotes that file. Two-tower, popularity and ItemKNN on RecBole's random
80/10/10 protocol and on temporal leave-last-out, full ranking over all items.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from recsys.candidates.evaluate import evaluate_candidates, evaluation_settings
from recsys.config import load_settings
from recsys.data.movielens import load_ml100k

RESULTS = Path(__file__).resolve().parent / "results" / "candidates_eval.json"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the evaluation, print its JSON and write it under ``benchmarks/results/``."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    data_dir = args.data_dir or load_settings().candidates.data_dir
    result = evaluate_candidates(
        load_ml100k(data_dir),
        args.seed,
        settings=evaluation_settings(),
        progress=args.progress,
    )
    text = json.dumps(result, indent=2)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
