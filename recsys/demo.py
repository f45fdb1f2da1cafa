"""``recsys demo``: the whole loop on embedded real services, in one command.

Starts a real ``redis-server`` and a real Kafka-protocol broker on free loopback ports, trains
the skeleton models on simulated logs, seeds user state, starts the online updater (Kafka →
Redis) and Ray Serve, then drives simulated users through ``POST /recommend`` and
``POST /feedback`` over HTTP and prints what happened.

Whatever way the demo ends (normally, on an error, on Ctrl-C or on SIGTERM) it stops what it
started (:mod:`recsys.services`); a signal becomes :class:`~recsys.services.Interrupted`.
"""

from __future__ import annotations

import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from recsys.config import Settings
from recsys.data.synthetic import SyntheticWorld
from recsys.live import feedback_events
from recsys.pipeline import train_skeleton
from recsys.services import Interrupted, StopSignals, embedded_settings, start_loop
from recsys.serving.wiring import build_fold
from recsys.simulator.env import SlateEnv

MAX_REPORTED_FAILURES = 5


@dataclass(frozen=True)
class DemoResult:
    """What the demo saw: the traffic summary and the first failed requests (at most a few)."""

    summary: dict[str, float]
    failures: tuple[str, ...]

    @property
    def clean(self) -> bool:
        """Traffic flowed and no request failed."""
        return self.summary["recommend_requests"] > 0 and self.summary["errors"] == 0


@dataclass
class TrafficStats:
    """What the simulated clients saw, merged across client threads."""

    recommend_latencies_s: list[float] = field(default_factory=list)
    feedback_latencies_s: list[float] = field(default_factory=list)
    impressions: int = 0
    clicks: int = 0
    errors: int = 0
    failures: list[str] = field(default_factory=list)

    def fail(self, what: str) -> None:
        """Count a failed request and keep the first few descriptions for the report."""
        self.errors += 1
        if len(self.failures) < MAX_REPORTED_FAILURES:
            self.failures.append(what)

    def merge(self, other: TrafficStats) -> None:
        self.recommend_latencies_s += other.recommend_latencies_s
        self.feedback_latencies_s += other.feedback_latencies_s
        self.impressions += other.impressions
        self.clicks += other.clicks
        self.errors += other.errors
        self.failures += other.failures[: MAX_REPORTED_FAILURES - len(self.failures)]

    @property
    def requests(self) -> int:
        return len(self.recommend_latencies_s)

    def summary(self, elapsed_s: float) -> dict[str, float]:
        lat = np.asarray(self.recommend_latencies_s or [np.nan]) * 1000.0
        return {
            "recommend_requests": float(self.requests),
            "feedback_requests": float(len(self.feedback_latencies_s)),
            "errors": float(self.errors),
            "requests_per_s": self.requests / max(elapsed_s, 1e-9),
            "click_rate_per_slate": self.clicks / max(self.requests, 1),
            "p50_ms": float(np.percentile(lat, 50)),
            "p95_ms": float(np.percentile(lat, 95)),
            "p99_ms": float(np.percentile(lat, 99)),
        }


def drive_users(
    base_url: str,
    world: SyntheticWorld,
    *,
    duration_s: float,
    concurrency: int,
    slate_size: int,
    seed: int,
) -> TrafficStats:
    """Simulated users request slates over HTTP, respond per the simulator, and send feedback.

    Each client thread owns its own simulator stream and HTTP connection. Every signal of a
    response is posted (:func:`recsys.live.feedback_events`: the click, its dwell, likes,
    conversions, skips). A failed request is counted and described; a client that cannot
    reach the service stops.
    """
    stats = TrafficStats()
    lock = threading.Lock()
    deadline = time.monotonic() + duration_s
    stop = threading.Event()

    def client(worker: int) -> None:
        local = TrafficStats()
        env = SlateEnv(world, seed=seed + 100 + worker)
        rng = np.random.default_rng(seed + 200 + worker)
        call = "connect"
        try:
            with httpx.Client(base_url=base_url, timeout=30.0) as http:
                while not stop.is_set() and time.monotonic() < deadline:
                    u = int(rng.integers(len(world.user_ids)))
                    user_id = world.user_ids[u]
                    call = f"POST /recommend user {user_id}"
                    t0 = time.perf_counter()
                    resp = http.post(
                        "/recommend", json={"user_id": user_id, "slate_size": slate_size}
                    )
                    local.recommend_latencies_s.append(time.perf_counter() - t0)
                    if resp.status_code != 200:
                        local.fail(f"{call}: HTTP {resp.status_code} {resp.text[:300]}")
                        continue
                    body = resp.json()
                    items = np.array([it["item_id"] for it in body["items"]], dtype=np.int64)
                    local.impressions += items.size
                    step = env.step(np.array([u], dtype=np.int64), items[None, :])
                    local.clicks += int(step.clicked_item[0] >= 0)
                    call = f"POST /feedback user {user_id}"
                    for event, item, value in feedback_events(step, 0):
                        payload: dict[str, Any] = {
                            "request_id": body["request_id"],
                            "user_id": user_id,
                            "item_id": item,
                            "event": event,
                        }
                        if value is not None:
                            payload["value"] = value
                        t1 = time.perf_counter()
                        fb = http.post("/feedback", json=payload)
                        local.feedback_latencies_s.append(time.perf_counter() - t1)
                        if fb.status_code != 202:
                            local.fail(f"{call}: HTTP {fb.status_code} {fb.text[:300]}")
        except httpx.HTTPError as exc:
            local.fail(f"{call}: {type(exc).__name__}: {exc}")
        except Exception as exc:  # a bug: fail the run visibly, and print the traceback too
            local.fail(f"client {worker} crashed during {call}: {exc!r}")
            raise
        finally:
            with lock:
                stats.merge(local)

    threads = [threading.Thread(target=client, args=(w,), daemon=True) for w in range(concurrency)]
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join()
    finally:
        stop.set()  # when interrupted: clients finish the request in flight, then stop
        for t in threads:
            t.join(timeout=5.0)
    return stats


