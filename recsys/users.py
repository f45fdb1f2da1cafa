"""``recsys users import FILE``: bulk-load known users' history into the user-state store.

A service that starts on an empty store treats everyone as a cold start until the updater
has seen their events. Teams moving over from another system have that history already, as
logged feedback (the project's Parquet format, docs/logged_feedback.md). Each logged slate
becomes the events the service itself would have logged: the impression, then for a clicked
item its click, dwell, like, conversion and skip. They are folded with the same
:class:`~recsys.features.EventFold` as the online updater, in the updater's order (server
time, a slate before its feedback), so an imported state equals the one the updater would
have built from the same traffic.

Users that already have a state are left alone unless ``replace`` is set: folding older
history on top of a newer state would put events out of time order.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from recsys.data.logged import LoggedFeedback
from recsys.features import EventFold
from recsys.protocols import UserStateStore
from recsys.types import (
    Event,
    EventType,
    FeedbackEvent,
    ImpressionEvent,
    SlateItem,
    event_time,
)


@dataclass
class ImportStats:
    """What an import did."""

    users: int = 0
    imported: int = 0
    skipped_existing: int = 0
    impressions: int = 0
    feedback: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def logged_events(log: LoggedFeedback) -> list[Event]:
    """Every logged slate as its impression and then its feedback events, slates in time
    order (the order a stream would have carried them)."""
    request = log.request_id.astype(str)
    order = np.lexsort((log.position, request, log.ts))
    bounds = np.flatnonzero(np.r_[True, request[order][1:] != request[order][:-1], True])
    events: list[Event] = []
    for start, end in itertools.pairwise(bounds):
        rows = order[start:end]
        first = int(rows[0])
        rid, user, ts = str(request[first]), str(log.user_id[first]), float(log.ts[first])
        events.append(
            ImpressionEvent(
                request_id=rid,
                user_id=user,
                ts=ts,
                model_version="import",
                policy=str(log.policy[first]),
                items=tuple(
                    SlateItem(
                        int(log.item_id[r]), int(log.position[r]), 0.0, float(log.propensity[r])
                    )
                    for r in rows
                ),
                session_id=str(int(log.session_id[first])),
            )
        )
        for r in rows[log.click[rows]]:
            item = int(log.item_id[r])
            signals = [(EventType.CLICK, 1.0), (EventType.DWELL, float(log.dwell_s[r]))]
            for kind, flags in (
                (EventType.LIKE, log.like),
                (EventType.CONVERSION, log.conversion),
                (EventType.SKIP, log.skip),
            ):
                if bool(flags[r]):
                    signals.append((kind, 1.0))
            events.extend(
                FeedbackEvent(rid, user, item, kind, value, ts, server_ts=ts)
                for kind, value in signals
            )
    return events


def _chunks(users: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(users), size):
        yield users[start : start + size]


def import_users(
    store: UserStateStore,
    fold: EventFold,
    log: LoggedFeedback,
    *,
    replace: bool = False,
    chunk_users: int = 10_000,
) -> ImportStats:
    """Fold ``log`` into per-user states and write them to ``store`` (see the module doc).

    Raises ``ValueError`` naming the first item id outside the catalog the fold covers.
    """
    if log.item_id.size and (log.item_id.min() < 0 or log.item_id.max() >= fold.num_items):
        bad = log.item_id[(log.item_id < 0) | (log.item_id >= fold.num_items)][0]
        raise ValueError(
            f"item id {int(bad)} is not in the served catalog (ids 0..{fold.num_items - 1})"
        )
    events = logged_events(log)
    by_user: dict[str, list[Event]] = {}
    for event in events:
        by_user.setdefault(event.user_id, []).append(event)
    users = list(by_user)
    stats = ImportStats(users=len(users))
    for chunk in _chunks(users, chunk_users):
        if replace:
            todo = list(chunk)
        else:
            existing = store.get_many(list(chunk))
            todo = [u for u, blob in zip(chunk, existing, strict=True) if blob is None]
            stats.skipped_existing += len(chunk) - len(todo)
        if not todo:
            continue
        states = fold.codec.empty(len(todo))
        rows: list[int] = []
        picked: list[Event] = []
        for row, user in enumerate(todo):
            # The updater's order: server time, and at equal times a slate before its feedback.
            mine = sorted(
                by_user[user],
                key=lambda e: (event_time(e), not isinstance(e, ImpressionEvent)),
            )
            rows += [row] * len(mine)
            picked += mine
        counts = fold.fold_events(states, rows, picked)
        store.put_many(dict(zip(todo, fold.codec.encode(states), strict=True)))
        stats.imported += len(todo)
        stats.impressions += counts.impressions
        stats.feedback += counts.feedback
    return stats
