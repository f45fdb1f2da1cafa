"""Value types that cross component boundaries.

Everything here is a frozen dataclass with numpy arrays inside, so that components agree on
shapes and dtypes without passing bare dicts around. Item ids are dense ``int64`` indices
into the catalog (0..num_items-1); user ids are opaque strings on the wire.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


class RecsysError(Exception):
    """Base class for errors that callers are expected to handle (bad input, unknown ids)."""


class InvalidRequestError(RecsysError, ValueError):
    """The request is well-formed JSON but asks for something impossible (e.g. k > catalog).

    ``field`` names the offending input so the HTTP layer can point at it.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class UnknownUserError(RecsysError, KeyError):
    """The user id has no state in the store, so there is nothing to personalise from."""

    def __init__(self, user_id: str) -> None:
        super().__init__(user_id)
        self.user_id = user_id

    def __str__(self) -> str:
        return f"unknown user {self.user_id!r}"


class ArtifactError(RecsysError):
    """An artifact directory is missing, malformed or fails its checksum."""


class EventType(enum.StrEnum):
    """Feedback signals a client can report for an impressed item."""

    CLICK = "click"
    DWELL = "dwell"
    LIKE = "like"
    CONVERSION = "conversion"
    SKIP = "skip"


@dataclass(frozen=True, slots=True)
class UserState:
    """What serving knows about a user: an embedding plus recent consumption.

    ``clicked`` holds item ids most-recent-first (capped by the store); they are excluded from
    later recommendations. Counters let the online updater's progress be observed.
    """

    user_id: str
    embedding: FloatArray
    clicked: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    impressions: int = 0
    clicks: int = 0
    updated_ts: float = 0.0


@dataclass(frozen=True, slots=True)
class UserStateDelta:
    """An additive change to one user's state derived from events.

    Deltas are what the online updater writes; applying them together with the stream offsets
    that produced them keeps the store exactly-once with respect to the event log.
    """

    user_id: str
    clicked: tuple[int, ...] = ()
    impressions: int = 0
    clicks: int = 0
    ts: float = 0.0


@dataclass(frozen=True, slots=True)
class Candidates:
    """Retrieved candidates for one user, best first: ids, retrieval scores, item embeddings."""

    item_ids: IntArray
    scores: FloatArray
    embeddings: FloatArray

    def __post_init__(self) -> None:
        n = self.item_ids.shape[0]
        if self.scores.shape != (n,) or self.embeddings.shape[0] != n:
            raise ValueError(
                f"Candidates shapes disagree: ids {self.item_ids.shape}, scores "
                f"{self.scores.shape}, embeddings {self.embeddings.shape}"
            )

    def __len__(self) -> int:
        return int(self.item_ids.shape[0])


@dataclass(frozen=True, slots=True)
class Slate:
    """A ranked slate with the exact probability with which each slot was filled.

    ``propensities[i]`` is the probability that the policy put ``item_ids[i]`` at position
    ``i`` given the items above it (Plackett-Luce conditional), so the product over slots is the
    probability of the whole ordered slate. Off-policy evaluation relies on these being exact.
    """

    item_ids: IntArray
    positions: IntArray
    scores: FloatArray
    propensities: FloatArray
    policy: str
    version: str

    def __len__(self) -> int:
        return int(self.item_ids.shape[0])


@dataclass(frozen=True, slots=True)
class Signals:
    """Observable responses to one impressed item, the input of a reward model."""

    click: float = 0.0
    dwell_s: float = 0.0
    like: float = 0.0
    conversion: float = 0.0
    revenue: float = 0.0
    skip: float = 0.0


@dataclass(frozen=True, slots=True)
class SlateItem:
    """One slot of an impression as it travels on the event stream."""

    item_id: int
    position: int
    score: float
    propensity: float


@dataclass(frozen=True, slots=True)
class ImpressionEvent:
    """A served slate: published to the ``impressions`` topic for joining and OPE."""

    request_id: str
    user_id: str
    ts: float
    model_version: str
    policy: str
    items: tuple[SlateItem, ...]


@dataclass(frozen=True, slots=True)
class FeedbackEvent:
    """A client-reported signal on an impressed item: published to the ``feedback`` topic."""

    request_id: str
    user_id: str
    item_id: int
    event: EventType
    value: float
    ts: float


Event = ImpressionEvent | FeedbackEvent


@dataclass(frozen=True, slots=True)
class EventRecord:
    """An event read back from a stream together with where it came from.

    ``partition`` is a string key (``"feedback:0"``) so offsets can be stored anywhere.
    ``offset`` is the position of this record; the next one to read is ``offset + 1``.
    """

    partition: str
    offset: int
    event: Event
