"""What it takes to rebuild a simulator world, as a small record that travels with its logs.

A logged-feedback file written by ``recsys simulate`` stores only the items each request
*showed*; evaluating another policy on those requests needs the features of every candidate
it could have shown, i.e. the world's item table. Synthetic worlds are a pure function of
their :class:`~recsys.config.CatalogSettings` (items come from their own seeded streams, so
the population size does not change them), so recording those settings, plus the simulator
settings, is enough to rebuild the table bit for bit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import ValidationError

from recsys.config import CatalogSettings, SimulatorSettings
from recsys.data.synthetic import SyntheticWorld, make_world
from recsys.simulator.env import SlateEnv

__all__ = ["SIMULATOR_METADATA_KEY", "SimulatorSpec"]

#: File-metadata key under which logged-feedback files carry :meth:`SimulatorSpec.to_json`.
SIMULATOR_METADATA_KEY = "recsys.simulator"


@dataclass(frozen=True)
class SimulatorSpec:
    """Catalog and simulator settings of a run; ``calibration`` names a real dataset the
    world was fitted to (``ml-100k``), ``None`` for a synthetic world."""

    catalog: CatalogSettings
    simulator: SimulatorSettings
    calibration: str | None = None

    def to_json(self) -> str:
        """Compact JSON (what a log file stores under :data:`SIMULATOR_METADATA_KEY`)."""
        return json.dumps(
            {
                "catalog": self.catalog.model_dump(mode="json"),
                "simulator": self.simulator.model_dump(mode="json"),
                "calibration": self.calibration,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> SimulatorSpec:
        """Inverse of :meth:`to_json`; a malformed record raises ``ValueError`` saying so."""
        try:
            data: Any = json.loads(text)
            calibration = data.get("calibration")
            return cls(
                catalog=CatalogSettings.model_validate(data["catalog"]),
                simulator=SimulatorSettings.model_validate(data["simulator"]),
                calibration=None if calibration is None else str(calibration),
            )
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError, ValidationError) as e:
            raise ValueError(f"malformed simulator record {SIMULATOR_METADATA_KEY!r}: {e}") from e

    def build_world(self, num_users: int | None = None) -> SyntheticWorld:
        """The world, with ``num_users`` users (default: the recorded population).

        Item arrays do not depend on ``num_users``, so a caller that needs only the catalog
        (off-policy evaluation) asks for one user. Calibrated worlds are refused: rebuilding
        them needs the real dataset and its fit, which the record does not carry.
        """
        if self.calibration is not None:
            raise ValueError(
                f"the log was simulated on a world calibrated to {self.calibration!r}; "
                "rebuilding calibrated worlds is not supported"
            )
        catalog = self.catalog
        if num_users is not None:
            catalog = catalog.model_copy(update={"num_users": num_users})
        return make_world(catalog)

    def build_env(self, num_users: int | None = None) -> SlateEnv:
        """A fresh simulator on :meth:`build_world` with the recorded settings."""
        return SlateEnv(
            self.build_world(num_users), seed=self.simulator.seed, settings=self.simulator
        )

    def matches(self, env: SlateEnv) -> bool:
        """Whether this record rebuilds ``env``'s observable item table exactly (a synthetic
        world only: :meth:`build_world` refuses calibrated ones)."""
        if (env.num_items, env.world.num_topics) != (
            self.catalog.num_items,
            self.catalog.num_topics,
        ):
            return False
        rebuilt = self.build_env(num_users=1)
        return bool(np.array_equal(rebuilt.item_feature_table, env.item_feature_table))
