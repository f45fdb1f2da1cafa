"""Value types that cross component boundaries.

Everything here is a frozen dataclass with numpy arrays inside, so that components agree on
shapes and dtypes without passing bare dicts around. Item ids are dense ``int64`` indices
into the catalog (0..num_items-1); user ids are opaque strings on the wire.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Generic, Literal, NamedTuple, TypeVar, overload

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


class StoreUnavailableError(RecsysError):
    """The user-state store did not answer (down, paused, or slower than the timeout)."""


class StaleOffsetsError(RecsysError):
    """Stream offsets moved under a writer (another updater committed): nothing was written."""


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


# Sentinels for "not given": Candidates replaces them with arrays of the right length.
_UNSET_IS_AD: npt.NDArray[np.bool_] = np.zeros(0, dtype=np.bool_)
_UNSET_BID: FloatArray = np.zeros(0, dtype=np.float32)
_UNSET_IS_AD.flags.writeable = False
_UNSET_BID.flags.writeable = False


@dataclass(frozen=True, slots=True)
class Candidates:
    """Retrieved candidates for one user: ids, retrieval scores, item embeddings, ad data.

    Best first; candidates built from an organic block and an ad block (see
    :meth:`recsys.candidates.FaissRetriever.candidates_for_history`) list the organic items
    best first, then the ads best first. ``is_ad`` marks sponsored items and ``bid`` is
    their advertiser's bid (0 for organic items, or when the catalog has no bids); both
    default to all-False / zeros of the right length, so callers that only know ids and
    scores need not pass them.
    """

    item_ids: IntArray
    scores: FloatArray
    embeddings: FloatArray
    is_ad: npt.NDArray[np.bool_] = field(default_factory=lambda: _UNSET_IS_AD)
    bid: FloatArray = field(default_factory=lambda: _UNSET_BID)

    def __post_init__(self) -> None:
        n = self.item_ids.shape[0]
        if self.scores.shape != (n,) or self.embeddings.shape[0] != n:
            raise ValueError(
                f"Candidates shapes disagree: ids {self.item_ids.shape}, scores "
                f"{self.scores.shape}, embeddings {self.embeddings.shape}"
            )
        # object.__setattr__: the dataclass is frozen; this only fills defaults and dtypes.
        if self.is_ad is _UNSET_IS_AD:
            object.__setattr__(self, "is_ad", np.zeros(n, dtype=np.bool_))
        elif not (isinstance(self.is_ad, np.ndarray) and self.is_ad.dtype == np.bool_):
            object.__setattr__(self, "is_ad", np.asarray(self.is_ad, dtype=np.bool_))
        if self.bid is _UNSET_BID:
            object.__setattr__(self, "bid", np.zeros(n, dtype=np.float32))
        elif not (isinstance(self.bid, np.ndarray) and self.bid.dtype == np.float32):
            object.__setattr__(self, "bid", np.asarray(self.bid, dtype=np.float32))
        if self.is_ad.shape != (n,) or self.bid.shape != (n,):
            raise ValueError(
                f"Candidates shapes disagree: ids {self.item_ids.shape}, is_ad "
                f"{self.is_ad.shape}, bid {self.bid.shape}"
            )

    def __len__(self) -> int:
        return int(self.item_ids.shape[0])


class CandidateBatch(NamedTuple):
    """Candidates for a batch of rows (users), ``[B, C]`` arrays, ``C = num_organic + num_ads``.

    Columns ``[0, num_organic)`` hold the row's best non-ad items, columns ``[num_organic,
    C)`` its best ads, each block best first. Where a block has fewer eligible items than
    columns the rest is padding: ``item_ids`` -1, ``scores`` 0, ``mask`` False, ``is_ad``
    False. Scores are inner products with the row's query (cosines for the two-tower model),
    or for cold rows the fallback score (popularity relative to the most popular item).
    """

    item_ids: IntArray
    scores: FloatArray
    mask: npt.NDArray[np.bool_]
    is_ad: npt.NDArray[np.bool_]


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

    @staticmethod
    def rows(
        item_ids: IntArray,
        scores: FloatArray,
        propensities: FloatArray,
        policy: str,
        version: str,
    ) -> list[Slate]:
        """One slate per row of ``[B, S]`` item ids, scores and propensities."""
        positions = np.arange(item_ids.shape[1], dtype=np.int64)
        ids = np.asarray(item_ids, dtype=np.int64)
        s = np.asarray(scores, dtype=np.float32)
        p = np.asarray(propensities, dtype=np.float32)
        return [Slate(ids[b], positions, s[b], p[b], policy, version) for b in range(ids.shape[0])]


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


_N = TypeVar("_N", int, float)
_PACKED_SIZES = {"<i4": 4, "<i8": 8, "<f4": 4, "<f8": 8}


class PackedArray(Sequence[_N], Generic[_N]):
    """An immutable sequence of numbers kept as little-endian bytes of one dtype.

    The per-request lists of an impression (its candidate ids and user features, a hundred
    and more numbers each) cross the event stream as packed bytes. Holding them packed, rather
    than as a tuple of Python numbers, lets the consumers decode an impression without
    building those objects (that was a third of the joiner's cost per event) and hand them to
    numpy and Arrow with one ``frombuffer``. It compares equal to (and hashes like) the tuple
    of its values, so events holding either form compare as the same event.
    """

    __slots__ = ("_data", "_dtype")

    def __init__(self, data: bytes, dtype: str) -> None:
        size = _PACKED_SIZES.get(dtype)
        if size is None:
            raise ValueError(f"dtype must be one of {sorted(_PACKED_SIZES)}, got {dtype!r}")
        if len(data) % size:
            raise ValueError(f"{len(data)} bytes are not whole {dtype} values")
        self._data = data if type(data) is bytes else bytes(data)
        self._dtype = dtype

    @classmethod
    def trusted(cls, data: bytes, dtype: str) -> PackedArray[Any]:
        """Wrap ``data`` without checks: for decoders that validated a whole batch already."""
        out: PackedArray[Any] = cls.__new__(cls)
        out._data = data
        out._dtype = dtype
        return out

    @classmethod
    def of(cls, values: npt.ArrayLike, dtype: str) -> PackedArray[Any]:
        """Pack ``values`` (any 1-D array-like) as ``dtype``."""
        array = np.asarray(values).astype(dtype, copy=False).reshape(-1)
        return cls(array.tobytes(), dtype)

    @property
    def data(self) -> bytes:
        """The packed bytes."""
        return self._data

    @property
    def dtype(self) -> str:
        """The numpy dtype string of the values (``"<i4"``, ``"<i8"``, ``"<f4"``, ``"<f8"``)."""
        return self._dtype

    @property
    def array(self) -> npt.NDArray[Any]:
        """The values as a read-only numpy array over the bytes (no copy)."""
        return np.frombuffer(self._data, dtype=self._dtype)

    def __len__(self) -> int:
        return len(self._data) // _PACKED_SIZES[self._dtype]

    @overload
    def __getitem__(self, index: int) -> _N: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[_N, ...]: ...

    def __getitem__(self, index: int | slice) -> _N | tuple[_N, ...]:
        if isinstance(index, slice):
            return tuple(self.array[index].tolist())
        value: _N = self.array[index].item()
        return value

    def __iter__(self) -> Iterator[_N]:
        return iter(self.array.tolist())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PackedArray):
            if self._dtype == other._dtype:
                return self._data == other._data
            return tuple(self) == tuple(other)
        if isinstance(other, tuple | list):
            return tuple(self) == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"PackedArray({self.array.tolist()!r}, {self._dtype!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (PackedArray, (self._data, self._dtype))


def as_array(values: Sequence[Any], dtype: str) -> npt.NDArray[Any]:
    """``values`` (a :class:`PackedArray` or any sequence of numbers) as a 1-D numpy array of
    ``dtype``; packed bytes of that dtype are used as they are."""
    if isinstance(values, PackedArray):
        array = values.array
        return array if array.dtype == np.dtype(dtype) else array.astype(dtype)
    return np.asarray(values, dtype=dtype).reshape(-1)


@dataclass(frozen=True, slots=True)
class ShadowSlate:
    """The slate a shadow policy picked for the same request: logged beside the impression
    for comparison and off-policy evaluation, never shown (so never folded into state)."""

    policy: str
    model_version: str
    items: tuple[SlateItem, ...]


@dataclass(frozen=True, slots=True)
class ImpressionEvent:
    """A served slate: published to the ``impressions`` topic for joining and OPE.

    ``session_id`` is the client's session id ("" when it gave none); the event fold starts a
    new session in the user's state when it changes. ``candidates`` (the item ids the policy
    chose from, in the order it saw them) and ``features`` (the request-time user features it
    read) make the joined log a complete record of the decision: with them a *different*
    policy can be re-run on the same request for off-policy evaluation and offline training.
    Both are empty from writers that do not record them. Decoded events (and the service's
    own) hold them as :class:`PackedArray`; any sequence of numbers is accepted.
    """

    request_id: str
    user_id: str
    ts: float
    model_version: str
    policy: str
    items: tuple[SlateItem, ...]
    session_id: str = ""
    shadow: ShadowSlate | None = None
    candidates: Sequence[int] = ()
    features: Sequence[float] = ()


@dataclass(frozen=True, slots=True)
class FeedbackEvent:
    """A client-reported signal on an impressed item: published to the ``feedback`` topic.

    ``ts`` is when the client says it happened; ``server_ts`` when the server received it
    (``None`` from writers that do not stamp it). The online updater orders a user's events
    by server time, so a click is folded after its slate and before the next one.
    """

    request_id: str
    user_id: str
    item_id: int
    event: EventType
    value: float
    ts: float
    server_ts: float | None = None


Event = ImpressionEvent | FeedbackEvent


def event_time(event: Event) -> float:
    """When the server saw ``event``: an impression's ``ts``, a feedback's ``server_ts`` (its
    ``ts`` when unstamped). The order the online updater folds a user's events in."""
    if isinstance(event, FeedbackEvent) and event.server_ts is not None:
        return event.server_ts
    return event.ts


