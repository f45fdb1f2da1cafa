"""Simulated users as HTTP clients of the running service: the loop closed over the wire.

A simulated user asks ``POST /recommend`` for a slate (with its session id), lets the
simulator respond to the slate it got, and posts every signal of its response to
``POST /feedback``: the click, its dwell, a like, a conversion, a skip. :func:`run_live`
follows held-out users through one life each this way (``recsys evaluate live``): a user's
next request waits until the online updater has folded their previous feedback into the store
(how often it had not yet on the first look is reported), so the service sees each step's
state, as the in-process evaluation does. The demo's traffic uses :func:`feedback_events`.

:func:`run_in_process` follows the same users with the same checkpoint without the service:
the same client slices, simulator seeds and order of steps, the policy called directly on the
simulator-side event fold. With the service serving greedily (``exploration=greedy``) both
draw the same random numbers for the same slates, so each user's life should come out the
same, step for step; :func:`evaluate_live` runs both, per policy, on a fresh embedded stack
(Redis, the broker, the updater, Ray Serve) and reports how close they are.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import torch
from rich.console import Console
from rich.progress import Progress

from recsys.artifacts import latest_version
from recsys.config import PolicySettings, Settings
from recsys.data.synthetic import SyntheticWorld, make_world
from recsys.features import EventFold, StateArray, StateCodec
from recsys.policy.base import BatchSlatePolicy
from recsys.policy.evaluation.simulator import (
    PolicyEvaluation,
    evaluation_users,
    mean_ci,
    paired_ratio,
)
from recsys.policy.training.config import PolicyTrainConfig
from recsys.policy.training.envs import SimulatedUsers
from recsys.protocols import UserStateStore
from recsys.serving.policies import ServedPolicy
from recsys.simulator.env import SlateEnv
from recsys.simulator.results import StepResult
from recsys.types import ArtifactError

F64 = npt.NDArray[np.float64]


def feedback_events(result: StepResult, row: int) -> list[tuple[str, int, float | None]]:
    """The ``(event, item_id, value)`` a client posts for row ``row`` of a simulator step:
    nothing without a click; else the click, its dwell seconds, and a like, a conversion
    and a skip when they happened."""
    obs = result.observable
    item = int(obs.clicked_item[row])
    if item < 0:
        return []
    events: list[tuple[str, int, float | None]] = [
        ("click", item, None),
        ("dwell", item, float(obs.dwell_s[row])),
    ]
    for name, flag in (("like", obs.like), ("conversion", obs.conversion), ("skip", obs.skip)):
        if bool(flag[row]):
            events.append((name, item, None))
    return events


def feedback_posts(
    result: StepResult, row: int, request_id: str, user_id: str
) -> list[tuple[dict[str, Any], int, float]]:
    """The ``POST /feedback`` bodies for row ``row`` of a simulator step, each with the column
    of :data:`COUNTED` it adds to in the user's state and by how much (what a client then
    waits to see folded)."""
    out: list[tuple[dict[str, Any], int, float]] = []
    for event, item, value in feedback_events(result, row):
        payload: dict[str, Any] = {
            "request_id": request_id,
            "user_id": user_id,
            "item_id": item,
            "event": event,
        }
        if value is not None:
            payload["value"] = value
        k = next(i for i, (_, e) in enumerate(COUNTED) if e == event)
        out.append((payload, k, 1.0 if value is None else value))
    return out


@dataclass
class LiveStats:
    """What the clients saw, merged across client threads."""

    recommend_latencies_s: list[float] = field(default_factory=list)
    feedback_posts: int = 0
    waits: int = 0
    not_visible_first_try: int = 0
    wait_s: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    policies: set[str] = field(default_factory=set)

    def merge(self, other: LiveStats) -> None:
        """Add another thread's counts."""
        self.recommend_latencies_s += other.recommend_latencies_s
        self.feedback_posts += other.feedback_posts
        self.waits += other.waits
        self.not_visible_first_try += other.not_visible_first_try
        self.wait_s += other.wait_s
        self.failures += other.failures
        self.policies |= other.policies


