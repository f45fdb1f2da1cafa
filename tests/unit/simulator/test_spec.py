"""The simulator record that travels with logs: round trip, rebuild, refusals."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.config import CatalogSettings, SimulatorSettings
from recsys.simulator import SimulatorSpec

SPEC = SimulatorSpec(
    CatalogSettings(num_items=120, num_users=30, num_topics=5, seed=7),
    SimulatorSettings(num_candidates=12, slate_size=3, no_click_logit=1.5),
)


def test_json_round_trip() -> None:
    assert SimulatorSpec.from_json(SPEC.to_json()) == SPEC


def test_items_do_not_depend_on_the_population_size() -> None:
    full, one = SPEC.build_env(), SPEC.build_env(num_users=1)
    np.testing.assert_array_equal(full.item_feature_table, one.item_feature_table)
    assert one.num_users == 1
    assert SPEC.matches(full)
    other = SimulatorSpec(SPEC.catalog.model_copy(update={"seed": 8}), SPEC.simulator)
    assert not other.matches(full)


def test_calibrated_worlds_and_malformed_records_are_refused() -> None:
    calibrated = SimulatorSpec(SPEC.catalog, SPEC.simulator, calibration="ml-100k")
    with pytest.raises(ValueError, match="calibrated to 'ml-100k'"):
        calibrated.build_world()
    with pytest.raises(ValueError, match="malformed simulator record"):
        SimulatorSpec.from_json('{"catalog": {"num_items": 0}}')
    with pytest.raises(ValueError, match="malformed simulator record"):
        SimulatorSpec.from_json("not json")
