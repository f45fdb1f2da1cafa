"""Fault scenarios through real Ray Serve: Redis paused, Redis killed, a replica killed.

``make reliability`` (``benchmarks/reliability.py``) runs them one after the other on one
stack: a real ``redis-server`` and tansu broker on loopback, the online updater, and Ray Serve
with ``serving.replicas`` replicas of the demo's SlateQ policy. Each scenario drives the
service with an open-loop client at a fixed rate (a request every ``1 / rate_rps`` seconds
whatever the answers do, each with ``timeout_s`` for its whole exchange, so a hang is recorded
as a failure and not as a slower client), injects its fault at ``baseline_s``, lifts it
``fault_s`` later and keeps the load on for ``after_s``. Users come from a known set that the
set-up gave a state (one slate and one click each, folded by the updater), so the replicas'
caches of recently read states hold most of them when the store goes away.

What each scenario must show (issue 11):

- ``redis_pause``: Redis stopped (SIGSTOP) for ``fault_s``: every answer is degraded or a
  fast 503 with ``Retry-After``, none hangs; answers and latency are normal within
  ``recovery_s`` of SIGCONT.
- ``redis_kill``: Redis killed (SIGKILL) for ``fault_s``, then restarted on the same port (it
  persisted nothing, so it comes back empty and the updater refolds the topics): at least
  ``min_answered`` of the requests answered, degraded while it is down, normal within
  ``recovery_s`` of the restart; ``/healthz`` stays 200 while ``/readyz`` says 503, and
  ``/readyz`` is 200 again afterwards.
- ``broker_pause``: the Kafka-protocol broker stopped (SIGSTOP) for ``fault_s``, then
  continued (issue 10): every request is still answered (the servers buffer their events and
  never block a response on the broker), no event the service accepted is lost, and the online
  updater has processed every event on the topics within ``recovery_s`` plus the drain time.
  (The embedded tansu keeps its log in memory, so a killed and restarted broker would come
  back empty; a pause is the outage it can survive, as a real Kafka survives a restart.)
- ``replica_kill``: one replica actor killed: at most ``max_failed`` of the requests fail,
  and Serve has all its replicas running again within ``replace_within_s``.

Every scenario also counts lost events: impressions of answered slates and accepted clicks
that never reached the broker's topics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from recsys.config import ServingSettings, Settings
from recsys.embedded import EmbeddedBroker, EmbeddedRedis
from recsys.protocols import EventSource, UserStateStore
from recsys.stream import build_event_source
from recsys.types import FeedbackEvent, ImpressionEvent

__all__ = [
    "SCENARIOS",
    "Answer",
    "EventLedger",
    "FaultStep",
    "OpenLoopLoad",
    "ReliabilityConfig",
    "Stack",
    "Trace",
    "figures",
    "redis_kill",
    "redis_pause",
    "replica_kill",
    "run_reliability",
    "running_stack",
]

#: Status recorded for a request that got no HTTP answer (timeout, refused, reset).
NO_ANSWER = 0

SCENARIOS = ("redis_pause", "redis_kill", "broker_pause", "replica_kill")

#: What the checks of "while the fault lasts" leave out at each end: a request or probe sent
#: this close to the fault may be served before it took hold (the store read of a batch
#: already under way) or after it was lifted (a paused Redis answers what it had buffered).
EDGE_S = 0.25


@dataclass(frozen=True)
class ReliabilityConfig:
    """Load shape, fault timing and pass criteria of every scenario."""

    rate_rps: float = 100.0
    baseline_s: float = 5.0
    fault_s: float = 10.0
    after_s: float = 10.0
    timeout_s: float = 5.0
    users: int = 200
    slate_size: int = 5
    #: Share of answered slates whose first item gets a click posted to ``/feedback``.
    feedback_fraction: float = 0.1
    probe_interval_s: float = 0.25
    #: Answers and latency must be normal this long after the fault is lifted.
    recovery_s: float = 2.0
    #: Redis kill: share of requests that must get a slate (a 200).
    min_answered: float = 0.999
    #: Replica kill: share of requests that may fail.
    max_failed: float = 0.001
    #: Replica kill: Serve must run a replacement within this long.
    replace_within_s: float = 30.0
    #: An answer slower than this while Redis is paused counts as a hang.
    fast_s: float = 1.0
    #: After recovery, p99 latency at most this many times the baseline's p99 ...
    latency_factor: float = 2.0
    #: ... or the baseline's p99 plus this much, whichever is larger: enough to flag a backlog
    #: still draining, not the tens of ms other work on a shared 2-core box adds to a p99.
    latency_slack_ms: float = 50.0
    seed: int = 0

    @property
    def duration_s(self) -> float:
        """How long each scenario's load runs."""
        return self.baseline_s + self.fault_s + self.after_s