#: What a client counts per user and waits to see in the store: state field, feedback event
#: (``None``: the slate itself). Dwell is compared with a tolerance (a float32 sum).
COUNTED = (
    ("steps", None),
    ("clicks", "click"),
    ("likes", "like"),
    ("conversions", "conversion"),
    ("skips", "skip"),
    ("dwell_s", "dwell"),
)


class StateWatcher:
    """Reads users' states from the store until the updater has folded all that was posted."""

    def __init__(self, store: UserStateStore, codec: StateCodec, timeout_s: float) -> None:
        self.store = store
        self.codec = codec
        self.timeout_s = timeout_s

    def _shows(self, states: StateArray, expected: F64) -> bool:
        counts = [float(states[name][0]) for name, _ in COUNTED]
        dwell_ok = counts[-1] >= expected[-1] * (1.0 - 1e-5) - 0.05
        return dwell_ok and all(c >= e for c, e in zip(counts[:-1], expected[:-1], strict=True))

    def wait(self, user_id: str, expected: F64) -> tuple[bool, float]:
        """Until the user's state shows the ``expected`` counts (:data:`COUNTED`): every
        slate and every signal posted so far. ``(visible on the first look, seconds
        waited)``; raises ``TimeoutError`` after ``timeout_s``."""
        start = time.monotonic()
        first = True
        while True:
            states, known = self.codec.decode([self.store.get(user_id)])
            if known[0] and self._shows(states, expected):
                return first, time.monotonic() - start
            if time.monotonic() - start > self.timeout_s:
                have = ", ".join(f"{n} {float(states[n][0]):g}" for n, _ in COUNTED)
                want = ", ".join(f"{n} {e:g}" for (n, _), e in zip(COUNTED, expected, strict=True))
                raise TimeoutError(
                    f"user {user_id}: state not updated within {self.timeout_s}s (expected "
                    f"{want}; store has {have})"
                )
            first = False
            time.sleep(0.02)


class _Lives:
    """Per-user totals of lives followed one step of one user at a time (both drivers).

    Client threads write disjoint users' columns, so they share one instance without a lock.
    """

    def __init__(self, n: int, progress: Callable[[int], None] | None) -> None:
        self.totals = np.zeros((5, n))
        self.alive_at_end = np.zeros(n, dtype=np.bool_)
        self.progress = progress
        self.start = time.perf_counter()

    def add(self, row: int, result: StepResult) -> bool:
        """Count user ``row``'s step (a one-user ``result``); True when the user churned."""
        o = result.observable
        self.totals[:, row] += (
            float(o.dwell_s[0]) / 60.0,
            float(o.click_position[0] >= 0),
            float(o.revenue[0]),
            1.0,
            float(o.conversion[0]),
        )
        done = bool(result.session.terminated[0])
        if done and self.progress is not None:
            self.progress(1)
        return done

    def end(self, rows: npt.NDArray[np.int64], alive: npt.NDArray[np.bool_]) -> None:
        """Users ``rows`` are done; those still ``alive`` were cut off by ``max_steps``."""
        self.alive_at_end[rows[alive]] = True
        if self.progress is not None and alive.any():
            self.progress(int(alive.sum()))

    def evaluation(self) -> PolicyEvaluation:
        """Per-user outcomes (no after-conversion shares: these drivers do not track them)."""
        return PolicyEvaluation(
            returns=self.totals[0],
            clicks=self.totals[1],
            revenue=self.totals[2],
            steps=self.totals[3],
            conversions=self.totals[4],
            truncated=self.alive_at_end,
            windows=np.zeros((4, 0)),
            after_conversion_steps=0,
            seconds=time.perf_counter() - self.start,
        )