@dataclass(frozen=True, slots=True)
class EventRecord:
    """An event read back from a stream together with where it came from.

    ``partition`` is a string key (``"feedback:0"``) so offsets can be stored anywhere.
    ``offset`` is the position of this record; the next one to read is ``offset + 1``.
    """

    partition: str
    offset: int
    event: Event


AdsFilter = Literal["any", "only", "exclude"]


@dataclass(frozen=True, slots=True)
class CandidateFilters:
    """Business filters a retriever applies without returning fewer than ``k`` items.

    ``categories``: keep only items tagged with at least one of these category ids (``None``
    keeps every category). ``ads``: ``"only"`` keeps sponsored items, ``"exclude"`` drops
    them, ``"any"`` ignores the flag. Frozen and hashable, so a retriever can cache the item
    mask of each distinct filter instead of recomputing it per request.
    """

    categories: tuple[int, ...] | None = None
    ads: AdsFilter = "any"

    def __post_init__(self) -> None:
        if self.ads not in ("any", "only", "exclude"):
            raise InvalidRequestError(
                "filters", f"ads must be 'any', 'only' or 'exclude', got {self.ads!r}"
            )
        if self.categories is not None:
            if not isinstance(self.categories, tuple) or not all(
                isinstance(c, int) and not isinstance(c, bool) for c in self.categories
            ):
                raise InvalidRequestError(
                    "filters", f"categories must be a tuple of ints, got {self.categories!r}"
                )
            if not self.categories:
                raise InvalidRequestError("filters", "categories must not be empty (use None)")

    @property
    def is_noop(self) -> bool:
        """True when the filter keeps every item (so retrieval can skip masking)."""
        return self.categories is None and self.ads == "any"


