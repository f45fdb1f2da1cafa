"""``recsys bench stream``: the event stream's consumers through a real broker and real Redis.

Two measurements, on embedded ``redis-server`` and tansu (the same binaries the tests use):

- **Throughput.** ``events`` realistic events (impressions of ``slate_size`` items with their
  candidate ids and user features, and feedback of every kind on their items) are produced
  first. Then the online updater (``recsys updater``) and the joiner (``recsys joiner``) run
  as separate processes, as in production, over that backlog three times: the updater alone,
  the joiner alone (each the only consumer; the broker and Redis still share the machine),
  then both at once (``concurrent``: they split the cores). A consumer's rate is the events
  it committed between the first and the last time the bench saw its committed offsets move,
  divided by that time: process start-up (imports, connecting) and the first commit's batch
  are left out, everything after it (fetching, decoding, folding, the Redis transaction, the
  Parquet segments) is in. Each run also reports the CPU the consumer process used per event
  (all its threads), and the broker's and Redis's, which a busy or shared machine does not
  distort the way it distorts the rates. Every run has its own consumer name, dataset and
  Redis key prefix, so each reads the whole backlog from the start.
- **Feedback-to-state lag.** With both consumers still running, a producer paces impressions
  and their clicks at a fixed total rate. For every click the bench notes when it was sent and
  the offset the broker gave it, and polls the updater's committed offsets in Redis every few
  milliseconds: a click has reached the user's state when the committed offset passes it
  (state and offsets commit in one transaction). Lag = that moment minus the send time.

The machine is named in the result: on a 2-core box the broker, Redis, both consumers and the
producer share the two cores. ``met.events_per_s`` judges each consumer alone (how each is
deployed and scaled: its own process, its own cores); ``met.events_per_s_concurrent`` both
squeezed onto the same cores.
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import Progress

from recsys.config import Settings
from recsys.protocols import UserStateStore
from recsys.store import build_user_state_store
from recsys.stream.events import encode_event
from recsys.stream.memory import partition_key
from recsys.types import EventType, FeedbackEvent, ImpressionEvent, SlateItem

#: The issue's goals: both consumers at least this many events/s; lag p99 at most this.
GOALS = {"events_per_s": 20_000.0, "lag_p99_ms": 500.0}

UPDATER = "bench-updater"
JOINER = "bench-joiner"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class StreamBenchConfig:
    """What to run (defaults: the issue's numbers)."""

    events: int = 200_000
    users: int = 20_000
    slate_size: int = 10
    candidates: int = 100
    rate: float = 2_000.0
    lag_seconds: float = 20.0
    joiner: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.events < 1_000:
            raise ValueError(f"events must be at least 1000, got {self.events}")
        if self.users < 1:
            raise ValueError(f"users must be at least 1, got {self.users}")
        if not 1.0 <= self.rate <= 50_000.0:
            raise ValueError(f"rate must be in [1, 50000] events/s, got {self.rate}")
        if self.lag_seconds < 1.0:
            raise ValueError(f"lag_seconds must be at least 1, got {self.lag_seconds}")


class _Traffic:
    """Seeded impressions and feedback over a catalog of ``num_items`` items."""

    def __init__(self, cfg: StreamBenchConfig, num_items: int, num_features: int) -> None:
        self.cfg = cfg
        self.num_items = num_items
        self.num_features = num_features
        self.rng = np.random.default_rng(cfg.seed)
        self._n = 0

    def impression(self, ts: float) -> ImpressionEvent:
        rng, cfg = self.rng, self.cfg
        k = min(cfg.candidates, self.num_items)
        cands = rng.choice(self.num_items, size=k, replace=False)
        slate = cands[: cfg.slate_size]
        props = rng.uniform(0.05, 1.0, size=slate.size)
        self._n += 1
        return ImpressionEvent(
            request_id=f"req-{cfg.seed}-{self._n}",
            user_id=f"user-{int(rng.integers(cfg.users))}",
            ts=ts,
            model_version="bench",
            policy="slateq",
            items=tuple(
                SlateItem(int(i), p, float(1.0 / (p + 1)), float(q))
                for p, (i, q) in enumerate(zip(slate.tolist(), props.tolist(), strict=True))
            ),
            session_id="s",
            candidates=tuple(cands.tolist()),
            features=tuple(rng.random(self.num_features, dtype=np.float32).tolist()),
        )

    def feedback(self, imp: ImpressionEvent, ts: float) -> FeedbackEvent:
        rng = self.rng
        item = imp.items[int(rng.integers(len(imp.items)))].item_id
        kind = [EventType.CLICK, EventType.DWELL, EventType.LIKE, EventType.SKIP][
            int(rng.choice(4, p=[0.6, 0.2, 0.1, 0.1]))
        ]
        value = float(rng.uniform(1, 120)) if kind == EventType.DWELL else 1.0
        return FeedbackEvent(imp.request_id, imp.user_id, item, kind, value, ts, server_ts=ts)


def _producer(bootstrap: str) -> Any:
    from kafka import KafkaProducer

    return KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, batch_size=512 * 1024,
        max_request_size=8 * 1024 * 1024,
    )  # fmt: skip