def run_live(
    base_url: str,
    world: SyntheticWorld,
    env_factory: Callable[[SyntheticWorld, int], SlateEnv],
    store: UserStateStore,
    fold: EventFold,
    *,
    users: npt.ArrayLike,
    max_steps: int,
    seed: int,
    slate_size: int,
    num_candidates: int,
    concurrency: int = 16,
    label: str = "live",
    visibility_timeout_s: float = 60.0,
    progress: Callable[[int], None] | None = None,
    slates: list[list[tuple[int, ...]]] | None = None,
) -> tuple[PolicyEvaluation, LiveStats]:
    """Follow ``users`` (population indices of ``world``) through one life each, over HTTP.

    Each client thread owns a slice of the users and a simulator of its own (seeded with
    ``seed`` plus the thread, so every policy evaluated with the same seed meets the same
    users in the same states with the same randomness per slice); its users take turns, so
    it waits for the store only once per round. User ids are ``<label>-<index>``; session ids
    follow the simulated sessions. Returns the per-user outcomes (hidden lifetime value as
    the return, clicks, revenue, steps) and what the clients saw. ``slates``, when given,
    receives each user's slates in order (one list per user, in the order of ``users``).
    """
    order = np.asarray(users, dtype=np.int64)
    n = order.shape[0]
    lives = _Lives(n, progress)
    merged = LiveStats()
    lock = threading.Lock()
    watcher = StateWatcher(store, fold.codec, visibility_timeout_s)
    slices = [np.arange(i, n, concurrency) for i in range(min(concurrency, n))]

    def client(worker: int, rows: npt.NDArray[np.int64]) -> None:
        local = LiveStats()
        population = world.select_users(order[rows])
        env = env_factory(population, seed + worker)
        ids = [f"{label}-{int(order[r])}" for r in rows]
        posted = np.zeros((rows.shape[0], len(COUNTED)))  # per user, as COUNTED
        alive = np.ones(rows.shape[0], dtype=np.bool_)
        try:
            with httpx.Client(base_url=base_url, timeout=30.0) as http:
                for _ in range(max_steps):
                    active = np.flatnonzero(alive)
                    if active.size == 0:
                        break
                    life, session = env.upcoming_sessions(active)
                    for j, b in enumerate(active.tolist()):
                        if posted[b, 0]:
                            first, waited = watcher.wait(ids[b], posted[b])
                            local.waits += 1
                            local.not_visible_first_try += int(not first)
                            local.wait_s.append(waited)
                        t0 = time.perf_counter()
                        resp = http.post(
                            "/recommend",
                            json={
                                "user_id": ids[b],
                                "slate_size": slate_size,
                                "num_candidates": num_candidates,
                                "session_id": f"l{int(life[j])}-s{int(session[j])}",
                            },
                        )
                        local.recommend_latencies_s.append(time.perf_counter() - t0)
                        if resp.status_code != 200:
                            raise RuntimeError(
                                f"POST /recommend {ids[b]}: HTTP {resp.status_code} "
                                f"{resp.text[:300]}"
                            )
                        body = resp.json()
                        local.policies.add(str(body["model_version"]))
                        items = np.array([[it["item_id"] for it in body["items"]]], np.int64)
                        result = env.step(np.array([b]), items, check=True)
                        if slates is not None:
                            slates[int(rows[b])].append(tuple(items[0].tolist()))
                        posted[b, 0] += 1
                        posts = feedback_posts(result, 0, body["request_id"], ids[b])
                        for payload, k, amount in posts:
                            fb = http.post("/feedback", json=payload)
                            if fb.status_code != 202:
                                raise RuntimeError(
                                    f"POST /feedback {ids[b]}: HTTP {fb.status_code} "
                                    f"{fb.text[:300]}"
                                )
                            local.feedback_posts += 1
                            posted[b, k] += amount
                        if lives.add(int(rows[b]), result):
                            alive[b] = False
                lives.end(rows, alive)
        except Exception as exc:
            local.failures.append(f"client {worker}: {type(exc).__name__}: {exc}")
        finally:
            with lock:
                merged.merge(local)

    threads = [
        threading.Thread(target=client, args=(w, rows), daemon=True)
        for w, rows in enumerate(slices)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    evaluation = lives.evaluation()
    return evaluation, merged


def run_in_process(
    policy: BatchSlatePolicy,
    make_users: Callable[[SyntheticWorld, int], SimulatedUsers],
    world: SyntheticWorld,
    *,
    users: npt.ArrayLike,
    max_steps: int,
    seed: int,
    concurrency: int = 16,
    progress: Callable[[int], None] | None = None,
    slates: list[list[tuple[int, ...]]] | None = None,
) -> PolicyEvaluation:
    """:func:`run_live`'s protocol without the service: the same slices of ``users`` with
    simulators seeded ``seed`` plus the slice, the same round-robin order of one-user steps,
    the policy's deterministic slate on the simulator's own event fold
    (``make_users(population, seed)``, a :class:`SimulatedUsers` of the population)."""
    order = np.asarray(users, dtype=np.int64)
    n = order.shape[0]
    lives = _Lives(n, progress)
    rng = np.random.default_rng(seed)  # unused by a deterministic slate
    for worker in range(min(concurrency, n)):
        rows = np.arange(worker, n, concurrency)
        sim = make_users(world.select_users(order[rows]), seed + worker)
        alive = np.ones(rows.shape[0], dtype=np.bool_)
        with torch.no_grad():
            for _ in range(max_steps):
                active = np.flatnonzero(alive)
                if active.size == 0:
                    break
                for b in active.tolist():
                    one = np.array([b])
                    obs = sim.observe(one)
                    action = policy.act(obs, sim.slate_size, rng, explore=False)
                    items = np.take_along_axis(obs.candidate_ids, action.slates, axis=1)
                    result = sim.step(one, items)
                    if slates is not None:
                        slates[int(rows[b])].append(tuple(items[0].tolist()))
                    if lives.add(int(rows[b]), result):
                        alive[b] = False
        lives.end(rows, alive)
    return lives.evaluation()


def live_summary(
    evaluations: dict[str, PolicyEvaluation], stats: dict[str, LiveStats], seed: int
) -> dict[str, Any]:
    """JSON-ready: per policy means with CIs and what the clients saw; paired ratios of
    every policy's return to ``myopic`` when it was evaluated."""
    out: dict[str, Any] = {"policies": {}, "ratios": {}}
    for name, ev in evaluations.items():
        st = stats[name]
        lat = np.asarray(st.recommend_latencies_s or [np.nan]) * 1000.0
        summary = ev.summary()
        summary.pop("bought_topic_share_after_conversion", None)
        summary.pop("bought_topic_ad_share_after_conversion", None)
        summary.pop("after_conversion_steps", None)
        summary["served_versions"] = sorted(st.policies)
        summary["recommend_requests"] = len(st.recommend_latencies_s)
        summary["feedback_posts"] = st.feedback_posts
        summary["recommend_p50_ms"] = float(np.percentile(lat, 50))
        summary["recommend_p99_ms"] = float(np.percentile(lat, 99))
        summary["state_waits"] = st.waits
        summary["not_visible_on_first_try"] = st.not_visible_first_try
        summary["not_visible_on_first_try_fraction"] = st.not_visible_first_try / max(st.waits, 1)
        summary["wait_p50_ms"] = float(np.percentile(np.asarray(st.wait_s or [0.0]), 50) * 1e3)
        summary["failures"] = st.failures[:5]
        out["policies"][name] = summary
    if "myopic" in evaluations:
        for name, ev in evaluations.items():
            if name != "myopic":
                out["ratios"][f"{name}/myopic"] = paired_ratio(
                    ev.returns, evaluations["myopic"].returns, seed=seed
                )
    return out


LIVE_POLICIES = ("slateq", "reinforce", "myopic")


def _compare(live: PolicyEvaluation, twin: PolicyEvaluation, seed: int) -> dict[str, Any]:
    """How close the service came to the in-process run of the same users and seeds."""
    ci = mean_ci(twin.returns)
    same = (
        (live.steps == twin.steps)
        & (live.clicks == twin.clicks)
        & np.isclose(live.returns, twin.returns, rtol=1e-5, atol=1e-6)
    )
    return {
        "in_process_return": ci,
        "live_return": float(live.returns.mean()),
        "live_inside_in_process_ci": bool(ci["ci_low"] <= live.returns.mean() <= ci["ci_high"]),
        "live_over_in_process": paired_ratio(live.returns, twin.returns, seed=seed),
        "identical_lives": int(same.sum()),
        "users": int(same.shape[0]),
    }


class LiveEvaluation:
    """Serves each policy on a fresh embedded stack to the same simulated test users.

    Holds what every run shares: the simulated world and simulator settings of ``config``,
    the newest retrieval artifact under ``settings.artifacts.root`` and its event fold, and
    the test users. Policies are served greedily (``exploration=greedy``): the slate an
    in-process evaluation measures.
    """

    def __init__(
        self,
        settings: Settings,
        config: PolicyTrainConfig,
        *,
        users: int,
        max_steps: int,
        seed: int,
        concurrency: int,
        console: Console | None = None,
    ) -> None:
        from recsys.pipeline import make_fold
        from recsys.serving.wiring import load_newest_retrieval

        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.settings = settings
        self.root = settings.artifacts.root
        self.world = make_world(config.catalog())
        self.sim_settings = config.simulator_settings()
        self.retrieval = load_newest_retrieval(settings)
        assert self.retrieval.item_table is not None
        self.fold = make_fold(self.retrieval.item_table)
        if self.fold.num_items != self.world.num_items:
            raise ValueError(
                f"the retrieval artifact under {self.root} knows {self.fold.num_items} items, "
                f"the simulated catalog has {self.world.num_items}: train and evaluate on the "
                "same catalog settings"
            )
        self.users = evaluation_users(users)
        self.max_steps = max_steps
        self.seed = seed
        self.concurrency = concurrency
        self.console = console or Console(stderr=True)

    def policy_settings(self, name: str) -> PolicySettings:
        """Serve ``policy-<name>`` greedily."""
        return self.settings.policy.model_copy(update={"name": name, "exploration": "greedy"})

    def load(self, name: str) -> ServedPolicy:
        """The newest ``policy-<name>`` as the service loads it, or a clear error."""
        from recsys.serving.wiring import policy_loader

        load = policy_loader(
            self.policy_settings(name),
            self.fold.spec,
            self.fold.num_items,
            self.retrieval.artifact.version,
        )
        try:
            return load(latest_version(self.root, f"policy-{name}"))
        except ArtifactError as exc:
            raise ArtifactError(
                f"cannot serve policy-{name} from {self.root}: {exc}. Publish one with "
                f"`recsys train policy --algo {name}`"
            ) from None

    def env(self, population: SyntheticWorld, seed: int) -> SlateEnv:
        """A simulator of ``population`` (what a client thread runs)."""
        return SlateEnv(population, seed=seed, settings=self.sim_settings)

    def simulated_users(
        self, served: ServedPolicy, population: SyntheticWorld, seed: int
    ) -> SimulatedUsers:
        """``population`` seen through the event fold, with ``served``'s candidates and item
        features (the in-process twin of a client thread)."""
        return SimulatedUsers(
            population,
            self.sim_settings,
            seed=seed,
            fold=self.fold,
            candidates=self.retrieval.retriever,
            items=served.features.items,
            features="event",
            num_ads=served.num_ads,
            core=self.env(population, seed),
        )

    def live(
        self,
        name: str,
        served: ServedPolicy,
        progress: Callable[[int], None] | None = None,
        slates: list[list[tuple[int, ...]]] | None = None,
    ) -> tuple[PolicyEvaluation, LiveStats]:
        """Start the stack serving ``name``, drive the users through it over HTTP, stop it."""
        from contextlib import ExitStack

        from recsys.services import StopSignals, embedded_settings, start_loop

        settings = self.settings.model_copy(update={"policy": self.policy_settings(name)})
        with StopSignals() as signals, ExitStack() as stack:
            settings = embedded_settings(
                stack, settings, artifacts_root=self.root, console=self.console
            )
            url, store = start_loop(stack, signals, settings, self.console)
            try:
                evaluation, stats = run_live(
                    url,
                    self.world,
                    self.env,
                    store,
                    self.fold,
                    users=self.users,
                    max_steps=self.max_steps,
                    seed=self.seed,
                    slate_size=self.sim_settings.slate_size,
                    num_candidates=self.sim_settings.num_candidates,
                    concurrency=self.concurrency,
                    label=name,
                    progress=progress,
                    slates=slates,
                )
            finally:
                signals.hold()
        if stats.failures:
            raise RuntimeError(f"live evaluation of {name} failed: " + "; ".join(stats.failures))
        if stats.policies != {served.version}:
            raise RuntimeError(
                f"expected {served.version} to answer every request, got {sorted(stats.policies)}"
            )
        return evaluation, stats

    def in_process(
        self,
        served: ServedPolicy,
        progress: Callable[[int], None] | None = None,
        slates: list[list[tuple[int, ...]]] | None = None,
    ) -> PolicyEvaluation:
        """The same users, seeds and order of steps with the policy called directly, on the
        replica's torch thread count."""
        threads = torch.get_num_threads()
        torch.set_num_threads(self.settings.policy.torch_threads)
        try:
            return run_in_process(
                served.policy,
                partial(self.simulated_users, served),
                self.world,
                users=self.users,
                max_steps=self.max_steps,
                seed=self.seed,
                concurrency=self.concurrency,
                progress=progress,
                slates=slates,
            )
        finally:
            torch.set_num_threads(threads)


def evaluate_live(
    settings: Settings,
    config: PolicyTrainConfig,
    *,
    policies: Sequence[str],
    users: int,
    max_steps: int,
    seed: int,
    concurrency: int = 16,
    in_process: bool = True,
    console: Console | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Drive ``users`` test users through the real service, once per policy; JSON-ready.

    For each of ``policies`` a fresh embedded stack (redis-server, the broker, the updater,
    Ray Serve) serves the newest ``policy-<name>`` under ``settings.artifacts.root`` greedily
    to the same users with the same seeds (:class:`LiveEvaluation`), and is stopped before the
    next; every process is stopped on errors, Ctrl-C and SIGTERM too. ``config`` names the
    simulated world and simulator the policies were trained in. With ``in_process`` each
    policy is also run without the service (:func:`run_in_process`): the live return should
    lie inside that run's CI, and lives should match step for step.
    """
    unknown = [p for p in policies if p not in LIVE_POLICIES]
    if unknown or not policies:
        raise ValueError(f"unknown policies {unknown}; choose from {', '.join(LIVE_POLICIES)}")
    console = console or Console(stderr=True)
    run = LiveEvaluation(
        settings,
        config,
        users=users,
        max_steps=max_steps,
        seed=seed,
        concurrency=concurrency,
        console=console,
    )
    served = {name: run.load(name) for name in policies}  # fail before starting anything
    evaluations: dict[str, PolicyEvaluation] = {}
    stats: dict[str, LiveStats] = {}
    twins: dict[str, PolicyEvaluation] = {}
    with Progress(console=console, disable=not progress) as bar:
        for name in policies:
            task = bar.add_task(f"{name}: live", total=users)
            evaluations[name], stats[name] = run.live(
                name, served[name], partial(bar.advance, task)
            )
            if in_process:
                task = bar.add_task(f"{name}: in process", total=users)
                twins[name] = run.in_process(served[name], partial(bar.advance, task))
    out = live_summary(evaluations, stats, seed)
    out["config"] = {
        "users": users,
        "population_range": [int(run.users[0]), int(run.users[-1]) + 1],
        "max_steps": max_steps,
        "seed": seed,
        "concurrency": concurrency,
        "exploration": "greedy",
        "artifacts": {name: served[name].version for name in policies},
        "return_definition": "hidden lifetime value: dwell minutes over one life "
        "(until churn or max_steps)",
    }
    if twins:
        out["in_process"] = {
            name: _compare(evaluations[name], twin, seed) for name, twin in twins.items()
        }
        if "myopic" in twins:
            out["in_process_ratios"] = {
                f"{name}/myopic": paired_ratio(twin.returns, twins["myopic"].returns, seed=seed)
                for name, twin in twins.items()
                if name != "myopic"
            }
    return out