@dataclass(frozen=True, slots=True, eq=False)
class InteractionDataset:
    """Implicit-feedback interactions plus side features, as loaded from any source.

    One row per (user, item) event: ``user_idx``/``item_idx`` are dense ``int64`` indices,
    ``rating`` float32 (1.0 for clicks) and ``timestamp`` float64 seconds (or any increasing
    clock). ``item_features`` ``[num_items, F]`` and ``user_features`` ``[num_users, U]``
    (``U`` may be 0) are float32 model inputs; ``item_categories`` ``[num_items, C]`` bool
    tags items for category filters (genres for MovieLens) and ``item_is_ad`` (optional)
    marks sponsored items for the ads filter. ``user_ids``/``item_ids`` map the
    dense indices back to the source's raw tokens, in index order. Loaders (MovieLens,
    logged-feedback files, the simulator) produce it; the candidate trainer consumes it.
    """

    name: str
    user_idx: IntArray
    item_idx: IntArray
    rating: FloatArray
    timestamp: npt.NDArray[np.float64]
    user_ids: tuple[str, ...]
    item_ids: tuple[str, ...]
    item_features: FloatArray
    user_features: FloatArray
    item_categories: npt.NDArray[np.bool_]
    item_feature_names: tuple[str, ...] = ()
    user_feature_names: tuple[str, ...] = ()
    category_names: tuple[str, ...] = ()
    item_is_ad: npt.NDArray[np.bool_] | None = None

    def __post_init__(self) -> None:
        n = self.user_idx.shape[0]
        for name, arr in (
            ("user_idx", self.user_idx),
            ("item_idx", self.item_idx),
            ("rating", self.rating),
            ("timestamp", self.timestamp),
        ):
            if arr.shape != (n,):
                raise ValueError(f"{name} has shape {arr.shape}, expected ({n},)")
        if self.user_idx.dtype != np.int64 or self.item_idx.dtype != np.int64:
            raise ValueError("user_idx and item_idx must be int64")
        num_users, num_items = len(self.user_ids), len(self.item_ids)
        for name, arr, bound in (
            ("user_idx", self.user_idx, num_users),
            ("item_idx", self.item_idx, num_items),
        ):
            if n and (int(arr.min()) < 0 or int(arr.max()) >= bound):
                raise ValueError(f"{name} has ids outside [0, {bound})")
        for name, shape, rows in (
            ("item_features", self.item_features.shape, num_items),
            ("user_features", self.user_features.shape, num_users),
            ("item_categories", self.item_categories.shape, num_items),
        ):
            if len(shape) != 2 or shape[0] != rows:
                raise ValueError(f"{name} has shape {shape}, expected ({rows}, width)")
        if self.item_features.dtype != np.float32 or self.user_features.dtype != np.float32:
            raise ValueError("item_features and user_features must be float32")
        if self.item_categories.dtype != np.bool_:
            raise ValueError("item_categories must be bool")
        if self.item_is_ad is not None and (
            self.item_is_ad.dtype != np.bool_ or self.item_is_ad.shape != (num_items,)
        ):
            raise ValueError(f"item_is_ad must be bool with shape ({num_items},)")
        if not (np.isfinite(self.item_features).all() and np.isfinite(self.user_features).all()):
            raise ValueError("features contain NaN or inf")

    @property
    def num_users(self) -> int:
        """Users in the id map (some may have no interactions)."""
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        """Items in the id map, i.e. the full catalog a ranking is computed over."""
        return len(self.item_ids)

    @property
    def num_interactions(self) -> int:
        """Rows of the interaction arrays."""
        return int(self.user_idx.shape[0])

    def subset(self, rows: IntArray) -> InteractionDataset:
        """The same catalog and users with only the given interaction rows (for splits)."""
        return replace(
            self,
            user_idx=self.user_idx[rows],
            item_idx=self.item_idx[rows],
            rating=self.rating[rows],
            timestamp=self.timestamp[rows],
        )
