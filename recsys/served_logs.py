"""The service's own logs, joined: simulated users over HTTP, then the joiner into a dataset.

Offline training from logs (``recsys train policy --logs``) and off-policy evaluation
(``recsys evaluate ope --logs``) read what the joiner (:mod:`recsys.stream.joiner`) wrote
from the broker's impressions and feedback. An experiment or a test that wants such logs from
a running service drives simulated users through it (:func:`recsys.live.run_live`: each user
posts ``/recommend``, lets the simulator respond, posts every signal to ``/feedback`` and waits
until the online updater has folded it) and then joins what the service published
(:func:`join_all`). The joiner runs after the traffic, not beside it: the service has the two
cores to itself meanwhile, and the joined rows are the same either way (the joiner decides
everything in event time, see :mod:`recsys.stream.joiner`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recsys.config import Settings
from recsys.features import EventFold
from recsys.live import LiveStats
from recsys.policy.evaluation.simulator import PolicyEvaluation
from recsys.stream import JoinConfig, Joiner, build_event_source
from recsys.stream.joiner import JoinStats

__all__ = ["ServedLogs", "drive_and_join", "join_all"]


def join_all(
    joiner: Joiner,
    *,
    impressions: int,
    feedback: int,
    timeout_s: float = 120.0,
) -> JoinStats:
    """Run ``joiner`` until it has read ``impressions`` impressions and ``feedback`` feedback
    events and closed every slate, then commit; its counters.

    A slate closes once the watermark passes its deadline (``impression.ts + wait_s``), which,
    after the last event, happens as the source's caught-up time advances with the clock: so
    this returns about ``wait_s`` after the traffic's last event. Raises ``TimeoutError``
    naming what is missing after ``timeout_s`` (e.g. events the service never published).
    """
    deadline = time.monotonic() + timeout_s
    joiner.run_once(max_records=2000, timeout_s=0.2)  # restores: a new stats object
    while (
        joiner.stats.impressions < impressions or joiner.stats.feedback < feedback or joiner.pending
    ):
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"the joiner read {joiner.stats.impressions}/{impressions} impressions and "
                f"{joiner.stats.feedback}/{feedback} feedback events in {timeout_s:g}s, "
                f"{joiner.pending} slates still open"
            )
        joiner.run_once(max_records=2000, timeout_s=0.2)
    joiner.commit()
    return joiner.stats


@dataclass(frozen=True)
class ServedLogs:
    """What :func:`drive_and_join` produced: the joined dataset, the users' outcomes as the
    clients measured them, what the clients saw, and the joiner's counters."""

    dataset: Path
    evaluation: PolicyEvaluation
    clients: LiveStats
    join: JoinStats


def drive_and_join(
    settings: Settings,
    dataset: Path,
    fold: EventFold,
    traffic: Callable[[], tuple[PolicyEvaluation, LiveStats]],
    *,
    wait_s: float = 2.0,
    timeout_s: float = 120.0,
) -> ServedLogs:
    """Run ``traffic`` (a :func:`recsys.live.run_live` call with its arguments bound, e.g.
    by :func:`functools.partial`), then join the impressions and feedback on
    ``settings.stream``'s topics into ``dataset`` (a joined dataset: ``dataset/rows/...``).

    The topics should hold only this traffic (a fresh broker, or topics of its own): the
    joiner waits for exactly the events these clients caused. ``is_ad`` of the joined rows
    comes from ``fold``'s catalog.
    """
    evaluation, clients = traffic()
    if clients.failures:
        raise RuntimeError("serving the logged traffic failed: " + "; ".join(clients.failures))
    source = build_event_source(settings.stream)
    try:
        joiner = Joiner(
            source,
            str(dataset),
            JoinConfig(consumer="offline-logs", wait_s=wait_s, segment_max_rows=1_000_000),
            is_ad=fold.item_is_ad(np.arange(fold.num_items)),
        )
        stats = join_all(
            joiner,
            impressions=len(clients.recommend_latencies_s),
            feedback=clients.feedback_posts,
            timeout_s=timeout_s,
        )
    finally:
        source.close()
    return ServedLogs(Path(dataset), evaluation, clients, stats)