class Answer(NamedTuple):
    """One ``/recommend`` request as the client saw it (times in seconds from the start)."""

    sent_s: float
    latency_s: float
    status: int  # NO_ANSWER when no HTTP answer came back
    error: str  # "" for a usable 200; else "timeout", "connection", "http <status>", ...
    degraded: bool
    cold_start: bool
    retry_after: bool
    request_id: str
    first_item: int  # the slate's first item (-1 without a slate)

    @property
    def ok(self) -> bool:
        """A slate came back."""
        return not self.error

    @property
    def normal(self) -> bool:
        """A slate came back, computed from the stored state."""
        return self.ok and not self.degraded


class Probe(NamedTuple):
    """One health probe: ``/healthz`` or ``/readyz``."""

    sent_s: float
    path: str
    status: int


class FeedbackPost(NamedTuple):
    """One click posted for an answered slate."""

    request_id: str
    item_id: int
    status: int


@dataclass(frozen=True)
class FaultStep:
    """An action run on the calling thread ``at_s`` seconds into the load (after the previous
    step finished); its start and end times go to :attr:`Trace.marks` under ``name`` and
    what it returned to :attr:`Trace.results`."""

    at_s: float
    name: str
    run: Callable[[], object]


@dataclass
class Trace:
    """Everything one loaded run recorded."""

    answers: list[Answer] = field(default_factory=list)
    probes: list[Probe] = field(default_factory=list)
    feedback: list[FeedbackPost] = field(default_factory=list)
    marks: dict[str, tuple[float, float]] = field(default_factory=dict)
    results: dict[str, object] = field(default_factory=dict)
    max_in_flight: int = 0
    #: (time, how late a 10 ms sleep of the client's event loop woke): the client's own lag,
    #: which would otherwise pass for the service's latency.
    loop_lag: list[tuple[float, float]] = field(default_factory=list)


def _answer(sent: float, took: float, status: int, retry: bool, raw: bytes) -> Answer:
    if status != 200:
        return Answer(sent, took, status, f"http {status}", False, False, retry, "", -1)
    try:
        body = json.loads(raw)
        items = body["items"]
        return Answer(
            sent, took, 200, "", bool(body["degraded"]), bool(body["cold_start"]), retry,
            str(body["request_id"]), int(items[0]["item_id"]) if items else -1,
        )  # fmt: skip
    except (ValueError, KeyError, TypeError, IndexError):
        return Answer(sent, took, 200, "bad body", False, False, retry, "", -1)


def _no_answer(sent: float, took: float, error: str) -> Answer:
    return Answer(sent, took, NO_ANSWER, error, False, False, False, "", -1)


async def _post(
    session: aiohttp.ClientSession, path: str, body: dict[str, Any]
) -> tuple[int, bool, bytes]:
    """Status, whether it said Retry-After, and the body of one POST."""
    async with session.post(path, json=body) as resp:
        return resp.status, "Retry-After" in resp.headers, await resp.read()


