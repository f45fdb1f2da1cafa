"""The feature contract: parameters of the event fold and the names of what it produces.

A policy trained on one :class:`FeatureSpec` can only be served by code that folds events and
featurises states the same way, so the spec travels inside every policy artifact and loading
compares it (:meth:`FeatureSpec.incompatibility`). ``FEATURE_SPEC_VERSION`` changes whenever
the fold or the featuriser changes meaning (a new field, a different squashing), so an old
artifact is refused instead of silently reading features it was never trained on.

Decays run on the user's own clock: one tick per slate shown to them (an impression), plus
``session_gap_steps`` ticks when a new session starts. Wall-clock time only decides where a
session starts when the client does not say (``session_gap_s`` of inactivity), which keeps
the state identical wherever it is folded: in the simulator, where time is simulated, and in
the service, where it is not.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

FEATURE_SPEC_VERSION = 1

#: Per-topic vectors of the state, in storage order, with what each is a proxy for.
TOPIC_VECTORS: tuple[tuple[str, str], ...] = (
    ("clicks_fast", "recent consumption per topic (boredom)"),
    ("clicks_slow", "long-run consumption per topic (interest)"),
    ("impressions", "exposure per topic (shown, clicked or not)"),
    ("conversions", "purchases per topic (satiation)"),
)


def half_life_factor(half_life: float, ticks: float = 1.0) -> float:
    """Retention after ``ticks`` ticks of a quantity that halves every ``half_life`` ticks."""
    return float(2.0 ** (-ticks / half_life))


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """How events are folded into a user's state and what the featuriser reads from it.

    ``num_topics`` is the width of the catalog's topic mixtures (each per-topic vector has
    that many entries); ``recent_items`` how many clicked item ids are remembered (excluded
    from retrieval, and the retrieval query's history). Half-lives are in impressions of the
    user; ``session_gap_steps`` extra ticks of decay pass between sessions.
    """

    num_topics: int
    recent_items: int = 5
    fast_half_life: float = 5.0
    slow_half_life: float = 50.0
    impression_half_life: float = 10.0
    conversion_half_life: float = 50.0
    ad_half_life: float = 10.0
    session_gap_steps: float = 20.0
    session_gap_s: float = 1800.0
    version: int = FEATURE_SPEC_VERSION

    def __post_init__(self) -> None:
        if isinstance(self.num_topics, bool) or not 1 <= int(self.num_topics) <= 1024:
            raise ValueError(f"num_topics must be in [1, 1024], got {self.num_topics!r}")
        if isinstance(self.recent_items, bool) or not 1 <= int(self.recent_items) <= 64:
            raise ValueError(f"recent_items must be in [1, 64], got {self.recent_items!r}")
        for name in (
            "fast_half_life",
            "slow_half_life",
            "impression_half_life",
            "conversion_half_life",
            "ad_half_life",
            "session_gap_s",
        ):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be finite and > 0, got {value}")
        if not (math.isfinite(self.session_gap_steps) and self.session_gap_steps >= 0):
            raise ValueError(f"session_gap_steps must be >= 0, got {self.session_gap_steps}")

    # ---- names --------------------------------------------------------------------------

    @property
    def topic_blocks(self) -> tuple[str, ...]:
        """Names of the per-topic user-feature blocks (each ``num_topics`` wide), in order."""
        return ("interest", "boredom", "exposure", "satiation")

    @property
    def user_feature_names(self) -> tuple[str, ...]:
        """Column names of :meth:`recsys.features.UserFeaturizer.features`."""
        t = range(self.num_topics)
        blocks = tuple(f"{block}_{k}" for block in self.topic_blocks for k in t)
        return (
            *blocks,
            "ad_exposure",
            "session_step",
            "sessions",
            "steps",
            "ctr",
            "like_rate",
            "skip_rate",
            "conversion_rate",
            "dwell_per_click",
            "cold",
        )

    @property
    def user_dim(self) -> int:
        """Width of the user-feature vector."""
        return 4 * self.num_topics + 10

    # ---- serialisation and compatibility ----------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (artifact metadata)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSpec:
        """Inverse of :meth:`to_dict`; unknown keys are refused by name."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown feature-spec fields: {', '.join(unknown)}")
        return cls(**dict(data))

    def incompatibility(self, other: FeatureSpec) -> str | None:
        """Why states folded under ``other`` cannot feed a policy trained on ``self``, or None."""
        if other.version != self.version:
            return f"feature spec version {other.version} != {self.version}"
        mine, theirs = self.to_dict(), other.to_dict()
        diff = [k for k in mine if mine[k] != theirs[k]]
        if diff:
            pairs = ", ".join(f"{k}: {theirs[k]!r} vs {mine[k]!r}" for k in diff)
            return f"feature spec differs ({pairs})"
        return None
