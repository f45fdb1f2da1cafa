"""Fixtures of the feature tests."""

from __future__ import annotations

import pytest

from recsys.features import EventFold, UserFeaturizer
from tests.unit.features.events import make_fold


@pytest.fixture
def fold() -> EventFold:
    return make_fold()


@pytest.fixture
def featurizer(fold: EventFold) -> UserFeaturizer:
    return UserFeaturizer(fold.spec)