class OpenLoopLoad:
    """``/recommend`` at a fixed rate from known users, whatever the answers do.

    Request ``i`` leaves at ``i / rate_rps`` seconds (users drawn with ``seed``) and has
    ``timeout_s`` for its whole exchange, waiting for a connection included. A click on the
    first item follows a seeded share of the answered slates, and ``/healthz`` and ``/readyz``
    are probed every ``probe_interval_s``. The client is aiohttp, which costs about a third
    of httpx's CPU per request: the client shares the machine with the service. The load runs
    on an event loop in a thread of its own and the fault steps on the calling thread: a
    process they start is tied to that thread's life (:mod:`recsys.embedded`), and Ctrl-C
    reaches them there.
    """

    def __init__(self, url: str, cfg: ReliabilityConfig, user_ids: Sequence[str]) -> None:
        self.url = url
        self.cfg = cfg
        self.user_ids = list(user_ids)

    def run(
        self,
        duration_s: float,
        steps: Sequence[FaultStep] = (),
        seed: int = 0,
        on_tick: Callable[[float, Trace], None] | None = None,
    ) -> Trace:
        """Drive the service for ``duration_s`` while ``steps`` run; returns once every
        request is answered or timed out."""
        trace = Trace()
        stop = threading.Event()
        failed: list[BaseException] = []
        t0 = time.monotonic()

        def load() -> None:
            try:
                asyncio.run(self._load(duration_s, seed, trace, t0, stop))
            except BaseException as exc:  # handed to the caller's thread
                failed.append(exc)

        thread = threading.Thread(target=load, name="open-loop-load", daemon=True)
        thread.start()
        try:
            pending = sorted(steps, key=lambda s: s.at_s)
            while thread.is_alive():
                while pending and time.monotonic() - t0 >= pending[0].at_s:
                    step = pending.pop(0)
                    start = time.monotonic() - t0
                    trace.results[step.name] = step.run()
                    trace.marks[step.name] = (start, time.monotonic() - t0)
                if on_tick is not None:
                    on_tick(time.monotonic() - t0, trace)
                thread.join(0.05)
        finally:
            stop.set()
            thread.join()
        if failed:
            raise failed[0]
        trace.answers.sort()
        return trace

    async def _load(
        self, duration_s: float, seed: int, trace: Trace, t0: float, stop: threading.Event
    ) -> None:
        cfg = self.cfg
        rng = np.random.default_rng(seed)
        n = int(duration_s * cfg.rate_rps)
        users = rng.integers(0, len(self.user_ids), size=n)
        clicks = rng.random(n) < cfg.feedback_fraction
        in_flight = 0

        def now() -> float:
            return time.monotonic() - t0

        async def recommend(session: aiohttp.ClientSession, i: int) -> None:
            nonlocal in_flight
            in_flight += 1
            trace.max_in_flight = max(trace.max_in_flight, in_flight)
            user = self.user_ids[users[i]]
            sent = now()
            try:
                got = await _post(
                    session, "/recommend", {"user_id": user, "slate_size": cfg.slate_size}
                )
                answer = _answer(sent, now() - sent, *got)
            except TimeoutError:
                answer = _no_answer(sent, now() - sent, "timeout")
            except aiohttp.ClientError:
                answer = _no_answer(sent, now() - sent, "connection")
            finally:
                in_flight -= 1
            trace.answers.append(answer)
            if answer.ok and clicks[i] and answer.request_id and answer.first_item >= 0:
                body = {"request_id": answer.request_id, "user_id": user,
                        "item_id": answer.first_item, "event": "click"}  # fmt: skip
                try:
                    status = (await _post(session, "/feedback", body))[0]
                except (TimeoutError, aiohttp.ClientError):
                    status = NO_ANSWER
                trace.feedback.append(FeedbackPost(answer.request_id, answer.first_item, status))

        async def probe(session: aiohttp.ClientSession) -> None:
            while now() < duration_s and not stop.is_set():
                for path in ("/healthz", "/readyz"):
                    sent = now()
                    try:
                        async with session.get(path) as resp:
                            status = resp.status
                            await resp.read()
                    except (TimeoutError, aiohttp.ClientError):
                        status = NO_ANSWER
                    trace.probes.append(Probe(sent, path, status))
                await asyncio.sleep(cfg.probe_interval_s)

        async def lag() -> None:
            while now() < duration_s and not stop.is_set():
                start = now()
                await asyncio.sleep(0.01)
                trace.loop_lag.append((start, now() - start - 0.01))

        async with (
            aiohttp.ClientSession(
                self.url,
                connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(total=cfg.timeout_s),
            ) as session,
            aiohttp.ClientSession(self.url, timeout=aiohttp.ClientTimeout(total=2.0)) as prober,
        ):
            side = [asyncio.create_task(probe(prober)), asyncio.create_task(lag())]
            tasks: set[asyncio.Task[None]] = set()
            for i in range(n):
                if stop.is_set():
                    break
                delay = i / cfg.rate_rps - now()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.create_task(recommend(session, i))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.gather(*side, *list(tasks))


# --------------------------------------------------------------------------- figures


