"""Simulator throughput benchmark (``recsys bench simulator``, ``benchmarks/bench_simulator.py``).

The setting of the issue: ``users`` users, each step every user gets its own ``candidates``
candidates sampled from the catalog, a cheap policy picks a slate of ``slate`` items, and the
environment steps the whole population at once (choice, responses, every state update).
Timed end to end per step: candidate sampling + policy + ``SlateEnv.step``. A benchmark, not a
test: it returns JSON-ready numbers and the machine they were measured on.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any

import numpy as np

from recsys.config import CatalogSettings, SimulatorSettings
from recsys.data.synthetic import make_world
from recsys.simulator.env import SlateEnv
from recsys.simulator.policies import top_k_slates
from recsys.types import IntArray

SlatePicker = Callable[[SlateEnv, IntArray, int], IntArray]


def _first_k(env: SlateEnv, candidates: IntArray, slate: int) -> IntArray:
    # Uniform-sampler rows are uniformly random ordered subsets, so their first ``slate``
    # columns are a uniformly random slate: a random policy at zero cost.
    return candidates[:, :slate]


def _top_popularity(env: SlateEnv, candidates: IntArray, slate: int) -> IntArray:
    # A cheap top-k policy on an observable score: the [B, C] gather plus argpartition.
    return top_k_slates(candidates, np.take(env.world.item_popularity, candidates), slate)


POLICIES: dict[str, SlatePicker] = {"random": _first_k, "topk_popularity": _top_popularity}


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, Any]:
    """Where a figure was measured (cores, load, library versions)."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": _version("torch"),
        "gymnasium": _version("gymnasium"),
        "load_average_1m_5m_15m": [round(x, 2) for x in load],
    }


def _run_once(
    env: SlateEnv, picker: SlatePicker, slate: int, steps: int, check: bool
) -> dict[str, float]:
    clicks = 0
    dwell = 0.0
    revenue = 0.0
    churned = 0
    cpu_start = time.process_time()
    start = time.perf_counter()
    for _ in range(steps):  # a loop over time; each step is one batched call for all users
        candidates = env.sample_candidates()
        result = env.step(None, picker(env, candidates, slate), check=check)
        obs = result.observable
        clicks += int(np.count_nonzero(obs.click_position >= 0))
        dwell += float(obs.dwell_s.sum())
        revenue += float(obs.revenue.sum())
        churned += int(np.count_nonzero(result.session.terminated))
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "clicks": float(clicks),
        "dwell_s": dwell,
        "revenue": revenue,
        "churned": float(churned),
    }


def run_simulator_benchmark(
    users: int = 4096,
    candidates: int = 100,
    slate: int = 10,
    steps: int = 200,
    seed: int = 0,
    *,
    policy: str = "random",
    check: bool = False,
    repeats: int = 3,
    num_items: int = 2000,
    num_topics: int = 16,
) -> dict[str, Any]:
    """Time ``steps`` full-population steps, ``repeats`` times; JSON-ready results.

    ``user_steps_per_s`` is the median over repeats (``..._best`` the fastest), counting
    candidate sampling, the policy and the environment step, in wall-clock time;
    ``user_steps_per_cpu_s`` divides by this process's CPU time instead, which other
    processes competing for the cores disturb much less (a shared machine).
    ``check=True`` also validates every slate (ranges, no repeated item), which trusted
    callers skip. Bad sizes raise :class:`ValueError` through :class:`SimulatorSettings` /
    :class:`CatalogSettings`.
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {sorted(POLICIES)}, got {policy!r}")
    if steps < 1 or repeats < 1:
        raise ValueError(f"steps and repeats must be >= 1, got {steps} and {repeats}")
    settings = SimulatorSettings(num_candidates=candidates, slate_size=slate, seed=seed)
    world = make_world(
        CatalogSettings(
            num_items=max(num_items, candidates), num_users=users, num_topics=num_topics, seed=seed
        )
    )
    env = SlateEnv(world, seed=seed, settings=settings)
    picker = POLICIES[policy]
    _run_once(env, picker, slate, min(steps, 5), check)  # warm caches and allocator
    runs = []
    for _ in range(repeats):
        env.reset(seed=seed)
        runs.append(_run_once(env, picker, slate, steps, check))
    rates = [users * steps / r["seconds"] for r in runs]
    cpu_rates = [users * steps / r["cpu_seconds"] for r in runs]
    median = statistics.median(rates)
    last = runs[-1]
    return {
        "benchmark": "simulator",
        "config": {
            "users": users,
            "candidates": candidates,
            "slate": slate,
            "steps": steps,
            "seed": seed,
            "policy": policy,
            "check": check,
            "repeats": repeats,
            "num_items": world.num_items,
            "num_topics": num_topics,
            "choice_model": settings.choice_model,
        },
        "user_steps_per_s": median,
        "user_steps_per_s_best": max(rates),
        "user_steps_per_s_all": rates,
        "user_steps_per_cpu_s": statistics.median(cpu_rates),
        "ms_per_step": 1000.0 * users / median,
        "seconds": statistics.median(r["seconds"] for r in runs),
        "clicks_per_s": median * last["clicks"] / (users * steps),
        "ctr": last["clicks"] / (users * steps),
        "dwell_s_per_user_step": last["dwell_s"] / (users * steps),
        "revenue_per_user_step": last["revenue"] / (users * steps),
        "churn_per_user_step": last["churned"] / (users * steps),
        "machine": machine_info(),
    }
