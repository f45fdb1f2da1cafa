"""``recsys bench serve``: Ray Serve against plain uvicorn, side by side in one run.

Starts a real ``redis-server`` and the Kafka-protocol broker on loopback, trains the demo's
small SlateQ policy and retriever for a catalog of ``catalog`` items (the RL policy serves),
runs the online updater, then serves the *same* :class:`~recsys.serving.recommender.Recommender`
two ways, one after the other:

- ``ray_serve``: the Serve deployment (:mod:`recsys.serving.deployment`), one replica,
  requests batched by ``@serve.batch``;
- ``plain_uvicorn``: the same FastAPI app in one uvicorn process
  (:mod:`recsys.serving.plain`), batched by the same-sized :class:`MicroBatcher`.

Each is driven by Locust (headless, FastHttpUser, :mod:`recsys.loadtest_profile`: known, new
and returning users, clicks and dwell fed back, 2% malformed requests) twice: closed-loop at
saturation with ``clients`` clients and no think time, then open-loop at a fixed rate. The
result holds rps, p50/p99 and errors of each, and the Serve / plain throughput ratio.
Everything started here is stopped on every way out.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from recsys.config import Settings
from recsys.loadtest import LoadTestResult, run_loadtest

#: Offered rate per client in the saturation runs: far above any answer rate, so each
#: client sends its next request as soon as the last one is answered.
SATURATION_RATE_PER_CLIENT = 10_000.0

#: Goals of the serving issue on the 2-core box, with the RL policy serving.
GOALS = {"saturation_rps": 600.0, "fixed_p99_ms": 50.0, "ratio": 0.5}


@dataclass(frozen=True)
class ServeBenchConfig:
    """What ``recsys bench serve`` measures."""

    catalog: int = 100_000
    duration_s: float = 60.0
    clients: int = 32
    fixed_rps: float = 300.0
    out_dir: Path = Path("benchmarks/results/serve")
    seed: int = 0


def _summary(result: LoadTestResult) -> dict[str, Any]:
    """The figures of one Locust run (all requests, and ``/recommend`` alone)."""
    rec = next((e for e in result.endpoints if e.name == "/recommend"), None)
    return {
        "clients": result.clients,
        "offered_rps": None
        if result.target_rps >= result.clients * SATURATION_RATE_PER_CLIENT
        else result.target_rps,
        "rps": result.total.rps,
        "requests": result.total.requests,
        "errors": result.total.failures,
        "p50_ms": result.total.p50_ms,
        "p99_ms": result.total.p99_ms,
        "recommend": None
        if rec is None
        else {"rps": rec.rps, "p50_ms": rec.p50_ms, "p99_ms": rec.p99_ms, "errors": rec.failures},
        "report": result.reports.get("html", ""),
    }


def _drive(url: str, name: str, cfg: ServeBenchConfig, users: int) -> dict[str, Any]:
    """Saturation, then the fixed rate, against one server."""
    common: dict[str, Any] = {
        "duration_s": cfg.duration_s,
        "slo_p99_ms": GOALS["fixed_p99_ms"],
        "max_error_rate": 0.0,
        "known_users": users,
        "seed": cfg.seed,
    }
    saturation = run_loadtest(
        url,
        rps=cfg.clients * SATURATION_RATE_PER_CLIENT,
        clients=cfg.clients,
        out_dir=cfg.out_dir / name / "saturation",
        **common,
    )
    fixed = run_loadtest(
        url, rps=cfg.fixed_rps, out_dir=cfg.out_dir / name / f"{cfg.fixed_rps:g}rps", **common
    )
    return {"saturation": _summary(saturation), "fixed": _summary(fixed)}


def run_serve_benchmark(cfg: ServeBenchConfig, console: Console | None = None) -> dict[str, Any]:
    """Run the benchmark (see the module docstring) and return its JSON-ready result."""
    from recsys.pipeline import train_skeleton
    from recsys.services import StopSignals, embedded_settings, ray_serve, start_updater
    from recsys.serving.plain import plain_server

    console = console or Console(stderr=True)
    start = time.perf_counter()
    base = Settings()
    base = base.model_copy(
        update={"catalog": base.catalog.model_copy(update={"num_items": cfg.catalog})}
    )
    with (
        StopSignals() as signals,
        ExitStack() as stack,
        tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp,
    ):
        settings = embedded_settings(stack, base, artifacts_root=Path(tmp), console=console)
        with console.status(f"training the demo policy and retriever on {cfg.catalog} items"):
            train_skeleton(settings, progress=False)
        start_updater(stack, settings)
        users = settings.catalog.num_users
        runs: dict[str, Any] = {}
        console.print("[bold]Ray Serve[/bold]")
        with ray_serve(settings, signals) as url:
            runs["ray_serve"] = _drive(url, "ray_serve", cfg, users)
        console.print("[bold]plain uvicorn[/bold]")
        with plain_server(settings) as url:
            runs["plain_uvicorn"] = _drive(url, "plain_uvicorn", cfg, users)
    serve_rps = runs["ray_serve"]["saturation"]["rps"]
    plain_rps = runs["plain_uvicorn"]["saturation"]["rps"]
    ratio = serve_rps / plain_rps if plain_rps > 0 else None
    serve = runs["ray_serve"]
    met = {
        "saturation_rps": serve["saturation"]["rps"] >= GOALS["saturation_rps"]
        and serve["saturation"]["errors"] == 0,
        "fixed_p99_ms": serve["fixed"]["p99_ms"] <= GOALS["fixed_p99_ms"]
        and serve["fixed"]["errors"] == 0,
        "ratio": ratio is not None and ratio >= GOALS["ratio"],
    }
    return {
        "benchmark": "serve",
        "machine": f"{os.cpu_count()} cores ({platform.machine()})",
        "setup": (
            "redis-server, tansu broker and the online updater on loopback; the demo's "
            f"SlateQ policy over a {cfg.catalog}-item catalog; one Ray Serve replica or one "
            "uvicorn process; Locust FastHttpUser on the same machine"
        ),
        "catalog": cfg.catalog,
        "policy": settings.policy.name,
        "duration_s": cfg.duration_s,
        "saturation_clients": cfg.clients,
        "fixed_rps": cfg.fixed_rps,
        "batching": {
            "max_batch_size": settings.serving.max_batch_size,
            "batch_wait_ms": settings.serving.batch_wait_ms,
        },
        "runs": runs,
        "ratio": ratio,
        "goals": GOALS,
        "met": met,
        "elapsed_s": time.perf_counter() - start,
    }
