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

Latency goals are absolute, but the box's speed is not: the same 2-core box has measured the
simulator at 0.5M and at 1.1M user-steps/s in different sessions. So the result also records
how fast the box was during the run (``box_speed``: the simulator benchmark's headline, taken
just before the load) and how busy it was (``box_cpu``: CPU time of the whole machine, all
processes, per answered request and in cores, from ``/proc/stat``), which is the figure to
compare between runs when the latencies move with the box. And it records what the server's
batches did (``server``, from the service's own ``/metrics`` around each run: batches, mean
batch size, time per batch by stage, and the share of the run spent inside batches), which
says whether the event loop was the limit.
Everything started here is stopped on every way out.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
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


def _cpu_ticks() -> tuple[int, int, int] | None:
    """(busy, all, steal) CPU ticks of the whole machine so far, or ``None`` off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already inside user time
    return total - idle, total, fields[7] if len(fields) > 7 else 0


def _box_cpu(
    before: tuple[int, int, int] | None, after: tuple[int, int, int] | None, requests: int
) -> dict[str, float] | None:
    """How busy the machine was between two readings of :func:`_cpu_ticks`."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    cores = os.cpu_count() or 1
    busy, total, steal = (a - b for a, b in zip(after, before, strict=True))
    seconds = busy / os.sysconf("SC_CLK_TCK")
    return {
        "busy_cores": cores * busy / total,
        "steal_cores": cores * steal / total,
        "cpu_ms_per_request": 1000.0 * seconds / max(requests, 1),
    }


#: The service's batch histograms (``GET /metrics``) that :func:`_server_batches` reads.
_BATCH_HISTOGRAMS = ("recsys_recommend_batch_size", "recsys_recommend_stage_seconds")


def parse_batch_counters(text: str) -> dict[str, float]:
    """The ``_sum`` and ``_count`` of the batch histograms in a Prometheus text exposition,
    keyed by sample name (and ``{stage}`` for the stage histogram)."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in _BATCH_HISTOGRAMS:
            continue
        for sample in family.samples:
            if sample.name.endswith(("_sum", "_count")):
                stage = sample.labels.get("stage")
                out[sample.name if stage is None else f"{sample.name}{{{stage}}}"] = sample.value
    return out


def _batch_counters(url: str) -> dict[str, float] | None:
    """:func:`parse_batch_counters` of the service's ``/metrics`` now; ``None`` when it does
    not answer (the figures are then left out, the run still counts)."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=10) as resp:
            return parse_batch_counters(resp.read().decode())
    except (OSError, ValueError):
        return None


def _server_batches(
    before: dict[str, float] | None, after: dict[str, float] | None, seconds: float
) -> dict[str, Any] | None:
    """What the service's batches did between two :func:`_batch_counters` readings.

    ``batch_busy_share`` is the share of the wall time the server spent inside batches. A
    batch runs on the event loop, and the next one starts as soon as it ends, so near 1 the
    loop is never free between batches: latency is then about one and a half batch times
    plus whatever queued, and ``batch_ms`` (mostly a fixed cost per batch) is what to cut.
    With more than one replica the readings come from whichever replica answered.
    """
    if before is None or after is None or seconds <= 0:
        return None
    diff = {k: v - before.get(k, 0.0) for k, v in after.items()}
    batches = diff.get("recsys_recommend_batch_size_count", 0.0)
    if batches <= 0:
        return None
    prefix = "recsys_recommend_stage_seconds_sum{"
    stages = {k[len(prefix) : -1]: v for k, v in diff.items() if k.startswith(prefix)}
    busy = sum(stages.values())
    return {
        "batches": int(batches),
        "mean_batch_size": diff.get("recsys_recommend_batch_size_sum", 0.0) / batches,
        "batch_ms": 1000.0 * busy / batches,
        "stage_ms_per_batch": {k: 1000.0 * v / batches for k, v in sorted(stages.items())},
        "batch_busy_share": busy / seconds,
    }


def _measured(url: str, **kwargs: Any) -> dict[str, Any]:
    """One Locust run's summary with the machine's CPU use and the server's batches during
    it."""
    before, counters, start = _cpu_ticks(), _batch_counters(url), time.perf_counter()
    result = run_loadtest(url, **kwargs)
    seconds = time.perf_counter() - start
    summary = _summary(result)
    summary["box_cpu"] = _box_cpu(before, _cpu_ticks(), result.total.requests)
    summary["server"] = _server_batches(counters, _batch_counters(url), seconds)
    return summary


def box_speed() -> dict[str, Any]:
    """The simulator benchmark's headline (``benchmarks/results/simulator.json``) measured
    now, in about five seconds: a reading of how fast this box runs numpy right now."""
    from recsys.simulator.bench import run_simulator_benchmark

    result = run_simulator_benchmark()
    return {
        "simulator_user_steps_per_s": result["user_steps_per_s"],
        "simulator_user_steps_per_s_all": result["user_steps_per_s_all"],
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
    saturation = _measured(
        url,
        rps=cfg.clients * SATURATION_RATE_PER_CLIENT,
        clients=cfg.clients,
        out_dir=cfg.out_dir / name / "saturation",
        **common,
    )
    fixed = _measured(
        url, rps=cfg.fixed_rps, out_dir=cfg.out_dir / name / f"{cfg.fixed_rps:g}rps", **common
    )
    return {"saturation": saturation, "fixed": fixed}


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
    with console.status("measuring the box's speed (simulator benchmark)"):
        speed = box_speed()
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
        "box_speed": speed,
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