def _produce_backlog(settings: Settings, traffic: _Traffic, n: int, progress: Progress) -> None:
    """``n`` events in the past (half impressions, half feedback on them), as fast as the
    producer goes; server times spread over the last hour, so every watermark has passed."""
    stream = settings.stream
    producer = _producer(stream.bootstrap)
    t0 = time.time() - 3600.0
    task = progress.add_task("producing the backlog", total=n)
    try:
        for i in range(n // 2):
            ts = t0 + i * (3000.0 / n)
            imp = traffic.impression(ts)
            key = imp.user_id.encode()
            producer.send(stream.impressions_topic, encode_event(imp), key=key)
            fb = traffic.feedback(imp, ts + 0.5)
            producer.send(stream.feedback_topic, encode_event(fb), key=key)
            if i % 1000 == 999:
                progress.update(task, completed=2 * (i + 1))
        producer.flush(timeout=120)
        progress.update(task, completed=n)
    finally:
        producer.close(timeout=10)


def _consumer_env(settings: Settings, name: str, key_prefix: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "RECSYS_STORE__URL": settings.store.url,
            "RECSYS_STORE__KEY_PREFIX": key_prefix or settings.store.key_prefix,
            "RECSYS_STREAM__BOOTSTRAP": settings.stream.bootstrap,
            "RECSYS_STREAM__IMPRESSIONS_TOPIC": settings.stream.impressions_topic,
            "RECSYS_STREAM__FEEDBACK_TOPIC": settings.stream.feedback_topic,
            "RECSYS_STREAM__CONSUMER_NAME": name,
            "RECSYS_ARTIFACTS__ROOT": str(settings.artifacts.root),
        }
    )
    return env