def _latency_ms(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    arr = np.asarray(values, dtype=np.float64) * 1000.0
    return {
        "p50_ms": round(float(np.percentile(arr, 50)), 1),
        "p99_ms": round(float(np.percentile(arr, 99)), 1),
        "max_ms": round(float(arr.max()), 1),
    }


def _counts(labels: Sequence[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for label in labels:
        out[label] = out.get(label, 0) + 1
    return out


def _phase(answers: Sequence[Answer]) -> dict[str, Any]:
    """Counts and latencies of the answers sent in one phase."""
    return {
        "requests": len(answers),
        "ok": sum(a.ok for a in answers),
        "degraded": sum(a.degraded for a in answers),
        "cold_start": sum(a.cold_start for a in answers),
        "errors": _counts([a.error for a in answers if not a.ok]),
        **_latency_ms([a.latency_s for a in answers]),
    }


def _between(answers: Sequence[Answer], lo: float, hi: float) -> list[Answer]:
    return [a for a in answers if lo <= a.sent_s < hi]


def _answered(a: Answer) -> bool:
    """A slate, or a 503 that tells the client when to come back."""
    return a.ok or (a.status == 503 and a.retry_after)


def figures(
    trace: Trace, fault_at: float, lifted_at: float, recovered_at: float, cfg: ReliabilityConfig
) -> dict[str, Any]:
    """The figures of a run whose fault was in place from ``fault_at`` until its lifting began
    at ``lifted_at`` and was gone at ``recovered_at``: the whole run, then each phase (before,
    fault, recovery: from the lifting to ``recovery_s`` after it was gone, after)."""
    answers = trace.answers
    settled = recovered_at + cfg.recovery_s
    ok = sum(a.ok for a in answers)
    abnormal = [a.sent_s for a in answers if a.sent_s >= recovered_at and not a.normal]
    requests = max(len(answers), 1)
    return {
        "requests": len(answers),
        "ok": ok,
        "answered_fraction": sum(_answered(a) for a in answers) / requests,
        "failed": len(answers) - ok,
        "failed_fraction": (len(answers) - ok) / requests,
        "degraded": sum(a.degraded for a in answers),
        "errors": _counts([a.error for a in answers if not a.ok]),
        # When the first failures were sent and how long they took: which event they follow.
        "failures": [
            {"sent_s": round(a.sent_s, 3), "error": a.error, "ms": round(a.latency_s * 1e3, 1)}
            for a in answers
            if not a.ok
        ][:20],
        "max_in_flight": trace.max_in_flight,
        # The load client's own worst event-loop delay: a latency far above it is the service's.
        "client_lag_max_ms": round(max((lag for _, lag in trace.loop_lag), default=0.0) * 1e3, 1),
        "fault_at_s": round(fault_at, 3),
        "lifted_at_s": round(lifted_at, 3),
        "recovered_at_s": round(recovered_at, 3),
        # The last request sent after recovery that did not get a normal answer.
        "time_to_normal_s": round(max(abnormal) - recovered_at, 3) if abnormal else 0.0,
        **{f"latency_{k}": v for k, v in _latency_ms([a.latency_s for a in answers]).items()},
        "phases": {
            "before": _phase(_between(answers, 0.0, fault_at)),
            "fault": _phase(_between(answers, fault_at, lifted_at)),
            "recovery": _phase(_between(answers, lifted_at, settled)),
            "after": _phase(_between(answers, settled, float("inf"))),
        },
        "feedback": {
            "posted": len(trace.feedback),
            "accepted": sum(f.status == 202 for f in trace.feedback),
        },
    }


def _probe_statuses(trace: Trace, path: str, lo: float, hi: float) -> list[int]:
    return [p.status for p in trace.probes if p.path == path and lo <= p.sent_s < hi]


def _latency_normal(fig: dict[str, Any], cfg: ReliabilityConfig) -> bool:
    """p99 after the recovery window within ``latency_factor`` x (or ``latency_slack_ms``
    above) the p99 before the fault."""
    base = fig["phases"]["before"]["p99_ms"]
    after = fig["phases"]["after"]["p99_ms"]
    if base is None or after is None:
        return False
    return bool(after <= max(cfg.latency_factor * base, base + cfg.latency_slack_ms))


def _all_normal_after(trace: Trace, fig: dict[str, Any], cfg: ReliabilityConfig) -> bool:
    after = _between(trace.answers, fig["recovered_at_s"] + cfg.recovery_s, float("inf"))
    return bool(after) and all(a.normal for a in after)


# --------------------------------------------------------------------------- the stack


class EventLedger:
    """Every impression and click on the broker's topics, read back by a source of its own,
    to count what the service accepted but never logged."""

    def __init__(self, source: EventSource) -> None:
        self.source = source
        self.impressions: set[str] = set()
        self.clicks: set[tuple[str, int]] = set()
        #: Records of an impression or click already on the topic (a producer's retry of a
        #: batch the broker had written): consumers fold them twice unless they dedupe.
        self.duplicate_impressions = 0
        self.duplicate_clicks = 0

    def read(self, timeout_s: float = 0.5) -> None:
        """Read what the topics hold now (waiting up to ``timeout_s`` for a first record)."""
        while records := self.source.poll(1000, timeout_s):
            for r in records:
                if isinstance(r.event, ImpressionEvent):
                    rid = r.event.request_id
                    self.duplicate_impressions += rid in self.impressions
                    self.impressions.add(rid)
                elif isinstance(r.event, FeedbackEvent) and r.event.event == "click":
                    key = (r.event.request_id, r.event.item_id)
                    self.duplicate_clicks += key in self.clicks
                    self.clicks.add(key)
            timeout_s = 0.0

    def lost(self, trace: Trace, wait_s: float = 10.0, settle_s: float = 2.0) -> dict[str, int]:
        """Impressions of answered slates and accepted clicks missing from the topics, after
        giving the servers' event buffers time to drain: until nothing is missing, nothing
        new came for ``settle_s``, or ``wait_s`` passed."""
        want_imp = {a.request_id for a in trace.answers if a.ok and a.request_id}
        want_fb = {(f.request_id, f.item_id) for f in trace.feedback if f.status == 202}
        deadline = time.monotonic() + wait_s
        last: tuple[int, int] | None = None
        changed = time.monotonic()
        while True:
            self.read()
            missing_imp = len(want_imp - self.impressions)
            missing_fb = len(want_fb - self.clicks)
            now = time.monotonic()
            if (missing_imp, missing_fb) != last:
                last, changed = (missing_imp, missing_fb), now
            done = not missing_imp and not missing_fb
            if done or now >= deadline or now - changed >= settle_s:
                break
        return {
            "impressions": len(want_imp),
            "impressions_lost": missing_imp,
            # answered, but the server said it could not log the impression (request_id "")
            "impressions_unlogged": sum(a.ok and not a.request_id for a in trace.answers),
            "clicks": len(want_fb),
            "clicks_lost": missing_fb,
            # on the topics more than once so far (every scenario's, since the ledger's start)
            "impressions_duplicated": self.duplicate_impressions,
            "clicks_duplicated": self.duplicate_clicks,
        }


@dataclass
class Stack:
    """The running service the scenarios fault: its URL, settings and Redis process."""

    url: str
    settings: Settings
    redis: EmbeddedRedis
    store: UserStateStore
    user_ids: list[str]
    ledger: EventLedger
    broker: EmbeddedBroker | None = None


def seed_users(url: str, user_ids: Sequence[str], timeout_s: float = 10.0) -> int:
    """One slate and a click on its first item for each user, so that the online updater
    gives each a state; returns how many got their slate."""

    async def go() -> int:
        sem = asyncio.Semaphore(8)
        done = 0

        async def one(session: aiohttp.ClientSession, user: str) -> None:
            nonlocal done
            async with sem:
                got = await _post(session, "/recommend", {"user_id": user, "slate_size": 5})
                answer = _answer(0.0, 0.0, *got)
                if not answer.ok or answer.first_item < 0:
                    return
                body = {"request_id": answer.request_id, "user_id": user,
                        "item_id": answer.first_item, "event": "click"}  # fmt: skip
                await _post(session, "/feedback", body)
                done += 1

        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with aiohttp.ClientSession(url, timeout=timeout) as session:
            await asyncio.gather(*(one(session, u) for u in user_ids))
        return done

    return asyncio.run(go())


def wait_for_states(
    store: UserStateStore, user_ids: list[str], share: float, timeout_s: float
) -> int:
    """Wait until ``share`` of ``user_ids`` have a stored state; returns how many do."""
    deadline = time.monotonic() + timeout_s
    while True:
        have = sum(r is not None for r in store.get_many(user_ids))
        if have >= share * len(user_ids) or time.monotonic() >= deadline:
            return have
        time.sleep(0.2)


def _resume(process: EmbeddedRedis | EmbeddedBroker) -> None:
    """SIGCONT ``process`` (a stopped process cannot act on SIGTERM)."""
    if process.pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGCONT)


@contextmanager
def running_stack(
    settings: Settings,
    cfg: ReliabilityConfig,
    *,
    artifacts: Path | None = None,
    console: Console | None = None,
) -> Iterator[Stack]:
    """The demo's stack serving ``settings`` (``serving.replicas`` replicas), for the block.

    ``artifacts``: serve the models there (as ``recsys.pipeline.train_skeleton`` publishes
    them); without it the demo's SlateQ policy and retriever are trained first, into a
    temporary directory. Everything started here is stopped on every way out (an error,
    Ctrl-C, SIGTERM).
    """
    from recsys.pipeline import train_skeleton
    from recsys.services import StopSignals, ray_serve, start_embedded, start_updater

    console = console or Console(stderr=True)
    with StopSignals() as signals, ExitStack() as stack:
        root = artifacts
        if root is None:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="reliability-")))
        services = start_embedded(stack, settings, artifacts_root=root, console=console)
        settings = services.settings
        # Callbacks run in reverse: a Redis left SIGSTOPped is resumed before it is stopped.
        stack.callback(_resume, services.redis)
        stack.callback(_resume, services.broker)
        if artifacts is None:
            with console.status("training the demo policy and retriever"):
                train_skeleton(settings, progress=False)
        store = start_updater(stack, settings)
        source = build_event_source(settings.stream)
        stack.callback(source.close)
        with console.status(f"starting Ray Serve ({settings.serving.replicas} replicas)"):
            url = stack.enter_context(ray_serve(settings, signals))
        user_ids = [f"rel-u{i}" for i in range(cfg.users)]
        with console.status(f"giving {cfg.users} users a state"):
            seeded = seed_users(url, user_ids)
            stored = wait_for_states(store, user_ids, 0.95, 30.0)
        console.print(f"{seeded} of {cfg.users} users seeded, {stored} with a stored state")
        try:
            yield Stack(
                url, settings, services.redis, store, user_ids, EventLedger(source),
                services.broker,
            )  # fmt: skip
        finally:
            signals.hold()


