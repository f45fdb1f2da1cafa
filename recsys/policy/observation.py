"""How a policy observes a request: its user features and its candidates' item features.

:class:`PolicyFeatures` travels inside every policy artifact, so the server builds exactly the
observation the policy was trained on: the kind of user features (``event``, folded from the
service's own events, or ``latent``, the simulator's hidden truth, which only the simulator
can provide), the :class:`~recsys.features.FeatureSpec` of the event fold, the static
per-item table (catalog columns, response statistics, two-tower embedding), the user-item
cross features, the size of the ad block of the candidates, and the version of the retrieval
artifact whose candidates it learned on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from recsys.features import FeatureSpec, ItemFeaturizer
from recsys.policy.batch import SlateObs
from recsys.types import FloatArray, IntArray

FeatureKind = Literal["event", "latent"]
FEATURE_KINDS: tuple[FeatureKind, ...] = ("event", "latent")

BoolArray = npt.NDArray[np.bool_]
_PREFIX = "features/"


@dataclass(frozen=True, eq=False)
class PolicyFeatures:
    """The observation contract of a trained policy (see the module docstring)."""

    kind: FeatureKind
    spec: FeatureSpec
    items: ItemFeaturizer
    is_ad: BoolArray
    num_ads: int = 0
    retrieval_version: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in FEATURE_KINDS:
            raise ValueError(f"kind must be event or latent, got {self.kind!r}")
        if self.is_ad.shape != (self.items.num_items,):
            raise ValueError("is_ad must have one flag per item of the item table")

    @property
    def num_items(self) -> int:
        """Catalog size the item table covers."""
        return self.items.num_items

    def obs(
        self,
        user_features: npt.ArrayLike,
        candidate_ids: IntArray,
        mask: BoolArray | None = None,
    ) -> SlateObs:
        """The observation of users ``[B, F_u]`` with candidates ``[B, C]`` (catalog ids;
        ``mask`` False marks padding, whose ids must still be valid catalog ids)."""
        uf = np.asarray(user_features, dtype=np.float32)
        ids = np.asarray(candidate_ids, dtype=np.int64)
        ads = self.is_ad[ids]
        return SlateObs(
            user_features=uf,
            item_features=self.items.features(uf, ids),
            candidate_ids=ids,
            candidate_mask=None if mask is None or mask.all() else mask,
            is_ad=ads if mask is None else ads & mask,
        )

    # ---- artifact I/O ----------------------------------------------------------------

    def tensors(self) -> dict[str, np.ndarray[Any, Any]]:
        """Arrays for the policy artifact (``features/`` prefix)."""
        return {
            _PREFIX + "item_table": self.items.table,
            _PREFIX + "topics": self.items.topics,
            _PREFIX + "is_ad": self.is_ad.astype(np.uint8),
        }

    def metadata(self) -> dict[str, Any]:
        """JSON-ready description for the artifact manifest."""
        n_table = int(self.items.table.shape[1])
        return {
            "kind": self.kind,
            "spec": self.spec.to_dict(),
            "item_names": list(self.items.names[:n_table]),
            "cross_blocks": list(self.items.cross_blocks),
            "cross_names": [n[2:] for n in self.items.names[n_table:]],
            "num_ads": self.num_ads,
            "retrieval_version": self.retrieval_version,
        }

    @classmethod
    def from_artifact(
        cls, tensors: Mapping[str, np.ndarray[Any, Any]], metadata: Mapping[str, Any]
    ) -> PolicyFeatures:
        """Inverse of :meth:`tensors` and :meth:`metadata`; raises ``ValueError`` with what is
        missing or malformed."""
        try:
            table = np.asarray(tensors[_PREFIX + "item_table"], dtype=np.float32)
            topics = np.asarray(tensors[_PREFIX + "topics"], dtype=np.float32)
            is_ad = np.asarray(tensors[_PREFIX + "is_ad"]).astype(np.bool_)
            items = ItemFeaturizer(
                table,
                topics,
                tuple(metadata["item_names"]),
                tuple(int(c) for c in metadata["cross_blocks"]),
                tuple(metadata["cross_names"]),
            )
            return cls(
                kind=metadata["kind"],
                spec=FeatureSpec.from_dict(metadata["spec"]),
                items=items,
                is_ad=is_ad,
                num_ads=int(metadata.get("num_ads", 0)),
                retrieval_version=metadata.get("retrieval_version"),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"policy features are missing or malformed: {exc!r}") from exc


def static_item_table(
    observable: FloatArray,
    observable_names: tuple[str, ...],
    *extra: tuple[FloatArray | None, tuple[str, ...]],
) -> tuple[FloatArray, tuple[str, ...]]:
    """Concatenate per-item column blocks ``[N, k]`` (``None`` blocks are skipped)."""
    blocks = [np.asarray(observable, dtype=np.float32)]
    names = list(observable_names)
    for arr, block_names in extra:
        if arr is None:
            continue
        a = np.asarray(arr, dtype=np.float32)
        if a.ndim != 2 or a.shape[0] != blocks[0].shape[0] or a.shape[1] != len(block_names):
            raise ValueError(f"item block {block_names[:1]}... has shape {a.shape}")
        blocks.append(a)
        names.extend(block_names)
    return np.ascontiguousarray(np.concatenate(blocks, axis=1)), tuple(names)