def run_demo(
    settings: Settings,
    *,
    exit_after_s: float | None,
    workdir: Path,
    port: int | None = None,
    console: Console | None = None,
) -> DemoResult:
    """Run the demo end to end, stop everything it started, and report the traffic.

    Keeps serving after the traffic phase until Ctrl-C or SIGTERM (then returns normally), or
    until ``exit_after_s`` seconds after the service came up. A signal at any other time stops
    the demo and raises :class:`~recsys.services.Interrupted` once every service is stopped.
    """
    console = console or Console()
    with StopSignals() as signals, ExitStack() as stack:
        try:
            return _run(stack, signals, settings, exit_after_s, workdir, port, console)
        except Interrupted as exc:
            console.print(f"{exc}: stopping every service the demo started")
            raise
        finally:
            signals.hold()


def _run(
    stack: ExitStack,
    signals: StopSignals,
    settings: Settings,
    exit_after_s: float | None,
    workdir: Path,
    port: int | None,
    console: Console,
) -> DemoResult:
    started = time.monotonic()
    settings = embedded_settings(
        stack, settings, artifacts_root=workdir / "artifacts", port=port, console=console
    )

    console.print("training the retriever and the slate policies on simulated logs")
    models = train_skeleton(settings, progress=True)
    console.print(f"retrieval {models.retrieval.version}")
    for name, art in models.policies.items():
        console.print(f"policy-{name} {art.version}")

    url, store = start_loop(stack, signals, settings, console)
    up_at = time.monotonic()
    console.print(f"[bold green]serving at {url}[/] (set-up took {up_at - started:.1f}s)")

    duration = settings.demo.duration_s
    if exit_after_s is not None:
        duration = min(duration, exit_after_s)
    with console.status(f"driving simulated users for {duration:.0f}s"):
        t0 = time.monotonic()
        stats = drive_users(
            url,
            models.world,
            duration_s=duration,
            concurrency=settings.demo.concurrency,
            slate_size=settings.demo.slate_size,
            seed=settings.catalog.seed,
        )
        summary = stats.summary(time.monotonic() - t0)
    time.sleep(1.0)  # let the updater apply the tail of the stream
    records, _ = build_fold(settings).codec.decode(store.get_many(list(models.world.user_ids)))
    summary["users_with_clicks_in_redis"] = float(np.count_nonzero(records["clicks"] > 0))
    summary["setup_s"] = up_at - started
    _print_summary(console, summary, url)
    for failure in stats.failures:
        console.print(f"[red]failed:[/] {escape(failure)}")

    if exit_after_s is None:
        console.print("serving until Ctrl-C or SIGTERM")
        try:
            while True:
                time.sleep(1.0)
        except KeyboardInterrupt:  # the expected way to end this phase, Interrupted too
            console.print("stopping")
    else:
        remaining = exit_after_s - (time.monotonic() - up_at)
        if remaining > 0:
            console.print(f"serving for {remaining:.0f}s more (--exit-after)")
            time.sleep(remaining)
    return DemoResult(summary, tuple(stats.failures))


def _print_summary(console: Console, summary: dict[str, float], url: str) -> None:
    table = Table(title="recsys demo", show_header=False)
    rows = [
        ("recommend requests", f"{summary['recommend_requests']:.0f}"),
        ("feedback requests", f"{summary['feedback_requests']:.0f}"),
        ("errors", f"{summary['errors']:.0f}"),
        ("throughput", f"{summary['requests_per_s']:.1f} req/s"),
        ("click rate (slates with a click)", f"{summary['click_rate_per_slate']:.3f}"),
        (
            "latency p50 / p95 / p99",
            "{p50_ms:.1f} / {p95_ms:.1f} / {p99_ms:.1f} ms".format(**summary),
        ),
        ("users with clicks in Redis", f"{summary['users_with_clicks_in_redis']:.0f}"),
        ("set-up time", f"{summary['setup_s']:.1f}s"),
        ("URL", url),
    ]
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)
