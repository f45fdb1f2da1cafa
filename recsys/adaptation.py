"""Adaptation to a preference shift, over HTTP: does online learning win the clicks back?

A segment of simulated users is driven through the running service (``POST /recommend``, the
simulator's response, every signal to ``POST /feedback``), round after round: each round every
user of the segment asks for one slate, once the online updater has folded their previous
feedback into the store. After ``before_events`` feedback events the segment's taste changes
(:meth:`recsys.simulator.env.SlateEnv.shift_preferences`): long-form items (above the
catalog's median length) lose ``appeal_drop`` of click appeal for them, say because the
segment moved to phones. That is a change the event-derived user state cannot reveal, unlike
a drift of topic interests (a few clicks move the state's topic vectors and the served policy
follows them with no learning at all): the state counts clicks, dwell and topics, never which
lengths went unclicked, so the served policy keeps ranking long items as before.

With ``learning`` on, the loop of the stream issue runs beside the service: every
``learn_every_events`` feedback events the joiner joins what the service published so far
(:func:`recsys.served_logs.join_all`), the learner (:class:`~recsys.stream.learner_loop.
LearnerLoop`) observes the new joined segment, publishes a candidate, the promotion gate
estimates it off-policy against the serving version on held-out rows and promotes it or not,
and the replicas hot-reload a promoted version. The driver waits for each of these before
its next round, so what the service learns depends on the traffic, never on how fast the
machine is. With ``learning`` off the same service serves the starting version throughout.

The gate can only judge a candidate on slates the serving policy might have shown: serving
must explore with support wherever a candidate may go (Boltzmann exploration at a
temperature on the scale of the policy's item scores, ``benchmarks/adaptation.py``). Under
near-greedy serving the importance weights of any candidate that re-ranks collapse (ESS of a
few rows), and a gate that asks for evidence refuses every candidate, however much better.

The measure is the segment's clicks per slate, in windows of feedback events: before the
shift, and over the ``after_events`` feedback events after it. "Recovered" means the last
window after the shift reaches ``recover_fraction`` of the pre-shift rate.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
from pydantic import SecretStr

from recsys.config import Settings
from recsys.data.synthetic import SyntheticWorld
from recsys.features import EventFold
from recsys.live import COUNTED, LiveEvaluation, StateWatcher, feedback_posts
from recsys.policy.gate import GateConfig
from recsys.policy.online import OnlineConfig
from recsys.protocols import UserStateStore
from recsys.simulator.env import SlateEnv
from recsys.stream.joined_dataset import JoinedDataset
from recsys.types import FloatArray


@dataclass(frozen=True)
class AdaptationConfig:
    """One adaptation run: the segment, the shift, the windows and the learning cadence."""

    #: Population indices of the segment's users (they all shift).
    users: tuple[int, ...]
    #: Feedback events before the shift (the first ``warmup_rounds`` rounds are not measured).
    before_events: int = 2_000
    #: Feedback events after the shift within which the click rate must recover.
    after_events: int = 5_000
    warmup_rounds: int = 2
    #: Width of the click-rate windows, in feedback events.
    window_events: int = 1_000
    #: Items whose length lies above this quantile of the catalog lose appeal for the segment.
    long_quantile: float = 0.5
    appeal_drop: float = 4.0
    recover_fraction: float = 0.8
    learn_every_events: int = 500
    seed: int = 0
    concurrency: int = 8
    #: The joiner's wait window (seconds): a barrier waits about this long for the last slates.
    wait_s: float = 1.0

    def __post_init__(self) -> None:
        if not self.users:
            raise ValueError("the segment needs at least one user")
        for name in ("before_events", "after_events", "window_events", "learn_every_events"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.long_quantile < 1.0:
            raise ValueError(f"long_quantile must lie in (0, 1), got {self.long_quantile}")


@dataclass
class Round:
    """One round of the segment: what was served and what the users did."""

    index: int
    shifted: bool
    slates: int
    clicks: int
    feedback_events: int
    #: Feedback events of the run before this round's (the x axis of the plots).
    events_before: int
    long_share: float
    versions: list[str]
    barrier: dict[str, Any] | None = None


@dataclass
class AdaptationRun:
    """A run's rounds and what the learner did; :meth:`summary` measures the windows."""

    learning: bool
    config: AdaptationConfig
    rounds: list[Round] = field(default_factory=list)
    learner: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def _window(self, shifted: bool, first: int, last: int) -> dict[str, float]:
        """Clicks per slate over the measured rounds of one phase (before or after the shift)
        whose first event lies in ``[first, last)`` feedback events from the phase's start."""
        rounds = [
            r for r in self.rounds if r.shifted == shifted and r.index >= self.config.warmup_rounds
        ]
        start = rounds[0].events_before if rounds else 0
        chosen = [r for r in rounds if first <= r.events_before - start < last]
        slates = sum(r.slates for r in chosen)
        clicks = sum(r.clicks for r in chosen)
        return {
            "rounds": len(chosen),
            "slates": slates,
            "clicks": clicks,
            "click_rate": clicks / slates if slates else float("nan"),
        }

    def summary(self) -> dict[str, Any]:
        """JSON-ready: the pre-shift rate, the post-shift windows, whether the last recovered,
        every round, and the learner's counters."""
        cfg = self.config
        before = self._window(False, 0, 10**12)
        after = [
            {"from_event": a, **self._window(True, a, a + cfg.window_events)}
            for a in range(0, cfg.after_events, cfg.window_events)
        ]
        last = after[-1]["click_rate"] if after else float("nan")
        return {
            "learning": self.learning,
            "before": before,
            "after": after,
            "final_over_before": last / before["click_rate"],
            "recovered": bool(last >= cfg.recover_fraction * before["click_rate"]),
            "rounds": [asdict(r) for r in self.rounds],
            "learner": self.learner,
            "seconds": self.seconds,
        }


