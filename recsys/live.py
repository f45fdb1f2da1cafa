"""Simulated users as HTTP clients of the running service: the loop closed over the wire.

A simulated user asks ``POST /recommend`` for a slate (with its session id), lets the
simulator respond to the slate it got, and posts every signal of its response to
``POST /feedback``: the click, its dwell, a like, a conversion, a skip. :func:`run_live`
follows held-out users through one life each this way (``recsys evaluate live``): a user's
next request waits until the online updater has folded their previous feedback into the store
(how often it had not yet on the first look is reported), so the service sees each step's
state, as the in-process evaluation does. The demo's traffic uses :func:`feedback_events`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt

from recsys.data.synthetic import SyntheticWorld
from recsys.features import EventFold, StateCodec
from recsys.policy.evaluation.simulator import PolicyEvaluation, paired_ratio
from recsys.protocols import UserStateStore
from recsys.simulator.env import SlateEnv
from recsys.simulator.results import StepResult

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


class _StateWatcher:
    """Reads users' states from the store until the updater has folded what was posted."""

    def __init__(self, store: UserStateStore, codec: StateCodec, timeout_s: float) -> None:
        self.store = store
        self.codec = codec
        self.timeout_s = timeout_s

    def wait(self, user_id: str, steps: int, clicks: int) -> tuple[bool, float]:
        """Until the user's state shows ``steps`` slates and ``clicks`` clicks: ``(visible on
        the first look, seconds waited)``. Raises ``TimeoutError`` after ``timeout_s``."""
        start = time.monotonic()
        first = True
        while True:
            states, known = self.codec.decode([self.store.get(user_id)])
            if known[0] and states["steps"][0] >= steps and states["clicks"][0] >= clicks:
                return first, time.monotonic() - start
            if time.monotonic() - start > self.timeout_s:
                raise TimeoutError(
                    f"user {user_id}: state not updated within {self.timeout_s}s (expected "
                    f"{steps} slates and {clicks} clicks, store has "
                    f"{int(states['steps'][0])} and {int(states['clicks'][0])})"
                )
            first = False
            time.sleep(0.02)


def run_live(
    base_url: str,
    world: SyntheticWorld,
    env_factory: Callable[[SyntheticWorld, int], SlateEnv],
    store: UserStateStore,
    fold: EventFold,
    *,
    users: Sequence[int],
    max_steps: int,
    seed: int,
    slate_size: int,
    num_candidates: int,
    concurrency: int = 16,
    label: str = "live",
    visibility_timeout_s: float = 60.0,
    progress: Callable[[int], None] | None = None,
) -> tuple[PolicyEvaluation, LiveStats]:
    """Follow ``users`` (population indices of ``world``) through one life each, over HTTP.

    Each client thread owns a slice of the users and a simulator of its own (seeded with
    ``seed`` plus the thread, so every policy evaluated with the same seed meets the same
    users in the same states with the same randomness per slice); its users take turns, so
    it waits for the store only once per round. User ids are ``<label>-<index>``; session ids
    follow the simulated sessions. Returns the per-user outcomes (hidden lifetime value as
    the return, clicks, revenue, steps) and what the clients saw.
    """
    order = np.asarray(users, dtype=np.int64)
    n = order.shape[0]
    totals = np.zeros((5, n))
    alive_at_end = np.zeros(n, dtype=np.bool_)
    merged = LiveStats()
    lock = threading.Lock()
    watcher = _StateWatcher(store, fold.codec, visibility_timeout_s)
    slices = [np.arange(i, n, concurrency) for i in range(min(concurrency, n))]

    def client(worker: int, rows: npt.NDArray[np.int64]) -> None:
        local = LiveStats()
        population = world.select_users(order[rows])
        env = env_factory(population, seed + worker)
        ids = [f"{label}-{int(order[r])}" for r in rows]
        posted = np.zeros((2, rows.shape[0]), dtype=np.int64)  # slates, clicks per user
        alive = np.ones(rows.shape[0], dtype=np.bool_)
        try:
            with httpx.Client(base_url=base_url, timeout=30.0) as http:
                for _ in range(max_steps):
                    active = np.flatnonzero(alive)
                    if active.size == 0:
                        break
                    life, session = env.upcoming_sessions(active)
                    for j, b in enumerate(active.tolist()):
                        if posted[0, b]:
                            first, waited = watcher.wait(ids[b], posted[0, b], posted[1, b])
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
                        posted[0, b] += 1
                        for event, item, value in feedback_events(result, 0):
                            payload: dict[str, Any] = {
                                "request_id": body["request_id"],
                                "user_id": ids[b],
                                "item_id": item,
                                "event": event,
                            }
                            if value is not None:
                                payload["value"] = value
                            fb = http.post("/feedback", json=payload)
                            if fb.status_code != 202:
                                raise RuntimeError(
                                    f"POST /feedback {ids[b]}: HTTP {fb.status_code} "
                                    f"{fb.text[:300]}"
                                )
                            local.feedback_posts += 1
                            posted[1, b] += int(event == "click")
                        o = result.observable
                        r = rows[b]
                        totals[:, r] += (
                            float(o.dwell_s[0]) / 60.0,
                            float(o.click_position[0] >= 0),
                            float(o.revenue[0]),
                            1.0,
                            float(o.conversion[0]),
                        )
                        if result.session.terminated[0]:
                            alive[b] = False
                            if progress is not None:
                                progress(1)
                alive_at_end[rows[alive]] = True
                if progress is not None and alive.any():
                    progress(int(alive.sum()))
        except Exception as exc:
            local.failures.append(f"client {worker}: {type(exc).__name__}: {exc}")
        finally:
            with lock:
                merged.merge(local)

    threads = [
        threading.Thread(target=client, args=(w, rows), daemon=True)
        for w, rows in enumerate(slices)
    ]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    evaluation = PolicyEvaluation(
        returns=totals[0],
        clicks=totals[1],
        revenue=totals[2],
        steps=totals[3],
        conversions=totals[4],
        truncated=alive_at_end,
        after_conversion=np.zeros(0),
        after_conversion_steps=0,
        seconds=time.perf_counter() - start,
    )
    return evaluation, merged


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