# --------------------------------------------------------------------------- scenarios

Scenario = Callable[["Stack", ReliabilityConfig, "Progress | None"], dict[str, Any]]


def _ticker(progress: Progress | None, name: str, total: float) -> Callable[[float, Trace], None]:
    if progress is None:
        return lambda t, trace: None
    task = progress.add_task(name, total=total)

    def tick(t: float, trace: Trace) -> None:
        done = ", ".join(trace.marks)
        progress.update(task, completed=min(t, total), description=f"{name} {done}".strip())

    return tick


def _result(
    name: str, criteria: str, fig: dict[str, Any], checks: dict[str, bool], **extra: Any
) -> dict[str, Any]:
    return {
        "scenario": name,
        "criteria": criteria,
        **fig,
        **extra,
        "checks": checks,
        "passed": all(checks.values()),
    }


def redis_pause(
    stack: Stack, cfg: ReliabilityConfig, progress: Progress | None = None
) -> dict[str, Any]:
    """Redis SIGSTOPped for ``fault_s`` under load, then SIGCONTed."""
    pid = stack.redis.pid
    if pid is None:
        raise RuntimeError("redis-server is not running")
    steps = [
        FaultStep(cfg.baseline_s, "paused", lambda: os.kill(pid, signal.SIGSTOP)),
        FaultStep(cfg.baseline_s + cfg.fault_s, "resumed", lambda: os.kill(pid, signal.SIGCONT)),
    ]
    load = OpenLoopLoad(stack.url, cfg, stack.user_ids)
    try:
        trace = load.run(
            cfg.duration_s, steps, cfg.seed, _ticker(progress, "redis_pause", cfg.duration_s)
        )
    finally:
        _resume(stack.redis)
    fault_at = trace.marks["paused"][1]
    lifted_at, recovered_at = trace.marks["resumed"]
    fig = figures(trace, fault_at, lifted_at, recovered_at, cfg)
    during = _between(trace.answers, fault_at, lifted_at)
    inside = _between(trace.answers, fault_at + EDGE_S, lifted_at - EDGE_S)
    checks = {
        "degraded_or_fast_503": all(
            (a.ok and a.degraded) or (a.status == 503 and a.retry_after) for a in inside
        ),
        "no_hang": all(a.latency_s <= cfg.fast_s for a in during),
        "normal_within_recovery": _all_normal_after(trace, fig, cfg),
        "latency_normal_after": _latency_normal(fig, cfg),
    }
    readyz = _probe_statuses(trace, "/readyz", fault_at + 0.5, lifted_at - EDGE_S)
    return _result(
        "redis_pause",
        f"Redis SIGSTOPped {cfg.fault_s:g} s at {cfg.rate_rps:g} req/s: degraded answers or "
        f"fast 503 + Retry-After, none over {cfg.fast_s:g} s; normal within "
        f"{cfg.recovery_s:g} s of SIGCONT",
        fig,
        checks,
        readyz_during=_counts([str(s) for s in readyz]),
        lost_events=stack.ledger.lost(trace),
    )