def long_items(world: SyntheticWorld, quantile: float) -> npt.NDArray[np.bool_]:
    """Items longer than the catalog's ``quantile`` of lengths."""
    lengths = world.item_length_s
    return np.asarray(lengths > np.quantile(lengths, quantile))


class _Clients:
    """The segment as HTTP clients: one pool of threads, one connection per thread."""

    def __init__(self, base_url: str, concurrency: int) -> None:
        self.pool = ThreadPoolExecutor(concurrency, thread_name_prefix="adapt-client")
        self.http = httpx.Client(
            base_url=base_url,
            timeout=30.0,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.http.close()

    def recommend(self, payload: dict[str, Any]) -> dict[str, Any]:
        resp = self.http.post("/recommend", json=payload)
        if resp.status_code != 200:
            raise RuntimeError(f"POST /recommend: HTTP {resp.status_code} {resp.text[:300]}")
        body: dict[str, Any] = resp.json()
        return body

    def feedback_all(self, payloads: list[dict[str, Any]]) -> None:
        """Post one user's signals one after the other."""
        for payload in payloads:
            resp = self.http.post("/feedback", json=payload)
            if resp.status_code != 202:
                raise RuntimeError(f"POST /feedback: HTTP {resp.status_code} {resp.text[:300]}")


def drive_segment(
    base_url: str,
    env: SlateEnv,
    watcher: StateWatcher,
    config: AdaptationConfig,
    *,
    label: str,
    slate_size: int,
    num_candidates: int,
    barrier: Callable[[int, int], dict[str, Any]] | None,
    shift: FloatArray,
    progress: Callable[[int], None] | None = None,
) -> list[Round]:
    """Rounds of the whole segment (``env``'s users, ids ``<label>-<row>``) until
    ``after_events`` feedback events after the shift; ``barrier(impressions, feedback)`` runs
    every ``learn_every_events`` events (the learning step) and its report is kept."""
    n = env.num_users
    rows = np.arange(n, dtype=np.int64)
    ids = [f"{label}-{r}" for r in range(n)]
    posted = np.zeros((n, len(COUNTED)))
    rounds: list[Round] = []
    events = impressions = 0
    since_barrier = 0
    shifted_at: int | None = None
    long = shift < 0
    clients = _Clients(base_url, config.concurrency)
    try:
        while shifted_at is None or events - shifted_at < config.after_events:
            warm = config.warmup_rounds
            if (
                shifted_at is None
                and len(rounds) > warm
                and events - rounds[warm].events_before >= config.before_events
            ):
                env.shift_preferences(rows, shift)
                shifted_at = events
            if posted[:, 0].any():
                list(clients.pool.map(lambda b: watcher.wait(ids[b], posted[b]), range(n)))
            life, session = env.upcoming_sessions(rows)
            payloads = [
                {
                    "user_id": ids[b],
                    "slate_size": slate_size,
                    "num_candidates": num_candidates,
                    "session_id": f"l{int(life[b])}-s{int(session[b])}",
                }
                for b in range(n)
            ]
            bodies = list(clients.pool.map(clients.recommend, payloads))
            slates = np.array(
                [[it["item_id"] for it in body["items"]] for body in bodies], np.int64
            )
            result = env.step(rows, slates, check=True)
            impressions += n
            posted[:, 0] += 1
            # Each user's signals in order (click, dwell, ...), as one client would send them;
            # users in parallel.
            per_user: list[list[dict[str, Any]]] = []
            for b in range(n):
                mine = feedback_posts(result, b, bodies[b]["request_id"], ids[b])
                for _, k, amount in mine:
                    posted[b, k] += amount
                per_user.append([payload for payload, _, _ in mine])
            list(clients.pool.map(clients.feedback_all, per_user))
            sent = sum(len(mine) for mine in per_user)
            clicks = int((result.observable.click_position >= 0).sum())
            rounds.append(
                Round(
                    index=len(rounds),
                    shifted=shifted_at is not None,
                    slates=n,
                    clicks=clicks,
                    feedback_events=sent,
                    events_before=events,
                    long_share=float(long[slates].mean()),
                    versions=sorted({str(body["model_version"]) for body in bodies}),
                )
            )
            events += sent
            since_barrier += sent
            if progress is not None:
                progress(sent)
            if barrier is not None and since_barrier >= config.learn_every_events:
                rounds[-1].barrier = barrier(impressions, events)
                since_barrier = 0
    finally:
        clients.close()
    return rounds


def greedy_long_share(
    checkpoint: Path, dataset: JoinedDataset, long: npt.NDArray[np.bool_]
) -> float:
    """Share of long items in ``checkpoint``'s own best slates for the requests of the newest
    joined segment: what the learner learnt, whether or not the gate lets it serve."""
    import pyarrow.parquet as pq

    from recsys.data.logged import LoggedFeedback
    from recsys.policy.training.checkpoint import load_policy_checkpoint

    newest = dataset.segments()[-1]
    logs = LoggedFeedback.from_table(pq.read_table(newest.path, filesystem=dataset.fs))
    assert logs.candidate_ids is not None
    _, first = np.unique(logs.request_id, return_index=True)
    candidates = logs.candidate_ids[first]
    ckpt = load_policy_checkpoint(checkpoint)
    if ckpt.features is None:
        return float("nan")
    obs = ckpt.features.obs(logs.user_features[first], candidates)
    act = ckpt.policy.act(obs, ckpt.slate_size, np.random.default_rng(0), explore=False)
    items = np.take_along_axis(candidates, np.asarray(act.slates), axis=1)
    return float(long[items].mean())


def adaptation_settings(settings: Settings, admin_key: str) -> Settings:
    """The service as the experiment runs it: replicas look for new versions every half
    second, and the driver may read which version they serve (an admin key of its own)."""
    auth = settings.serving.auth.model_copy(update={"admin_keys": [SecretStr(admin_key)]})
    return settings.model_copy(
        update={
            "policy": settings.policy.model_copy(update={"reload_interval_s": 0.5}),
            "serving": settings.serving.model_copy(update={"auth": auth}),
        }
    )


def wait_for_version(
    base_url: str, admin_key: str, arm: str, version: str, timeout_s: float = 60.0
) -> float:
    """Until the replica serving ``arm`` reports ``version``; seconds waited."""
    from recsys.serving.admin import AdminClient

    start = time.monotonic()
    admin = AdminClient.connect(base_url, admin_key, timeout_s=10.0)
    try:
        while True:
            arms = admin.list().get("arms", [])
            serving = [a.get("serving_version") for a in arms if a.get("arm") == arm]
            if serving and serving[0] == version:
                return time.monotonic() - start
            if time.monotonic() - start > timeout_s:
                raise TimeoutError(
                    f"{arm} still serves {serving} {timeout_s:g}s after {version} was promoted"
                )
            time.sleep(0.1)
    finally:
        admin.close()


def boltzmann_gate(temperature: float) -> GateConfig:
    """A promotion rule that can decide on one experiment's worth of Boltzmann-exploring
    traffic: item-position SNIPS with weights clipped at 20 (variance traded for a bias toward
    serving), a margin of 0.25 learned-reward units, the default ESS floor, candidates judged
    as they would serve at ``temperature``. Position DR is left out: on these logs its
    intervals were many times as wide as SNIPS's, so it refused everything."""
    return GateConfig(
        margin=0.25,
        estimators=("sniips",),
        max_weight=20.0,
        n_bootstrap=200,
        exploration="boltzmann",
        temperature=temperature,
    )


@dataclass(frozen=True)
class Experiment:
    """What every run of an experiment shares: the simulated world (the service's catalog)
    and its simulator, the event fold of the served retrieval artifact, the run's settings,
    the request shape, and the learner's and gate's settings for runs that learn."""

    world: SyntheticWorld
    env_factory: Callable[[SyntheticWorld, int], SlateEnv]
    fold: EventFold
    config: AdaptationConfig
    slate_size: int
    num_candidates: int
    online: OnlineConfig
    gate: GateConfig

    @classmethod
    def served(
        cls, live: LiveEvaluation, config: AdaptationConfig, online: OnlineConfig, gate: GateConfig
    ) -> Experiment:
        """The world, simulator, event fold and request shape of ``live``'s served stack."""
        return cls(
            live.world,
            live.env,
            live.fold,
            config,
            slate_size=live.sim_settings.slate_size,
            num_candidates=live.sim_settings.num_candidates,
            online=online,
            gate=gate,
        )


def adapt_on_service(
    url: str,
    store: UserStateStore,
    settings: Settings,
    experiment: Experiment,
    *,
    learning: bool,
    work: Path,
    admin_key: str,
    label: str,
    progress: Callable[[int], None] | None = None,
) -> AdaptationRun:
    """One run against a service already answering at ``url`` (its ``settings``: topics,
    artifact root, policy arm; ``admin_key`` one of its admin keys). With ``learning`` a
    joiner reading the service's topics and a learner loop over ``settings.artifacts.root``
    run in this process at the barriers; both are closed on return or error."""
    from recsys.served_logs import join_all
    from recsys.stream import JoinConfig, Joiner, build_event_source
    from recsys.stream.learner_loop import LearnerLoop

    cfg = experiment.config
    fold = experiment.fold
    arm = settings.policy.name
    run = AdaptationRun(learning, cfg)
    population = experiment.world.select_users(np.asarray(cfg.users, np.int64))
    env = experiment.env_factory(population, cfg.seed)
    long = long_items(experiment.world, cfg.long_quantile)
    shift = np.where(long, -cfg.appeal_drop, 0.0).astype(np.float32)
    start = time.perf_counter()
    with ExitStack() as stack:
        barrier = None
        if learning:
            dataset = work / "joined"
            dataset.mkdir(parents=True, exist_ok=True)
            source = build_event_source(settings.stream)
            stack.callback(source.close)
            joiner = Joiner(
                source,
                str(dataset),
                JoinConfig(
                    consumer="adapt",
                    wait_s=cfg.wait_s,
                    segment_max_rows=10**7,
                    segment_max_s=10**6,
                ),
                is_ad=fold.item_is_ad(np.arange(fold.num_items)),
            )
            loop = stack.enter_context(
                LearnerLoop.open(
                    dataset,
                    settings.artifacts.root,
                    arm,
                    work / "staging",
                    online=experiment.online,
                    gate=experiment.gate,
                )
            )

            def barrier(impressions: int, feedback: int) -> dict[str, Any]:
                t0 = time.perf_counter()
                join_all(joiner, impressions=impressions, feedback=feedback)
                t1 = time.perf_counter()
                before = loop.stats.promotions
                decided = loop.stats.candidates
                loop.step()
                report: dict[str, Any] = {
                    "join_s": t1 - t0,
                    "learn_s": time.perf_counter() - t1,
                    "rows": loop.stats.rows,
                    "promoted": loop.stats.promotions > before,
                    "model_version": loop.stats.model_version,
                }
                decision = loop.last_decision
                if decision is not None and loop.stats.candidates > decided:
                    report["gate"] = {
                        k: {
                            "candidate": c.candidate,
                            "serving": c.serving,
                            "ci_low": c.ci_low,
                            "ci_high": c.ci_high,
                            "ess": c.ess,
                        }
                        for k, c in decision.comparisons.items()
                    }
                    report["reasons"] = list(decision.reasons)
                    report["candidate_greedy_long_share"] = greedy_long_share(
                        decision.candidate, loop.dataset, long
                    )
                if report["promoted"]:
                    report["reload_s"] = wait_for_version(
                        url, admin_key, arm, loop.stats.model_version
                    )
                return report

        run.rounds = drive_segment(
            url,
            env,
            StateWatcher(store, fold.codec, 60.0),
            cfg,
            label=label,
            slate_size=experiment.slate_size,
            num_candidates=experiment.num_candidates,
            barrier=barrier,
            shift=shift,
            progress=progress,
        )
        if learning:
            run.learner = loop.as_dict()
    run.seconds = time.perf_counter() - start
    return run


def run_adaptation(
    settings: Settings,
    experiment: Experiment,
    *,
    learning: bool,
    work: Path,
    progress: Callable[[int], None] | None = None,
) -> AdaptationRun:
    """One run on a fresh embedded stack (Redis, the broker, the updater, Ray Serve) serving
    ``settings.policy.name`` from ``settings.artifacts.root``. Everything started is stopped
    on return, error, Ctrl-C or SIGTERM."""
    from recsys.services import StopSignals, embedded_settings, start_loop

    admin_key = secrets.token_hex(16)
    root = settings.artifacts.root
    with StopSignals() as signals, ExitStack() as stack:
        served = embedded_settings(
            stack, adaptation_settings(settings, admin_key), artifacts_root=root
        )
        url, store = start_loop(stack, signals, served)
        try:
            return adapt_on_service(
                url,
                store,
                served,
                experiment,
                learning=learning,
                work=work,
                admin_key=admin_key,
                label=f"adapt-{'on' if learning else 'off'}",
                progress=progress,
            )
        finally:
            signals.hold()