@contextlib.contextmanager
def _process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A consumer process, stopped (SIGTERM, then SIGKILL) when the block ends however it
    ends."""
    with log.open("wb") as out:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)


Progress_ = Callable[[], int]


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU a process has used so far, all threads (Linux ``/proc``; None
    elsewhere or when it is gone)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime


@dataclass(frozen=True)
class _Watched:
    """A consumer the bench follows: its committed-event count and the process doing it."""

    committed: Progress_
    pid: int | None


def _rates(
    consumers: dict[str, _Watched],
    total: int,
    timeout_s: float,
    services: dict[str, int | None] | None = None,
) -> dict[str, Any]:
    """Poll every consumer's committed count until all reach ``total``; each one's rate
    between the first and the last movement of its count, measured side by side.

    The first commit is left out (it holds start-up and work done before the first sample),
    and so is the last when there are more than two: a joiner's final segment waits out its
    segment interval after the backlog ran dry, idle time that is not throughput. Alongside,
    the CPU each consumer process and each of ``services`` (name -> pid) used, per event."""
    services = services or {}
    deadline = time.monotonic() + timeout_s
    seen = {name: c.committed() for name, c in consumers.items()}
    first: dict[str, tuple[float, int, float | None]] = {}
    last: dict[str, tuple[float, int, float | None]] = {}
    before_last: dict[str, tuple[float, int, float | None]] = {}
    service_cpu: dict[str, tuple[float | None, float | None]] = {}
    while any(n < total for n in seen.values()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"consumers committed {seen} of {total} events in {timeout_s:.0f} s")
        time.sleep(0.02)
        now = time.monotonic()
        for name, c in consumers.items():
            value = c.committed()
            if value != seen[name]:
                sample = (now, value, cpu_seconds(c.pid))
                if name not in first:
                    first[name] = sample
                    if len(first) == 1:  # services are metered from the first movement on
                        service_cpu = {s: (cpu_seconds(p), None) for s, p in services.items()}
                elif name in last:
                    before_last[name] = last[name]
                last[name] = sample
            seen[name] = value
    service_cpu = {s: (c0, cpu_seconds(services[s])) for s, (c0, _) in service_cpu.items()}
    out: dict[str, Any] = {}
    events = 0  # the span the services were metered over covers the longest consumer's
    for name in consumers:
        end = before_last.get(name, last[name])
        if end is first[name]:  # two movements: nothing to leave out at the end
            end = last[name]
        (t0, n0, c0), (t1, n1, c1) = first[name], end
        events = max(events, n1 - n0)
        out[name] = {
            "events": n1 - n0,
            "seconds": round(t1 - t0, 3),
            # One commit took everything: no span to measure (a bigger backlog has one).
            "events_per_s": round((n1 - n0) / (t1 - t0), 1) if n1 > n0 else None,
            "cpu_us_per_event": _per_event(c0, c1, n1 - n0),
        }
    if service_cpu:
        out["services_cpu_us_per_event"] = {
            name: _per_event(c0, c1, events) for name, (c0, c1) in service_cpu.items()
        }
    return out


def _per_event(c0: float | None, c1: float | None, events: int) -> float | None:
    if c0 is None or c1 is None or events <= 0:
        return None
    return round((c1 - c0) / events * 1e6, 1)


def joiner_progress(root: Path, consumer: str) -> Progress_:
    """Events the joiner under ``consumer`` has committed: the offsets in its newest segment's
    checkpoint (read without touching the writer's files)."""
    import json

    from recsys.stream.joined_dataset import ROWS, JoinedDataset

    dataset = JoinedDataset(str(root))

    def committed() -> int:
        done = [f for f in dataset.files(ROWS, consumer) if not f.tmp]
        if not done:
            return 0
        head = json.loads(dataset.read_checkpoint(done[-1].path))
        return int(sum(head["offsets"].values()))

    return committed


def run_stream_benchmark(cfg: StreamBenchConfig, console: Console | None = None) -> dict[str, Any]:
    """Run both measurements (see the module docstring) and return the JSON-ready result."""
    from recsys.pipeline import train_skeleton
    from recsys.services import StopSignals, start_embedded
    from recsys.serving.wiring import build_fold

    console = console or Console(stderr=True)
    started = time.perf_counter()
    with (
        StopSignals(),
        # Outlives the stack: the consumers it stops write into this directory until then.
        tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp,
        ExitStack() as stack,
    ):
        root = Path(tmp)
        services = start_embedded(stack, Settings(), artifacts_root=root / "artifacts")
        settings = services.settings
        with console.status("training the demo retriever (the catalog's item table)"):
            train_skeleton(settings, progress=False)
        fold = build_fold(settings)
        traffic = _Traffic(cfg, fold.num_items, fold.spec.user_dim)
        store = build_user_state_store(settings.store)
        stack.callback(store.close)
        from recsys.stream.kafka import ensure_topics

        stream = settings.stream
        ensure_topics(stream.bootstrap, (stream.impressions_topic, stream.feedback_topic))
        with Progress(console=console, transient=True) as progress:
            _produce_backlog(settings, traffic, cfg.events, progress)
        console.print(f"produced {cfg.events} events")

        throughput = _measure_throughput(
            settings, cfg, root, stack, console, {"broker": services.broker.pid,
                                                  "redis": services.redis.pid}
        )  # fmt: skip
        console.print(f"throughput: {throughput}")
        lag = _measure_lag(settings, traffic, cfg, store, console)
        console.print(f"lag: {lag}")
    met = {
        "events_per_s": _all_meet(throughput["alone"], cfg),
        "events_per_s_concurrent": _all_meet(throughput["concurrent"], cfg),
        "lag_p99_ms": lag["p99_ms"] <= GOALS["lag_p99_ms"],
    }
    return {
        "benchmark": "stream",
        "machine": f"{os.cpu_count()} cores ({platform.machine()})",
        "config": asdict(cfg),
        "throughput": throughput,
        "lag": lag,
        "goals": GOALS,
        "met": met,
        "wall_s": round(time.perf_counter() - started, 1),
    }


def _consumers(cfg: StreamBenchConfig) -> tuple[str, ...]:
    return ("updater", "joiner") if cfg.joiner else ("updater",)


def _all_meet(rates: dict[str, Any], cfg: StreamBenchConfig) -> bool:
    """Every consumer of the run present and at least at the goal rate."""
    return all(
        name in rates and (rates[name]["events_per_s"] or 0.0) >= GOALS["events_per_s"]
        for name in _consumers(cfg)
    )


def _measure_throughput(
    settings: Settings,
    cfg: StreamBenchConfig,
    root: Path,
    stack: ExitStack,
    console: Console,
    services: dict[str, int | None],
) -> dict[str, Any]:
    """Each consumer alone over the backlog, then both at once; the concurrent pair keeps
    running (in ``stack``) for the lag measurement, the updater on the settings' key prefix."""
    recsys_cli = [str(Path(sys.executable).with_name("recsys"))]
    prefix = settings.store.key_prefix

    def start_updater(
        inner: ExitStack, key_prefix: str, tag: str
    ) -> tuple[_Watched, UserStateStore]:
        reader = build_user_state_store(
            settings.store.model_copy(update={"key_prefix": key_prefix})
        )
        inner.callback(reader.close)
        proc = inner.enter_context(
            _process(
                [*recsys_cli, "updater"],
                _consumer_env(settings, UPDATER, key_prefix),
                root / f"updater-{tag}.log",
            )
        )
        return _Watched(lambda: sum(reader.offsets(UPDATER).values()), proc.pid), reader

    def start_joiner(inner: ExitStack, tag: str) -> _Watched:
        dataset = root / f"joined-{tag}"
        proc = inner.enter_context(
            _process(
                [*recsys_cli, "joiner", "--dataset", str(dataset), "--segment-s", "1"],
                _consumer_env(settings, JOINER),
                root / f"joiner-{tag}.log",
            )
        )
        return _Watched(joiner_progress(dataset, JOINER), proc.pid)

    alone: dict[str, Any] = {}
    with ExitStack() as inner, console.status("the updater alone on the backlog"):
        watched, _ = start_updater(inner, f"{prefix}-alone", "alone")
        alone.update(_rates({"updater": watched}, cfg.events, 900, services))
        alone["updater"]["services_cpu_us_per_event"] = alone.pop("services_cpu_us_per_event")
    if cfg.joiner:
        with ExitStack() as inner, console.status("the joiner alone on the backlog"):
            joined = _rates({"joiner": start_joiner(inner, "alone")}, cfg.events, 900, services)
            joined["joiner"]["services_cpu_us_per_event"] = joined.pop("services_cpu_us_per_event")
            alone.update(joined)
    console.print(f"alone: {alone}")
    with console.status("updater and joiner together on the backlog"):
        both = {"updater": start_updater(stack, prefix, "concurrent")[0]}
        if cfg.joiner:
            both["joiner"] = start_joiner(stack, "concurrent")
        concurrent = _rates(both, cfg.events, 900, services)
    return {"alone": alone, "concurrent": concurrent}


def _measure_lag(
    settings: Settings,
    traffic: _Traffic,
    cfg: StreamBenchConfig,
    store: Any,
    console: Console,
) -> dict[str, Any]:
    """Pace impressions and clicks at ``cfg.rate`` events/s; per click, send time to the
    moment the updater's committed offset passed it."""
    stream = settings.stream
    partition = partition_key(stream.feedback_topic)
    producer = _producer(stream.bootstrap)
    sent: dict[int, float] = {}
    sent_lock = threading.Lock()
    done = threading.Event()
    applied_at: list[tuple[float, int]] = []

    def on_sent(t: float) -> Callable[[Any], None]:
        def record(meta: Any) -> None:
            with sent_lock:
                sent[int(meta.offset)] = t

        return record

    def poll_offsets() -> None:
        last = -1
        while not done.is_set():
            committed = store.offsets(UPDATER).get(partition, 0)
            if committed != last:
                applied_at.append((time.time(), committed))
                last = committed
            time.sleep(0.005)

    poller = threading.Thread(target=poll_offsets, name="lag-poller", daemon=True)
    poller.start()
    pairs = int(cfg.rate * cfg.lag_seconds / 2)
    interval = 2.0 / cfg.rate
    start = time.monotonic()
    try:
        with console.status(f"lag at a fixed {cfg.rate:.0f} events/s for {cfg.lag_seconds:.0f} s"):
            for i in range(pairs):
                wait = start + i * interval - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                now = time.time()
                imp = traffic.impression(now)
                key = imp.user_id.encode()
                producer.send(stream.impressions_topic, encode_event(imp), key=key)
                fb = traffic.feedback(imp, now)
                producer.send(stream.feedback_topic, encode_event(fb), key=key).add_callback(
                    on_sent(now)
                )
            producer.flush(timeout=60)
            achieved = 2 * pairs / (time.monotonic() - start)
            last_offset = max(sent) if sent else -1
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and (
                not applied_at or applied_at[-1][1] <= last_offset
            ):
                time.sleep(0.05)
    finally:
        done.set()
        poller.join(5)
        producer.close(timeout=10)
    lags = _lags(sent, applied_at)
    if lags.size < len(sent):
        raise RuntimeError(f"only {lags.size} of {len(sent)} clicks reached the state in time")
    return {
        "rate_target": cfg.rate,
        "rate_achieved": round(achieved, 1),
        "feedback_events": int(lags.size),
        "p50_ms": round(float(np.percentile(lags, 50)) * 1000, 1),
        "p99_ms": round(float(np.percentile(lags, 99)) * 1000, 1),
        "max_ms": round(float(lags.max()) * 1000, 1),
    }


def _lags(sent: dict[int, float], applied_at: list[tuple[float, int]]) -> np.ndarray:
    """For each sent offset, the first poll time whose committed offset exceeds it, minus the
    send time (offsets never applied are left out)."""
    if not sent or not applied_at:
        return np.zeros(0)
    offsets = np.array(sorted(sent))
    times = np.array([sent[o] for o in offsets])
    polled_t = np.array([t for t, _ in applied_at])
    polled_c = np.maximum.accumulate(np.array([c for _, c in applied_at]))
    idx = np.searchsorted(polled_c, offsets, side="right")  # first committed > offset
    ok = idx < polled_t.size
    out: np.ndarray = polled_t[idx[ok]] - times[ok]
    return out