def redis_kill(
    stack: Stack, cfg: ReliabilityConfig, progress: Progress | None = None
) -> dict[str, Any]:
    """Redis SIGKILLed for ``fault_s`` under load, then restarted on the same port."""
    redis = stack.redis
    steps = [
        FaultStep(cfg.baseline_s, "killed", redis.kill),
        FaultStep(cfg.baseline_s + cfg.fault_s, "restarted", redis.start),
    ]
    load = OpenLoopLoad(stack.url, cfg, stack.user_ids)
    trace = load.run(
        cfg.duration_s, steps, cfg.seed + 1, _ticker(progress, "redis_kill", cfg.duration_s)
    )
    if "restarted" not in trace.marks:
        raise RuntimeError("redis-server was not restarted")
    fault_at = trace.marks["killed"][1]
    # Redis may take connections a little before the restart step sees it do so: the fault
    # ends when the restart begins.
    lifted_at, recovered_at = trace.marks["restarted"]
    fig = figures(trace, fault_at, lifted_at, recovered_at, cfg)
    healthz = _probe_statuses(trace, "/healthz", fault_at + 0.5, lifted_at - EDGE_S)
    readyz = _probe_statuses(trace, "/readyz", fault_at + 0.5, lifted_at - EDGE_S)
    ready_after = _probe_statuses(trace, "/readyz", recovered_at + cfg.recovery_s, float("inf"))
    inside = _between(trace.answers, fault_at + EDGE_S, lifted_at - EDGE_S)
    checks = {
        "answered": fig["ok"] >= cfg.min_answered * fig["requests"],
        "degraded_during": all(a.degraded for a in inside if a.ok),
        "normal_within_recovery": _all_normal_after(trace, fig, cfg),
        "latency_normal_after": _latency_normal(fig, cfg),
        "healthz_200_during": bool(healthz) and all(s == 200 for s in healthz),
        "readyz_503_during": bool(readyz) and all(s == 503 for s in readyz),
        "readyz_200_after": bool(ready_after) and all(s == 200 for s in ready_after),
    }
    return _result(
        "redis_kill",
        f"Redis SIGKILLed {cfg.fault_s:g} s at {cfg.rate_rps:g} req/s, restarted on the same "
        f"port: >= {cfg.min_answered:.1%} answered, degraded meanwhile, normal within "
        f"{cfg.recovery_s:g} s; /healthz 200 while /readyz 503",
        fig,
        checks,
        healthz_during=_counts([str(s) for s in healthz]),
        readyz_during=_counts([str(s) for s in readyz]),
        readyz_after=_counts([str(s) for s in ready_after]),
        lost_events=stack.ledger.lost(trace),
    )


