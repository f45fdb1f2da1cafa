"""SlateQ update cost against catalog size: ``python benchmarks/bench_slateq_update.py``.

One :meth:`~recsys.policy.algorithms.slateq.SlateQPolicy.update` on a batch of 256
transitions whose candidates are the *whole catalog* (an env that offers every item, e.g.
through a static item table), slates of 10, the same feature widths for every catalog size,
timed for a 100-, 1,000- and 10,000-item catalog with the default sampled Q-learning target
(``target_candidates=64``) and with sampling off (``None``: the target's slate optimiser
scores every next candidate). The sizes and modes are interleaved round by round, so
machine load hits them alike; the figure is the median over ``repeats`` (the minimum is kept
too) after ``warmup`` untimed updates, and ``target_s`` times the TD target alone (the part
that used to scale with the catalog). A benchmark, not a test:
:func:`run_slateq_update_benchmark` returns JSON-ready numbers with the machine they were
measured on; the script prints them and writes ``benchmarks/results/slateq_update.json``
(docs/policy.md quotes that file).
The goal (GitHub issue 13): with sampling, the 1,000-item update costs at most 1.5 times the
100-item one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recsys.policy import ConditionalLogitChoiceModel, SlateQConfig, SlateQPolicy
from recsys.policy.batch import SlateAction, SlateObs, SlateResponse, Transition
from recsys.simulator.bench import machine_info

RESULTS = Path(__file__).resolve().parent / "results" / "slateq_update.json"
#: The issue's goal for ``sampled`` 1,000-item / 100-item update time.
GOAL_RATIO = 1.5
MODES = ("sampled", "full")


def whole_catalog_batch(
    num_items: int,
    *,
    batch_size: int = 256,
    slate_size: int = 10,
    user_dim: int = 32,
    item_dim: int = 16,
    seed: int = 0,
) -> Transition:
    """``batch_size`` transitions of an env whose candidates are its whole catalog.

    A static item table ``[num_items, item_dim]`` gathered by each row's shuffled catalog
    (what :class:`~recsys.policy.training.envs.GymSlateEnv` builds from candidate ids),
    random slates served now and next, about half the slates clicked (reward 1), 5% done.
    """
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((num_items, item_dim), dtype=np.float32)
    b, s = batch_size, slate_size

    def obs() -> SlateObs:
        ids = np.argsort(rng.random((b, num_items)), axis=1)
        user = rng.standard_normal((b, user_dim), dtype=np.float32)
        return SlateObs(user, table[ids], ids)

    def action() -> SlateAction:
        slates = np.stack([rng.choice(num_items, s, replace=False) for _ in range(b)])
        return SlateAction(slates, np.ones((b, s), np.float32), np.zeros(b, np.float32))

    click = np.zeros((b, s), np.float32)
    click[np.arange(b), rng.integers(0, s, b)] = rng.random(b) < 0.5
    signals = np.zeros((b, s, 6), np.float32)
    signals[..., 0] = click
    return Transition(
        obs=obs(),
        action=action(),
        response=SlateResponse.from_signals(signals),
        reward=click,
        next_obs=obs(),
        done=rng.random(b) < 0.05,
        next_action=action(),
    )


def _policy(
    user_dim: int, item_dim: int, slate_size: int, target_candidates: int | None
) -> SlateQPolicy:
    choice = ConditionalLogitChoiceModel(user_dim, item_dim, slate_size, seed=0)
    config = SlateQConfig(target_candidates=target_candidates)
    return SlateQPolicy(user_dim, item_dim, choice, config, seed=0)


def run_slateq_update_benchmark(
    catalogs: Sequence[int] = (100, 1000, 10_000),
    *,
    full_up_to: int = 1000,
    batch_size: int = 256,
    slate_size: int = 10,
    user_dim: int = 32,
    item_dim: int = 16,
    repeats: int = 15,
    warmup: int = 2,
    threads: int = 1,
) -> dict[str, Any]:
    """Median seconds per SlateQ update per catalog size, sampled and full; JSON-ready.

    ``full_up_to``: the largest catalog also timed with sampling off (at 10,000 items one
    full update takes seconds). ``threads``: torch's intra-op threads (1: the learner's
    share of a 2-core machine, and steadier figures).
    """
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    default_k = SlateQConfig().target_candidates
    cases: list[tuple[int, str]] = [
        (c, mode) for c in catalogs for mode in MODES if mode == "sampled" or c <= full_up_to
    ]
    setups: dict[tuple[int, str], tuple[SlateQPolicy, Transition]] = {}
    batches = {
        c: whole_catalog_batch(
            c,
            batch_size=batch_size,
            slate_size=slate_size,
            user_dim=user_dim,
            item_dim=item_dim,
        )
        for c in catalogs
    }
    for c, mode in cases:
        k = default_k if mode == "sampled" else None
        setups[c, mode] = (_policy(user_dim, item_dim, slate_size, k), batches[c])
    update_s: dict[tuple[int, str], list[float]] = {case: [] for case in cases}
    target_s: dict[tuple[int, str], list[float]] = {case: [] for case in cases}
    try:
        for round_ in range(warmup + repeats):
            for case in cases:
                policy, batch = setups[case]
                start = time.perf_counter()
                policy.update([batch])
                elapsed = time.perf_counter() - start
                start = time.perf_counter()
                with torch.no_grad():  # the TD target alone, as the update computes it
                    policy._td_target(batch, slate_size)
                target_elapsed = time.perf_counter() - start
                if round_ >= warmup:
                    update_s[case].append(elapsed)
                    target_s[case].append(target_elapsed)
    finally:
        torch.set_num_threads(previous_threads)
    rows = [
        {
            "catalog": c,
            "mode": mode,
            "target_candidates": default_k if mode == "sampled" else None,
            "median_s": statistics.median(update_s[c, mode]),
            "min_s": min(update_s[c, mode]),
            "target_median_s": statistics.median(target_s[c, mode]),
            "update_s": [round(x, 5) for x in update_s[c, mode]],
        }
        for c, mode in cases
    ]
    median = {case: statistics.median(times) for case, times in update_s.items()}
    smallest = min(catalogs)
    ratios = {
        f"{mode}_{c}_over_{smallest}": median[c, mode] / median[smallest, mode]
        for c, mode in cases
        if c != smallest and (smallest, mode) in median
    }
    goal_key = f"sampled_1000_over_{smallest}"
    return {
        "benchmark": "slateq_update",
        "config": {
            "batch_size": batch_size,
            "slate_size": slate_size,
            "user_dim": user_dim,
            "item_dim": item_dim,
            "hidden": list(SlateQConfig().hidden),
            "optimizer": SlateQConfig().optimizer,
            "td": SlateQConfig().td,
            "candidates": "the whole catalog, every row",
            "default_target_candidates": default_k,
            "repeats": repeats,
            "warmup": warmup,
            "torch_threads": threads,
        },
        "machine": machine_info(),
        "results": rows,
        "ratios": ratios,
        "goal": f"sampled update on 1,000 items <= {GOAL_RATIO} x the 100-item one",
        "meets_goal": ratios.get(goal_key, float("inf")) <= GOAL_RATIO,
    }


def _print(result: dict[str, Any]) -> None:
    print(f"{'catalog':>8} {'mode':>8} {'update s':>10} {'min s':>8} {'target s':>10}")
    for row in result["results"]:
        print(
            f"{row['catalog']:>8} {row['mode']:>8} {row['median_s']:>10.4f} "
            f"{row['min_s']:>8.4f} {row['target_median_s']:>10.4f}"
        )
    for name, value in result["ratios"].items():
        print(f"{name}: {value:.2f}")
    print(f"goal ({result['goal']}): {'met' if result['meets_goal'] else 'MISSED'}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--catalogs", type=int, nargs="+", default=[100, 1000, 10_000])
    parser.add_argument("--full-up-to", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    result = run_slateq_update_benchmark(
        args.catalogs, full_up_to=args.full_up_to, repeats=args.repeats, threads=args.threads
    )
    _print(result)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0 if result["meets_goal"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
