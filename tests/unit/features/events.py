"""A small catalog, its fold and random event sequences (feature tests and the parity test)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

from recsys.features import EventFold, FeatureSpec
from recsys.types import EventType, FeedbackEvent, ImpressionEvent, SlateItem

NUM_ITEMS = 40
NUM_TOPICS = 5


def make_fold(recent_items: int = 3) -> EventFold:
    rng = np.random.default_rng(7)
    topics = rng.dirichlet(np.full(NUM_TOPICS, 0.4), size=NUM_ITEMS).astype(np.float32)
    is_ad = rng.random(NUM_ITEMS) < 0.2
    return EventFold(FeatureSpec(num_topics=NUM_TOPICS, recent_items=recent_items), topics, is_ad)


@dataclass(frozen=True)
class Step:
    """One step of a user's life as the simulator would produce it."""

    session: int
    slate: tuple[int, ...]
    click: int | None  # slot clicked
    dwell_s: float
    like: bool
    conversion: bool
    skip: bool
    orphan_click: bool  # an extra click on a request that was never served


steps_strategy = st.builds(
    Step,
    session=st.integers(0, 2),
    slate=st.lists(st.integers(0, NUM_ITEMS - 1), min_size=1, max_size=4, unique=True).map(tuple),
    click=st.one_of(st.none(), st.integers(0, 3)),
    dwell_s=st.floats(0.0, 600.0, allow_nan=False, width=32),
    like=st.booleans(),
    conversion=st.booleans(),
    skip=st.booleans(),
    orphan_click=st.booleans(),
)


def step_events(user: str, t: int, step: Step, ts: float) -> list[ImpressionEvent | FeedbackEvent]:
    """The wire events of one step: the impression, then every signal of the click."""
    request = f"{user}-r{t}"
    events: list[ImpressionEvent | FeedbackEvent] = [
        ImpressionEvent(
            request_id=request,
            user_id=user,
            ts=ts,
            model_version="m",
            policy="p",
            items=tuple(SlateItem(i, p, 0.0, 1.0) for p, i in enumerate(step.slate)),
            session_id=f"s{step.session}",
        )
    ]
    if step.click is not None and step.click < len(step.slate):
        item = step.slate[step.click]

        def fb(kind: EventType, value: float = 1.0) -> FeedbackEvent:
            return FeedbackEvent(request, user, item, kind, value, ts)

        events += [fb(EventType.CLICK), fb(EventType.DWELL, step.dwell_s)]
        if step.like:
            events.append(fb(EventType.LIKE))
        if step.conversion:
            events.append(fb(EventType.CONVERSION))
        if step.skip:
            events.append(fb(EventType.SKIP))
    if step.orphan_click:
        events.append(FeedbackEvent(f"{user}-never", user, 0, EventType.CLICK, 1.0, ts))
    return events
