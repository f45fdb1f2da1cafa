"""Retrieval benchmark: ``python benchmarks/bench_retrieval.py [--items 1000000 --dim 64]``.

Prints the JSON of :func:`recsys.candidates.bench.run_retrieval_benchmark` (what the lead's
``recsys bench retrieval --items 1000000 --dim 64 --json`` calls) and writes it to
``benchmarks/results/retrieval.json``; docs/benchmarks.md quotes that file. ``--kind hnsw``
(or ``ivf_flat``, ``ivfpq``, ``flat``) benchmarks another index type than the one
``choose_index`` picks, with the same tuning and the same queries.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from recsys.candidates.bench import run_retrieval_benchmark
from recsys.candidates.index import IndexSpec

RESULTS = Path(__file__).resolve().parent / "results" / "retrieval.json"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print its JSON and write it under ``benchmarks/results/``."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--exact-queries", type=int, default=200)
    parser.add_argument("--recall-target", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kind", choices=["flat", "hnsw", "ivf_flat", "ivf_sq8", "ivfpq"])
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    spec = None
    if args.kind == "hnsw":
        spec = IndexSpec(kind="hnsw", hnsw_m=32, ef_construction=80, ef_search=64)
    elif args.kind is not None and args.kind != "flat":
        from recsys.candidates.index import choose_index

        base = choose_index(max(args.items, 50_001), args.dim, args.recall_target)
        spec = IndexSpec(
            kind=args.kind,
            nlist=base.nlist,
            nprobe=8,
            pq_m=max(1, args.dim // 4),
            rerank_factor=4 if args.kind == "ivfpq" else 1,
        )
    elif args.kind == "flat":
        spec = IndexSpec(kind="flat")
    result = run_retrieval_benchmark(
        args.items,
        args.dim,
        args.queries,
        args.seed,
        recall_target=args.recall_target,
        exact_queries=args.exact_queries,
        spec=spec,
    )
    text = json.dumps(result, indent=2)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
