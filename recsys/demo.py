"""``recsys demo``: the whole loop on embedded real services, in one command.

Starts a real ``redis-server`` and a real Kafka-protocol broker on free loopback ports, trains
the skeleton models on simulated logs, seeds user state, starts the online updater (Kafka →
Redis) and Ray Serve, then drives simulated users through ``POST /recommend`` and
``POST /feedback`` over HTTP and prints what happened.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

from recsys.config import Settings
from recsys.data.synthetic import SyntheticWorld
from recsys.embedded import EmbeddedBroker, EmbeddedRedis, free_port
from recsys.pipeline import make_env, train_skeleton
from recsys.protocols import UserStateStore
from recsys.serving.deployment import start_serving, stop_serving
from recsys.serving.wiring import seed_users
from recsys.store import build_user_state_store
from recsys.stream import OnlineUpdater, build_event_source, ensure_topics


@dataclass
class TrafficStats:
    """What the simulated clients saw, merged across client threads."""

    recommend_latencies_s: list[float] = field(default_factory=list)
    feedback_latencies_s: list[float] = field(default_factory=list)
    impressions: int = 0
    clicks: int = 0
    errors: int = 0

    def merge(self, other: TrafficStats) -> None:
        self.recommend_latencies_s += other.recommend_latencies_s
        self.feedback_latencies_s += other.feedback_latencies_s
        self.impressions += other.impressions
        self.clicks += other.clicks
        self.errors += other.errors

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

    Each client thread owns its own simulator stream and HTTP connection. Clicks are reported
    as ``click`` events; a slate with no click reports ``skip`` on its top item.
    """
    stats = TrafficStats()
    lock = threading.Lock()
    deadline = time.monotonic() + duration_s

    def client(worker: int) -> None:
        local = TrafficStats()
        env = make_env(world, seed=seed + 100 + worker)
        rng = np.random.default_rng(seed + 200 + worker)
        with httpx.Client(base_url=base_url, timeout=30.0) as http:
            while time.monotonic() < deadline:
                u = int(rng.integers(len(world.user_ids)))
                user_id = world.user_ids[u]
                t0 = time.perf_counter()
                resp = http.post("/recommend", json={"user_id": user_id, "slate_size": slate_size})
                local.recommend_latencies_s.append(time.perf_counter() - t0)
                if resp.status_code != 200:
                    local.errors += 1
                    continue
                body = resp.json()
                items = np.array([it["item_id"] for it in body["items"]], dtype=np.int64)
                local.impressions += items.size
                step = env.step(np.array([u], dtype=np.int64), items[None, :])
                chosen = int(step.clicked_item[0])
                event, item = ("click", chosen) if chosen >= 0 else ("skip", int(items[0]))
                if chosen >= 0:
                    local.clicks += 1
                t1 = time.perf_counter()
                fb = http.post(
                    "/feedback",
                    json={
                        "request_id": body["request_id"],
                        "user_id": user_id,
                        "item_id": item,
                        "event": event,
                    },
                )
                local.feedback_latencies_s.append(time.perf_counter() - t1)
                if fb.status_code != 202:
                    local.errors += 1
        with lock:
            stats.merge(local)

    threads = [threading.Thread(target=client, args=(w,), daemon=True) for w in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return stats


@contextmanager
def _updater_thread(store: UserStateStore, settings: Settings) -> Iterator[OnlineUpdater]:
    source = build_event_source(settings.stream)
    updater = OnlineUpdater(source, store, settings.stream.consumer_name)
    updater.start_in_thread(timeout_s=settings.stream.poll_timeout_s)
    try:
        yield updater
    finally:
        updater.stop()
        source.close()


def run_demo(
    settings: Settings,
    *,
    exit_after_s: float | None,
    workdir: Path,
    port: int | None = None,
    console: Console | None = None,
) -> dict[str, float]:
    """Run the demo end to end and return the traffic summary.

    Keeps serving after the traffic phase until Ctrl-C, or until ``exit_after_s`` seconds after
    the service came up.
    """
    console = console or Console()
    started = time.monotonic()
    with ExitStack() as stack:
        with console.status("starting redis-server and the Kafka-protocol broker"):
            redis = stack.enter_context(EmbeddedRedis())
            broker = stack.enter_context(EmbeddedBroker())
        settings = settings.model_copy(
            update={
                "store": settings.store.model_copy(update={"url": redis.url}),
                "stream": settings.stream.model_copy(update={"bootstrap": broker.bootstrap}),
                "artifacts": settings.artifacts.model_copy(update={"root": workdir / "artifacts"}),
                "serving": settings.serving.model_copy(update={"port": port or free_port()}),
            }
        )
        console.print(f"redis-server pid {redis.pid} at {redis.url}")
        console.print(f"tansu broker pid {broker.pid} at {broker.bootstrap}")

        console.print("training the skeleton retrieval model on simulated logs")
        models = train_skeleton(settings, progress=True)
        console.print(f"artifact {models.artifact.name}/{models.artifact.version}")

        store = build_user_state_store(settings.store)
        stack.callback(store.close)
        created = seed_users(store, models.world.user_ids, models.model.user_embeddings)
        console.print(f"seeded {created} users in Redis")
        ensure_topics(
            settings.stream.bootstrap,
            [settings.stream.impressions_topic, settings.stream.feedback_topic],
        )
        stack.enter_context(_updater_thread(store, settings))

        with console.status("starting Ray Serve"):
            url = start_serving(settings)
        stack.callback(stop_serving)
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
        states = store.get_many(list(models.world.user_ids))
        summary["users_with_clicks_in_redis"] = float(
            sum(1 for s in states if s is not None and s.clicks > 0)
        )
        summary["setup_s"] = up_at - started
        _print_summary(console, summary, url)

        if exit_after_s is None:
            console.print("serving until Ctrl-C")
            try:
                while True:
                    time.sleep(1.0)
            except KeyboardInterrupt:
                console.print("stopping")
        else:
            remaining = exit_after_s - (time.monotonic() - up_at)
            if remaining > 0:
                console.print(f"serving for {remaining:.0f}s more (--exit-after)")
                time.sleep(remaining)
    return summary


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