def _processed_by_updater(stack: Stack, within_s: float) -> tuple[bool, dict[str, int]]:
    """Whether the online updater's committed offsets reach the end of every topic partition
    within ``within_s`` (state and offsets commit together: it processed everything)."""
    source = stack.ledger.source
    ends = source.end_offsets() if hasattr(source, "end_offsets") else {}
    consumer = stack.settings.stream.consumer_name
    deadline = time.monotonic() + within_s
    while True:
        committed = stack.store.offsets(consumer)
        if ends and all(committed.get(p, 0) >= end for p, end in ends.items()):
            return True, {p: committed.get(p, 0) - end for p, end in ends.items()}
        if time.monotonic() >= deadline:
            return False, {p: committed.get(p, 0) - end for p, end in ends.items()}
        time.sleep(0.2)


def broker_pause(
    stack: Stack, cfg: ReliabilityConfig, progress: Progress | None = None
) -> dict[str, Any]:
    """The broker SIGSTOPped for ``fault_s`` under load, then SIGCONTed."""
    broker = stack.broker
    if broker is None or broker.pid is None:
        raise RuntimeError("the broker is not running")
    pid = broker.pid
    steps = [
        FaultStep(cfg.baseline_s, "paused", lambda: os.kill(pid, signal.SIGSTOP)),
        FaultStep(cfg.baseline_s + cfg.fault_s, "resumed", lambda: os.kill(pid, signal.SIGCONT)),
    ]
    load = OpenLoopLoad(stack.url, cfg, stack.user_ids)
    try:
        trace = load.run(
            cfg.duration_s, steps, cfg.seed + 3, _ticker(progress, "broker_pause", cfg.duration_s)
        )
    finally:
        _resume(broker)
    fault_at = trace.marks["paused"][1]
    lifted_at, recovered_at = trace.marks["resumed"]
    fig = figures(trace, fault_at, lifted_at, recovered_at, cfg)
    during = _between(trace.answers, fault_at, lifted_at)
    # The producers' buffers drain and the broker answers the requests it held: give them
    # the time a producer's request timeout allows before counting anything as lost.
    lost = stack.ledger.lost(trace, wait_s=60.0, settle_s=10.0)
    processed, behind = _processed_by_updater(stack, within_s=60.0)
    accepted = sum(f.status == 202 for f in trace.feedback)
    checks = {
        "answered": fig["ok"] == fig["requests"] > 0,
        "no_hang": all(a.latency_s <= cfg.fast_s for a in during),
        "no_event_lost": lost["impressions_lost"] == 0 and lost["clicks_lost"] == 0,
        "all_processed": processed,
    }
    return _result(
        "broker_pause",
        f"broker SIGSTOPped {cfg.fault_s:g} s at {cfg.rate_rps:g} req/s: every request "
        f"answered, none over {cfg.fast_s:g} s; every accepted event on the topics and folded "
        "by the updater afterwards",
        fig,
        checks,
        feedback_accepted=accepted,
        lost_events=lost,
        updater_offsets_vs_end=behind,
    )


