"""Every cross-component contract, and nothing else.

A leaf module: it imports only :mod:`recsys.types`, the standard library and numpy, so any
component can depend on it without pulling in Ray, Redis, Kafka or FAISS.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from recsys.types import (
    CandidateBatch,
    CandidateFilters,
    Candidates,
    Event,
    EventRecord,
    FloatArray,
    IntArray,
    Signals,
    Slate,
    UserState,
)


@runtime_checkable
class CandidateGenerator(Protocol):
    """Narrows the catalog to a few hundred items for one user (first stage of ranking)."""

    @property
    def num_items(self) -> int:
        """Size of the catalog the generator retrieves from."""
        ...

    def generate(
        self,
        user: UserState,
        k: int,
        exclude: IntArray,
        filters: CandidateFilters | None = None,
    ) -> Candidates:
        """Return the ``k`` best items for ``user``, never any id in ``exclude``.

        ``filters`` (categories, ads/organic) restrict the eligible items; still exactly
        ``k`` come back when that many are eligible. Raises
        :class:`recsys.types.InvalidRequestError` when ``k`` cannot be satisfied.
        """
        ...

    def count_eligible(self, exclude: IntArray, filters: CandidateFilters | None = None) -> int:
        """How many items ``generate`` could return for these exclusions and filters."""
        ...


@runtime_checkable
class HistoryCandidateSource(Protocol):
    """Candidates for many users at once from their recently clicked items.

    What the simulator's training env and the server share, so a policy is trained on the
    candidates it will be served (the FAISS retriever's two-tower query over the history).
    """

    def candidates_for_histories(
        self,
        histories: IntArray,
        num_organic: int,
        num_ads: int,
        *,
        exclude: Sequence[IntArray] | None = None,
        filters: CandidateFilters | None = None,
        exclude_history: bool = True,
    ) -> CandidateBatch:
        """``num_organic`` non-ads then ``num_ads`` ads per row of ``histories`` ``[B, K]``
        (item ids, newest first, ``-1`` empty), padded and masked where too few are eligible."""
        ...


@runtime_checkable
class SlatePolicy(Protocol):
    """Picks an ordered slate from candidates and reports exact per-slot propensities."""

    name: str
    version: str

    def select(
        self,
        user_features: FloatArray,
        candidates: Candidates,
        slate_size: int,
        rng: np.random.Generator,
    ) -> Slate:
        """Choose ``slate_size`` distinct candidates for a user described by
        ``user_features`` (the event-derived features at request time); propensities must
        be exact."""
        ...

    def select_batch(
        self,
        user_features: FloatArray,
        candidates: CandidateBatch,
        slate_size: int,
        rng: np.random.Generator,
    ) -> list[Slate]:
        """:meth:`select` for a batch of requests in one pass (``user_features`` ``[B, F]``,
        one row of ``candidates`` per request; padding where ``mask`` is False is never
        chosen). The server batches concurrent requests through this, so a policy's cost per
        request falls with load instead of growing."""
        ...


@runtime_checkable
class RewardModel(Protocol):
    """Maps observable signals to a scalar reward the policy optimises."""

    def reward(self, signals: Signals) -> float:
        """Reward for one impressed item's responses."""
        ...


@runtime_checkable
class UserStateStore(Protocol):
    """Per-user state records (opaque bytes, see :mod:`recsys.features.state`) and the online
    updater's stream offsets.

    The store does not interpret a record: the event fold writes it and the server reads it.
    The updater writes through :meth:`commit`, which stores the records together with the
    offsets of the events folded into them, atomically and only if the offsets are still the
    ones it started from, so a crash and restart (or a second updater by mistake) neither
    loses nor double-applies an event.
    """

    def get(self, user_id: str) -> bytes | None:
        """One user's record, or ``None`` for a user nothing is known about (a cold start)."""
        ...

    def get_many(self, user_ids: Sequence[str]) -> list[bytes | None]:
        """Records in the order of ``user_ids``, read at one instant (one round trip); raises
        :class:`~recsys.types.StoreUnavailableError` when the store does not answer."""
        ...

    def put_many(self, states: Mapping[str, bytes]) -> None:
        """Create or replace records without touching offsets (seeding, tests, migrations)."""
        ...

    def commit(
        self,
        states: Mapping[str, bytes],
        offsets: Mapping[str, int],
        consumer: str,
        expected: Mapping[str, int | None] | None = None,
    ) -> None:
        """Write ``states`` and ``consumer``'s next ``offsets`` in one atomic step.

        With ``expected`` (partition → the stored next offset the writer started from, or
        ``None`` for "none stored yet"), nothing is written unless every listed offset is
        still that value: :class:`recsys.types.StaleOffsetsError` is raised instead.
        """
        ...

    def offsets(self, consumer: str) -> dict[str, int]:
        """Next offsets to read per partition, as last recorded by :meth:`commit`."""
        ...

    def ping(self) -> bool:
        """True when the backend answers (used by readiness checks)."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


@runtime_checkable
class EventSink(Protocol):
    """Publishes impression and feedback events (to Kafka topics or an in-process log)."""

    def publish(self, event: Event) -> None:
        """Queue one event for delivery; it is routed to a topic by its type."""
        ...

    def flush(self, timeout_s: float = 10.0) -> None:
        """Block until queued events are acknowledged or raise on timeout."""
        ...

    def close(self) -> None:
        """Flush and release connections."""
        ...


@runtime_checkable
class EventSource(Protocol):
    """Reads events back in order, from positions the caller controls."""

    def partitions(self) -> list[str]:
        """Partition keys this source reads (``"topic:partition"``)."""
        ...

    def seek(self, offsets: Mapping[str, int]) -> None:
        """Resume each listed partition at the given next offset; others start at 0."""
        ...

    def poll(self, max_records: int, timeout_s: float) -> list[EventRecord]:
        """Up to ``max_records`` records, waiting at most ``timeout_s`` for the first."""
        ...

    def caught_up(self) -> dict[str, float]:
        """Partitions read to their end, each with a server time before which every event
        that will ever be in it has been returned by :meth:`poll` (the partition's
        watermark). Partitions with records still to read are absent."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


@runtime_checkable
class ChoiceModel(Protocol):
    """How a user picks at most one item from a shown slate, batched over users.

    The simulator computes each slot's click appeal; a choice model turns it into a
    distribution over "click slot s" plus a final "no click" outcome and samples from it.
    Keeping it pluggable (as RecSim does) lets the simulator swap multinomial-logit for
    cascade models, and lets a slate policy (SlateQ) reuse the same decomposition.
    """

    def probabilities(self, affinity: FloatArray) -> FloatArray:
        """Choice probabilities ``[B, S + 1]`` for appeals ``[B, S]``; last column = no click.

        Each row sums to 1. Column ``s`` is the probability of clicking the item in slot ``s``.
        """
        ...

    def sample(self, probs: FloatArray, rng: np.random.Generator) -> IntArray:
        """One choice per row of ``probs`` ``[B, S + 1]``: a slot in ``0..S-1``, or ``S``."""
        ...


@runtime_checkable
class VersionPins(Protocol):
    """Which policy version each serving arm is pinned to, shared by every replica.

    An operator pins an arm (``slateq``, ``myopic@v1``, ...) to one artifact version, or rolls
    it back, through one replica's admin API; the pin is written here and every replica's
    policy watcher applies it on its next round. An arm with no pin serves its newest
    version.
    """

    def all(self) -> dict[str, str]:
        """Every pin, arm → version; raises :class:`~recsys.types.StoreUnavailableError` when
        the backend does not answer."""
        ...

    def pin(self, arm: str, version: str) -> None:
        """Pin ``arm`` to ``version`` (replacing any pin it had)."""
        ...

    def unpin(self, arm: str) -> None:
        """Remove ``arm``'s pin (no error when it had none)."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...
