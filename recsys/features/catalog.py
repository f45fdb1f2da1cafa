"""The item catalog as the fold and the featurisers see it: observable item attributes.

Topic mixtures and ad flags drive the event fold (which topics a slate exposed, what a click
consumed, how many ads were shown); the rest are the observable item features a policy reads
(length, bid, popularity). Hidden ground truth (quality, clickbait) is never here. The
retrieval artifact stores one (``catalog/*`` tensors), so the online updater and the server
fold events over the same catalog the models were trained on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from recsys.types import FloatArray

BoolArray = npt.NDArray[np.bool_]

_FIELDS = ("topics", "is_ad", "bid", "length_s", "popularity")


@dataclass(frozen=True, eq=False)
class ItemTable:
    """Observable per-item attributes of a catalog (row ``i`` is item id ``i``).

    ``topics`` ``[N, T]`` topic mixtures, ``is_ad`` sponsored items, ``bid`` the advertiser's
    payment per conversion (0 for organic items), ``length_s`` seconds to consume the item,
    ``popularity`` a prior share of attention (sums to 1 over the catalog).
    """

    topics: FloatArray
    is_ad: BoolArray
    bid: FloatArray
    length_s: FloatArray
    popularity: FloatArray

    def __post_init__(self) -> None:
        n = self.topics.shape[0] if self.topics.ndim == 2 else -1
        if n < 1:
            raise ValueError(f"topics must be [num_items, num_topics], got {self.topics.shape}")
        for name in ("is_ad", "bid", "length_s", "popularity"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"{name} must have shape ({n},), got {getattr(self, name).shape}")
        for name in ("topics", "bid", "length_s", "popularity"):
            if not np.isfinite(getattr(self, name)).all():
                raise ValueError(f"{name} contains NaN or inf")
        if (self.length_s <= 0).any():
            raise ValueError("length_s must be > 0")

    @property
    def num_items(self) -> int:
        """Catalog size."""
        return int(self.topics.shape[0])

    @property
    def num_topics(self) -> int:
        """Width of the topic mixtures."""
        return int(self.topics.shape[1])

    def observable(self) -> tuple[FloatArray, tuple[str, ...]]:
        """``([N, T + 4] float32, names)``: topics, log length (minutes), ad flag, bid and log
        popularity relative to uniform, the catalog columns of a policy's item features."""
        t = self.num_topics
        table = np.empty((self.num_items, t + 4), dtype=np.float32)
        table[:, :t] = self.topics
        table[:, t] = np.log(self.length_s / 60.0)
        table[:, t + 1] = self.is_ad
        table[:, t + 2] = self.bid
        table[:, t + 3] = np.log(np.maximum(self.popularity, 1e-12) * self.num_items)
        names = (
            *(f"topic_{k}" for k in range(t)),
            "log_length_min",
            "is_ad",
            "bid",
            "log_popularity",
        )
        return table, names

    def to_tensors(self, prefix: str = "catalog/") -> dict[str, np.ndarray[Any, Any]]:
        """Arrays for a safetensors file (booleans as uint8)."""
        out: dict[str, np.ndarray[Any, Any]] = {}
        for name in _FIELDS:
            arr = np.asarray(getattr(self, name))
            out[prefix + name] = arr.astype(np.uint8) if arr.dtype == np.bool_ else arr
        return out

    @classmethod
    def from_tensors(
        cls, tensors: Mapping[str, np.ndarray[Any, Any]], prefix: str = "catalog/"
    ) -> ItemTable:
        """Inverse of :meth:`to_tensors`; raises ``ValueError`` when arrays are missing."""
        missing = [prefix + n for n in _FIELDS if prefix + n not in tensors]
        if missing:
            raise ValueError(f"catalog tensors are missing {', '.join(missing)}")
        return cls(
            topics=np.asarray(tensors[prefix + "topics"], dtype=np.float32),
            is_ad=np.asarray(tensors[prefix + "is_ad"]).astype(np.bool_),
            bid=np.asarray(tensors[prefix + "bid"], dtype=np.float32),
            length_s=np.asarray(tensors[prefix + "length_s"], dtype=np.float32),
            popularity=np.asarray(tensors[prefix + "popularity"], dtype=np.float32),
        )