def replica_kill(
    stack: Stack, cfg: ReliabilityConfig, progress: Progress | None = None
) -> dict[str, Any]:
    """One replica actor killed under load; Serve starts a replacement."""
    from recsys.serving.deployment import kill_replica, running_replicas

    want = stack.settings.serving.replicas

    def replaced() -> float | None:
        # Serve counts the killed replica RUNNING until its controller notices the death, so
        # wait to see fewer than ``want`` first, then ``want`` again (after the load ends,
        # if that is what it takes).
        seen_down = False
        give_up = time.monotonic() + cfg.replace_within_s
        while time.monotonic() < give_up:
            running = running_replicas()
            seen_down = seen_down or running < want
            if seen_down and running >= want:
                return time.monotonic()
            time.sleep(0.1)
        return None

    steps = [
        FaultStep(cfg.baseline_s, "killed", kill_replica),
        FaultStep(cfg.baseline_s, "replaced", replaced),
    ]
    load = OpenLoopLoad(stack.url, cfg, stack.user_ids)
    trace = load.run(
        cfg.duration_s, steps, cfg.seed + 2, _ticker(progress, "replica_kill", cfg.duration_s)
    )
    fault_at = trace.marks["killed"][1]
    back = trace.results.get("replaced") is not None
    recovered_at = trace.marks["replaced"][1] if back else cfg.duration_s
    fig = figures(trace, fault_at, recovered_at, recovered_at, cfg)
    checks = {
        "failed": fig["failed_fraction"] <= cfg.max_failed,
        "replica_replaced": back,  # within replace_within_s
    }
    return _result(
        "replica_kill",
        f"one of {want} replicas killed at {cfg.rate_rps:g} req/s: at most "
        f"{cfg.max_failed:.1%} of requests fail; Serve runs a replacement within "
        f"{cfg.replace_within_s:g} s",
        fig,
        checks,
        killed=str(trace.results.get("killed")),
        replaced_after_s=round(recovered_at - fault_at, 2) if back else None,
        lost_events=stack.ledger.lost(trace),
    )


def _haproxy_retry_on(serving: ServingSettings) -> str:
    """What HAProxy retries on in a Ray that recsys starts (Serve's own default if unset)."""
    from recsys.serving.deployment import effective_ray_env

    return effective_ray_env(serving).get("RAY_SERVE_HAPROXY_RETRY_ON", "conn-failure")


RUNNERS: dict[str, Scenario] = {
    "redis_pause": redis_pause,
    "redis_kill": redis_kill,
    "broker_pause": broker_pause,
    "replica_kill": replica_kill,
}


def run_reliability(
    settings: Settings,
    cfg: ReliabilityConfig,
    scenarios: Sequence[str] = SCENARIOS,
    *,
    artifacts: Path | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run ``scenarios`` in order on one stack (:func:`running_stack`); JSON-ready figures
    and verdicts. Put ``replica_kill`` last: the others would meet a replica still warming."""
    unknown = [s for s in scenarios if s not in RUNNERS]
    if unknown:
        raise ValueError(f"unknown scenarios {unknown}: choose from {', '.join(SCENARIOS)}")
    console = console or Console(stderr=True)
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    results = []
    with running_stack(settings, cfg, artifacts=artifacts, console=console) as stack:
        serving = stack.settings.serving
        with Progress(
            TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
            console=console, transient=True,
        ) as progress:  # fmt: skip
            for name in scenarios:
                results.append(RUNNERS[name](stack, cfg, progress))
                verdict = "passed" if results[-1]["passed"] else "FAILED"
                progress.console.print(f"{name}: {verdict}")
    return {
        "benchmark": "reliability",
        "machine": f"{os.cpu_count()} cores ({platform.machine()})",
        "setup": (
            "redis-server, tansu broker and the online updater on loopback; Ray Serve with "
            f"{serving.replicas} replicas of the demo's SlateQ policy behind "
            f"{'HAProxy' if serving.throughput_optimized else 'the Python proxy'}; the "
            "open-loop load client in the runner's process, on the same machine"
        ),
        "ingress": "haproxy" if serving.throughput_optimized else "python_proxy",
        "haproxy_retry_on": _haproxy_retry_on(serving) if serving.throughput_optimized else None,
        "replicas": serving.replicas,
        "store_timeout_ms": serving.store_timeout_ms,
        "store_retry_s": serving.store_retry_s,
        "config": asdict(cfg),
        "scenarios": results,
        "passed": all(r["passed"] for r in results),
        # The machine is shared (other work may run beside the benchmark): its 1-minute load
        # average when the run started and when it ended.
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
